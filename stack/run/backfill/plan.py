"""Which partitions a backfill runs, and running them with the engine alone.

:class:`BackfillSelection` says what a backfill covers; :func:`pending_partitions`
compares it with ``_mds_backfills`` and says what is left to run, and
:func:`run_backfill` runs it partition by partition without Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from itertools import product
from pathlib import Path

from stack.config import StackConfig, load_config
from stack.errors import ConfigError
from stack.load import RunContext
from stack.load.plan import plan_stream
from stack.run.backfill.ledger import done_partitions, ensure_ledger, forget_done
from stack.run.backfill.load import (
    PartitionResult,
    partition_column,
    sync_partition,
    window_source,
)
from stack.run.backfill.partitions import Partition, parse_day, partitions
from stack.run.parallel import StreamJob
from stack.run.pipeline import new_run_id, open_target, secrets_for
from stack.run.summary import failed_entry

log = logging.getLogger(__name__)


def backfill_streams(
    config: StackConfig, sources: Iterable[str] = (), streams: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """(source, stream) pairs a backfill reloads: the selected incremental streams.

    Raises:
        ConfigError: a named source or stream is unknown, or a named stream is a
            full-refresh one.
    """
    wanted = set(streams)
    picked = []
    for source in tuple(sources) or tuple(config.sources):
        for stream, settings in config.source(source).streams.items():
            if wanted and stream not in wanted:
                continue
            if settings.sync.startswith("full_refresh"):
                if stream in wanted:
                    raise ConfigError(
                        f"stream {source}.{stream} is {settings.sync}: it has no partitions",
                        key="--stream",
                        hint="backfill incremental streams; a full refresh reloads everything",
                    )
                continue
            picked.append((source, stream))
    unknown = wanted - {s for _, s in picked}
    if unknown:
        raise ConfigError(f"unknown streams {sorted(unknown)}", key="--stream")
    return picked


@dataclass(frozen=True)
class BackfillSelection:
    """What a backfill covers: the days ``first``..``last`` (both included) of some regions,
    sources and streams (none named: all of them) of the ``stack.yml`` at ``config_path``,
    on ``target`` (default: the file's ``target:``)."""

    config_path: str | Path
    first: str | date
    last: str | date
    regions: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    target: str | None = None

    def stream_pairs(self, config: StackConfig) -> list[tuple[str, str]]:
        """The (source, stream) pairs selected (:func:`backfill_streams`)."""
        return backfill_streams(config, self.sources, self.streams)

    def windows(self, config: StackConfig) -> list[Partition]:
        """The partitions of ``config.backfill.grain`` covering the days."""
        return partitions(parse_day(self.first), parse_day(self.last), config.backfill.grain)

    def region_names(self, config: StackConfig) -> list[str]:
        """The regions named, checked against ``stack.yml``, or all of them."""
        return [config.check_region(r) for r in self.regions] or config.region_names()


@dataclass(frozen=True)
class PartitionRun:
    """One (region, partition) to run, with the streams it still needs."""

    region: str
    partition: Partition
    streams: tuple[tuple[str, str], ...]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.streams))

    @property
    def stream_names(self) -> list[str]:
        return list(dict.fromkeys(t for _, t in self.streams))

    @property
    def label(self) -> str:
        """``<region> <partition key>``, as a backfill reports it."""
        return f"{self.region} {self.partition.key}"


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill has to do, and what it skips because the warehouse says it is done."""

    pending: tuple[PartitionRun, ...]
    done: tuple[PartitionRun, ...]
    parallelism: int


@dataclass
class BackfillOutcome:
    """What a backfill did, partition by partition (:attr:`PartitionRun.label`)."""

    skipped: list[str] = field(default_factory=list)
    """Done already (the warehouse says so)."""
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Still pending: running the same backfill again redoes them."""


def pending_partitions(selection: BackfillSelection) -> BackfillPlan:
    """The partitions of the selection still to run, per region.

    A partition is done for a region when every selected stream of it succeeded.
    Parallelism is the configured one, or 1 on a warehouse with a single writer.
    """
    config = load_config(selection.config_path)
    wanted = selection.stream_pairs(config)
    windows = selection.windows(config)
    chosen = selection.region_names(config)
    pending: list[PartitionRun] = []
    done: list[PartitionRun] = []
    with secrets_for(config) as resolver, open_target(config, selection.target, resolver) as wh:
        ensure_ledger(wh)
        concurrent = wh.capabilities.concurrent_writers
        parallel = config.backfill.parallelism if concurrent else 1
        for region in chosen:
            finished = done_partitions(wh, config.name, region)
            for window in windows:
                todo = tuple(p for p in wanted if (*p, window.start) not in finished)
                run = PartitionRun(region, window, todo or tuple(wanted))
                (pending if todo else done).append(run)
    return BackfillPlan(tuple(pending), tuple(done), parallel)


def forget_partitions(selection: BackfillSelection) -> int:
    """Forget that the selected partitions were done (``--force``); returns rows removed.

    Their data stays until the partitions run again and overwrite it.
    """
    config = load_config(selection.config_path)
    wanted = selection.stream_pairs(config)
    windows = selection.windows(config)
    keys = [
        (region, source, stream, window.start)
        for region in selection.region_names(config)
        for (source, stream), window in product(wanted, windows)
    ]
    with secrets_for(config) as resolver, open_target(config, selection.target, resolver) as wh:
        ensure_ledger(wh)
        return forget_done(wh, config.name, keys)


def check_partitioning(selection: BackfillSelection) -> None:
    """Refuse an ill-defined backfill before anything is written: bad days, unknown
    streams, a partition column that changes (:func:`partition_column`).

    Asks each selected source for its catalog once (for the first region); opens no
    warehouse.

    Raises:
        ConfigError: naming the key and the fix.
    """
    config = load_config(selection.config_path)
    picked = selection.stream_pairs(config)
    window = selection.windows(config)[0]
    region = selection.region_names(config)[0]
    with secrets_for(config) as resolver:
        for source in dict.fromkeys(s for s, _ in picked):
            catalog = window_source(config, resolver, region, source, window).discover()
            for stream in (t for s, t in picked if s == source):
                partition_column(
                    config, plan_stream(source, config.source(source), catalog, stream)
                )


def run_backfill(selection: BackfillSelection, force: bool = False) -> list[PartitionResult]:
    """Run every pending partition, one after another, with the engine alone.

    A failed stream does not stop the others; its partition stays pending.
    ``force`` runs done partitions again (:func:`forget_partitions` first).

    Returns:
        The results of the streams run (failed ones with ``status`` ``failed``).
    """
    check_partitioning(selection)
    if force:
        forget_partitions(selection)
    pipeline = load_config(selection.config_path).name
    results = []
    for run in pending_partitions(selection).pending:
        ctx = RunContext(pipeline, run.region, new_run_id())
        window = run.partition
        for source, stream in run.streams:
            try:
                results.append(_sync_one(selection, ctx, StreamJob(source, stream), window))
            except Exception as exc:
                log.warning("%s.%s partition %s failed: %s", source, stream, window, exc)
                failed = failed_entry(ctx, StreamJob(source, stream), exc)
                results.append(PartitionResult.of(failed, window))
    return results


def _sync_one(
    selection: BackfillSelection, ctx: RunContext, job: StreamJob, window: Partition
) -> PartitionResult:
    return sync_partition(
        selection.config_path,
        selection.target,
        ctx.region,
        job.source,
        job.stream,
        window.start,
        window.end,
        ctx.run_id,
    )
