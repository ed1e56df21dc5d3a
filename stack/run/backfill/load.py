"""One partition of one stream: read the window, replace its rows in one transaction.

:func:`sync_partition` is the step a Prefect task wraps; :func:`partition_column` says
which column a stream is cut on, and refuses one that would lose records.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from connectors import load_source
from connectors.base import Source
from stack.config import StackConfig, load_config, render
from stack.errors import ConfigError
from stack.load import sync_stream
from stack.load.ledger import RunEntry
from stack.load.plan import HISTORY, RunContext, StreamPlan, plan_stream, utcnow
from stack.load.staged import Replacement
from stack.redact import redact
from stack.run.backfill.ledger import (
    PartitionEntry,
    done_partitions,
    ensure_ledger,
    record_partition,
    record_partition_failure,
)
from stack.run.backfill.partitions import Partition, WindowSource, midnight, parse_day
from stack.run.pipeline import open_target, secrets_for
from stack.secrets import Resolver, reveal
from stack.warehouse.base import Warehouse

log = logging.getLogger(__name__)


@dataclass
class PartitionResult(RunEntry):
    """A stream's result in a backfill partition: its ledger entry, and the partition's."""

    partition: str = ""
    """The window, ``start..end`` (end exclusive)."""
    replaced: int = 0
    """Rows of the partition deleted before it was loaded again."""
    skipped: bool = False
    """Not loaded: the partition was done, or the stream is a full-refresh one."""

    @classmethod
    def of(cls, entry: RunEntry, window: Partition, **extra: Any) -> PartitionResult:
        """``entry`` of the partition ``window``; ``extra`` overrides its fields."""
        return cls(**(asdict(entry) | {"partition": str(window)} | extra))


def backfill_pipeline(pipeline: str) -> str:
    """The pipeline name partition loads run under: their state never touches the stream's."""
    return f"{pipeline}.backfill"


def sync_partition(
    config_path: str | Path,
    target: str | None,
    region: str,
    source: str,
    stream: str,
    start: str | date,
    end: str | date,
    run_id: str,
) -> PartitionResult:
    """Overwrite one stream's rows in ``[start, end)`` for one region (see the package doc).

    Returns:
        The stream's result; a partition the ledger says is done is skipped
        (:func:`~stack.run.backfill.forget_partitions` makes it run again).

    Raises:
        ConfigError: the stream has no column to cut partitions on.
        MdstackError: the load failed; the partition is marked failed, rows outside
            it are untouched, and the next backfill redoes it.
    """
    config = load_config(config_path)
    window = Partition(parse_day(start), parse_day(end))
    mode = config.source(source).streams[stream].sync
    ctx = RunContext(config.name, region, run_id)
    if mode.startswith("full_refresh"):
        return _skipped(ctx, source, stream, mode, window)
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        reader, plan = _partition_source(config, resolver, region, source, stream, window)
        lock = f"{config.name}.{region}.{plan.lock_name}"  # the one regular runs take
        with wh.lock(lock):
            return _load_partition(wh, ctx, reader, plan, window)


def _partition_source(
    config: StackConfig,
    resolver: Resolver,
    region: str,
    source: str,
    stream: str,
    window: Partition,
) -> tuple[WindowSource, StreamPlan]:
    """The source configured for the window, cut to it, and the stream's plan.

    Raises:
        ConfigError: the partition column is ill-defined (:func:`partition_column`).
    """
    inner = window_source(config, resolver, region, source, window)
    plan = plan_stream(source, config.source(source), inner.discover(), stream)
    # The window's own rows are its whole truth: a snapshot of its keys must not delete
    # the rows of every other window.
    plan = replace(plan, snapshot_deletes=False)
    return WindowSource(inner, partition_column(config, plan), window), plan


def window_source(
    config: StackConfig, resolver: Resolver, region: str, source: str, window: Partition
) -> Source:
    """The source's connector, its config rendered for the region and the window."""
    source_cfg = config.source(source)
    variables = config.template_vars(region) | window.template_vars()
    settings = render(source_cfg.config, variables)
    settings = reveal(resolver.resolve(settings, f"sources.{source}.config"))
    return load_source(source_cfg.connector, source, settings)


