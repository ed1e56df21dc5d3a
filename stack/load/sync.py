"""The sync engine: one stream of one source into one warehouse table.

Batches are fitted to the destination's schema (:mod:`stack.load.schema`), checked
(primary keys), and staged as they arrive, in bounded memory
(:mod:`stack.load.staging`). At a checkpoint the staged rows are applied with the
stream's sync mode and the checkpoint's state is written **in one
transaction** (:mod:`stack.load.staged`): a crash anywhere leaves the last
committed state matching the data, and the next run resumes from it.
Full refreshes commit once, at the end: ``full_refresh_overwrite`` replaces the
region's rows in a single transaction, so readers never see a half table, and
a ``full_refresh_append`` run that dies leaves no partial copy. A
:class:`~stack.load.staged.Replacement` makes any stream commit once, replacing
a window of the region's rows (a backfill partition) or all of them, read from
scratch (``--full-refresh``).

Every table is scoped by region (``_mds_region``): runs for different regions
never see or touch each other's rows or state. Two runs of the same stream
and region are refused (a lock), never raced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress

import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import (
    SOURCE_DELETED_AT,
    Batch,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    Message,
    Source,
    State,
)
from stack import sql
from stack.errors import ConfigError, SchemaError, WriteConflict
from stack.load import history, ledger
from stack.load.external import sync_external
from stack.load.names import ColumnNames, column_plan, load_names
from stack.load.plan import CommitPolicy, RunContext, StreamPlan, utcnow
from stack.load.schema import StreamSchema
from stack.load.staged import (
    Load,
    LoadContext,
    Replacement,
    StagedLoad,
    detect_deletes,
    region_has_rows,
)
from stack.load.staging import Stage
from stack.load.streaming import DirectLoad, first_load_direct
from stack.warehouse.base import Capabilities, Warehouse

__all__ = ["Progress", "StreamRun", "sync_stream"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]
"""Called with (stream, rows read so far) after every batch."""

_META_SCHEMA = pa.schema(
    [
        (sql.REGION, pa.string()),
        (sql.RUN_ID, pa.string()),
        (sql.LOADED_AT, pa.timestamp("us")),
        (sql.DELETED_AT, pa.timestamp("us")),
    ]
)
NULL_KEY = "null primary key"


def sync_stream(
    wh: Warehouse,
    source: Source,
    plan: StreamPlan,
    ctx: RunContext,
    progress: Progress | None = None,
    policy: CommitPolicy = CommitPolicy(),
    replace: Replacement | None = None,
) -> ledger.RunEntry:
    """Read one stream from its last committed state and write it to the warehouse.

    With ``replace`` the rows it names are replaced by what the read yields, in the
    one commit of the load (a backfill partition, a full refresh); ``policy`` does not
    apply.

    Returns:
        The stream's run-ledger entry (also stored in ``_mds_runs``).

    Raises:
        SyncConflict: another run of this stream and region is in progress.
        MdstackError: anything that stops the stream; the ledger records it as failed
            and committed checkpoints stay committed.
    """
    with (
        ctx.logging(plan.lock_name),
        wh.lock(ledger.StreamKey(ctx.pipeline, plan.source, plan.name, ctx.region).lock),
    ):
        if plan.stream.spec.loaded_externally:
            entry = sync_external(wh, source, plan, ctx)
        else:
            entry = _sync_locked(wh, source, plan, ctx, progress, policy, replace)
        log.info(
            "%s [%s] %s: %s read, %s inserted, %s updated, %s deleted in %.1fs",
            plan.lock_name,
            ctx.region,
            entry.status,
            f"{entry.rows_read:,}",
            f"{entry.inserted:,}",
            f"{entry.updated:,}",
            f"{entry.deleted:,}",
            entry.seconds,
        )
        return entry


def _sync_locked(
    wh: Warehouse,
    source: Source,
    plan: StreamPlan,
    ctx: RunContext,
    progress: Progress | None,
    policy: CommitPolicy,
    replace: Replacement | None,
) -> ledger.RunEntry:
    run = StreamRun(wh, plan, ctx, progress, policy, replace)
    try:
        state = run.open()
        for message in source.read(run.read, state):
            run.feed(message)
        run.finish(source)
    except Exception as exc:
        run.fail(exc)
        raise
    finally:
        run.close()
    return run.entry


class StreamRun:
    """One stream's load in a run, step by step, so that one read may feed several
    (:mod:`stack.load.group`): :meth:`open` returns the state to read from, :meth:`feed`
    takes each message, :meth:`finish` commits what is left, :meth:`fail` records a
    failure, :meth:`close` rolls back whatever is still open."""

    def __init__(
        self,
        wh: Warehouse,
        plan: StreamPlan,
        ctx: RunContext,
        progress: Progress | None,
        policy: CommitPolicy,
        replace: Replacement | None,
    ) -> None:
        self.wh, self.plan, self.ctx, self.progress = wh, plan, ctx, progress
        self.replace = replace
        self.entry, self.key = ledger.new_run(plan, ctx)
        self.started = time.perf_counter()
        self.changes: list[str] = []
        self.load: Load | None = None
        self.read = plan.stream
        # Full refreshes and replacements commit once, at the end: a run that dies leaves no
        # partial copy, and the rows replaced stay until their replacement lands.
        self.whole_run = replace is not None or plan.mode in (
            "full_refresh_overwrite",
            "full_refresh_append",
        )
        self.policy = None if self.whole_run else policy
        self.last_commit = time.perf_counter()
        self.committed: State | None = None
        """The stream's last committed state: before this run (set by :meth:`open`), then
        at each commit of the run."""

    def record(self) -> None:
        entry = self.entry
        entry.seconds = round(time.perf_counter() - self.started, 3)
        entry.schema_changes = json.dumps(self.changes) if self.changes else None
        if entry.status != "running":
            entry.finished_at = utcnow()
        ledger.record(self.wh, entry)

    def open(self) -> State | None:
        """Start the run in the ledger and prepare the load; returns the state to read from."""
        wh, plan, ctx, key, replace = self.wh, self.plan, self.ctx, self.key, self.replace
        ledger.begin_run(wh, key, ctx.run_id)
        self.committed = state = ledger.read_state(wh, key)
        existing = _existing_columns(wh, plan, state, key)
        self.names = names = load_names(wh, plan.schema, plan.name, existing)
        self.plan = plan = column_plan(plan, names)
        if replace is not None:  # the caller reads its counts back: the same object
            if replace.column is not None:
                replace.column = names.column(replace.column)
            replace.prior, self.entry.full_refresh = state, replace.whole
            state = None if replace.whole else state
        stored = names.store(wh, plan.schema, plan.name, ctx.run_id)
        self.changes.extend(r.describe() for r in stored)
        if existing is None and wh.capabilities.concurrent_writers:
            # Seen running before its table is: a run of another region that finds the
            # table still empty keeps it (_existing_columns), never drops it mid-load.
            ledger.write_again_on_conflict(self.record)
        self.schema = _destination(wh, plan, exists=existing is not None)
        self.lc = lc = LoadContext(wh, plan, ctx, key, self.entry, self.record, replace)
        self.load = _load(lc, existing is not None, self.schema)
        return state

    def feed(self, message: Message) -> None:
        """One message of the read: fitted under the stream's columns, then loaded."""
        assert self.load is not None, "open() first"
        message = _in_columns(message, self.lc, self.names, self.changes)
        _feed(self.lc, message, self.schema, self.load, self.changes, self.progress)
        if not isinstance(message, Checkpoint) or self.policy is None:
            return
        if self._news() and self.policy.due(self.load.rows, self.last_commit):
            self._commit()
            self.last_commit = time.perf_counter()

    def _news(self) -> bool:
        """Whether a commit now would change anything: rows (records, deletes, bad records)
        are waiting, or the read's state moved past the committed one."""
        assert self.load is not None, "open() first"
        state = self.load.state
        return bool(self.load.rows) or (state is not None and state != self.committed)

    def _commit(self) -> None:
        """Commit what is staged; the state it stores is the stream's committed one now."""
        assert self.load is not None, "open() first"
        state = self.load.state
        self.load.commit()
        if isinstance(self.load, DirectLoad) and self.load.dedupe:
            # The region holds rows now: later commits merge.
            versions = self.load.versions
            self.load = _merging(self.lc, versions.cursor_time if versions else None)
        self.committed = state if state is not None else self.committed

    def finish(self, source: Source) -> None:
        """Commit what the read left (the last commit records the finished run in its own
        transaction: no extra commit), then detect snapshot deletes if asked.

        A read that brought nothing and ends on the state already stored (an incremental
        sync with nothing new) commits nothing: only its ledger row is written.
        """
        load, entry, plan = self.load, self.entry, self.plan
        assert load is not None, "open() first"
        recorded = False
        if self.whole_run or self._news():
            if not plan.snapshot_deletes:
                entry.status, recorded = "succeeded", True
            self._commit()
        if plan.snapshot_deletes:
            _snapshot_deletes(self.wh, source, self.read, plan, self.ctx, entry)
        entry.status = "succeeded"
        if not recorded:
            self.record()

    def fail(self, exc: BaseException) -> None:
        if self.load is not None:
            self.load.close()  # roll back first: the failure row must not join the open one
        self.entry.status, self.entry.error = "failed", ledger.describe_error(exc)
        ledger.record_failure(self.record, self.entry)

    def close(self) -> None:
        if self.load is not None:
            self.load.close()


