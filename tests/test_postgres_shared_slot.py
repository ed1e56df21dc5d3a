"""PostgreSQL CDC through one replication slot per source, into DuckDB.

A real throwaway cluster with PostgreSQL's default ``max_replication_slots = 10``
(:mod:`tests.servers.pg_server`). What is checked is what a user or a DBA sees: the slots on
the server and where they stand, the states stored in the warehouse, and that every table
landed equals its source table exactly, whatever ran, was selected or was killed.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner, Result

from connectors.postgres.cdc import stream_slot_name
from stack.cli import app
from stack.config import load_config
from stack.run import pipeline
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.kill import run_worker
from tests.servers.pg_server import LOGICAL, PgCluster, _cluster, connect_kwargs, drop_slots

ROOT = Path(__file__).resolve().parent.parent
ROWS = 40  # per table at the start


@pytest.fixture(scope="module")
def pg_ten_slots() -> Iterator[PgCluster]:
    """A cluster with PostgreSQL's default of 10 replication slots."""
    yield from _cluster(LOGICAL | {"max_replication_slots": "10", "max_wal_senders": "10"})


@pytest.fixture
def make(
    pg_ten_slots: PgCluster,
) -> Iterator[Callable[[int], tuple[psycopg.Connection, str, list]]]:
    """Makes a schema of ``count`` keyed tables in one publication (dropped at the end)."""
    made: list[str] = []
    with psycopg.connect(**connect_kwargs(pg_ten_slots.dsn), autocommit=True) as conn:

        def tables(count: int) -> tuple[psycopg.Connection, str, list]:
            schema = f"slot_{uuid.uuid4().hex[:8]}"
            made.append(schema)
            conn.execute(f"CREATE SCHEMA {schema}")
            names = [f"t{i:02d}" for i in range(1, count + 1)]
            for name in names:
                conn.execute(f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, name text, n int)")
                conn.execute(
                    f"INSERT INTO {schema}.{name}"
                    f" SELECT g, '{name} ' || g, 0 FROM generate_series(1, {ROWS}) g"
                )
            listed = ", ".join(f"{schema}.{n}" for n in names)
            conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {listed}")
            return conn, schema, names

        try:
            yield tables
        finally:
            for schema in made:
                drop_slots(conn, schema)
                conn.execute(f"DROP PUBLICATION {schema}")
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def write_config(
    folder: Path, dsn: dict[str, Any], schema: str, names: list[str], concurrency: int = 1
) -> Path:
    source = {
        "connector": "postgres",
        "concurrency": concurrency,
        "schema": "raw_pg",
        "config": dsn
        | {
            "schemas": [schema],
            "batch_size": 25,  # several windows and checkpoints per read
            "replication": {"slot": schema, "publication": schema},
        },
        "streams": {name: {"sync": "incremental_deduped"} for name in names},
    }
    config = {
        "name": "shared",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "wh")}},
        "sources": {"pg": source},
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def mdstack(path: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--config", str(path)])


def sync(path: Path, *more: str) -> Result:
    result = mdstack(path, "sync", "--source", "pg", *more)
    assert result.exit_code == 0, result.output
    return result


def churn(conn: psycopg.Connection, schema: str, names: list[str], rng: random.Random) -> None:
    """Inserts, updates and deletes in transactions that touch one to three tables."""
    for _ in range(30):
        with conn.transaction():
            for name in rng.sample(names, rng.randint(1, min(3, len(names)))):
                table = f"{schema}.{name}"
                for _ in range(rng.randint(1, 6)):
                    key, what = rng.randint(1, 3 * ROWS), rng.random()
                    if what < 0.25:
                        conn.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
                    else:
                        conn.execute(
                            f"INSERT INTO {table} AS t VALUES (%s, %s, 0) ON CONFLICT (id)"
                            " DO UPDATE SET name = excluded.name, n = t.n + 1",
                            (key, f"v{rng.random():.6f}"),
                        )


def landed(folder: Path, names: list[str]) -> dict[str, list[tuple]]:
    with DuckDBWarehouse(folder / "wh") as wh:
        return {
            name: sorted(
                tuple(r.values())
                for r in wh.query(
                    f"SELECT id, name, n FROM raw_pg.{name} WHERE _mds_deleted_at IS NULL"
                ).to_pylist()
            )
            for name in names
        }


def at_source(conn: psycopg.Connection, schema: str, names: list[str]) -> dict[str, list]:
    return {
        n: sorted(conn.execute(f"SELECT id, name, n FROM {schema}.{n}").fetchall()) for n in names
    }


def slots_of(conn: psycopg.Connection, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s ORDER BY 1",
        (f"{schema}%",),
    ).fetchall()
    return [r[0] for r in rows]


def confirmed(conn: psycopg.Connection, slot: str) -> str:
    query = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
    return conn.execute(query, (slot,)).fetchone()[0]


def stored(path: Path) -> dict[str, str]:
    result = mdstack(path, "state", "show", "--json", "--source", "pg")
    assert result.exit_code == 0, result.output
    return {row["stream"]: (row.get("state") or {}).get("lsn") for row in json.loads(result.stdout)}


def lsn_le(conn: psycopg.Connection, a: str, b: str) -> bool:
    return conn.execute("SELECT %s::pg_lsn <= %s::pg_lsn", (a, b)).fetchone()[0]


def test_twelve_tables_sync_through_one_slot_on_a_server_that_allows_ten(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(12)
    # streams of a source that may sync 4 at once: the shared read is still one job
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names, concurrency=4)
    sync(path)  # twelve snapshots, one slot
    assert slots_of(conn, schema) == [schema]
    assert landed(tmp_path, names) == at_source(conn, schema, names)
    rng = random.Random(20261206)
    for _ in range(2):
        churn(conn, schema, names, rng)
        sync(path)
        assert slots_of(conn, schema) == [schema]
        assert landed(tmp_path, names) == at_source(conn, schema, names)
    # every stream committed past the slot: it was released up to the slowest of them
    states = stored(path)
    assert all(lsn_le(conn, confirmed(conn, schema), lsn) for lsn in states.values())
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        runs = wh.query(
            f"SELECT stream, count(*) AS n FROM {wh.meta_schema}._mds_runs"
            " WHERE status = 'succeeded' GROUP BY stream"
        ).to_pylist()
    assert sorted((r["stream"], r["n"]) for r in runs) == [(n, 3) for n in names]


def test_a_run_of_one_stream_keeps_what_the_others_have_not_loaded(tmp_path, pg_ten_slots, make):
    conn, schema, names = make(3)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path)
    rng = random.Random(7)
    for _ in range(2):  # the second run of t01 alone releases what t01 has committed
        churn(conn, schema, names, rng)
        sync(path, "--stream", "t01")
        states = stored(path)
        assert all(lsn_le(conn, confirmed(conn, schema), states[n]) for n in names[1:])
    now = at_source(conn, schema, names)
    assert landed(tmp_path, names)["t01"] == now["t01"]
    assert landed(tmp_path, names)["t02"] != now["t02"]  # not loaded yet ...
    sync(path)
    assert landed(tmp_path, names) == at_source(conn, schema, names)  # ... and nothing lost


