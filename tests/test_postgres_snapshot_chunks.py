"""Snapshots of PostgreSQL CDC tables copied in key-ordered chunks, interleaved with changes.

The session's logical cluster (:mod:`tests.servers.pg_server`). What is checked is what a
user or a DBA sees: rows landed equal to the source, the slot moving while a table is
copied under concurrent writes, the state a killed copy leaves, and how much a rerun reads
again.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.cdc_stack import (
    MakeTables,
    at_source,
    churn,
    confirmed,
    landed,
    make_tables,
    states,
    sync,
    sync_worker,
    write_config,
)
from tests.conftest import ROOT
from tests.kill import run_worker
from tests.servers.pg_server import PgCluster, connect_kwargs

CHUNK = 100
CHURN_ROUNDS = 150
"""Rounds of writes at most while a copy runs: on a loaded machine a copy can be slower
than the writes, and would never end if they went on as long as it does."""


@pytest.fixture
def make(pg_logical: PgCluster) -> Iterator[MakeTables]:
    yield from make_tables(pg_logical, 0)


def last_run(folder: Path, stream: str) -> dict:
    with DuckDBWarehouse(folder / "wh") as wh:
        return wh.query(
            f"SELECT status, rows_read, seconds FROM {wh.meta_schema}._mds_runs"
            f" WHERE stream = '{stream}' ORDER BY started_at DESC LIMIT 1"
        ).to_pylist()[0]


def test_a_table_copied_in_chunks_under_writes_lands_exact_and_the_slot_moves_meanwhile(
    tmp_path, pg_logical, make
):
    conn, schema, names = make(2, rows=3_000)
    path = write_config(
        tmp_path, pg_logical.dsn, schema, names, batch_size=1_000, snapshot_chunk=CHUNK
    )
    worker = subprocess.Popen(
        [sys.executable, str(sync_worker(tmp_path, path)), "first"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:  # the slot's position, as a DBA's monitoring samples it
        with psycopg.connect(**connect_kwargs(pg_logical.dsn), autocommit=True) as monitor:
            while not stop.wait(0.02):
                if (lsn := confirmed(monitor, schema)) is not None:
                    seen.add(lsn)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = random.Random(61)
    try:
        for _ in range(CHURN_ROUNDS):  # inserts, updates and deletes all over the key range
            if worker.poll() is not None:
                break
            churn(conn, schema, names, rng, 3_000)
            time.sleep(0.1)  # a busy database, not one written faster than it can be read
        assert worker.wait(timeout=300) == 0
    finally:
        stop.set()
        watcher.join()
        if worker.poll() is None:
            worker.kill()
    assert len(seen) > 2, "the slot stood still while the tables were copied"

    sync(path)  # what was written after the copy's last pass
    assert landed(tmp_path, names) == at_source(conn, schema, names)
    assert all(set(state) == {"lsn"} for state in states(path).values())


def test_a_copy_killed_midway_resumes_after_its_last_committed_chunk(tmp_path, pg_logical, make):
    rows = 20_000
    conn, schema, names = make(1, rows=rows)
    _, twin, _ = make(1, rows=rows)
    timing = tmp_path / "twin"
    timing.mkdir()
    twin_path = write_config(timing, pg_logical.dsn, twin, names, snapshot_chunk=CHUNK)
    assert run_worker(sync_worker(timing, twin_path), "twin", kill_after=None) is not None
    whole = last_run(timing, "t01")  # a whole copy, to time the kill by

    path = write_config(tmp_path, pg_logical.dsn, schema, names, snapshot_chunk=CHUNK)
    killed = run_worker(sync_worker(tmp_path, path), "killed", kill_after=whole["seconds"] / 2)
    assert killed is None
    [state] = states(path).values()
    after = int(state["snapshot"]["after"][0])  # committed chunks up to this key
    assert 0 < after < rows and last_run(tmp_path, "t01")["status"] == "running"

    churn(conn, schema, names, random.Random(5), rows // 3)  # on both sides of ``after``
    sync(path)
    rerun = last_run(tmp_path, "t01")
    assert landed(tmp_path, names) == at_source(conn, schema, names)
    assert set(states(path)["t01"]) == {"lsn"}
    remaining = conn.execute(f"SELECT count(*) FROM {schema}.t01 WHERE id > %s", (after,))
    [(left,)] = remaining.fetchall()
    # the rerun read the rows past the last committed chunk (and the changes), not the table
    assert left <= rerun["rows_read"] < left + 1_000 < whole["rows_read"]