def _in_columns(
    message: Message, lc: LoadContext, names: ColumnNames, changes: list[str]
) -> Message:
    """The message with each field under its column (:mod:`stack.load.names`); a rename is
    stored before the message that needs it goes on."""
    if isinstance(message, Batch):
        message = dataclasses.replace(message, data=names.batch(message.data))
    elif isinstance(message, Deletes):
        fields = message.keys.schema.names
        columns = [n if n == SOURCE_DELETED_AT else names.column(n) for n in fields]
        message = dataclasses.replace(message, keys=message.keys.rename_columns(columns))
    stored = names.store(lc.wh, lc.plan.schema, lc.plan.name, lc.ctx.run_id)
    changes.extend(r.describe() for r in stored)
    return message


def _feed(
    lc: LoadContext,
    message: Message,
    schema: StreamSchema,
    load: Load,
    changes: list[str],
    progress: Progress | None,
) -> None:
    """One message into ``load``: a batch fitted and added, deletes staged, a checkpoint's
    state kept (the caller commits it when its policy says it is due)."""
    wh, plan, entry = lc.wh, lc.plan, lc.entry
    if isinstance(message, Batch):
        changed_at = message.changed_at if plan.history else None
        _add_batch(wh, plan, schema, load, message.data, changes, changed_at)
        entry.rows_read += message.data.num_rows
        if progress:
            progress(plan.name, entry.rows_read)
    elif isinstance(message, Deletes):
        _add_deletes(plan, load, message.keys)
    elif isinstance(message, Checkpoint):
        load.state = message.state
        if message.replication_lag_bytes is not None:
            entry.replication_lag_bytes = message.replication_lag_bytes


