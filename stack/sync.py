"""The sync engine: one stream of one source into one warehouse table.

Batches are staged as they arrive (bounded memory: the stage lives in the
warehouse, not in Python). At every checkpoint the staged rows are applied
with the stream's sync mode and the checkpoint's state is written, **in one
transaction**: a crash anywhere leaves the last committed state matching the
data, and the next run resumes from it. ``full_refresh_overwrite`` stages the
whole read and replaces the region's rows in a single transaction at the end,
so readers never see a half table.

Every table is scoped by region (``_mds_region``): runs for different regions
never see or touch each other's rows or state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from connectors import load_source
from connectors.base import (
    DELETED_AT,
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    Source,
    State,
)
from stack import ledger, sql
from stack.config import SourceConfig, StackConfig, StreamConfig
from stack.errors import ConfigError, MdstackError, SchemaError
from stack.staging import Stage
from stack.warehouse.base import Warehouse

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


@dataclass(frozen=True)
class RunContext:
    """Who is running: the pipeline, the region, the run id and its load time."""

    pipeline: str
    region: str
    run_id: str
    loaded_at: datetime = field(default_factory=lambda: utcnow())


def utcnow() -> datetime:
    """Naive UTC now, the convention of every ``_mds_*`` timestamp."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class CommitPolicy:
    """When a checkpoint is committed: once enough rows or time have piled up.

    Committing at a later checkpoint is as exact as committing at every one (its
    state covers everything before it); it only trades re-reading after a
    crash for fewer, larger transactions (each is a DuckLake snapshot).
    """

    rows: int = 1_000_000
    seconds: float = 60.0

    def due(self, staged_rows: int, since: float) -> bool:
        return staged_rows >= self.rows or time.perf_counter() - since >= self.seconds


EVERY_CHECKPOINT = CommitPolicy(rows=0, seconds=0.0)


@dataclass(frozen=True)
class StreamPlan:
    """Everything the engine needs to know to write one stream."""

    source: str
    schema: str
    stream: ConfiguredStream
    deletes: str

    @property
    def target(self) -> str:
        return sql.table(self.schema, self.stream.name)


def plan_stream(
    source_name: str, source_cfg: SourceConfig, catalog: Catalog, stream_name: str
) -> StreamPlan:
    """Combine what the source declares with what ``stack.yml`` asks for.

    Raises:
        ConfigError: the stream is unknown, the mode unsupported, or a key is missing.
    """
    wanted: StreamConfig = source_cfg.streams[stream_name]
    spec = catalog.stream(stream_name)
    where = f"sources.{source_name}.streams.{stream_name}"
    if wanted.sync not in spec.sync_modes:
        raise ConfigError(
            f"sync mode {wanted.sync!r} is not supported by this stream",
            key=f"{where}.sync",
            hint=f"use one of: {', '.join(spec.sync_modes)}",
        )
    keys = tuple(wanted.primary_key or spec.primary_key)
    if wanted.sync == "incremental_deduped" and not keys:
        raise ConfigError(
            "incremental_deduped needs a primary key",
            key=f"{where}.primary_key",
            hint="set `primary_key: [column, ...]` or use incremental_append",
        )
    configured = ConfiguredStream(
        spec=spec, sync_mode=wanted.sync, cursor=wanted.cursor or spec.cursor, primary_key=keys
    )
    return StreamPlan(
        source=source_name, schema=source_cfg.schema_, stream=configured, deletes=wanted.deletes
    )


class _Pending:
    """What has been read since the last commit: staged records, staged deletes, state."""

    def __init__(self, wh: Warehouse, plan: StreamPlan) -> None:
        self.records = Stage(wh, f"_mds_stage_{plan.stream.name}")
        self.deletes = Stage(wh, f"_mds_deletes_{plan.stream.name}")
        self.state: State | None = None
        self.seq = 0

    @property
    def rows(self) -> int:
        return self.records.rows + self.deletes.rows

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def reset(self) -> None:
        self.records.reset()
        self.deletes.reset()
        self.state = None


