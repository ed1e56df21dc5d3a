"""A test-only source for the orchestration tests: dated rows, counted reads, scripted failures.

Registered for the length of a test with ``monkeypatch.setitem(connectors.REGISTRY,
"counting", "tests.counting_source:CountingSource")``; product code never imports it.

Config:
    log: a JSON-lines file; every ``read`` appends ``{"stream", "state"}`` to it, so
        tests count attempts across retries and processes.
    start, end: the days the source has (ISO dates, ``end`` exclusive).
    rows_per_day: rows per day and stream.
    version: mixed into ``value``, so a reload with another version shows.
    fail: ``{stream, times, retryable, after_days}``: the first ``times`` reads of
        ``stream`` raise (SourceUnavailable if ``retryable`` else ConnectorError)
        after yielding ``after_days`` days.
    streams: the stream names (default ``events`` and ``items``).
    overlap: a read waits (up to ``OVERLAP_TIMEOUT`` s, then raises) until ``overlap``
        reads of the source run at once, or every stream has started: reads that run
        one after another fail. :func:`peak` tells how many ran at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.base import (
    Batch,
    Catalog,
    Checkpoint,
    CheckResult,
    ConfiguredStream,
    Message,
    State,
    StreamSpec,
)
from connectors.errors import ConnectorError, SourceUnavailable

SCHEMA = pa.schema([("id", pa.int64()), ("day", pa.date32()), ("value", pa.int64())])
STREAMS = ("events", "items")
MODES = ("incremental_append", "incremental_deduped", "full_refresh_overwrite")
OVERLAP_TIMEOUT = 30.0
IMMUTABLE = ("id", "day")
"""A row's id and day never change (its value does, with the version): ids are unique
while rows_per_day <= 100."""


class _Gauge:
    """Reads of one source (by log file) running at once, across the threads of a process."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.running = self.started = self.peak = 0


_GAUGES: dict[str, _Gauge] = {}
_GAUGES_LOCK = threading.Lock()


def _gauge(log: Path) -> _Gauge:
    with _GAUGES_LOCK:
        return _GAUGES.setdefault(str(log), _Gauge())


def peak(log: Path) -> int:
    """The most reads of the source (by its log file) that ran at once in this process."""
    return _gauge(log).peak


def reads(log: Path, stream: str | None = None) -> list[dict[str, Any]]:
    """The reads logged so far (of one stream, if given)."""
    if not log.exists():
        return []
    found = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [r for r in found if stream is None or r["stream"] == stream]


class CountingSource:
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.log = Path(config["log"])
        self.start = date.fromisoformat(str(config.get("start", "2026-01-01")))
        self.end = date.fromisoformat(str(config.get("end", "2026-01-04")))
        self.rows_per_day = int(config.get("rows_per_day", 3))
        self.version = int(config.get("version", 1))
        self.fail = config.get("fail") or {}
        self.streams = tuple(config.get("streams", STREAMS))
        self.overlap = int(config.get("overlap", 0))

    def spec(self) -> dict[str, Any]:
        return {"type": "object"}

    def check(self) -> CheckResult:
        return CheckResult(ok=True)

    def discover(self) -> Catalog:
        return Catalog(
            tuple(
                StreamSpec(s, SCHEMA, ("id",), "day", MODES, immutable=IMMUTABLE)
                for s in self.streams
            )
        )

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        attempt = len(reads(self.log, stream.name)) + 1
        with self.log.open("a") as handle:
            handle.write(json.dumps({"stream": stream.name, "state": state}) + "\n")
        if not self.overlap:
            yield from self._read(stream, state, attempt)
            return
        gauge = _gauge(self.log)
        self._arrive(gauge)
        try:
            yield from self._read(stream, state, attempt)
        finally:
            with gauge.changed:
                gauge.running -= 1

    def _arrive(self, gauge: _Gauge) -> None:
        with gauge.changed:
            if gauge.running == 0 and gauge.started >= len(self.streams):
                gauge.started = 0  # a new run
            gauge.running += 1
            gauge.started += 1
            gauge.peak = max(gauge.peak, gauge.running)
            gauge.changed.notify_all()
            met = gauge.changed.wait_for(
                lambda: gauge.running >= self.overlap or gauge.started >= len(self.streams),
                OVERLAP_TIMEOUT,
            )
        if not met:
            with gauge.changed:
                gauge.running -= 1
            raise ConnectorError(
                f"no other read ran at the same time within {OVERLAP_TIMEOUT:.0f} s",
                source=self.name,
            )

    def _read(
        self, stream: ConfiguredStream, state: State | None, attempt: int
    ) -> Iterator[Message]:
        day = self.start
        if state and stream.incremental:
            day = date.fromisoformat(state["day"]) + timedelta(days=1)
        for index, current in enumerate(_days(day, self.end)):
            self._maybe_fail(stream.name, attempt, index)
            yield Batch(stream.name, self._rows(stream.name, current))
            yield Checkpoint(stream.name, {"day": current.isoformat()})
        self._maybe_fail(stream.name, attempt, None)

    def _maybe_fail(self, stream: str, attempt: int, index: int | None) -> None:
        if self.fail.get("stream") != stream or attempt > int(self.fail.get("times", 0)):
            return
        after = int(self.fail.get("after_days", 0))
        if index is not None and index < after:
            return
        error = SourceUnavailable if self.fail.get("retryable") else ConnectorError
        raise error(f"scripted failure {attempt} of {stream}", source=self.name, stream=stream)

    def _rows(self, stream: str, day: date) -> pa.RecordBatch:
        base = (day - date(2026, 1, 1)).days * 100 + (1000 if stream == "items" else 0)
        ids = [base + i for i in range(self.rows_per_day)]
        return pa.record_batch(
            [
                pa.array(ids, pa.int64()),
                pa.array([day] * len(ids), pa.date32()),
                pa.array([self.version * 100_000 + i for i in ids], pa.int64()),
            ],
            schema=SCHEMA,
        )


def _days(first: date, end: date) -> Iterator[date]:
    while first < end:
        yield first
        first += timedelta(days=1)