def _direct(plan: StreamPlan, capabilities: Capabilities) -> bool:
    """Whether rows can go straight into the table: nothing to merge, nothing to delete,
    on a warehouse that streams into tables (:attr:`Capabilities.streams_into_tables`)."""
    if not capabilities.streams_into_tables:
        return False
    if plan.mode == "full_refresh_overwrite":
        return not (plan.soft and plan.keys)
    appends = plan.mode in ("full_refresh_append", "incremental_append")
    return appends and not plan.propagates_deletes


def _load(lc: LoadContext, table_existed: bool, schema: StreamSchema) -> Load:
    """How the run writes: straight into the table where nothing needs merging (appends,
    overwrites; a deduped stream's first load of an empty region), else staged."""
    wh, plan = lc.wh, lc.plan
    cursor_time = _cursor_time(plan, schema.current)
    if _direct(plan, wh.capabilities):
        return DirectLoad(lc)
    if lc.replace is None and first_load_direct(plan, wh.capabilities):
        if not (table_existed and region_has_rows(wh, plan.target, lc.ctx.region)):
            if plan.history:
                first = history.FirstLoad(plan, cursor_time, lc.ctx.loaded_at)
                return DirectLoad(lc, versions=first)
            return DirectLoad(lc, dedupe=True)
        return _merging(lc, cursor_time, region_filled=True)
    return _merging(lc, cursor_time)


def _merging(
    lc: LoadContext, cursor_time: history.CursorTime, region_filled: bool | None = None
) -> Load:
    """The staged load of a stream whose rows meet those already loaded."""
    if lc.plan.history:
        return history.HistoryLoad(lc, cursor_time, region_filled)
    return StagedLoad(lc, region_filled)


