"""Several processes write one lake whose catalog is in PostgreSQL: nothing lost or doubled.

Each writer (``tests/lake_writer.py``) syncs its own (stream, region) with a commit per
checkpoint; some share a table. One writer is killed with SIGKILL in the middle of a run
and started again while the others go on. Then every region must hold exactly the
reference model's rows, with its committed state; every table's ``count(*)`` must agree
with what the catalog itself says it holds.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
import pytest

from connectors.base import ConfiguredStream, Message, State
from stack.load import EVERY_CHECKPOINT
from stack.load.ledger import StreamKey
from stack.sql import table
from tests import lake_writer
from tests.contract import (
    CATALOG_PORT,
    PIPELINE,
    SOURCE,
    STREAM,
    expected_rows,
    open_pg_catalog,
    run_ledger,
    stored_state,
    sync,
    table_rows,
)
from tests.scripted import ScriptedSource
from tests.servers.pg_server import PgCluster, connect_kwargs

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "lake_writer.py"
COMMITS = int(os.environ.get("MDSTACK_LAKE_COMMITS", "8"))
"""Commits each writer makes (``MDSTACK_LAKE_COMMITS=25`` for the long run)."""
KILL_AFTER = 10
"""The victim is killed after this many batches (in its 4th round, its second run), then a
random pause up to about a commit."""


@dataclass(frozen=True)
class Writer:
    schema: str
    mode: str
    deletes: str
    region: str
    seed: int

    def args(self, location: Path) -> list[str]:
        return [
            sys.executable,
            str(WORKER),
            str(location),
            self.schema,
            self.mode,
            self.deletes,
            self.region,
            str(self.seed),
            str(COMMITS),
        ]


MIX = (
    ("deduped", "incremental_deduped", "hard"),
    ("deduped", "incremental_deduped", "soft"),
    ("appended", "incremental_append", "hard"),
    ("overwritten", "full_refresh_overwrite", "none"),
)
"""Writer ``i`` takes ``MIX[i % 4]`` in a region of its own: the first two merge into and
delete from one table (one deleting rows, the other marking them); with more than four
writers every table has several regions."""


def writers(count: int) -> list[Writer]:
    return [Writer(*MIX[i % len(MIX)], region=f"w{i}", seed=i + 1) for i in range(count)]


WRITERS = [int(n) for n in os.environ.get("MDSTACK_LAKE_WRITERS", "4").split(",")]
"""How many writers write the lake at once (``MDSTACK_LAKE_WRITERS=2,8`` tries others)."""


@pytest.mark.parametrize("count", WRITERS)
def test_concurrent_writers_and_a_killed_one_land_every_region_exactly(
    pg_logical: PgCluster, tmp_path: Path, count: int
):
    """Writer 0 is killed in its second run (after a random pause up to about a commit) and
    started again; the others never stop. Every writer reruns a run that lost a conflicting
    commit to another (WarehouseBusy) from its committed state; nothing else may fail."""
    os.environ[CATALOG_PORT] = str(pg_logical.dsn["port"])
    location, log = tmp_path / "lake", pg_logical.root / "server.log"
    logged, started, team = log.stat().st_size, time.monotonic(), writers(count)
    victim = subprocess.Popen(
        team[0].args(location), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    others = [start(w, tmp_path / w.region, location) for w in team[1:]]
    said_before = kill_after_batches(victim, KILL_AFTER)
    rerun = start(team[0], tmp_path / f"{team[0].region}-rerun", location)
    outputs = {w.region: finish(*ran) for w, ran in zip(team, [rerun, *others], strict=True)}
    outputs[f"{team[0].region} (killed)"] = said_before
    seconds = time.monotonic() - started
    with log.open() as handle:
        handle.seek(logged)
        catalog_errors = Counter(error_kind(line) for line in handle if "ERROR:" in line)
    reruns = {region: Counter(rerun_kinds(lines)) for region, lines in outputs.items()}
    print(f"\n{count} writers in {seconds:.1f}s; catalog errors {dict(catalog_errors)}")
    for region, kinds in reruns.items():
        print(f"  {region} reran: {dict(kinds)}")

    with open_pg_catalog(location) as wh:
        for w in team:
            said = [m for r in lake_writer.script(w.seed, COMMITS) for m in r]
            assert table_rows(wh, w.region, w.mode, w.schema) == expected_rows(
                w.mode, w.deletes, [("", said)]
            ), w
            assert stored_state(wh, w.region) == {"position": len(said)}, w
            assert run_ledger(wh, w.region)[-1]["status"] == "succeeded", w
            with wh.lock(StreamKey(PIPELINE, SOURCE, STREAM, w.region).lock):
                pass  # free again: the killed writer's lock went with its session
        scanned = {
            schema: wh.query(
                f"SELECT count(*) AS n, count(DISTINCT rowid) AS ids FROM {table(schema, STREAM)}"
            ).to_pylist()[0]
            for schema in sorted({w.schema for w in team})
        }
        assert wh.pg is not None
        lake = wh.pg.schema
    with psycopg.connect(
        **connect_kwargs(pg_logical.dsn), options=f"-c search_path={lake}"
    ) as conn:
        for schema, scan in scanned.items():
            live, written, recorded = catalog_counts(conn, schema)
            assert scan == {"n": live, "ids": live}, f"{schema}.{STREAM}: a scan vs the catalog"
            assert recorded == written, f"{schema}.{STREAM}: statistics vs rows written"


def kill_after_batches(worker: subprocess.Popen, batches: int) -> list[str]:
    """SIGKILL ``worker`` a random pause after its ``batches``-th batch; what it printed."""
    assert worker.stdout is not None
    said = []
    for line in iter(worker.stdout.readline, ""):
        said.append(line)
        if said.count("read\n") == batches:
            break
    time.sleep(random.uniform(0, 0.3))
    worker.send_signal(signal.SIGKILL)
    rest, errors = worker.communicate()
    said += rest.splitlines(keepends=True)
    assert worker.returncode == -signal.SIGKILL and "ready\n" in said, errors
    assert not any(line.startswith("done") for line in said), "the victim ended before its kill"
    return said


def start(writer: Writer, out: Path, location: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``writer``; its output goes to files in ``out`` (pipes nobody reads fill up)."""
    out.mkdir()
    with (out / "out").open("w") as stdout, (out / "err").open("w") as stderr:
        return subprocess.Popen(writer.args(location), stdout=stdout, stderr=stderr, cwd=ROOT), out


