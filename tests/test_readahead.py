"""Reading a source ahead of the engine: order, errors, closing the source when it stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from connectors.base import Batch, Checkpoint, ConfiguredStream, Message, State
from stack.config import SourceConfig
from stack.errors import SchemaError
from stack.readahead import ReadAhead
from stack.sync import RunContext, plan_stream, sync_stream
from tests.scripted import SCHEMA, ScriptedSource, rows


def test_messages_arrive_in_order_and_a_source_error_is_raised_as_itself():
    def read() -> Iterator[int]:
        yield from range(5)
        raise KeyError("gone")

    got: list[int] = []
    with pytest.raises(KeyError, match="gone"):
        for item in ReadAhead(read, depth=1):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_close_stops_the_source_and_runs_its_cleanup():
    cleaned = threading.Event()

    def read() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            cleaned.set()

    ahead = ReadAhead(read, depth=2)
    first = [item for item, _ in zip(ahead, range(3), strict=False)]
    ahead.close()
    assert first == [0, 1, 2]
    assert cleaned.wait(10)


class EndlessSource(ScriptedSource):
    """Good rows, then a row with a null key, then rows without end; notes its cleanup."""

    def __init__(self) -> None:
        super().__init__([])
        self.closed = threading.Event()

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        try:
            yield rows((1, "a", 1))
            null_key = [pa.array([None], pa.int64()), pa.array(["x"]), pa.array([1], pa.int64())]
            yield Batch("items", pa.record_batch(null_key, schema=SCHEMA))
            n = 2
            while True:
                yield rows((n, "b", 1))
                yield Checkpoint("items", {"position": n})
                n += 1
        finally:
            self.closed.set()


@pytest.mark.parametrize("mode", ["full_refresh_overwrite", "incremental_deduped"])
def test_an_engine_failure_closes_the_source_and_writes_nothing(warehouse, mode):
    source = EndlessSource()
    cfg = SourceConfig.model_validate(
        {"connector": "scripted", "schema": "raw", "streams": {"items": {"sync": mode}}}
    )
    plan = plan_stream("src", cfg, source.discover(), "items")
    with pytest.raises(SchemaError, match="null primary key"):
        sync_stream(warehouse, source, plan, RunContext("p", "eu", "r1"))
    assert source.closed.wait(10)
    assert warehouse.query("SELECT count(*) AS n FROM raw.items").to_pylist() == [{"n": 0}]
    status = warehouse.query("SELECT status FROM _mds_runs").to_pylist()
    assert status == [{"status": "failed"}]
