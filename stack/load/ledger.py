"""The state table and the run ledger, kept in the warehouse itself.

``_mds_state`` holds each stream's last committed state per region; it is
written in the same transaction as the data it covers, so the warehouse alone
says where the next run resumes. ``_mds_runs`` holds one row per run and
stream: what was read, inserted, updated, deleted and quarantined, the schema
changes applied, and how it ended; :func:`ledger_source_count` reads back from it
the rows each stream delivered, for reconcile checks. ``_mds_quarantine`` keeps
records that could not be loaded (with ``on_bad_record: quarantine``), with the
reason. ``_mds_state_audit`` holds one row per change made by hand (a state set or
reset, a full refresh): who, what, the state before and after; each is written in
the transaction that makes the change.
``_mds_dbt_results`` holds one row per run, region and dbt node: the status,
timing, rows and message dbt reported, so the warehouse also says which model
or test failed in which run. ``_mds_run_snapshots`` holds the warehouse's version
(a DuckLake snapshot) each run left, so it can be read as it was after that run.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from functools import partial

import pyarrow as pa

from connectors.base import State
from stack.errors import MdstackError, WriteConflict
from stack.load.names import COLUMNS_SCHEMA, COLUMNS_TABLE
from stack.load.plan import RunContext, StreamPlan, utcnow
from stack.redact import redact
from stack.sql import ident, table
from stack.transform.dbt import NodeResult
from stack.warehouse.base import Warehouse

log = logging.getLogger(__name__)

STATE_TABLE = "_mds_state"
RUNS_TABLE = "_mds_runs"
QUARANTINE_TABLE = "_mds_quarantine"
AUDIT_TABLE = "_mds_state_audit"

_STREAM_FIELDS = [
    ("pipeline", pa.string()),
    ("source", pa.string()),
    ("stream", pa.string()),
    ("region", pa.string()),
]
"""The columns naming one stream of one region (a :class:`StreamKey`), in every meta table."""

_STATE_SCHEMA = pa.schema(
    [
        *_STREAM_FIELDS,
        ("state", pa.string()),
        ("run_id", pa.string()),
        ("updated_at", pa.timestamp("us")),
    ]
)


_AUDIT_SCHEMA = pa.schema(
    [
        *_STREAM_FIELDS,
        ("action", pa.string()),
        ("user", pa.string()),
        ("before", pa.string()),
        ("after", pa.string()),
        ("run_id", pa.string()),
        ("changed_at", pa.timestamp("us")),
    ]
)


@dataclass(frozen=True)
class StreamKey:
    """Identifies one stream's state: runs of different regions never share it."""

    pipeline: str
    source: str
    stream: str
    region: str

    def params(self) -> list[str]:
        return [self.pipeline, self.source, self.stream, self.region]

    @property
    def lock(self) -> str:
        """The name of the lock a run of the stream holds: whatever changes its state
        takes it too, so it never races a run."""
        return f"{self.pipeline}.{self.region}.{self.source}.{self.stream}"


@dataclass
class RunEntry:
    """One row of ``_mds_runs``: a stream's outcome within a run (cumulative counts)."""

    run_id: str
    pipeline: str
    source: str
    stream: str
    region: str
    mode: str
    status: str
    started_at: datetime
    deletes: str = "hard"
    """How deletes were applied: hard, soft or none (``deleted`` counts them)."""
    finished_at: datetime | None = None
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    quarantined: int = 0
    checkpoints: int = 0
    seconds: float = 0.0
    schema_changes: str | None = None
    error: str | None = None
    full_refresh: bool = False
    """The run read from scratch and replaced the region's rows (``--full-refresh``)."""
    replication_lag_bytes: int | None = None
    """Change log the source server kept for the stream when its read ended (a CDC
    stream's slot: the WAL it holds back), as its last checkpoint reported."""