def sync_stream(
    wh: Warehouse,
    source: Source,
    plan: StreamPlan,
    ctx: RunContext,
    progress: Progress | None = None,
    policy: CommitPolicy = CommitPolicy(),
) -> ledger.RunEntry:
    """Read one stream from its last committed state and write it to the warehouse.

    Returns:
        The stream's run-ledger entry (also stored in ``_mds_runs``).

    Raises:
        MdstackError: anything that stops the stream; the ledger records it as failed
            and committed checkpoints stay committed.
    """
    key = ledger.StreamKey(ctx.pipeline, plan.source, plan.stream.name, ctx.region)
    entry = ledger.RunEntry(
        run_id=ctx.run_id,
        pipeline=ctx.pipeline,
        source=plan.source,
        stream=plan.stream.name,
        region=ctx.region,
        mode=plan.stream.sync_mode,
        status="running",
        started_at=utcnow(),
    )
    started = last_commit = time.perf_counter()
    ledger.ensure_tables(wh)
    _ensure_target(wh, plan, plan.stream.spec.schema)
    pending = _Pending(wh, plan)
    overwrite = plan.stream.sync_mode == "full_refresh_overwrite"
    try:
        for message in source.read(plan.stream, ledger.read_state(wh, key)):
            if isinstance(message, Batch):
                _stage_batch(wh, plan, pending, message.data)
                entry.rows_read += message.data.num_rows
                if progress:
                    progress(plan.stream.name, entry.rows_read)
            elif isinstance(message, Deletes):
                _stage_deletes(plan, pending, message.keys)
            elif isinstance(message, Checkpoint):
                pending.state = message.state
                if not overwrite and policy.due(pending.rows, last_commit):
                    _commit(wh, plan, pending, key, ctx, entry, started)
                    last_commit = time.perf_counter()
        entry.status = "succeeded"
        if overwrite or pending.rows or pending.state is not None:
            _commit(wh, plan, pending, key, ctx, entry, started)
        else:
            _record(wh, entry, started)
    except Exception as exc:
        entry.status, entry.error = "failed", _describe(exc)
        _record_failure(wh, entry, started)
        raise
    finally:
        pending.reset()
    return entry


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MdstackError) else f"{type(exc).__name__}: {exc}"


def _ensure_target(wh: Warehouse, plan: StreamPlan, schema: pa.Schema) -> None:
    """Create the table, or add the columns it lacks (schema evolution: add columns)."""
    existing = wh.columns(plan.schema, plan.stream.name)
    wanted = pa.schema([*schema, *_META_SCHEMA])
    if existing is None:
        wh.create_table(plan.schema, plan.stream.name, wanted)
        return
    missing = [f for f in wanted if f.name not in existing]
    if missing:
        log.info("%s: adding columns %s", plan.stream.name, [f.name for f in missing])
        wh.add_columns(plan.schema, plan.stream.name, pa.schema(missing))


def _stage_batch(wh: Warehouse, plan: StreamPlan, pending: _Pending, batch: pa.RecordBatch) -> None:
    if batch.num_rows == 0:
        return
    _check_keys(plan, batch)
    if any(name not in pending.records.columns for name in batch.schema.names):
        _ensure_target(wh, plan, batch.schema)
    pending.records.add(batch, pending.next_seq())


def _check_keys(plan: StreamPlan, batch: pa.RecordBatch) -> None:
    """Primary keys must be present and non-null: a null key cannot be merged or deleted."""
    for key in plan.stream.primary_key:
        if key not in batch.schema.names:
            raise SchemaError(
                f"records lack primary key column {key!r}",
                source=plan.source,
                stream=plan.stream.name,
                key=key,
                hint="fix `primary_key` in stack.yml or the source",
            )
        if batch.column(key).null_count:
            raise SchemaError(
                f"{batch.column(key).null_count} records have a null primary key",
                source=plan.source,
                stream=plan.stream.name,
                key=key,
                hint="fix the source data or choose another primary key",
            )


def _stage_deletes(plan: StreamPlan, pending: _Pending, keys: pa.RecordBatch) -> None:
    if keys.num_rows == 0 or plan.deletes == "none" or not plan.stream.primary_key:
        return
    missing = [k for k in (*plan.stream.primary_key, DELETED_AT) if k not in keys.schema.names]
    if missing:
        raise SchemaError(
            f"deletes lack columns {missing}",
            source=plan.source,
            stream=plan.stream.name,
            hint=f"the source must send key columns and {DELETED_AT!r} with every delete",
        )
    pending.deletes.add(keys, pending.next_seq())


def _commit(
    wh: Warehouse,
    plan: StreamPlan,
    pending: _Pending,
    key: ledger.StreamKey,
    ctx: RunContext,
    entry: ledger.RunEntry,
    started: float,
) -> None:
    """Apply what is staged and store the pending state, atomically; then empty the stage."""
    pending.records.flush()
    pending.deletes.flush()
    prepared = _prepare(wh, plan, pending, ctx)
    now = utcnow()
    with wh.transaction():
        _apply(wh, plan, pending.records.columns, *prepared, ctx, entry)
        if pending.state is not None:
            ledger.write_state(wh, key, pending.state, ctx.run_id, now)
        entry.checkpoints += 1
        _record(wh, entry, started)
    log.info(
        "%s/%s [%s]: committed checkpoint %d (%d rows read)",
        plan.source,
        plan.stream.name,
        ctx.region,
        entry.checkpoints,
        entry.rows_read,
    )
    for name in prepared:
        if name:
            wh.drop_stage(name)
    pending.reset()


