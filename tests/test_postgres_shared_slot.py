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
from collections.abc import Iterator
from functools import partial

import pytest

from connectors.postgres.cdc import stream_slot_name
from stack.config import load_config
from stack.run import pipeline
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.cdc_stack import (
    MakeTables,
    at_source,
    churn,
    confirmed,
    landed,
    lsn_le,
    make_tables,
    mdstack,
    slots_of,
    stored,
    sync,
    sync_worker,
    write_config,
)
from tests.kill import run_worker
from tests.servers.pg_server import LOGICAL, PgCluster, _cluster

ROWS = 40  # per table at the start


@pytest.fixture(scope="module")
def pg_ten_slots() -> Iterator[PgCluster]:
    """A cluster with PostgreSQL's default of 10 replication slots."""
    yield from _cluster(LOGICAL | {"max_replication_slots": "10", "max_wal_senders": "10"})


@pytest.fixture
def make(pg_ten_slots: PgCluster) -> Iterator[MakeTables]:
    """Makes a schema of ``count`` keyed tables in one publication (dropped at the end)."""
    yield from make_tables(pg_ten_slots, ROWS)


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
        churn(conn, schema, names, rng, ROWS)
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
        churn(conn, schema, names, rng, ROWS)
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
    churn(conn, schema, names, random.Random(3), ROWS)  # only the streams' own slots have these

    doctor = " ".join(mdstack(path, "doctor").output.split())
    assert f"slot {stream_slot_name(schema, schema, 't01')}" in doctor

    sync(path)  # the own slots are read up to where the source's slot starts
    assert landed(tmp_path, names) == at_source(conn, schema, names)
    churn(conn, schema, names, random.Random(4), ROWS)
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
    churn(conn, schema, names, rng, ROWS)
    slot_before = confirmed(conn, schema)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path, "--stream", "t03")  # its snapshot leaves the slot where it is
    assert confirmed(conn, schema) == slot_before
    churn(conn, schema, names, rng, ROWS)
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


def test_kill_9_at_random_moments_of_a_multi_table_sync_then_a_rerun_is_exact(
    tmp_path, pg_ten_slots, make
):
    conn, schema, names = make(4)
    path = write_config(tmp_path, pg_ten_slots.dsn, schema, names)
    sync(path)
    script = sync_worker(tmp_path, path)
    rng = random.Random(20261207)
    churn(conn, schema, names, rng, ROWS)
    started = time.perf_counter()
    ready = run_worker(script, "whole", kill_after=None)
    assert ready is not None
    span = time.perf_counter() - started - ready
    kills = apart = 0
    for life in range(6):
        for _ in range(3):
            churn(conn, schema, names, rng, ROWS)
        kills += run_worker(script, f"life-{life}", kill_after=rng.uniform(0, span)) is None
        apart += len(set(stored(path).values())) > 1  # streams left at different positions
        if life % 2:
            churn(conn, schema, names, rng, ROWS)  # changes after the kill, before the rerun
        sync(path)
        assert landed(tmp_path, names) == at_source(conn, schema, names), f"life {life}"
        assert slots_of(conn, schema) == [schema]
    assert kills >= 1 and apart >= 1  # kills landed inside a sync, between streams' commits
