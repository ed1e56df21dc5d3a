"""A source of many tiny streams, for measuring what orchestration costs per stream.

Config: ``streams`` (how many, named ``s000``, ``s001``, ...) and ``rows`` per stream.
Each read yields one small batch and a checkpoint. Registered by the orchestration
worker at run time as connector ``bench_tiny`` (never in mdstack's own registry).
"""

from __future__ import annotations

from collections.abc import Iterator
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

SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.string())])
MODES = ("full_refresh_overwrite", "full_refresh_append")


def stream_names(count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(count)]


class TinySource:
    """``streams`` streams of ``rows`` rows each."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.streams = int(config.get("streams", 100))
        self.rows = int(config.get("rows", 10))

    def spec(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"streams": {}, "rows": {}}}

    def check(self) -> CheckResult:
        return CheckResult(ok=True, message="tiny")

    def discover(self) -> Catalog:
        return Catalog(
            tuple(StreamSpec(n, SCHEMA, ("id",), None, MODES) for n in stream_names(self.streams))
        )

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        ids = pa.array(range(self.rows), pa.int64())
        values = pa.array([f"{stream.name}-{i}" for i in range(self.rows)])
        yield Batch(stream.name, pa.record_batch([ids, values], schema=SCHEMA))
        yield Checkpoint(stream.name, {})
