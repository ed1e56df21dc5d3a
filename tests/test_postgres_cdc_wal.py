"""PostgreSQL CDC and the WAL a slot holds back, through ``mdstack sync`` into DuckDB.

Real throwaway clusters (:mod:`tests.servers.pg_server`): the session's logical cluster
for retention, and one started with a tiny ``max_slot_wal_keep_size`` for a slot the
server invalidates. What is checked is what a user or a DBA sees: the slot's position on
the server, the state stored in the warehouse, the rows that landed, the error text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import Result

from connectors.postgres.cdc import slot_name
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.cdc_stack import mdstack, write_config
from tests.servers.pg_server import LOGICAL, PgCluster, _cluster, connect_kwargs, drop_slots

MB = 1 << 20


def sync(path: Path, *more: str) -> Result:
    result = mdstack(path, "sync", "--source", "pg", "--stream", "items", *more)
    assert result.exit_code == 0, result.output
    return result


def stored_lsn(path: Path) -> str:
    result = mdstack(path, "state", "show", "--json", "--source", "pg")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    return row["state"]["lsn"]


def landed(folder: Path) -> list[tuple]:
    with DuckDBWarehouse(folder / "wh") as wh:
        rows = wh.query("SELECT id, name FROM raw_pg.items WHERE _mds_deleted_at IS NULL")
    return sorted(tuple(r.values()) for r in rows.to_pylist())


def source_rows(conn: psycopg.Connection, schema: str) -> list[tuple]:
    return sorted(conn.execute(f"SELECT id, name FROM {schema}.items").fetchall())


def held_back(conn: psycopg.Connection, slot: str) -> tuple[int, int]:
    """Bytes of WAL between the server's position and the slot's confirmed, restart LSNs."""
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    assert row is not None, f"no slot {slot}"
    return row[0], row[1]


def write_unrelated(conn: psycopg.Connection, schema: str, size: int) -> None:
    """At least ``size`` bytes of WAL from a table that is not in the publication."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.noise (id serial PRIMARY KEY, pad text)")
    rows = "SELECT repeat('x', 200) FROM generate_series(1, 5000)"
    insert = f"INSERT INTO {schema}.noise (pad) {rows}"
    start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    written = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)"
    while conn.execute(written, (start,)).fetchone()[0] < size:
        conn.execute(insert)


def make_items(conn: psycopg.Connection) -> str:
    """A schema with a keyed table ``items`` of 5 rows and a publication of it alone."""
    schema = f"wal_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"CREATE TABLE {schema}.items (id int PRIMARY KEY, name text)")
    conn.execute(f"INSERT INTO {schema}.items SELECT g, 'item ' || g FROM generate_series(1, 5) g")
    conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {schema}.items")
    return schema


@pytest.fixture
def idle(pg_logical: PgCluster) -> Iterator[tuple[psycopg.Connection, str]]:
    with psycopg.connect(**connect_kwargs(pg_logical.dsn), autocommit=True) as conn:
        schema = make_items(conn)
        try:
            yield conn, schema
        finally:
            drop_slots(conn, schema)
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_an_idle_stream_lets_its_slot_follow_the_busy_rest_of_the_database(
    tmp_path, pg_logical, idle
):
    conn, schema = idle
    path = write_config(tmp_path, pg_logical.dsn, schema, ["items"])
    slot = slot_name(schema)
    sync(path)  # the snapshot creates the slot
    snapshot_lsn = stored_lsn(path)

    write_unrelated(conn, schema, 32 * MB)
    # The background writer logs running transactions every 15 s on a busy server; the
    # slot's restart position can only move past such a record. CHECKPOINT logs one now.
    conn.execute("CHECKPOINT")
    assert held_back(conn, slot)[0] > 32 * MB

    sync(path)  # nothing of ours: the state still moves to where the read ended ...
    moved = stored_lsn(path)
    assert conn.execute("SELECT %s::pg_lsn > %s::pg_lsn", (moved, snapshot_lsn)).fetchone()[0]
    confirmed, restart = held_back(conn, slot)  # ... and, committed, the slot follows it
    assert confirmed < MB and restart < MB, (confirmed, restart)
    assert landed(tmp_path) == source_rows(conn, schema)

    # Each run records what the slot held back once its states were committed.
    snapshot, busy = recorded_lags(tmp_path)
    assert snapshot < MB and busy < MB
    status = mdstack(path, "status")
    assert status.exit_code == 0, status.output
    assert "replication lag" in status.output and "MiB" in status.output