_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        *_STREAM_FIELDS,
        ("mode", pa.string()),
        ("status", pa.string()),
        ("started_at", pa.timestamp("us")),
        ("deletes", pa.string()),
        ("finished_at", pa.timestamp("us")),
        ("rows_read", pa.int64()),
        ("inserted", pa.int64()),
        ("updated", pa.int64()),
        ("deleted", pa.int64()),
        ("quarantined", pa.int64()),
        ("checkpoints", pa.int64()),
        ("seconds", pa.float64()),
        ("schema_changes", pa.string()),
        ("error", pa.string()),
        ("full_refresh", pa.bool_()),
        ("replication_lag_bytes", pa.int64()),
    ]
)
assert [f.name for f in fields(RunEntry)] == _RUNS_SCHEMA.names


_KEY_WHERE = (
    f"{ident('pipeline')} = ? AND {ident('source')} = ? AND {ident('stream')} = ? "
    f"AND {ident('region')} = ?"
)


_QUARANTINE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        *_STREAM_FIELDS,
        ("reason", pa.string()),
        ("record", pa.string()),
        ("quarantined_at", pa.timestamp("us")),
    ]
)
QUARANTINE_COLUMNS = pa.schema([("reason", pa.string()), ("record", pa.string())])
"""What the engine stages per bad record; the rest of a quarantine row is added at commit."""


def ensure_tables(wh: Warehouse) -> None:
    """Create the state, run, quarantine and column-name tables, or add newer columns.

    Where DDL is transactional, all of it is one commit: on DuckLake every commit costs
    tens of milliseconds, and this runs before every stream's sync.
    """
    tables = (
        (STATE_TABLE, _STATE_SCHEMA),
        (RUNS_TABLE, _RUNS_SCHEMA),
        (QUARANTINE_TABLE, _QUARANTINE_SCHEMA),
        (AUDIT_TABLE, _AUDIT_SCHEMA),
        (DBT_RESULTS_TABLE, _DBT_RESULTS_SCHEMA),
        (SNAPSHOTS_TABLE, _SNAPSHOTS_SCHEMA),
        (COLUMNS_TABLE, COLUMNS_SCHEMA),
    )
    changes: list[Callable[[], None]] = []
    found = wh.tables_columns(wh.meta_schema, [name for name, _ in tables])
    for name, schema in tables:
        existing = found.get(name)
        if existing is None:
            changes.append(partial(wh.create_table, wh.meta_schema, name, schema))
        elif missing := [f for f in schema if f.name not in existing]:
            changes.append(partial(wh.add_columns, wh.meta_schema, name, pa.schema(missing)))
    if not changes:
        return
    with wh.transaction() if wh.capabilities.transactional_ddl else nullcontext():
        for change in changes:
            change()


def bad_records(rows: pa.Table, reason: str) -> pa.RecordBatch:
    """Bad records as (reason, JSON record) rows: off the hot path, so plain JSON is fine."""
    records = [json.dumps(r, default=str, sort_keys=True) for r in rows.to_pylist()]
    return pa.record_batch(
        [pa.array([reason] * len(records), pa.string()), pa.array(records, pa.string())],
        schema=QUARANTINE_COLUMNS,
    )


def quarantine_sql(wh: Warehouse, staged: str) -> str:
    """INSERT of staged bad records. Parameters: run id, pipeline, source, stream, region, now."""
    return (
        f"INSERT INTO {table(wh.meta_schema, QUARANTINE_TABLE)} "
        f"SELECT ?, ?, ?, ?, ?, {ident('reason')}, {ident('record')}, ?::TIMESTAMP FROM {staged}"
    )


def read_state(wh: Warehouse, key: StreamKey) -> State | None:
    """The last committed state of a stream in a region, or ``None`` before its first sync."""
    result = wh.query(
        f"SELECT {ident('state')} FROM {table(wh.meta_schema, STATE_TABLE)} WHERE {_KEY_WHERE}",
        key.params(),
    )
    return json.loads(result.column(0)[0].as_py()) if result.num_rows else None


def write_state(wh: Warehouse, key: StreamKey, state: State, run_id: str, now: datetime) -> None:
    """Replace a stream's state. Call inside the transaction that writes the data it covers.

    The DELETE and the INSERT are one transaction in any case (the caller's, else their
    own): a run that dies between them never leaves the stream without a state.
    """
    ref = table(wh.meta_schema, STATE_TABLE)
    with wh.transaction():
        wh.execute(f"DELETE FROM {ref} WHERE {_KEY_WHERE}", key.params())
        wh.execute(
            f"INSERT INTO {ref} VALUES (?, ?, ?, ?, ?, ?, ?)",
            [*key.params(), state_text(state), run_id, now],
        )


