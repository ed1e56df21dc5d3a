"""PostgreSQL CDC into ``incremental_deduped_history`` streams, through ``mdstack sync``.

The session's logical cluster (:mod:`tests.servers.pg_server`) and DuckDB. One ``stack.yml``
reads the same table twice, each source through a slot of its own: ``hist`` keeps every
version (``raw.items``, view ``raw.items_current``), ``dedup`` reads it
``incremental_deduped`` (``raw_deduped.items``). What is checked is what lands in the
warehouse: every change a version, valid from its commit time, and current versions equal to
what a deduped stream of the same table holds.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from connectors.base import Batch, Checkpoint, ConfiguredStream, Deletes
from connectors.postgres.source import PostgresSource
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.cdc_stack import mdstack
from tests.servers.pg_server import PgCluster, connect_kwargs, drop_slots

HISTORY, DEDUPED = "raw", "raw_deduped"
DATA = "id, name, n"


@pytest.fixture
def pg(pg_logical: PgCluster) -> Iterator[tuple[psycopg.Connection, str]]:
    """A schema with ``items (id int PRIMARY KEY, name text, n int)`` of 5 rows, in a
    publication named after the schema; its slots, publication and schema dropped at the end."""
    schema = f"hist_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**connect_kwargs(pg_logical.dsn), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text, n int)")
        conn.execute(
            f"INSERT INTO {schema}.items SELECT g, 'item ' || g, 0 FROM generate_series(1, 5) g"
        )
        conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {schema}.items")
        try:
            yield conn, schema
        finally:
            drop_slots(conn, schema)
            conn.execute(f"DROP PUBLICATION {schema}")
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def write_config(
    folder: Path, dsn: dict[str, Any], schema: str, deletes: str = "hard", batch_size: int = 25
) -> Path:
    """``stack.yml``: sources ``hist`` (history) and ``dedup`` (deduped) read ``items``."""

    def source(sync: str, into: str, slot: str) -> dict[str, Any]:
        replication = {"slot": f"{schema}_{slot}", "publication": schema}
        return {
            "connector": "postgres",
            "schema": into,
            "config": dsn
            | {"schemas": [schema], "batch_size": batch_size}
            | {"replication": replication},
            "streams": {"items": {"sync": sync, "deletes": deletes}},
        }

    config = {
        "name": "history",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "wh")}},
        "sources": {
            "hist": source("incremental_deduped_history", HISTORY, "h"),
            "dedup": source("incremental_deduped", DEDUPED, "d"),
        },
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def sync(path: Path) -> None:
    result = mdstack(path, "sync")
    assert result.exit_code == 0, result.output


def committed(conn: psycopg.Connection, *statements: str) -> tuple[datetime, datetime]:
    """Run ``statements`` in one transaction; returns (its start, a moment after its commit),
    naive UTC: its commit time lies in between."""
    with conn.transaction():
        [(start,)] = conn.execute("SELECT now() AT TIME ZONE 'UTC'").fetchall()
        for statement in statements:
            conn.execute(statement)
    [(after,)] = conn.execute("SELECT clock_timestamp() AT TIME ZONE 'UTC'").fetchall()
    return start, after


def query(folder: Path, select: str) -> list[tuple]:
    with DuckDBWarehouse(folder / "wh") as wh:
        return [tuple(row.values()) for row in wh.query(select).to_pylist()]


def versions(folder: Path, key: int) -> list[tuple]:
    """``(name, n, deleted_at, valid_from, valid_to, is_current)`` of each version of ``key``
    in the history table, oldest first."""
    return query(
        folder,
        "SELECT name, n, _mds_deleted_at, _mds_valid_from, _mds_valid_to, _mds_is_current"
        f" FROM {HISTORY}.items WHERE id = {key}"
        " ORDER BY _mds_valid_from, _mds_valid_to NULLS LAST",
    )


def current(folder: Path) -> list[tuple]:
    """The current rows, by id, as the history view shows them."""
    return query(folder, f"SELECT {DATA}, _mds_deleted_at FROM {HISTORY}.items_current ORDER BY id")


def deduped(folder: Path) -> list[tuple]:
    """The rows of the deduped stream of the same table, by id."""
    return query(folder, f"SELECT {DATA}, _mds_deleted_at FROM {DEDUPED}.items ORDER BY id")


def test_three_updates_between_two_syncs_are_three_versions_valid_from_their_commits(
    tmp_path, pg_logical, pg
):
    conn, schema = pg
    path = write_config(tmp_path, pg_logical.dsn, schema)
    sync(path)  # the snapshot: one version per row
    windows = [
        committed(conn, f"UPDATE {schema}.items SET name = 'v{i}', n = {i} WHERE id = 1")
        for i in (1, 2, 3)
    ]
    sync(path)

    found = versions(tmp_path, 1)
    assert [(name, n) for name, n, *_ in found] == [("item 1", 0), ("v1", 1), ("v2", 2), ("v3", 3)]
    froms = [valid_from for *_, valid_from, _, _ in found]
    for (start, after), valid_from in zip(windows, froms[1:], strict=True):
        assert start <= valid_from <= after  # the commit time, not the load time
    assert froms == sorted(set(froms))  # strictly increasing
    assert [valid_to for *_, valid_to, _ in found] == [*froms[1:], None]
    assert [is_current for *_, is_current in found] == [False, False, False, True]
    assert all(deleted is None for _, _, deleted, *_ in found)
    assert current(tmp_path) == deduped(tmp_path)  # the other keys: their snapshot version

    sync(path)  # nothing new: no version
    assert versions(tmp_path, 1) == found


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_update_delete_reinsert_in_one_sync_are_versions_and_current_equals_deduped(
    tmp_path, pg_logical, pg, deletes
):
    conn, schema = pg
    path = write_config(tmp_path, pg_logical.dsn, schema, deletes)
    sync(path)
    assert current(tmp_path) == deduped(tmp_path)

    items = f"{schema}.items"
    committed(conn, f"UPDATE {items} SET name = 'one v2', n = 1 WHERE id = 1")
    start, after = committed(conn, f"DELETE FROM {items} WHERE id = 1")
    committed(conn, f"INSERT INTO {items} VALUES (1, 'one again', 2)")
    committed(conn, f"DELETE FROM {items} WHERE id = 2")
    committed(
        conn, f"UPDATE {items} SET n = 3 WHERE id = 3", f"INSERT INTO {items} VALUES (6, 'six', 6)"
    )
    sync(path)

    found = versions(tmp_path, 1)
    live = [(name, n) for name, n, gone, *_ in found if gone is None]
    assert live == [("item 1", 0), ("one v2", 1), ("one again", 2)]
    if deletes == "soft":  # a deleted version, with the last values, between the live ones
        assert [(name, n, gone is not None) for name, n, gone, *_ in found] == [
            ("item 1", 0, False),
            ("one v2", 1, False),
            ("one v2", 1, True),
            ("one again", 2, False),
        ]
        gone_at = found[2][2]
        assert found[2][3] == gone_at  # the deleted version starts at the deletion
    else:
        assert len(found) == 3
        gone_at = found[1][4]  # the deletion ends the version: none until the re-insert
    assert start <= gone_at <= after  # the delete's commit time
    assert gone_at < found[-1][3]  # the re-insert's version starts at its own commit
    assert [valid_from for *_, valid_from, _, _ in found] == sorted(
        valid_from for *_, valid_from, _, _ in found
    )
    assert [is_current for *_, is_current in found] == [False] * (len(found) - 1) + [True]

    key_2 = versions(tmp_path, 2)  # deleted: its live version is not current
    assert [(gone is not None, is_current) for _, _, gone, _, _, is_current in key_2] == (
        [(False, False), (True, True)] if deletes == "soft" else [(False, False)]
    )
    soft = [(2, "item 2", 0, key_2[-1][2])] if deletes == "soft" else []
    expected = [(1, "one again", 2, None), *soft, (3, "item 3", 3, None)]
    expected += [(4, "item 4", 0, None), (5, "item 5", 0, None), (6, "six", 6, None)]
    assert current(tmp_path) == deduped(tmp_path) == expected

    committed(conn, f"DELETE FROM {items} WHERE id = 1")  # deleted again, in the next sync
    sync(path)
    assert current(tmp_path) == deduped(tmp_path)
    assert (1 in [row[0] for row in current(tmp_path)]) is (deletes == "soft")


def test_a_deduped_cdc_stream_still_gets_one_row_per_key(tmp_path, pg_logical, pg):
    conn, schema = pg
    path = write_config(tmp_path, pg_logical.dsn, schema)
    sync(path)
    items = f"{schema}.items"
    for i in (1, 2, 3):
        committed(conn, f"UPDATE {items} SET name = 'v{i}', n = {i} WHERE id = 1")
    committed(
        conn, f"DELETE FROM {items} WHERE id = 2", f"INSERT INTO {items} VALUES (2, 'two', 2)"
    )
    sync(path)

    rows = query(tmp_path, f"SELECT {DATA}, _mds_deleted_at FROM {DEDUPED}.items ORDER BY id")
    assert rows == [
        (1, "v3", 3, None),
        (2, "two", 2, None),
        *((i, f"item {i}", 0, None) for i in (3, 4, 5)),
    ]
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        assert "_mds_valid_from" not in (wh.columns(DEDUPED, "items") or {})
    assert len(versions(tmp_path, 1)) == 4  # the history stream of the same table: all of them


@pytest.mark.parametrize("identity", ["full", "default"])
def test_unchanged_toasted_values_of_intermediate_versions(tmp_path, pg_logical, pg, identity):
    conn, schema = pg
    items = f"{schema}.items"
    conn.execute(f"ALTER TABLE {items} REPLICA IDENTITY {identity.upper()}")
    conn.execute(f"ALTER TABLE {items} ADD COLUMN blob text")
    blobs = [secrets.token_hex(6400) for _ in range(3)]  # 12.8 kB, incompressible: TOASTed
    conn.execute(f"UPDATE {items} SET blob = '{blobs[0]}' WHERE id = 1")
    path = write_config(tmp_path, pg_logical.dsn, schema)
    sync(path)
    committed(conn, f"UPDATE {items} SET n = 1 WHERE id = 1")  # blob not sent
    committed(conn, f"UPDATE {items} SET n = 2, blob = '{blobs[1]}' WHERE id = 1")
    committed(conn, f"UPDATE {items} SET n = 3 WHERE id = 1")  # blob not sent
    committed(conn, f"UPDATE {items} SET n = 4, blob = '{blobs[2]}' WHERE id = 1")
    sync(path)

    found = query(tmp_path, f"SELECT n, blob FROM {HISTORY}.items WHERE id = 1 ORDER BY n")
    assert [n for n, _ in found] == [0, 1, 2, 3, 4]
    which = [blobs.index(blob) for _, blob in found]
    if identity == "full":  # the old image has every value
        assert which == [0, 0, 1, 1, 2]
    else:  # the version before it in the read, else the row as it is now
        assert which == [0, 2, 1, 1, 2]
    assert current(tmp_path) == deduped(tmp_path)


def _stream(source: PostgresSource, history: bool) -> ConfiguredStream:
    spec = source.discover().stream("items")
    return ConfiguredStream(spec, "incremental_deduped", history=history)


def _read(source: PostgresSource, stream: ConfiguredStream, state: dict | None) -> list:
    return list(source.read_group([stream], {"items": state}, lambda: [state] if state else []))


def _shapes(messages: list) -> list[tuple]:
    """Each message as (kind, ids, names), names None for deletes."""
    shapes: list[tuple] = []
    for m in messages:
        if isinstance(m, Batch):
            rows = m.data.to_pylist()
            shapes.append(("Batch", [r["id"] for r in rows], [r["name"] for r in rows]))
        elif isinstance(m, Deletes):
            shapes.append(("Deletes", m.keys.column("id").to_pylist(), None))
        elif isinstance(m, Checkpoint):
            shapes.append(("Checkpoint",))
    return shapes


def test_a_history_window_holds_batch_size_events_and_checkpoints_at_commits(pg_logical, pg):
    conn, schema = pg
    config = pg_logical.dsn | {"schemas": [schema], "batch_size": 2}
    source = PostgresSource("pg", config | {"replication": {"slot": schema, "publication": schema}})
    state = [m for m in _read(source, _stream(source, True), None) if isinstance(m, Checkpoint)][
        -1
    ].state
    items = f"{schema}.items"
    one = committed(  # 4 events of one key in one transaction: 2 windows, 1 checkpoint
        conn,
        f"UPDATE {items} SET name = 'a' WHERE id = 1",
        f"UPDATE {items} SET name = 'b' WHERE id = 1",
        f"DELETE FROM {items} WHERE id = 1",
        f"INSERT INTO {items} VALUES (1, 'c', 0)",
    )
    two = committed(conn, f"UPDATE {items} SET name = 'x' WHERE id = 2")

    history = _read(source, _stream(source, True), state)
    assert _shapes(history) == [
        ("Batch", [1, 1], ["a", "b"]),
        ("Deletes", [1], None),
        ("Batch", [1], ["c"]),
        ("Checkpoint",),
        ("Batch", [2], ["x"]),
        ("Checkpoint",),
    ]
    times = [
        m.changed_at.to_pylist() if isinstance(m, Batch) else m.keys.column(1).to_pylist()
        for m in history
        if isinstance(m, Batch | Deletes)
    ]
    [at_one] = set(times[0] + times[1] + times[2])
    assert one[0] <= at_one <= one[1]
    [[at_two]] = times[3:]
    assert two[0] <= at_two <= two[1]

    # The same read of a stream that is not a history one: compacted, as it always was
    compacted = _read(source, _stream(source, False), state)
    assert _shapes(compacted) == [("Batch", [1, 2], ["c", "x"]), ("Checkpoint",), ("Checkpoint",)]
    assert all(m.changed_at is None for m in compacted if isinstance(m, Batch))