def recorded_lags(folder: Path) -> list[int]:
    """``replication_lag_bytes`` of each run of ``pg.items`` in ``_mds_runs``, oldest first."""
    with DuckDBWarehouse(folder / "wh") as wh:
        runs = wh.query(
            f"SELECT replication_lag_bytes FROM {wh.meta_schema}._mds_runs"
            " WHERE stream = 'items' ORDER BY started_at"
        )
    return runs.column(0).to_pylist()


# A slot the server invalidated ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_small_keep() -> Iterator[PgCluster]:
    """A cluster that keeps at most 1 MB of WAL for a slot: it invalidates a lagging one."""
    yield from _cluster(LOGICAL | {"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"})


@pytest.fixture
def kept(pg_small_keep: PgCluster) -> Iterator[tuple[psycopg.Connection, str]]:
    with psycopg.connect(**connect_kwargs(pg_small_keep.dsn), autocommit=True) as conn:
        schema = make_items(conn)
        try:
            yield conn, schema
        finally:
            drop_slots(conn, schema)
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def invalidate(conn: psycopg.Connection, schema: str, slot: str) -> None:
    """Write WAL past ``max_slot_wal_keep_size`` until a checkpoint invalidates ``slot``."""
    status = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s"
    for _ in range(10):
        write_unrelated(conn, schema, 4 * MB)
        conn.execute("CHECKPOINT")
        if conn.execute(status, (slot,)).fetchone()[0] == "lost":
            return
    raise AssertionError(f"slot {slot} still not invalidated")


def failure(path: Path) -> str:
    result = mdstack(path, "sync", "--source", "pg", "--stream", "items")
    assert result.exit_code == 1, result.output
    return " ".join(result.output.split())  # the console wraps long lines


RECOVERY = "mdstack sync --source pg --full-refresh"


def test_an_invalidated_slot_fails_before_reading_and_a_full_refresh_restores_an_exact_copy(
    tmp_path, pg_small_keep, kept
):
    conn, schema = kept
    path = write_config(tmp_path, pg_small_keep.dsn, schema, ["items"])
    slot = slot_name(schema)
    sync(path)
    before = stored_lsn(path)
    conn.execute(f"DELETE FROM {schema}.items WHERE id = 2")
    conn.execute(f"UPDATE {schema}.items SET name = 'three' WHERE id = 3")
    conn.execute(f"INSERT INTO {schema}.items VALUES (9, 'nine')")
    invalidate(conn, schema, slot)

    for _ in range(2):  # never a silent snapshot: every run fails the same way
        said = failure(path)
        assert f"replication slot '{slot}' was invalidated" in said
        assert "max_slot_wal_keep_size = 1MB" in said and RECOVERY in said
    assert stored_lsn(path) == before
    assert (2, "item 2") in landed(tmp_path)
    doctor = mdstack(path, "doctor")
    assert doctor.exit_code == 1
    [line] = [x for x in doctor.output.splitlines() if f"slot {slot}" in x]
    assert "✗" in line and "invalidated" in line
    assert RECOVERY in " ".join(doctor.output.split())

    sync(path, "--full-refresh")
    assert landed(tmp_path) == source_rows(conn, schema)  # id 2 is gone, 3 and 9 are new
    assert held_back(conn, slot)[0] < MB  # a new slot, usable again

    conn.execute(f"DELETE FROM {schema}.items WHERE id = 1")
    sync(path)  # CDC goes on from the refresh's state
    assert landed(tmp_path) == source_rows(conn, schema)


def test_a_missing_slot_fails_with_the_recovery_and_a_full_refresh_creates_it(
    tmp_path, pg_logical, idle
):
    conn, schema = idle
    path = write_config(tmp_path, pg_logical.dsn, schema, ["items"])
    slot = slot_name(schema)
    sync(path)
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    conn.execute(f"DELETE FROM {schema}.items WHERE id = 5")

    said = failure(path)
    assert f"replication slot '{slot}' does not exist" in said and RECOVERY in said

    sync(path, "--full-refresh")
    assert landed(tmp_path) == source_rows(conn, schema)
    conn.execute(f"INSERT INTO {schema}.items VALUES (5, 'back')")
    sync(path)
    assert landed(tmp_path) == source_rows(conn, schema)