def state_text(state: State | None) -> str | None:
    """A state as the ledger stores it: JSON text with sorted keys (None stays None)."""
    return None if state is None else json.dumps(state, sort_keys=True, default=str)


def reset_state(wh: Warehouse, key: StreamKey) -> None:
    """Forget a stream's state: its next sync starts from the beginning."""
    wh.execute(f"DELETE FROM {table(wh.meta_schema, STATE_TABLE)} WHERE {_KEY_WHERE}", key.params())


def stored_states(wh: Warehouse, pipeline: str) -> list[dict[str, object]]:
    """Every stored state of the pipeline (``_mds_state`` rows, the state as JSON text),
    by source, stream and region; none before the first sync (nothing is created)."""
    if wh.columns(wh.meta_schema, STATE_TABLE) is None:
        return []
    order = ", ".join(ident(c) for c in ("source", "stream", "region"))
    return wh.query(
        f"SELECT * FROM {table(wh.meta_schema, STATE_TABLE)} WHERE {ident('pipeline')} = ? "
        f"ORDER BY {order}",
        [pipeline],
    ).to_pylist()


@dataclass(frozen=True)
class StateChange:
    """One row of ``_mds_state_audit``: a change of a stream's state made by hand."""

    key: StreamKey
    action: str
    """``set``, ``reset`` or ``full_refresh``."""
    user: str
    """Who made it (the operating system's user name)."""
    before: State | None
    after: State | None
    changed_at: datetime
    run_id: str | None = None
    """The run that made it, for a full refresh."""


def record_change(wh: Warehouse, change: StateChange) -> None:
    """Write an audit row; call inside the transaction that changes the state."""
    states = (state_text(s) for s in (change.before, change.after))
    values = [
        *change.key.params(),
        change.action,
        change.user,
        *(None if text is None else redact(text) for text in states),
        change.run_id,
        change.changed_at,
    ]
    names = ", ".join(ident(f.name) for f in _AUDIT_SCHEMA)
    wh.execute(
        f"INSERT INTO {table(wh.meta_schema, AUDIT_TABLE)} ({names}) "
        f"VALUES ({', '.join('?' for _ in values)})",
        values,
    )


def state_changes(wh: Warehouse, pipeline: str) -> list[dict[str, object]]:
    """The pipeline's audit rows, oldest first; none if nothing was ever changed by hand."""
    if wh.columns(wh.meta_schema, AUDIT_TABLE) is None:
        return []
    return wh.query(
        f"SELECT * FROM {table(wh.meta_schema, AUDIT_TABLE)} WHERE {ident('pipeline')} = ? "
        f"ORDER BY {ident('changed_at')}",
        [pipeline],
    ).to_pylist()


def record(wh: Warehouse, entry: RunEntry) -> None:
    """Upsert a stream's row of the run ledger (by run id, source, stream and region).

    In one transaction (the caller's, else its own): a run that dies between the DELETE
    and the INSERT keeps its previous row, so ``close_abandoned`` still finds it.
    """
    ref = table(wh.meta_schema, RUNS_TABLE)
    values = asdict(entry)
    if values["error"]:  # an error text may quote a secret (a URL with its key, say)
        values["error"] = redact(values["error"])
    placeholders = ", ".join("?" for _ in values)
    with wh.transaction():
        wh.execute(
            f"DELETE FROM {ref} WHERE {ident('run_id')} = ? AND {ident('source')} = ? "
            f"AND {ident('stream')} = ? AND {ident('region')} = ?",
            [entry.run_id, entry.source, entry.stream, entry.region],
        )
        wh.execute(
            f"INSERT INTO {ref} ({', '.join(ident(c) for c in values)}) VALUES ({placeholders})",
            list(values.values()),
        )


ABANDONED = (
    "the run stopped before it finished (killed or crashed); its committed checkpoints stand"
)


