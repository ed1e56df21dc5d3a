"""Parallel reads of big tables (``readers:``): ctid ranges read by several connections at
once must land the table as of one moment, with no row missing or doubled.

The tables span several ranges of :data:`connectors.postgres.fetch.RANGE_PAGES` pages
(rows of ~420 bytes, ~19 a page). A read is paused once two connections have read ranges,
while another connection changes the table: the ranges not yet started then begin after
that commit, so only a read whose connections share one snapshot lands the table as it
was before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import closing

import psycopg
import pyarrow as pa
import pytest

from connectors.base import Batch, ConfiguredStream
from connectors.postgres import PostgresSource, fetch
from stack.config import SourceConfig
from stack.load import RunContext, plan_stream, sync_stream
from tests.servers.pg_server import schema_of_its_own

ROWS_PER_PAGE = 19  # what a row of the table below takes with its tuple header
_RANGES_COPYING = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE %s
"""


@pytest.fixture
def items(pg_database: dict) -> Iterator[tuple[psycopg.Connection, str]]:
    """A schema of its own holding ``items``; the test fills it with :func:`_fill`."""
    with schema_of_its_own(pg_database, "par") as found:
        yield found


def _fill(conn: psycopg.Connection, schema: str, ranges: int) -> int:
    """``items`` over ``ranges`` full ranges of pages and a part of one more, analysed (the
    scan sizes its ranges from ``pg_class.relpages``). Returns the row count."""
    rows = (ranges * fetch.RANGE_PAGES + fetch.RANGE_PAGES // 2) * ROWS_PER_PAGE
    conn.execute(f'CREATE TABLE "{schema}".items (id int PRIMARY KEY, v int NOT NULL, pad text)')
    conn.execute(
        f'INSERT INTO "{schema}".items SELECT g, g, repeat(md5(g::text), 12)'
        " FROM generate_series(1, %s) g",
        (rows,),
    )
    conn.execute(f'VACUUM (ANALYZE) "{schema}".items')
    pages = conn.execute(f"SELECT relpages FROM pg_class WHERE oid = '{schema}.items'::regclass")
    assert pages.fetchone()[0] > ranges * fetch.RANGE_PAGES  # the ranges the test relies on
    return rows


def _source(server: dict, schema: str, readers: int) -> PostgresSource:
    return PostgresSource("pg", server | {"schemas": [schema], "readers": readers})


def _read(source: PostgresSource, *columns: str) -> Iterator:
    """A full refresh of ``items`` (only ``columns``, when named)."""
    spec = source.discover().stream("items")
    if columns:
        spec = dataclasses.replace(spec, schema=pa.schema([spec.schema.field(c) for c in columns]))
    return source.read(ConfiguredStream(spec, "full_refresh_overwrite"), None)


def _landed(batches: list) -> pa.Table:
    table = pa.Table.from_batches([m.data for m in batches if isinstance(m, Batch)])
    return table.sort_by("id")


def _snapshot(conn: psycopg.Connection, schema: str) -> pa.Table:
    rows = conn.execute(f'SELECT id, v FROM "{schema}".items ORDER BY id').fetchall()
    ids, values = zip(*rows, strict=True)
    return pa.table({"id": pa.array(ids, pa.int32()), "v": pa.array(values, pa.int32())})


def _ranges_read(conn: psycopg.Connection, schema: str) -> int:
    """Connections given a range of the table so far (the query a connection was last given
    stays in ``pg_stat_activity`` while it is open)."""
    pattern = f'COPY (SELECT % FROM "{schema}"."items" WHERE ctid BETWEEN %'
    return conn.execute(_RANGES_COPYING, (pattern,)).fetchone()[0]


def test_parallel_full_refresh_lands_the_rows_one_reader_does(items, pg_database):
    conn, schema = items
    rows = _fill(conn, schema, ranges=3)
    one = _landed(list(_read(_source(pg_database, schema, 1))))
    four = _landed(list(_read(_source(pg_database, schema, 4))))
    assert four.num_rows == rows == len(set(four.column("id").to_pylist()))
    assert four.equals(one)


def test_parallel_read_is_the_table_of_one_moment_while_it_changes(items, pg_database):
    conn, schema = items
    _fill(conn, schema, ranges=12)
    before = _snapshot(conn, schema)
    with closing(_read(_source(pg_database, schema, 4), "id", "v")) as messages:
        read = [next(messages)]
        while _ranges_read(conn, schema) < 2:  # until the read is parallel
            batch = next(messages, None)
            assert batch is not None, "one connection read the whole table"
            read.append(batch)
        with conn.transaction():
            # the first range's rows move to new pages at the end (the last range reads
            # them), rows of every range change, rows are added and deleted
            conn.execute(f'UPDATE "{schema}".items SET v = -v WHERE id <= 20000 OR id % 1000 = 0')
            conn.execute(f'DELETE FROM "{schema}".items WHERE id % 1000 = 1')
            conn.execute(
                f"INSERT INTO \"{schema}\".items SELECT g, g, 'new'"
                " FROM generate_series(1000001, 1001000) g"
            )
        landed = _landed([*read, *messages])
    assert landed.equals(before)
    assert not _snapshot(conn, schema).equals(before)  # the change did commit


def test_snapshot_delete_detection_with_parallel_key_reads_finds_the_deleted_keys(
    items, pg_database, warehouse
):
    conn, schema = items
    rows = _fill(conn, schema, ranges=3)
    cfg = SourceConfig.model_validate(
        {
            "connector": "postgres",
            "schema": "raw",
            "streams": {
                "items": {
                    "sync": "incremental_deduped",
                    "cursor": "v",
                    "deletes": "soft",
                    "delete_detection": "snapshot",
                }
            },
        }
    )
    source = _source(pg_database, schema, 4)

    def sync(run: str):
        plan = plan_stream("pg", cfg, source.discover(), "items")
        return sync_stream(warehouse, source, plan, RunContext("p", "eu", run))

    sync("r1")
    deleted = conn.execute(
        f'DELETE FROM "{schema}".items WHERE id %% 997 = 5 OR id = %s RETURNING id', (rows,)
    ).fetchall()
    entry = sync("r2")
    gone = warehouse.query(
        "SELECT id FROM raw.items WHERE _mds_deleted_at IS NOT NULL ORDER BY id"
    ).column(0)
    assert gone.to_pylist() == sorted(i for (i,) in deleted)
    assert entry.deleted == len(deleted)
    live = warehouse.query("SELECT count(*) AS n FROM raw.items WHERE _mds_deleted_at IS NULL")
    assert live.to_pylist()[0]["n"] == rows - len(deleted)
