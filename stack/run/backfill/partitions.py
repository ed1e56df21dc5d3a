"""What a backfill partition is, and a source read cut to one.

A :class:`Partition` is the window ``[start, end)`` of one calendar day, week
(Monday to Sunday) or month; :func:`partitions` lists those overlapping a span
of days. :class:`WindowSource` wraps any source so that a read starts from
scratch and keeps only the records whose partition column falls in the window.
Re-exported by :mod:`stack.run.backfill`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import (
    Batch,
    Catalog,
    Checkpoint,
    CheckResult,
    ConfiguredStream,
    Message,
    Source,
    State,
)
from stack.config.model import window_vars
from stack.config.orchestration import Grain
from stack.errors import ConfigError, SchemaError


@dataclass(frozen=True, order=True)
class Partition:
    """The window ``[start, end)``: one day, week or month."""

    start: date
    end: date

    @property
    def key(self) -> str:
        return self.start.isoformat()

    def template_vars(self) -> dict[str, str]:
        """What ``{{ start }}`` and ``{{ end }}`` (exclusive) render to."""
        return window_vars(self.start, self.end)

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


def parse_day(value: str | date) -> date:
    """An ISO date (``2026-01-31``), or ConfigError naming the bad value."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a date", hint="write dates as YYYY-MM-DD") from None


def partitions(first: date, last: date, grain: Grain = "day") -> list[Partition]:
    """The calendar partitions overlapping the days ``first``..``last`` (both included).

    Partitions are whole days, weeks (Monday to Sunday) or months, never cut at
    ``first`` or ``last``: the same partition always has the same bounds, so the
    ledger recognises it whatever window asked for it.

    Raises:
        ConfigError: ``last`` is before ``first``.
    """
    if last < first:
        raise ConfigError(f"the backfill ends ({last}) before it starts ({first})", key="--end")
    found = []
    start = _floor(first, grain)
    while start <= last:
        end = _next(start, grain)
        found.append(Partition(start, end))
        start = end
    return found


def _floor(day: date, grain: Grain) -> date:
    if grain == "week":
        return day - timedelta(days=day.weekday())
    if grain == "month":
        return day.replace(day=1)
    return day


def _next(start: date, grain: Grain) -> date:
    if grain == "week":
        return start + timedelta(days=7)
    if grain == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=1)


def midnight(day: date) -> datetime:
    """Naive midnight at the start of ``day``."""
    return datetime(day.year, day.month, day.day)


class WindowSource:
    """A source read from scratch and cut to one partition on ``column``.

    It never passes the stream's saved state on (a partition is reloaded whole) and
    keeps only the records whose ``column`` falls in ``[start, end)``. Deletes pass
    through; checkpoints do not (a partition commits once, and its position in the
    source is of no use to the stream's next regular sync).
    """

    def __init__(self, inner: Source, column: str, window: Partition) -> None:
        self.inner = inner
        self.name = inner.name
        self.column = column
        self.window = window

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def check(self) -> CheckResult:
        return self.inner.check()

    def discover(self) -> Catalog:
        return self.inner.discover()

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        for message in self.inner.read(stream, None):
            if isinstance(message, Batch):
                yield Batch(message.stream, cut(message.data, self.column, self.window))
            elif not isinstance(message, Checkpoint):
                yield message


def cut(batch: pa.RecordBatch, column: str, window: Partition) -> pa.RecordBatch:
    """The rows of ``batch`` whose ``column`` is in ``[window.start, window.end)``.

    Raises:
        SchemaError: the column is missing, or of a type partitions cannot be cut on.
    """
    if column not in batch.schema.names:
        raise SchemaError(
            f"records lack the partition column {column!r}",
            key=column,
            hint="set `backfill.partition_by` to a date or timestamp column of the stream",
        )
    values = batch.column(column)
    low, high = (_scalar(values.type, day, column) for day in (window.start, window.end))
    inside = pc.and_(pc.greater_equal(values, low), pc.less(values, high))
    return batch.filter(inside)


def _scalar(kind: pa.DataType, day: date, column: str) -> pa.Scalar:
    if pa.types.is_timestamp(kind):
        moment = midnight(day).replace(tzinfo=UTC) if kind.tz else midnight(day)
        return pa.scalar(moment, type=kind)
    if pa.types.is_date(kind):
        return pa.scalar(day, type=kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.scalar(day.isoformat(), type=kind)
    raise SchemaError(
        f"cannot cut partitions on column {column!r} of type {kind}",
        key=column,
        hint="partition on a date, timestamp or ISO-date string column (`backfill.partition_by`)",
    )
