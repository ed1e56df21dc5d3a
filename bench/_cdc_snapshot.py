"""Scenario 8, big snapshot: a new CDC table copied in chunks under writes, and a killed copy.

A new CDC stream copies its table in key-ordered chunks with a pass over the WAL between
chunks, the engine commits per its policy (1 M rows or 60 s), and the slot advances between
chunks to what is committed. On one table (``id bigint PRIMARY KEY, name, n, amount,
updated_at``) of 5 M rows (``--quick``: 50 k, 5 000 rows per chunk so that it has chunks):

* the floor: ``COPY (SELECT * ...) TO STDOUT (FORMAT binary)`` through ``psql`` to /dev/null;
* ``mdstack sync`` as a process while a thread of the bench writes 20 transactions a second
  of 50 changes each (updates and deletes of random keys, new keys, deleted keys put back),
  and another samples the slot every 0.5 s: how many distinct ``confirmed_flush_lsn``
  values it had, and the most WAL it held back (``pg_current_wal_lsn() - restart_lsn``);
  then the writer stops, one more sync reads what is left, and the warehouse is compared
  with the source;
* on a fresh table of the same size, without writes: ``mdstack sync`` copies it once (what
  the writes cost the copy above); then, from scratch (slot dropped, warehouse deleted), a
  sync killed (SIGKILL) at 60 % of that copy's time, run again: the key the stored state
  resumes after, the rows the rerun read (``_mds_runs.rows_read``) against the rows past
  that key, and the comparison. The kill is timed on the copy without writes because the
  copy under writes is slower: 60 % of it may be past the end of a copy without writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from psycopg import sql

from bench import _measure
from bench._cdc_source import Source
from bench._measure import Sample, Tool, interleave
from bench._pg import PgServer, floor_command
from bench._results import Row, ScenarioResult, Table
from bench.scenarios import Context

TABLE = "t01"
TX_PER_S = 20
UPDATES, DELETES, INSERTS = 20, 10, 20  # per transaction; inserts put deleted keys back first
SAMPLE_S = 0.5
KILL_AT = 0.6  # of the process seconds of the copy without writes
SYNC = "mdstack sync"
FLOOR = "floor: COPY binary (psql)"
_SLOT = (
    "SELECT confirmed_flush_lsn::text,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
    " FROM pg_replication_slots WHERE slot_name = %s"
)


class _Background(ABC):
    """A loop in a thread of the bench, from ``with`` to its end; its error is raised there."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> _Background:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None and exc is None:
            raise RuntimeError(f"{type(self).__name__} failed: {self._error}") from self._error

    def _guarded(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # handed to the thread that waits for it
            self._error = exc

    @abstractmethod
    def _loop(self) -> None: ...


class Writer(_Background):
    """``TX_PER_S`` small transactions a second over the whole key range of a table of
    ``rows`` rows: updates and deletes of random keys, then inserts that put deleted keys
    back (the copy may have them or not yet) or add keys past the end."""

    def __init__(self, pg: PgServer, schema: str, rows: int) -> None:
        super().__init__()
        self._pg, self._rows = pg, rows
        self._table = sql.Identifier(schema, TABLE)
        self.transactions = self.changes = 0
        self.seconds = 0.0

    def _loop(self) -> None:
        rng = random.Random(8)
        deleted: list[int] = []
        last = self._rows  # the highest key given so far
        t = self._table
        update = sql.SQL(
            "UPDATE {} SET n = n + 1, amount = amount + 1, updated_at = now() WHERE id = ANY(%s)"
        ).format(t)
        delete = sql.SQL("DELETE FROM {} WHERE id = ANY(%s) RETURNING id").format(t)
        insert = sql.SQL(
            "INSERT INTO {} SELECT g, 'row ' || g, 1, (g %% 10000) / 100.0, now()"
            " FROM unnest(%s::bigint[]) g ON CONFLICT (id) DO NOTHING"
        ).format(t)
        started = time.perf_counter()
        with self._pg.connect() as conn:
            while not self._stop.wait(
                max(0.0, started + self.transactions / TX_PER_S - time.perf_counter())
            ):
                back = [deleted.pop(rng.randrange(len(deleted))) for _ in deleted[:INSERTS]]
                new = list(range(last + 1, last + 1 + INSERTS - len(back)))
                last += len(new)
                with conn.transaction():
                    ids = [rng.randint(1, self._rows) for _ in range(UPDATES)]
                    changed = conn.execute(update, (ids,)).rowcount
                    ids = [rng.randint(1, self._rows) for _ in range(DELETES)]
                    gone = [row[0] for row in conn.execute(delete, (ids,)).fetchall()]
                    changed += len(gone) + conn.execute(insert, (back + new,)).rowcount
                deleted += gone
                self.transactions += 1
                self.changes += changed
        self.seconds = time.perf_counter() - started


class SlotWatch(_Background):
    """Samples the slot every ``SAMPLE_S`` s: the confirmed_flush_lsn values it took, and
    the WAL it held back by restart_lsn (MB)."""

    def __init__(self, pg: PgServer, slot: str) -> None:
        super().__init__()
        self._pg, self._slot = pg, slot
        self.confirmed: list[str] = []
        self.held_mb: list[float] = []

    def _loop(self) -> None:
        with self._pg.connect() as conn:
            while True:
                got = conn.execute(_SLOT, (self._slot,)).fetchone()
                if got is not None and got[0] is not None:
                    if not self.confirmed or self.confirmed[-1] != got[0]:
                        self.confirmed.append(got[0])
                    self.held_mb.append(got[1] / 2**20)
                if self._stop.wait(SAMPLE_S):
                    return


def held_mb(pg: PgServer, slot: str) -> float:
    """WAL the slot holds back now, by restart_lsn (MB)."""
    with pg.connect() as conn:
        got = conn.execute(_SLOT, (slot,)).fetchone()
    return got[1] / 2**20 if got else float("nan")


@dataclass
class _Copy:
    """What the copy under writes measured."""

    sync: Sample
    writer: Writer
    watch: SlotWatch
    held_end_mb: float
    catch_up: Sample
    catch_up_read: int
    held_after_mb: float
    matches: str


def run(ctx: Context, pg: PgServer, rows: int, chunk: int | None, result: ScenarioResult) -> None:
    """The big-snapshot part of scenario 8; appends its two tables and notes to ``result``."""
    per_chunk = f"{chunk:,} rows per chunk" if chunk else "100,000 rows per chunk (the default)"
    ctx.log(f"-- big snapshot: one table of {rows:,} rows, {per_chunk} --")
    source = _source(ctx, pg, "bench_cdc_snap", rows, chunk)
    try:
        floor = Tool(
            FLOOR,
            lambda: (floor_command(pg, source.name, TABLE), pg.env(), None),
            discard_stdout=True,
        )
        interleave([floor], ctx.runs, ctx.log)
        copy = _copy_under_writes(ctx, source, rows)
    finally:
        source.drop()
    result.tables.append(_copy_table(rows, per_chunk, floor, copy))
    killed = _source(ctx, pg, "bench_cdc_kill", rows, chunk)
    try:
        result.tables.append(_kill_and_resume(ctx, killed, rows))
    finally:
        killed.drop()
    result.notes.append(
        f"Big snapshot: the writer is a thread of the bench, {TX_PER_S} transactions a second "
        f"({UPDATES} updates and {DELETES} deletes of random keys, {INSERTS} inserts that put "
        "deleted keys back or add keys past the end), from before the sync starts to its end; "
        f"it made {copy.writer.transactions:,} transactions, {copy.writer.changes:,} changes "
        f"({copy.writer.transactions / copy.writer.seconds:.1f} tx/s). The slot is sampled "
        f"every {SAMPLE_S} s from the bench: *confirmed_flush_lsn values* counts the distinct "
        "positions seen while the sync ran (the first is where the sync created the slot), "
        "*WAL held* is `pg_current_wal_lsn() - restart_lsn`, its largest sample during the "
        "run and once the process has exited. The kill is timed on the copy without writes "
        "(the copy under writes is slower: 60 % of it can be past the end of a copy without "
        "them). Each sync runs once, whatever `--runs`; the floor runs `--runs` times. "
        "*rows re-read* is the rerun's `rows_read` (the run "
        "ledger) less the rows past the stored key at the source: what the rerun read again "
        "of the keys the killed run had committed."
    )


def _source(ctx: Context, pg: PgServer, name: str, rows: int, chunk: int | None) -> Source:
    ctx.log(f"  creating {name}.{TABLE} ({rows:,} rows) ...")
    source = Source(pg, name, [TABLE], ctx.folder("cdc", name))
    source.create(rows, chunk)
    return source


def _copy_under_writes(ctx: Context, source: Source, rows: int) -> _Copy:
    ctx.log(f"  mdstack sync under {TX_PER_S} tx/s of writes ...")
    with Writer(source.pg, source.name, rows) as writer, SlotWatch(source.pg, source.name) as watch:
        sync = _measure.run(source.sync_argv(), cwd=source.folder)
    assert isinstance(writer, Writer) and isinstance(watch, SlotWatch)
    held_end = held_mb(source.pg, source.name)
    ctx.log(
        f"  copied in {sync.process_seconds:.1f} s ({sync.rss_mb:.0f} MB), "
        f"{len(watch.confirmed)} confirmed_flush_lsn values; sync after the writer stopped ..."
    )
    catch_up = _measure.run(source.sync_argv(), cwd=source.folder)
    read = int(source.last_run(TABLE)["rows_read"])
    expected, landed = source.checksum(), source.landed()
    matches = "yes" if landed == expected else f"no: {landed} vs {expected} (rows, sum of n)"
    held_after = held_mb(source.pg, source.name)
    return _Copy(sync, writer, watch, held_end, catch_up, read, held_after, matches)


def _copy_table(rows: int, per_chunk: str, floor: Tool, copy: _Copy) -> Table:
    watch = copy.watch
    under = Row(
        f"{SYNC}, the copy, under {TX_PER_S} tx/s of writes",
        [copy.sync],
        rows=rows,
        extra={
            "confirmed_flush_lsn values": f"{len(watch.confirmed)}",
            "WAL held max MB": f"{max(watch.held_mb, default=float('nan')):,.1f}",
            "WAL held at end MB": f"{copy.held_end_mb:,.1f}",
        },
    )
    after = Row(
        f"{SYNC}, once more after the writer stopped",
        [copy.catch_up],
        rows=copy.catch_up_read,
        extra={"WAL held at end MB": f"{copy.held_after_mb:,.1f}", "matches source": copy.matches},
    )
    return Table(
        f"Big snapshot: a new CDC table of {rows:,} rows, {per_chunk}, copied while "
        f"{TX_PER_S} transactions a second write to it",
        [Row.of(floor, rows=rows), under, after],
        floor=FLOOR,
        subject=under.tool,
        extra_columns=(
            "confirmed_flush_lsn values",
            "WAL held max MB",
            "WAL held at end MB",
            "matches source",
        ),
    )


def _kill_and_resume(ctx: Context, source: Source, rows: int) -> Table:
    ctx.log("  mdstack sync, the copy without writes ...")
    quiet = _measure.run(source.sync_argv(), cwd=source.folder)
    source.forget()
    at = KILL_AT * quiet.process_seconds
    ctx.log(
        f"  {quiet.process_seconds:.1f} s ({quiet.rss_mb:.0f} MB); again, killed at {at:.1f} s ..."
    )
    finished = _run_killed(source, at)
    state = source.stored_state(TABLE)
    after, resumes = _after(state)
    committed = source.landed()[0] if state is not None else 0
    with source.pg.connect() as conn:
        past = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE id > %s").format(
                sql.Identifier(source.name, TABLE)
            ),
            (after,),
        ).fetchone()[0]  # type: ignore[index]
    ctx.log(f"  resumes after {resumes}, {committed:,} rows committed; the rerun ...")
    rerun = _measure.run(source.sync_argv(), cwd=source.folder)
    read = int(source.last_run(TABLE)["rows_read"])
    expected, landed = source.checksum(), source.landed()
    matches = "yes" if landed == expected else f"no: {landed} vs {expected} (rows, sum of n)"
    ctx.log(f"  rerun: {rerun.process_seconds:.1f} s, {read:,} rows read, matches: {matches}")
    killed = "finished before the kill" if finished else f"SIGKILL at {at:.1f} s"
    row = Row(
        f"{SYNC}, rerun after the kill",
        [rerun],
        rows=read,
        extra={
            "killed run": killed,
            "rows committed before the kill": f"{committed:,}",
            "state resumes after id": resumes,
            "rows past that id": f"{past:,}",
            "rows read": f"{read:,}",
            "rows re-read": f"{read - past:,}",
            "matches source": matches,
        },
    )
    copied = Row(f"{SYNC}, the copy without writes", [quiet], rows=rows)
    return Table(
        f"Killed mid-snapshot: a fresh table of {rows:,} rows (no writes), copied once; then, "
        f"from scratch, `mdstack sync` killed at {KILL_AT:.0%} of that copy's "
        f"{quiet.process_seconds:.1f} s, and run again",
        [copied, row],
        subject=copied.tool,
        extra_columns=tuple(row.extra),
    )


def _run_killed(source: Source, at: float) -> bool:
    """Start a sync, SIGKILL it (its process group) ``at`` seconds in; True if it had ended."""
    proc = subprocess.Popen(
        source.sync_argv(),
        cwd=source.folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=at)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def _after(state: dict[str, Any] | None) -> tuple[float, str]:
    """The id a stored state's copy resumes after (-inf: from the first, inf: copy done),
    and how to say it."""
    if state is None:
        return float("-inf"), "none (no state)"
    snapshot = state.get("snapshot")
    if snapshot is None:
        return float("inf"), "none (copy done)"
    after = snapshot.get("after")
    return (float(after[0]), after[0]) if after else (float("-inf"), "none (no chunk yet)")