def test_a_stream_with_a_slot_of_its_own_moves_to_the_source_slot_without_losing_changes(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(2)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path)
    # As an earlier version left it: a slot per stream, each state at its slot's position.
    conn.execute("SELECT pg_drop_replication_slot(%s)", (schema,))
    region = load_config(path).region_names()[0]
    for name in names:
        own = stream_slot_name(schema, schema, name)
        made = "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')"
        lsn = conn.execute(made, (own,)).fetchone()[0]
        done = mdstack(path, "state", "set", name, json.dumps({"lsn": lsn}), "--region", region)
        assert done.exit_code == 0, done.output
    churn(conn, schema, names, random.Random(3))  # only the streams' own slots have these

    doctor = " ".join(mdstack(path, "doctor").output.split())
    assert f"slot {stream_slot_name(schema, schema, 't01')}" in doctor

    sync(path)  # the own slots are read up to where the source's slot starts
    assert landed(tmp_path, names) == at_source(conn, schema, names)
    churn(conn, schema, names, random.Random(4))
    sync(path)  # committed past the source slot's start: the own slots are dropped
    assert slots_of(conn, schema) == [schema]
    assert landed(tmp_path, names) == at_source(conn, schema, names)


def test_one_failing_stream_stops_the_shared_read_and_its_full_refresh_lets_all_go_on(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(2)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path)
    conn.execute(f"UPDATE {schema}.t01 SET name = 'before' WHERE id = 1")
    conn.execute(f"TRUNCATE {schema}.t02")  # cannot be sent as deletes
    before = stored(path)
    failed = mdstack(path, "sync", "--source", "pg")
    assert failed.exit_code == 1
    said = " ".join(failed.output.split())
    assert "t02 was truncated" in said and "--stream t02 --full-refresh" in said
    assert stored(path) == before  # nothing committed past what the read could not give
    sync(path, "--stream", "t02", "--full-refresh")
    conn.execute(f"INSERT INTO {schema}.t02 VALUES (7, 'after', 0)")
    sync(path)
    assert landed(tmp_path, names) == at_source(conn, schema, names)