def close_abandoned(wh: Warehouse, key: StreamKey, run_id: str) -> None:
    """Mark earlier runs of this stream still ``running`` as ``aborted``.

    Call while holding the stream's lock: no other run can be active, so a
    ``running`` row left behind belongs to a process that died.
    """
    dead = f"{_KEY_WHERE} AND {ident('status')} = 'running' AND {ident('run_id')} <> ?"
    runs = table(wh.meta_schema, RUNS_TABLE)
    # Looking first is cheaper than an UPDATE that matches nothing (a DuckLake commit).
    if wh.query(f"SELECT 1 FROM {runs} WHERE {dead} LIMIT 1", [*key.params(), run_id]).num_rows:
        wh.execute(
            f"UPDATE {runs} SET {ident('status')} = 'aborted', {ident('error')} = ? WHERE {dead}",
            [ABANDONED, *key.params(), run_id],
        )


def new_run(plan: StreamPlan, ctx: RunContext) -> tuple[RunEntry, StreamKey]:
    """A stream's ``running`` ledger entry for this run, and the key of its state.

    Nothing is written: the caller records the entry when it has something to say,
    and keeps it at hand to record a failure at any later step.
    """
    entry = RunEntry(
        run_id=ctx.run_id,
        pipeline=ctx.pipeline,
        source=plan.source,
        stream=plan.name,
        region=ctx.region,
        mode=plan.mode,
        status="running",
        started_at=utcnow(),
        deletes=plan.deletes,
    )
    return entry, StreamKey(ctx.pipeline, plan.source, plan.name, ctx.region)


def begin_run(wh: Warehouse, key: StreamKey, run_id: str) -> None:
    """Make the ledger ready for a stream's run: tables created, dead runs closed.

    Call holding the stream's lock (:func:`close_abandoned` relies on it). The first runs
    on a lake several processes write may race to create the tables: the loser looks again.
    """
    write_again_on_conflict(partial(ensure_tables, wh))
    close_abandoned(wh, key, run_id)


def describe_error(exc: BaseException) -> str:
    """The ledger's error text: an ``MdstackError`` speaks for itself, others get their type."""
    return str(exc) if isinstance(exc, MdstackError) else f"{type(exc).__name__}: {exc}"


LEDGER_WRITE_ATTEMPTS = 10
"""Writes of a ledger row that lost a race with another writer's commit."""


def write_again_on_conflict(write: Callable[[], None]) -> None:
    """Call ``write`` (a ledger write, its own commit) until it no longer loses a race
    with another writer's commit, pausing a random moment longer each time; after
    :data:`LEDGER_WRITE_ATTEMPTS` losses the last ``WriteConflict`` is raised."""
    for attempt in range(1, LEDGER_WRITE_ATTEMPTS + 1):
        try:
            write()
            return
        except WriteConflict:
            if attempt == LEDGER_WRITE_ATTEMPTS:
                raise
            time.sleep(random.uniform(0, 0.2 * attempt))


def record_failure(record_entry: Callable[[], None], entry: RunEntry) -> None:
    """Write a failed run's entry through ``record_entry``, best effort.

    The failure itself must surface even if the ledger cannot be written, so a
    warehouse error here is logged, not raised.
    """
    try:
        write_again_on_conflict(record_entry)
    except MdstackError as exc:
        log.warning("could not record the failure of %s in the ledger: %s", entry.stream, exc)


def running_elsewhere(wh: Warehouse, key: StreamKey) -> bool:
    """Whether a run of the stream in another region is under way (its latest ledger row
    says ``running``): on a warehouse several processes write, it may be loading the table
    this one shares."""
    runs = table(wh.meta_schema, RUNS_TABLE)
    if wh.columns(wh.meta_schema, RUNS_TABLE) is None:
        return False
    found = wh.query(
        f"SELECT {ident('status')} FROM {runs} WHERE {ident('pipeline')} = ?"
        f" AND {ident('source')} = ? AND {ident('stream')} = ? AND {ident('region')} <> ?"
        f" QUALIFY row_number() OVER (PARTITION BY {ident('region')}"
        f" ORDER BY {ident('started_at')} DESC) = 1",
        [key.pipeline, key.source, key.stream, key.region],
    )
    return "running" in found.column(0).to_pylist()