def _destination(wh: Warehouse, plan: StreamPlan, exists: bool) -> StreamSchema:
    """The destination's schema (creating the table from the declared schema if new)."""
    declared = plan.stream.spec.schema
    if plan.columns:
        declared = pa.schema([f for f in declared if f.name in plan.columns])
    if not exists:
        engine = [*_META_SCHEMA, *(history.COLUMNS if plan.history else ())]
        try:
            wh.create_table(plan.schema, plan.name, pa.schema([*declared, *engine]))
        except WriteConflict:  # another region's first run created it a moment before
            if wh.columns(plan.schema, plan.name) is None:
                raise
    current = wh.query(f"SELECT * FROM {plan.target} LIMIT 0").schema
    engine_columns = (*sql.META_COLUMNS, *sql.HISTORY_COLUMNS)
    data = pa.schema([f for f in current if f.name not in engine_columns])
    kept = sql.IS_CURRENT in current.names
    if plan.history and not (kept and _view_is_current(wh, plan, data.names)):
        # A new table, one loaded until now without history, or one whose start (or a new
        # column's view) was cut short: its rows become their keys' current versions, then
        # the view, with every column, marks it done.
        history.adopt(wh, plan, _cursor_time(plan, current), add_columns=not kept)
        _current_view(wh, plan, data.names)
    elif kept and not plan.history:
        raise ConfigError(
            f"{plan.target} keeps every version of its rows (incremental_deduped_history): "
            f"loading it as {plan.mode} would mix versions with rows",
            key=f"sources.{plan.source}.streams.{plan.name}.sync",
            hint="keep `sync: incremental_deduped_history` (read current rows from "
            f"{plan.current_view}), or load into another schema",
        )
    required = [*plan.keys, *((plan.stream.cursor,) if plan.stream.cursor else ())]
    return StreamSchema(data, plan.schema_policy, plan.columns, required)


def _view_is_current(wh: Warehouse, plan: StreamPlan, columns: list[str]) -> bool:
    """Whether the view of current versions exists, with every column of the table."""
    found = wh.columns(plan.schema, plan.current_view)
    return found is not None and set(found) == set(history.view_columns(columns))


def _cursor_time(plan: StreamPlan, columns: pa.Schema) -> history.CursorTime:
    """Whether the stream's cursor is a date or a time (a version is valid from it)."""
    cursor = plan.stream.cursor
    if cursor is None or cursor not in columns.names:
        return None
    kind = columns.field(cursor).type
    if pa.types.is_timestamp(kind):
        return "zoned" if kind.tz else "naive"
    return "naive" if pa.types.is_date(kind) else None


def _current_view(wh: Warehouse, plan: StreamPlan, columns: list[str]) -> None:
    """(Re)create a history table's view of current versions, with the table's columns."""
    with suppress(WriteConflict):  # another region's run made the same view a moment before
        wh.execute(history.current_view_sql(plan, columns))


def _existing_columns(
    wh: Warehouse, plan: StreamPlan, state: State | None, key: ledger.StreamKey
) -> dict[str, str] | None:
    """The destination table's columns (None when there is no table), read once per run.

    An empty table that no run of this stream committed to (``state`` is None: a failed
    first sync left it) is dropped first: its columns and types came from that run's schema
    and data, and would otherwise decide this run's (refused under ``freeze``); this run
    creates it afresh. Not while another region's run of the stream is under way on a
    warehouse several processes write: the empty table may be its first load, in progress.
    """
    columns = wh.columns(plan.schema, plan.name)
    if columns is None or state is not None:
        return columns
    if wh.capabilities.concurrent_writers and ledger.running_elsewhere(wh, key):
        return columns
    if wh.query(f"SELECT COUNT(*) AS n FROM {plan.target}").column(0)[0].as_py() == 0:
        wh.execute(f"DROP TABLE {plan.target}")
        return None
    return columns


def _add_batch(
    wh: Warehouse,
    plan: StreamPlan,
    schema: StreamSchema,
    load: Load,
    batch: pa.RecordBatch,
    changes: list[str],
    changed_at: pa.Array | None = None,
) -> None:
    """Fit ``batch`` and stage it; a history stream's change times go with its rows."""
    if batch.num_rows == 0:
        return
    _check_keys(plan, batch)
    if plan.history:  # every staged batch has the column (nulls: no time from the source)
        times = pa.nulls(batch.num_rows, history.TIME) if changed_at is None else changed_at
        batch = batch.append_column(sql.CHANGED_AT, times.cast(history.TIME))
    batch = _quarantine_null_keys(plan, load, batch)
    if plan.history:
        changed_at = batch.column(sql.CHANGED_AT)
        batch = batch.drop_columns([sql.CHANGED_AT])
    before = schema.current
    fitted, found = schema.fit(batch)
    changes.extend(c.describe() for c in found)
    if schema.current != before:
        load.migrate(schema.current)
        _evolve(wh, plan, before, schema.current)
    if changed_at is not None:
        fitted = fitted.append_column(sql.CHANGED_AT, changed_at)
    load.add(fitted)


