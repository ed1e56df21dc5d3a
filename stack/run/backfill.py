"""Backfills: reload a window of history one partition (day, week or month) at a time.

No Prefect here. A partition run of one stream (:func:`sync_partition`):

1. renders the source's config with ``{{ start }}`` and ``{{ end }}`` (ISO dates;
   ``end`` is exclusive) on top of the region's variables, so a source can read
   just that window;
2. reads the source from scratch (never from the stream's saved state, which
   it leaves alone), keeps only the rows whose partition column (the stream's
   cursor, or ``backfill.partition_by``) falls inside the window, and stages them
   like any load (bounded memory, spilling to disk);
3. in **one** transaction deletes the region's rows of the window, writes the
   staged rows with the stream's sync mode, and marks the partition
   ``succeeded`` in ``_mds_backfills``.

So each partition overwrites exactly its own rows, atomically: a failure
anywhere (the source, a bad record, a frozen schema, a kill) leaves the
warehouse as it was, and readers never see a partition empty or half loaded.
The warehouse alone says which partitions are done (``_mds_backfills``); a
rerun skips those (:func:`pending_partitions`) and redoes the rest, and running
a partition twice leaves the same rows.

A partition must hold the same rows whenever it is read, so its column must
never change for a record. A deduped stream cut on a column that changes (its
``updated_at`` cursor) would lose every record updated since: its old row is
deleted with the window, and its current version lies outside it. Such a
backfill is refused before anything is read (:func:`check_partitioning`)
unless the source declares the column immutable (``StreamSpec.immutable``).

Only incremental streams are backfilled; full-refresh streams have no history
to cut into partitions and are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from itertools import product
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors import load_source
from connectors.base import Source
from stack import sql
from stack.config import StackConfig, load_config, render
from stack.config.orchestration import BackfillConfig
from stack.errors import ConfigError, MdstackError
from stack.load import ledger, sync_stream
from stack.load.plan import RunContext, StreamPlan, plan_stream, utcnow
from stack.load.staged import Replacement
from stack.redact import redact
from stack.run.partitions import Partition, WindowSource, cut, midnight, parse_day, partitions
from stack.run.pipeline import failed_entry, new_run_id, open_target, secrets_for
from stack.secrets import Resolver, reveal
from stack.warehouse.base import Warehouse

__all__ = [
    "BackfillConfig",
    "BackfillPlan",
    "Partition",
    "PartitionRun",
    "WindowSource",
    "backfill_streams",
    "check_partitioning",
    "cut",
    "done_partitions",
    "forget_partitions",
    "parse_day",
    "partitions",
    "pending_partitions",
    "run_backfill",
    "sync_partition",
]

log = logging.getLogger(__name__)

BACKFILLS_TABLE = "_mds_backfills"


# -- which streams ------------------------------------------------------------------------


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


# -- the ledger ---------------------------------------------------------------------------

_LEDGER_SCHEMA = pa.schema(
    [
        ("pipeline", pa.string()),
        ("region", pa.string()),
        ("source", pa.string()),
        ("stream", pa.string()),
        ("partition_start", pa.date32()),
        ("partition_end", pa.date32()),
        ("status", pa.string()),
        ("run_id", pa.string()),
        ("rows_read", pa.int64()),
        ("inserted", pa.int64()),
        ("updated", pa.int64()),
        ("replaced", pa.int64()),
        ("started_at", pa.timestamp("us")),
        ("finished_at", pa.timestamp("us")),
        ("error", pa.string()),
    ]
)


@dataclass
class PartitionEntry:
    """One row of ``_mds_backfills``: the last attempt at one stream's partition."""

    pipeline: str
    region: str
    source: str
    stream: str
    partition_start: date
    partition_end: date
    status: str
    run_id: str
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    replaced: int = 0
    """Rows of the partition deleted before it was loaded again."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


def ensure_ledger(wh: Warehouse) -> None:
    """Create ``_mds_backfills`` (and the engine's own tables) if missing."""
    ledger.ensure_tables(wh)
    if wh.columns(wh.meta_schema, BACKFILLS_TABLE) is None:
        wh.create_table(wh.meta_schema, BACKFILLS_TABLE, _LEDGER_SCHEMA)


def _record(wh: Warehouse, entry: PartitionEntry) -> None:
    """Rewrite the partition's ledger row, in one transaction (the caller's, else its own)."""
    ref = sql.table(wh.meta_schema, BACKFILLS_TABLE)
    where = " AND ".join(
        f"{sql.ident(c)} = ?" for c in ("pipeline", "region", "source", "stream", "partition_start")
    )
    values = asdict(entry)
    columns = ", ".join(sql.ident(c) for c in values)
    with wh.transaction():
        wh.execute(
            f"DELETE FROM {ref} WHERE {where}",
            [entry.pipeline, entry.region, entry.source, entry.stream, entry.partition_start],
        )
        wh.execute(
            f"INSERT INTO {ref} ({columns}) VALUES ({', '.join('?' for _ in values)})",
            list(values.values()),
        )


def _record_failure(wh: Warehouse, entry: PartitionEntry) -> None:
    """Best effort: the failure itself must surface even if the ledger cannot be written.

    A partition whose transaction committed (a step after it failed) stays succeeded.
    """
    try:
        done = done_partitions(wh, entry.pipeline, entry.region)
        if (entry.source, entry.stream, entry.partition_start) not in done:
            _record(wh, entry)
    except MdstackError as exc:
        log.warning("could not record the failed partition in the ledger: %s", exc)


def done_partitions(wh: Warehouse, pipeline: str, region: str) -> set[tuple[str, str, date]]:
    """(source, stream, partition start) of the partitions that succeeded in ``region``.

    Call :func:`ensure_ledger` first.
    """
    rows = wh.query(
        f"SELECT {sql.ident('source')}, {sql.ident('stream')}, {sql.ident('partition_start')} "
        f"FROM {sql.table(wh.meta_schema, BACKFILLS_TABLE)} "
        f"WHERE {sql.ident('pipeline')} = ? AND {sql.ident('region')} = ? "
        f"AND {sql.ident('status')} = 'succeeded'",
        [pipeline, region],
    ).to_pylist()
    return {(r["source"], r["stream"], r["partition_start"]) for r in rows}


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


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill has to do, and what it skips because the warehouse says it is done."""

    pending: tuple[PartitionRun, ...]
    done: tuple[PartitionRun, ...]
    parallelism: int


def pending_partitions(
    config_path: str | Path,
    target: str | None,
    first: str | date,
    last: str | date,
    regions: Sequence[str] = (),
    sources: Sequence[str] = (),
    streams: Sequence[str] = (),
) -> BackfillPlan:
    """The partitions of ``first``..``last`` (days included) still to run, per region.

    A partition is done for a region when every selected stream of it succeeded.
    Parallelism is the configured one, or 1 on a warehouse with a single writer.
    """
    config = load_config(config_path)
    settings = config.backfill
    wanted = backfill_streams(config, sources, streams)
    windows = partitions(parse_day(first), parse_day(last), settings.grain)
    chosen = [config.check_region(r) for r in regions] or config.region_names()
    pending, done = [], []
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        ensure_ledger(wh)
        parallel = settings.parallelism if wh.capabilities.concurrent_writers else 1
        for region in chosen:
            finished = done_partitions(wh, config.name, region)
            for window in windows:
                todo = tuple(p for p in wanted if (*p, window.start) not in finished)
                run = PartitionRun(region, window, todo or tuple(wanted))
                (pending if todo else done).append(run)
    return BackfillPlan(tuple(pending), tuple(done), parallel)


def forget_partitions(
    config_path: str | Path,
    target: str | None,
    first: str | date,
    last: str | date,
    regions: Sequence[str] = (),
    sources: Sequence[str] = (),
    streams: Sequence[str] = (),
) -> int:
    """Forget that the selected partitions were done (``--force``); returns rows removed.

    Their data stays until the partitions run again and overwrite it.
    """
    config = load_config(config_path)
    wanted = backfill_streams(config, sources, streams)
    windows = partitions(parse_day(first), parse_day(last), config.backfill.grain)
    chosen = [config.check_region(r) for r in regions] or config.region_names()
    ref = f"{sql.ident('pipeline')} = ? AND {sql.ident('region')} = ? AND {sql.ident('source')} = ?"
    where = f"{ref} AND {sql.ident('stream')} = ? AND {sql.ident('partition_start')} = ?"
    removed = 0
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        ensure_ledger(wh)
        table = sql.table(wh.meta_schema, BACKFILLS_TABLE)
        with wh.transaction():
            for region in chosen:
                for (source, stream), window in product(wanted, windows):
                    params = [config.name, region, source, stream, window.start]
                    count = wh.query(f"SELECT count(*) FROM {table} WHERE {where}", params)
                    removed += int(count.column(0)[0].as_py())
                    wh.execute(f"DELETE FROM {table} WHERE {where}", params)
    return removed


# -- one partition of one stream ----------------------------------------------------------


def backfill_pipeline(config: StackConfig) -> str:
    """The pipeline name partition loads run under: their state never touches the stream's."""
    return f"{config.name}.backfill"


def sync_partition(
    config_path: str | Path,
    target: str | None,
    region: str,
    source: str,
    stream: str,
    start: str | date,
    end: str | date,
    run_id: str,
) -> dict[str, Any]:
    """Overwrite one stream's rows in ``[start, end)`` for one region (see the module doc).

    Returns:
        The stream's summary entry (the keys of ``_mds_runs``, plus ``partition``,
        ``replaced`` and ``skipped``); a partition the ledger says is done is
        skipped (:func:`forget_partitions` makes it run again).

    Raises:
        ConfigError: the stream has no column to cut partitions on.
        MdstackError: the load failed; the partition is marked failed, rows outside
            it are untouched, and the next backfill redoes it.
    """
    config = load_config(config_path)
    window = Partition(parse_day(start), parse_day(end))
    mode = config.source(source).streams[stream].sync
    if mode.startswith("full_refresh"):
        return _entry(run_id, source, stream, region, mode, window, skipped=True)
    with secrets_for(config) as resolver, open_target(config, target, resolver) as wh:
        reader, plan = _partition_source(config, resolver, region, source, stream, window)
        lock = f"{config.name}.{region}.{plan.lock_name}"  # the one regular runs take
        with wh.lock(lock):
            return _load_partition(wh, config, reader, plan, region, window, run_id)


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
    inner = _window_source(config, resolver, region, source, window)
    plan = plan_stream(source, config.source(source), inner.discover(), stream)
    # The window's own rows are its whole truth: a snapshot of its keys must not delete
    # the rows of every other window.
    plan = replace(plan, snapshot_deletes=False)
    return WindowSource(inner, partition_column(config, plan), window), plan


def _window_source(
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
    if plan.mode == "incremental_deduped" and changes:
        raise ConfigError(
            f"stream {name} is deduped and would be cut into partitions on its cursor "
            f"{column!r}, which changes: a record updated after the window would be deleted "
            "with it and not loaded again",
            key="backfill.partition_by",
            hint=f"partition on a column that never changes for a record (its creation time): "
            f'`backfill: {{partition_by: {{"{name}": <column>}}}}`',
        )
    return column


def check_partitioning(
    config_path: str | Path,
    first: str | date,
    last: str | date,
    regions: Sequence[str] = (),
    sources: Sequence[str] = (),
    streams: Sequence[str] = (),
) -> None:
    """Refuse an ill-defined backfill before anything is written: bad days, unknown
    streams, a partition column that changes (:func:`partition_column`).

    Asks each selected source for its catalog once (for the first region); opens no
    warehouse.

    Raises:
        ConfigError: naming the key and the fix.
    """
    config = load_config(config_path)
    picked = backfill_streams(config, sources, streams)
    window = partitions(parse_day(first), parse_day(last), config.backfill.grain)[0]
    region = next(iter([config.check_region(r) for r in regions] or config.region_names()))
    with secrets_for(config) as resolver:
        for source in dict.fromkeys(s for s, _ in picked):
            catalog = _window_source(config, resolver, region, source, window).discover()
            for stream in (t for s, t in picked if s == source):
                partition_column(
                    config, plan_stream(source, config.source(source), catalog, stream)
                )


def _load_partition(
    wh: Warehouse,
    config: StackConfig,
    reader: WindowSource,
    plan: StreamPlan,
    region: str,
    window: Partition,
    run_id: str,
) -> dict[str, Any]:
    ensure_ledger(wh)
    if (plan.source, plan.name, window.start) in done_partitions(wh, config.name, region):
        return _entry(run_id, plan.source, plan.name, region, plan.mode, window, skipped=True)
    entry = PartitionEntry(
        config.name, region, plan.source, plan.name, window.start, window.end, "running", run_id
    )
    entry.started_at = utcnow()
    columns = wh.columns(plan.schema, plan.name) or {}
    low, high = _bounds(columns.get(reader.column, ""), window)
    swap = Replacement(reader.column, low, high)
    ctx = RunContext(backfill_pipeline(config), region, run_id)

    def settle(loaded: ledger.RunEntry) -> None:  # last in the replacing transaction
        entry.status, entry.finished_at, entry.replaced = "succeeded", utcnow(), swap.replaced
        entry.rows_read, entry.inserted, entry.updated = (
            loaded.rows_read,
            loaded.inserted,
            loaded.updated,
        )
        _record(wh, entry)

    swap.settle = settle
    try:
        loaded = sync_stream(wh, reader, plan, ctx, replace=swap)
    except Exception as exc:
        entry.status, entry.error, entry.finished_at = "failed", redact(str(exc)), utcnow()
        _record_failure(wh, entry)
        raise
    log.info(
        "%s.%s [%s] partition %s: %d rows replaced by %d",
        plan.source,
        plan.name,
        region,
        window,
        entry.replaced,
        loaded.inserted + loaded.updated,
    )
    return asdict(loaded) | {
        "pipeline": config.name,
        "partition": str(window),
        "replaced": entry.replaced,
        "skipped": False,
    }


def _bounds(sql_type: str, window: Partition) -> list:
    """The window's bounds as values comparable with a column of ``sql_type``."""
    kind = sql_type.upper()
    if kind.startswith("TIMESTAMP"):
        return [midnight(window.start), midnight(window.end)]
    if kind in ("VARCHAR", "TEXT") or kind.startswith("STRING"):
        return [window.start.isoformat(), window.end.isoformat()]
    return [window.start, window.end]


def _entry(
    run_id: str,
    source: str,
    stream: str,
    region: str,
    mode: str,
    window: Partition,
    skipped: bool,
) -> dict[str, Any]:
    """The summary entry of a stream the partition run did not load."""
    return {
        "run_id": run_id,
        "source": source,
        "stream": stream,
        "region": region,
        "mode": mode,
        "status": "succeeded",
        "rows_read": 0,
        "inserted": 0,
        "updated": 0,
        "deleted": 0,
        "quarantined": 0,
        "seconds": 0.0,
        "error": None,
        "partition": str(window),
        "replaced": 0,
        "skipped": skipped,
    }


# -- without Prefect ----------------------------------------------------------------------


def run_backfill(
    config_path: str | Path,
    target: str | None,
    first: str | date,
    last: str | date,
    regions: Sequence[str] = (),
    sources: Sequence[str] = (),
    streams: Sequence[str] = (),
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run every pending partition, one after another, with the engine alone.

    A failed stream does not stop the others; its partition stays pending.
    ``force`` runs done partitions again (:func:`forget_partitions` first).

    Returns:
        The summary entries of the streams run (failed ones with ``status: failed``).
    """
    check_partitioning(config_path, first, last, regions, sources, streams)
    if force:
        forget_partitions(config_path, target, first, last, regions, sources, streams)
    plan = pending_partitions(config_path, target, first, last, regions, sources, streams)
    entries = []
    for run in plan.pending:
        run_id = new_run_id()
        for source, stream in run.streams:
            try:
                entries.append(
                    sync_partition(
                        config_path,
                        target,
                        run.region,
                        source,
                        stream,
                        run.partition.start,
                        run.partition.end,
                        run_id,
                    )
                )
            except Exception as exc:
                failed = failed_entry(source, stream, run.region, run_id, exc)
                log.warning("%s.%s partition %s failed: %s", source, stream, run.partition, exc)
                entries.append(failed | {"partition": str(run.partition), "skipped": False})
    return entries