def latest_runs(wh: Warehouse, pipeline: str) -> pa.Table:
    """The most recent ledger row per (source, stream, region), with the stored state."""
    runs = table(wh.meta_schema, RUNS_TABLE)
    states = table(wh.meta_schema, STATE_TABLE)
    # Quoted: the columns are lower-case names, which Snowflake matches only when quoted.
    key = ", ".join(f"r.{ident(c)}" for c in ("source", "stream", "region"))
    return wh.query(
        f"SELECT r.*, s.{ident('state')} FROM {runs} AS r LEFT JOIN {states} AS s "
        f"USING ({ident('pipeline')}, {ident('source')}, {ident('stream')}, {ident('region')}) "
        f"WHERE r.{ident('pipeline')} = ? QUALIFY row_number() OVER (PARTITION BY {key} "
        f"ORDER BY r.{ident('started_at')} DESC) = 1 ORDER BY {key}",
        [pipeline],
    )


def ledger_source_count(wh: Warehouse, pipeline: str) -> Callable[[str, str, str], int | None]:
    """``(source, stream, region) -> rows``: what the run ledger says each stream delivered
    (a ``SourceCount`` for reconcile checks, :func:`stack.transform.checks.run_checks`).

    Rows = the last successful ``full_refresh_overwrite`` or ``--full-refresh`` load's
    inserts, plus every later run's inserts minus its deletes. Exact for the sync modes and
    hard deletes; a soft-deleted row that reappears counts as an update, not an insert, so
    soft-delete streams may drift. Checkpoints of failed runs count (their data was
    committed with them). ``None``: the
    ledger holds no run of the stream.
    """

    def count(source: str, stream: str, region: str) -> int | None:
        rows = wh.query(
            f"SELECT {ident('mode')}, {ident('status')}, {ident('inserted')}, "
            f"{ident('deleted')}, {ident('full_refresh')} FROM {table(wh.meta_schema, RUNS_TABLE)} "
            f"WHERE {ident('pipeline')} = ? AND {ident('source')} = ? AND {ident('stream')} = ? "
            f"AND {ident('region')} = ? ORDER BY {ident('started_at')}",
            [pipeline, source, stream, region],
        ).to_pylist()
        if not rows:
            return None
        total = 0
        for row in rows:
            if row["mode"] == "full_refresh_overwrite" or row["full_refresh"]:
                total = row["inserted"] if row["status"] == "succeeded" else total
            else:
                total += (row["inserted"] or 0) - (row["deleted"] or 0)
        return total

    return count


# -- dbt node results ------------------------------------------------------------------------
DBT_RESULTS_TABLE = "_mds_dbt_results"
_DBT_RESULTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("region", pa.string()),
        ("command", pa.string()),
        ("unique_id", pa.string()),
        ("name", pa.string()),
        ("resource_type", pa.string()),
        ("status", pa.string()),
        ("seconds", pa.float64()),
        ("rows_affected", pa.int64()),
        ("message", pa.string()),
        ("compiled_path", pa.string()),
        ("recorded_at", pa.timestamp("us")),
    ]
)


def record_dbt_results(
    wh: Warehouse,
    key: tuple[str, str, str],
    command: str,
    nodes: Sequence[NodeResult],
    now: datetime,
) -> None:
    """Write one dbt invocation's node results to ``_mds_dbt_results``, in one commit.

    Args:
        key: ``(run_id, pipeline, region)`` of the run.
        command: the dbt command (``build``, ``source freshness``); a run's earlier rows of
            the same command are replaced, so a retried step leaves one row per node.
        nodes: the invocation's results (``DbtRun.nodes``); messages are redacted.
    """
    run_id, pipeline, region = key
    ref = table(wh.meta_schema, DBT_RESULTS_TABLE)
    ensure_tables(wh)
    names = ", ".join(ident(f.name) for f in _DBT_RESULTS_SCHEMA)
    rows = pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "pipeline": pipeline,
                "region": region,
                "command": command,
                **{f: getattr(n, f) for f in _NODE_FIELDS},
                "message": redact(n.message) if n.message else None,
                "recorded_at": now,
            }
            for n in nodes
        ],
        schema=_DBT_RESULTS_SCHEMA,
    )
    stage = f"_mds_dbt_results_{uuid.uuid4().hex[:8]}"
    wh.stage(stage, rows)  # staging is DDL on Snowflake: before the transaction
    try:
        with wh.transaction():
            wh.execute(
                f"DELETE FROM {ref} WHERE {ident('run_id')} = ? AND {ident('pipeline')} = ? "
                f"AND {ident('region')} = ? AND {ident('command')} = ?",
                [run_id, pipeline, region, command],
            )
            wh.execute(f"INSERT INTO {ref} ({names}) SELECT {names} FROM {wh.stage_ref(stage)}")
    finally:
        wh.drop_stage(stage)