def finish(process: subprocess.Popen, out: Path) -> list[str]:
    """Wait for a writer: it must end well; what it printed."""
    assert process.wait(timeout=300) == 0, (out / "err").read_text()
    said = (out / "out").read_text().splitlines(keepends=True)
    assert said[-1].startswith("done"), said[-1]
    return said


def rerun_kinds(said: list[str]) -> Iterator[str]:
    """Why a writer reran runs: the error and DuckLake's reason (the conflict, not its ids)."""
    for line in said:
        if line.startswith("retry "):
            found = re.search(r"Transaction conflict - .*?(?=  hint|$)|CREATE SCHEMA", line)
            yield f"{line.split()[1]}: {found.group(0) if found else line[:120]}"


def error_kind(line: str) -> str:
    """An error of the catalog's server log without its time and process."""
    return re.sub(r"^.*?ERROR:\s*", "", line).strip()


def catalog_counts(conn: psycopg.Connection, schema: str) -> tuple[int, int, int]:
    """What the lake's catalog says of ``<schema>.items``: (rows live, rows ever written, the
    table's statistics' ``record_count``).

    DuckLake keeps a table's rows in Parquet files, minus deletions (delete files, or row ids
    inlined in ``ducklake_inlined_delete_<table>``), plus rows inlined in the catalog
    (``ducklake_inlined_data_<table>_<version>``, live while ``end_snapshot`` is null): the
    live count is what a scan must return. ``ducklake_table_stats.record_count`` counts every
    row written (an update writes the row again) and is never lowered by a delete, so it is
    compared with the rows written, every file and inlined row that ever was: a statistics
    update lost between two writers' commits would show as a smaller count.
    """
    (table_id,) = one(
        conn,
        "SELECT t.table_id FROM ducklake_table t JOIN ducklake_schema s USING (schema_id) "
        "WHERE s.schema_name = %s AND t.table_name = %s AND t.end_snapshot IS NULL "
        "AND s.end_snapshot IS NULL",
        (schema, STREAM),
    )
    live_files = "SELECT data_file_id FROM ducklake_data_file WHERE end_snapshot IS NULL"
    (filed, in_files, deleted_in_files) = one(
        conn,
        "SELECT coalesce(sum(record_count) FILTER (WHERE end_snapshot IS NULL), 0), "
        "coalesce(sum(record_count), 0), "
        "(SELECT coalesce(sum(delete_count), 0) FROM ducklake_delete_file "
        f" WHERE end_snapshot IS NULL AND data_file_id IN ({live_files})) "
        "FROM ducklake_data_file WHERE table_id = %s",
        (table_id,),
    )
    live, written = filed - deleted_in_files, in_files
    inlined = conn.execute(
        "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = %s", (table_id,)
    ).fetchall()
    for (name,) in inlined:
        rows, live_rows = one(
            conn, f'SELECT count(*), count(*) FILTER (WHERE end_snapshot IS NULL) FROM "{name}"'
        )
        live, written = live + live_rows, written + rows
    deletes = f"ducklake_inlined_delete_{table_id}"
    if one(conn, "SELECT to_regclass(%s) IS NOT NULL", (deletes,))[0]:
        live -= one(conn, f'SELECT count(*) FROM "{deletes}" WHERE file_id IN ({live_files})')[0]
    (recorded,) = one(
        conn, "SELECT record_count FROM ducklake_table_stats WHERE table_id = %s", (table_id,)
    )
    return live, written, recorded