def test_a_stream_added_later_snapshots_alone_and_the_others_keep_their_changes(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(3)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names[:2])
    sync(path)
    rng = random.Random(11)
    churn(conn, schema, names, rng)
    slot_before = confirmed(conn, schema)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path, "--stream", "t03")  # its snapshot leaves the slot where it is
    assert confirmed(conn, schema) == slot_before
    churn(conn, schema, names, rng)
    sync(path)
    assert landed(tmp_path, names) == at_source(conn, schema, names)
    assert slots_of(conn, schema) == [schema]


def test_the_first_stream_of_a_run_syncs_the_shared_read_and_a_retry_syncs_alone(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(2)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    region = load_config(path).region_names()[0]
    step = partial(pipeline.sync_run_stream, path, None, region, "pg", run_id="r1", group=names)
    try:
        first = step("t01")  # syncs t02 too, in the same read
        second = step("t02")  # takes its outcome: no second read
        retried = step("t01")  # a retry (a Prefect task's): t01 alone
    finally:
        pipeline.end_syncs(path, None, region, "r1")
    assert (first.stream, second.stream, retried.stream) == ("t01", "t02", "t01")
    assert {first.status, second.status, retried.status} == {"succeeded"}
    # the snapshots came from the first job; the retry read again, finding nothing new
    assert (first.rows_read, second.rows_read, retried.rows_read) == (ROWS, ROWS, 0)
    assert landed(tmp_path, names) == at_source(conn, schema, names)


# -- kill -9 at random moments ---------------------------------------------------------------

WORKER = """
import sys
sys.path.insert(0, {root!r})
from stack.config import load_config
from stack.run import pipeline
from stack.load import EVERY_CHECKPOINT, RunContext, plan_stream
from stack.load.group import sync_group
from stack.run.scope import open_source
from stack.warehouse.duckdb import DuckDBWarehouse

config = load_config({path!r})
source = open_source(config, "pg", config.region_names()[0])
catalog = source.discover()
cfg = config.source("pg")
plans = [plan_stream("pg", cfg, catalog, name) for name in cfg.streams]
ctx = RunContext(config.name, config.region_names()[0], sys.argv[1])
with DuckDBWarehouse({wh!r}) as wh:
    print("ready", flush=True)
    sync_group(wh, source, plans, ctx, policy=EVERY_CHECKPOINT)
print("done", flush=True)
"""


def test_kill_9_at_random_moments_of_a_multi_table_sync_then_a_rerun_is_exact(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(4)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), path=str(path), wh=str(tmp_path / "wh")))
    rng = random.Random(20261207)
    churn(conn, schema, names, rng)
    started = time.perf_counter()
    ready = run_worker(script, "whole", kill_after=None)
    assert ready is not None
    span = time.perf_counter() - started - ready
    kills = apart = 0
    for life in range(6):
        for _ in range(3):
            churn(conn, schema, names, rng)
        kills += run_worker(script, f"life-{life}", kill_after=rng.uniform(0, span)) is None
        apart += len(set(stored(path).values())) > 1  # streams left at different positions
        if life % 2:
            churn(conn, schema, names, rng)  # changes after the kill, before the rerun
        sync(path)
        assert landed(tmp_path, names) == at_source(conn, schema, names), f"life {life}"
        assert slots_of(conn, schema) == [schema]
    assert kills >= 1 and apart >= 1  # kills landed inside a sync, between streams' commits