_NODE_FIELDS = (
    "unique_id",
    "name",
    "resource_type",
    "status",
    "seconds",
    "rows_affected",
    "compiled_path",
)


SNAPSHOTS_TABLE = "_mds_run_snapshots"
_SNAPSHOTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("region", pa.string()),
        ("snapshot", pa.int64()),
        ("recorded_at", pa.timestamp("us")),
    ]
)


def record_snapshot(wh: Warehouse, key: tuple[str, str, str], now: datetime) -> str | None:
    """Write the version the (open) warehouse is at as the one run ``key`` left
    (``(run_id, pipeline, region)``), kept where the warehouse keeps versions on request.

    The row itself is a commit after that version: reading the warehouse as of the run
    shows everything but this row. Returns the region's run recorded before it, if any.
    """
    snapshot = wh.current_snapshot()
    wh.keep_version(snapshot)
    ensure_tables(wh)
    run_id, pipeline, region = key
    ref = table(wh.meta_schema, SNAPSHOTS_TABLE)
    before = wh.query(
        f"SELECT {ident('run_id')} AS run_id FROM {ref} WHERE {ident('pipeline')} = ? "
        f"AND {ident('region')} = ? AND {ident('run_id')} <> ? "
        f"ORDER BY {ident('snapshot')} DESC LIMIT 1",
        [pipeline, region, run_id],
    ).to_pylist()
    row = {"run_id": run_id, "pipeline": pipeline, "region": region}
    rows = pa.Table.from_pylist(
        [{**row, "snapshot": snapshot, "recorded_at": now}], schema=_SNAPSHOTS_SCHEMA
    )
    wh.append(wh.meta_schema, SNAPSHOTS_TABLE, rows)
    return before[0]["run_id"] if before else None


def run_snapshot(wh: Warehouse, pipeline: str, run_id: str) -> int | None:
    """The version run ``run_id`` left the warehouse at (its last record), if it recorded one."""
    if wh.columns(wh.meta_schema, SNAPSHOTS_TABLE) is None:
        return None
    ref = table(wh.meta_schema, SNAPSHOTS_TABLE)
    [found] = wh.query(
        f"SELECT max({ident('snapshot')}) AS snapshot FROM {ref} "
        f"WHERE {ident('pipeline')} = ? AND {ident('run_id')} = ?",
        [pipeline, run_id],
    ).to_pylist()
    return found["snapshot"]


def last_dbt_results(wh: Warehouse, pipeline: str) -> pa.Table:
    """The dbt node results of the latest run that ran dbt, per region (failures first)."""
    if wh.columns(wh.meta_schema, DBT_RESULTS_TABLE) is None:
        return _DBT_RESULTS_SCHEMA.empty_table()
    ref = table(wh.meta_schema, DBT_RESULTS_TABLE)
    run_id, region = ident("run_id"), ident("region")
    return wh.query(
        f"SELECT * FROM {ref} WHERE {ident('pipeline')} = ? "
        f"QUALIFY {run_id} = first_value({run_id}) OVER "
        f"(PARTITION BY {region} ORDER BY {ident('recorded_at')} DESC) "
        f"ORDER BY {region}, {ident('status')} IN ('success', 'pass'), {ident('command')}, "
        f"{ident('unique_id')}",
        [pipeline],
    )