def one(conn: psycopg.Connection, sql: str, params: tuple = ()) -> tuple:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


class HeldSource(ScriptedSource):
    """Replays its script, but waits for ``go`` once it has given its first message."""

    def __init__(self, script: list[Message]) -> None:
        super().__init__(script)
        self.given, self.go = threading.Event(), threading.Event()

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        for index, message in enumerate(super().read(stream, state)):
            if index == 1:
                self.given.set()
                assert self.go.wait(60)
            yield message


def test_a_first_load_in_progress_keeps_its_new_table_from_another_region(
    pg_logical: PgCluster, tmp_path: Path
):
    """Region eu's first run creates the shared table and stages its first batch; region
    us's first run, in another process's shoes, finds the table empty and no committed
    state of its own: it must keep the table (eu is loading it), not drop it as a failed
    run's leftover."""
    os.environ[CATALOG_PORT] = str(pg_logical.dsn["port"])
    script = [m for r in lake_writer.script(7, 1) for m in r]
    held = HeldSource(script)
    load = partial(sync, mode="incremental_deduped", deletes="hard", policy=EVERY_CHECKPOINT)
    lake = tmp_path / "lake"  # one catalog (named after the path), two connections to it
    with open_pg_catalog(lake) as first, open_pg_catalog(lake) as second:
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(load, first, held, region="eu", run_id="eu-1")
            assert held.given.wait(60), loading.exception()
            load(second, ScriptedSource(script), region="us", run_id="us-1")
            held.go.set()
            assert loading.result().status == "succeeded"
        for region in ("eu", "us"):
            assert table_rows(second, region, "incremental_deduped") == expected_rows(
                "incremental_deduped", "hard", [("", script)]
            ), region
        assert second.pg is not None
        catalog = second.pg.schema
    with psycopg.connect(**connect_kwargs(pg_logical.dsn)) as conn:
        created = one(
            conn,
            f'SELECT count(*) FROM "{catalog}".ducklake_table WHERE table_name = %s',
            (STREAM,),
        )
    assert created == (1,)  # never dropped under eu's load (and created again by us)