def partition_column(config: StackConfig, plan: StreamPlan) -> str:
    """The column ``plan``'s stream is cut into partitions on.

    Raises:
        ConfigError: there is none, or the stream is deduped and the column is its
            cursor, which changes, unless the source declares it immutable.
    """
    name = f"{plan.source}.{plan.name}"
    column = config.backfill.partition_by.get(name) or plan.stream.cursor
    if not column:
        raise ConfigError(
            f"stream {name} has no cursor to cut partitions on",
            key="backfill.partition_by",
            hint=f'add `backfill: {{partition_by: {{"{name}": <date column>}}}}`',
        )
    changes = column == plan.stream.cursor and column not in plan.stream.spec.immutable
    if plan.mode in ("incremental_deduped", HISTORY) and changes:
        raise ConfigError(
            f"stream {name} is deduped and would be cut into partitions on its cursor "
            f"{column!r}, which changes: a record updated after the window would be deleted "
            "with it and not loaded again",
            key="backfill.partition_by",
            hint=f"partition on a column that never changes for a record (its creation time): "
            f'`backfill: {{partition_by: {{"{name}": <column>}}}}`',
        )
    return column


def _load_partition(
    wh: Warehouse, ctx: RunContext, reader: WindowSource, plan: StreamPlan, window: Partition
) -> PartitionResult:
    """Load the window, replacing its rows, unless the ledger says it is done; holds the
    stream's lock (the caller's)."""
    ensure_ledger(wh)
    if (plan.source, plan.name, window.start) in done_partitions(wh, ctx.pipeline, ctx.region):
        return _skipped(ctx, plan.source, plan.name, plan.mode, window)
    entry = PartitionEntry(
        pipeline=ctx.pipeline,
        region=ctx.region,
        source=plan.source,
        stream=plan.name,
        partition_start=window.start,
        partition_end=window.end,
        status="running",
        run_id=ctx.run_id,
        started_at=utcnow(),
    )
    columns = wh.columns(plan.schema, plan.name) or {}
    swap = Replacement(reader.column, *_bounds(columns.get(reader.column, ""), window))

    def settle(loaded: RunEntry) -> None:  # last in the replacing transaction
        entry.status, entry.finished_at, entry.replaced = "succeeded", utcnow(), swap.replaced
        entry.rows_read, entry.inserted, entry.updated = (
            loaded.rows_read,
            loaded.inserted,
            loaded.updated,
        )
        record_partition(wh, entry)

    swap.settle = settle
    loading = RunContext(backfill_pipeline(ctx.pipeline), ctx.region, ctx.run_id)
    try:
        loaded = sync_stream(wh, reader, plan, loading, replace=swap)
    except Exception as exc:
        entry.status, entry.error, entry.finished_at = "failed", redact(str(exc)), utcnow()
        record_partition_failure(wh, entry)
        raise
    log.info(
        "%s.%s [%s] partition %s: %d rows replaced by %d",
        plan.source,
        plan.name,
        ctx.region,
        window,
        entry.replaced,
        loaded.inserted + loaded.updated,
    )
    return PartitionResult.of(loaded, window, pipeline=ctx.pipeline, replaced=entry.replaced)


def _bounds(sql_type: str, window: Partition) -> tuple[Any, Any]:
    """The window's bounds as values comparable with a column of ``sql_type``."""
    kind = sql_type.upper()
    if kind.startswith("TIMESTAMP"):
        return midnight(window.start), midnight(window.end)
    if kind in ("VARCHAR", "TEXT") or kind.startswith("STRING"):
        return window.start.isoformat(), window.end.isoformat()
    return window.start, window.end


def _skipped(
    ctx: RunContext, source: str, stream: str, mode: str, window: Partition
) -> PartitionResult:
    """The result of a stream the partition run did not load."""
    now = utcnow()
    entry = RunEntry(
        run_id=ctx.run_id,
        pipeline=ctx.pipeline,
        source=source,
        stream=stream,
        region=ctx.region,
        mode=mode,
        status="succeeded",
        started_at=now,
        finished_at=now,
    )
    return PartitionResult.of(entry, window, skipped=True)