def _prepare(
    wh: Warehouse, plan: StreamPlan, pending: _Pending, ctx: RunContext
) -> tuple[str | None, str | None]:
    """Build the rows to write and the keys to delete as staging tables (outside the txn)."""
    stream, meta = plan.stream, [ctx.region, ctx.run_id, ctx.loaded_at]
    stage, dels = pending.records.ref, pending.deletes.ref
    overwrite = stream.sync_mode == "full_refresh_overwrite"
    if overwrite:
        dels = None  # a full snapshot already leaves out what was deleted
    rows = deletes = None
    if stage:
        rows = f"_mds_rows_{stream.name}"
        select = sql.prepare_rows(
            stage,
            dels,
            stream.primary_key,
            stream.cursor,
            pending.records.columns,
            deleted_at=DELETED_AT,
            dedupe=stream.sync_mode == "incremental_deduped",
            soft=plan.deletes == "soft",
        )
        wh.execute(f"CREATE OR REPLACE TEMP TABLE {sql.ident(rows)} AS {select}", meta)
    if dels:
        deletes = f"_mds_dels_{stream.name}"
        select = sql.prepare_deletes(dels, stream.primary_key, DELETED_AT)
        wh.execute(f"CREATE OR REPLACE TEMP TABLE {sql.ident(deletes)} AS {select}", [ctx.region])
    return rows, deletes


def _apply(
    wh: Warehouse,
    plan: StreamPlan,
    columns: list[str],
    rows: str | None,
    deletes: str | None,
    ctx: RunContext,
    entry: ledger.RunEntry,
) -> None:
    """Write one commit: clear (overwrite), then deletes of earlier rows, then new rows."""
    stream, target = plan.stream, plan.target
    if stream.sync_mode == "full_refresh_overwrite":
        wh.execute(sql.clear_region_sql(target), [ctx.region])
    if deletes:
        ref, soft = wh.stage_ref(deletes), plan.deletes == "soft"
        entry.deleted += _count(wh, sql.count_deletes(target, ref, stream.primary_key, soft))
        make = sql.soft_delete_sql if soft else sql.hard_delete_sql
        wh.execute(make(target, ref, stream.primary_key))
    if rows:
        ref = wh.stage_ref(rows)
        total = _count(wh, f"SELECT count(*) FROM {ref}")
        if stream.sync_mode == "incremental_deduped":
            matched = _count(wh, sql.count_matches(target, ref, stream.primary_key))
            wh.execute(sql.merge_sql(target, ref, stream.primary_key, stream.cursor, columns))
            entry.updated += matched
            entry.inserted += total - matched
        else:
            wh.execute(sql.insert_sql(target, ref, columns))
            entry.inserted += total


def _count(wh: Warehouse, query: str) -> int:
    return int(wh.query(query).column(0)[0].as_py())


def _record(wh: Warehouse, entry: ledger.RunEntry, started: float) -> None:
    entry.seconds = round(time.perf_counter() - started, 3)
    if entry.status != "running":
        entry.finished_at = utcnow()
    ledger.record(wh, entry)


def _record_failure(wh: Warehouse, entry: ledger.RunEntry, started: float) -> None:
    """Best effort: the failure itself must surface even if the ledger cannot be written."""
    try:
        _record(wh, entry, started)
    except MdstackError as exc:
        log.warning("could not record the failure of %s in the ledger: %s", entry.stream, exc)


def sync_source(
    wh: Warehouse,
    config: StackConfig,
    source_name: str,
    ctx: RunContext,
    streams: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> list[ledger.RunEntry]:
    """Sync the selected streams (default: all) of one source for one region, in order.

    A failing stream does not undo the streams before it; the first failure is
    re-raised after it is recorded.
    """
    source_cfg = config.source(source_name)
    source = load_source(
        source_cfg.connector, source_name, config.source_config(source_name, ctx.region)
    )
    catalog = source.discover()
    names = list(streams) if streams else list(source_cfg.streams)
    unknown = [n for n in names if n not in source_cfg.streams]
    if unknown:
        raise ConfigError(
            f"streams {unknown} are not declared for source {source_name!r}",
            key=f"sources.{source_name}.streams",
            hint=f"declared: {', '.join(source_cfg.streams)}",
        )
    plans = [plan_stream(source_name, source_cfg, catalog, n) for n in names]
    return [sync_stream(wh, source, plan, ctx, progress) for plan in plans]