def _evolve(wh: Warehouse, plan: StreamPlan, before: pa.Schema, after: pa.Schema) -> None:
    """Apply an evolved schema to the destination: new columns, then wider types."""
    added = [f for f in after if f.name not in before.names]
    widened = [f for f in after if f.name in before.names and before.field(f.name) != f]
    log.info(
        "%s: schema evolves: added %s, widened %s",
        plan.name,
        [f.name for f in added],
        [f.name for f in widened],
    )
    if added:
        wh.add_columns(plan.schema, plan.name, pa.schema(added))
    if widened:
        wh.widen_columns(plan.schema, plan.name, pa.schema(widened))
    if plan.history:
        _current_view(wh, plan, after.names)


def _check_keys(plan: StreamPlan, batch: pa.RecordBatch) -> None:
    """Primary key columns must be present: without them no record can be merged."""
    for key in plan.keys:
        if key not in batch.schema.names:
            raise SchemaError(
                f"records lack primary key column {key!r}",
                source=plan.source,
                stream=plan.name,
                key=key,
                hint="fix `primary_key` in stack.yml or the source",
            )


def _quarantine_null_keys(plan: StreamPlan, load: Load, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Records with a null key cannot be merged: fail, or keep them in quarantine."""
    if not plan.keys:
        return batch
    nulls = [batch.column(k).is_null() for k in plan.keys]
    bad = nulls[0]
    for more in nulls[1:]:
        bad = pc.or_(bad, more)
    count = pc.sum(bad).as_py() or 0
    if not count:
        return batch
    if plan.on_bad_record == "fail":
        column = next(k for k, n in zip(plan.keys, nulls, strict=True) if pc.any(n).as_py())
        raise SchemaError(
            f"{count} records have a null primary key",
            source=plan.source,
            stream=plan.name,
            key=column,
            hint="fix the source data, choose another primary key, or set "
            "`on_bad_record: quarantine` to keep such records in _mds_quarantine",
        )
    records = pa.Table.from_batches([batch.filter(bad)])
    if sql.CHANGED_AT in records.schema.names:  # the record as the source sent it
        records = records.drop_columns([sql.CHANGED_AT])
    load.add_bad(ledger.bad_records(records, NULL_KEY))
    return batch.filter(pc.invert(bad))


def _add_deletes(plan: StreamPlan, load: Load, keys: pa.RecordBatch) -> None:
    """Stage tombstones; a full refresh ignores them (its snapshot already lacks the rows)."""
    if keys.num_rows == 0 or plan.deletes == "none" or not plan.keys:
        return
    if plan.mode == "full_refresh_overwrite":
        return
    missing = [k for k in (*plan.keys, SOURCE_DELETED_AT) if k not in keys.schema.names]
    if missing:
        raise SchemaError(
            f"deletes lack columns {missing}",
            source=plan.source,
            stream=plan.name,
            hint=f"the source must send key columns and {SOURCE_DELETED_AT!r} with every delete",
        )
    load.add_deletes(keys.select([*plan.keys, SOURCE_DELETED_AT]))


def _snapshot_deletes(
    wh: Warehouse,
    source: Source,
    read: ConfiguredStream,
    plan: StreamPlan,
    ctx: RunContext,
    entry: ledger.RunEntry,
) -> None:
    """Read the source's full key set and delete what disappeared (no CDC needed).

    The read asks for the key fields alone (``read`` names fields as the source does;
    ``plan`` names columns); a source that reads only the columns of the stream's schema
    moves just the keys.
    """
    spec = read.spec
    if all(k in spec.schema.names for k in read.primary_key):
        fields = [spec.schema.field(k) for k in read.primary_key]
        spec = dataclasses.replace(spec, schema=pa.schema(fields))
    full = ConfiguredStream(spec, "full_refresh_overwrite", read.cursor, read.primary_key)
    keys = Stage(wh, f"_mds_keys_{plan.name}")
    try:
        for message in source.read(full, None):
            if isinstance(message, Batch) and message.data.num_rows:
                batch = message.data.select(list(read.primary_key))
                keys.add(batch.rename_columns(list(plan.keys)), 0)
        keys.flush()
        if keys.ref is None:
            log.warning(
                "%s [%s]: the source returned no keys; not deleting every row",
                plan.name,
                ctx.region,
            )
            return
        detect = history.detect_deletes if plan.history else detect_deletes
        detect(wh, plan, keys.ref, ctx, entry)
    finally:
        keys.reset()
