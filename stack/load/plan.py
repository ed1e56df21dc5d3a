"""What one sync of one stream is to do: the plan, the run it belongs to, when to commit.

A :class:`StreamPlan` merges what the source declares (``discover``) with what
``stack.yml`` asks for, and is validated once, before any data moves.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from connectors.base import Catalog, ConfiguredStream, StreamSpec, SyncMode
from stack import sql
from stack.config.sources import BadRecordPolicy, DeleteMode, SchemaPolicy, SourceConfig
from stack.errors import ConfigError
from stack.logs import log_context


def utcnow() -> datetime:
    """Naive UTC now, the convention of every ``_mds_*`` timestamp."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class RunContext:
    """Who is running: the pipeline, the region, the run id and its load time."""

    pipeline: str
    region: str
    run_id: str
    loaded_at: datetime = field(default_factory=utcnow)

    def logging(self, stream: str) -> AbstractContextManager[None]:
        """Name this run and ``stream`` in every line logged inside (:mod:`stack.logs`)."""
        return log_context(
            run_id=self.run_id, pipeline=self.pipeline, region=self.region, stream=stream
        )


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
    deletes: DeleteMode = "hard"
    schema_policy: SchemaPolicy = "evolve"
    columns: tuple[str, ...] | None = None
    on_bad_record: BadRecordPolicy = "fail"
    snapshot_deletes: bool = False
    delete_window: timedelta | None = None

    @property
    def name(self) -> str:
        return self.stream.name

    @property
    def target(self) -> str:
        return sql.table(self.schema, self.stream.name)

    @property
    def mode(self) -> str:
        """The stream's ``sync:`` (``incremental_deduped_history`` for a history stream,
        whose source reads ``incremental_deduped``)."""
        return HISTORY if self.stream.history else self.stream.sync_mode

    @property
    def history(self) -> bool:
        return self.stream.history

    @property
    def current_view(self) -> str:
        """The view of a history table's current versions: ``<table>_current``."""
        return current_view(self.stream.name)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.stream.primary_key

    @property
    def soft(self) -> bool:
        return self.deletes == "soft"

    @property
    def propagates_deletes(self) -> bool:
        """Whether the source's deletes reach the table (they need a key to name a row)."""
        return self.stream.spec.emits_deletes and self.deletes != "none" and bool(self.keys)

    @property
    def lock_name(self) -> str:
        return f"{self.source}.{self.stream.name}"


HISTORY: Final = "incremental_deduped_history"


def current_view(table: str) -> str:
    """The name of the view of history table ``table``'s current versions."""
    return f"{table}_current"


def _modes(spec: StreamSpec) -> tuple[str, ...]:
    """The ``sync:`` settings a stream takes: its source's modes, and history where it reads
    ``incremental_deduped`` into tables mdstack writes."""
    history = "incremental_deduped" in spec.sync_modes and not spec.loaded_externally
    return (*spec.sync_modes, HISTORY) if history else spec.sync_modes


def plan_stream(
    source_name: str, source_cfg: SourceConfig, catalog: Catalog, stream_name: str
) -> StreamPlan:
    """Combine what the source declares with what ``stack.yml`` asks for.

    Raises:
        ConfigError: the mode is unsupported, or a key, cursor or column is missing.
    """
    wanted = source_cfg.streams[stream_name]
    spec = catalog.stream(stream_name)
    where = f"sources.{source_name}.streams.{stream_name}"
    keys = tuple(wanted.primary_key or spec.primary_key)
    cursor = wanted.cursor or spec.cursor
    history = wanted.sync == HISTORY
    # A history stream is read as a deduped one (the source keeps every change: history).
    read: SyncMode = "incremental_deduped" if wanted.sync == HISTORY else wanted.sync
    problems = {
        "sync": (
            wanted.sync not in _modes(spec),
            f"sync mode {wanted.sync!r} is not supported by this stream",
            f"use one of: {', '.join(_modes(spec))}",
        ),
        "primary_key": (
            read == "incremental_deduped" and not keys,
            f"{wanted.sync} needs a primary key",
            "set `primary_key: [column, ...]` or use incremental_append",
        ),
        "delete_detection": (
            bool(wanted.delete_detection) and not keys,
            "delete detection needs a primary key",
            "set `primary_key: [column, ...]` on the stream",
        ),
        "delete_window": (
            bool(wanted.delete_window) and not cursor,
            "a delete window is measured on the cursor, and there is none",
            "set `cursor:` on the stream or remove `delete_window`",
        ),
    }
    names = spec.schema.names
    unknown = [c for c in (*keys, cursor, *(wanted.columns or ())) if c and c not in names]
    problems["columns"] = (
        bool(unknown),
        f"unknown columns {unknown}",
        f"the stream has: {', '.join(names)}",
    )
    for key, (failed, message, hint) in problems.items():
        if failed:
            raise ConfigError(message, key=f"{where}.{key}", hint=hint)
    view = current_view(stream_name)
    if history and view in source_cfg.streams:
        raise ConfigError(
            f"the view of its current versions, {source_cfg.schema_}.{view}, would take the "
            f"name of stream {view}",
            key=f"{where}.sync",
            hint="load one of the two streams into another schema (a source of its own)",
        )
    columns = wanted.columns and tuple(
        dict.fromkeys((*keys, *((cursor,) if cursor else ()), *wanted.columns))
    )
    return StreamPlan(
        source=source_name,
        schema=source_cfg.schema_,
        stream=ConfiguredStream(spec, read, cursor, keys, history),
        deletes=wanted.deletes,
        schema_policy=wanted.schema_policy or source_cfg.schema_policy,
        columns=columns or None,
        on_bad_record=wanted.on_bad_record,
        snapshot_deletes=wanted.delete_detection == "snapshot",
        delete_window=wanted.delete_window,
    )
