"""The direct load (append and overwrite streams, a deduped stream's first load): one
streaming INSERT fed by a bounded queue.

What is checked: memory stays bounded by a few batches whatever the number of
batches, the rows and state land the same through the streaming path and the
buffered path (a warehouse without ``stream_append``), a schema change in the
middle of a load, and failures on either side of the queue.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from connectors.base import Batch, Checkpoint, ConfiguredStream, Message, State
from stack.config import SourceConfig
from stack.errors import SchemaError, WarehouseError
from stack.load import EVERY_CHECKPOINT, RunContext, plan_stream, sync_stream
from stack.load.feed import Feed, FeedAborted
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.scripted import SCHEMA, ScriptedSource, checkpoint, rows

ROWS_PER_BATCH = 5_000
BATCHES = 100
PAYLOAD = "x" * 100


class GeneratedSource(ScriptedSource):
    """``BATCHES`` batches made one at a time (none kept), noting Arrow's allocation."""

    def __init__(self) -> None:
        super().__init__([])
        self.peak_bytes = 0

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        before = pa.total_allocated_bytes()
        for n in range(BATCHES):
            self.peak_bytes = max(self.peak_bytes, pa.total_allocated_bytes() - before)
            start = n * ROWS_PER_BATCH
            ids = pa.array(range(start, start + ROWS_PER_BATCH), pa.int64())
            names = pa.array([PAYLOAD] * ROWS_PER_BATCH, pa.string())
            yield Batch("items", pa.record_batch([ids, names, ids], schema=SCHEMA))
        yield Checkpoint("items", {"position": BATCHES})


def run(wh, source, mode="full_refresh_overwrite", run_id="r1"):
    cfg = SourceConfig.model_validate(
        {"connector": "scripted", "schema": "raw", "streams": {"items": {"sync": mode}}}
    )
    plan = plan_stream("src", cfg, source.discover(), "items")
    return sync_stream(wh, source, plan, RunContext("p", "eu", run_id))


def buffered(wh):
    """The same warehouse, seen as one that cannot pull a stream (the generic path)."""
    wh.capabilities = dataclasses.replace(wh.capabilities, stream_append=False)
    return wh


def test_a_long_load_keeps_only_a_few_batches_alive(tmp_path):
    source = GeneratedSource()
    with DuckDBWarehouse(tmp_path / "wh", threads=2) as wh:
        entry = run(wh, source)
        count = wh.query("SELECT count(*) AS n FROM raw.items").to_pylist()[0]["n"]
    assert entry.inserted == count == BATCHES * ROWS_PER_BATCH
    one_batch = ROWS_PER_BATCH * (len(PAYLOAD) + 4 + 16)
    # Alive at once: the queue's two batches, and what each of DuckDB's two threads holds
    # of Parquet row groups (30 k rows = 6 batches, read in place): the one it fills and,
    # on a busy machine, the one still being written (27 batches seen). Holding on to
    # written batches until the commit would reach all 100.
    assert source.peak_bytes < (2 + 2 * 2 * 6 + 4) * one_batch


@pytest.mark.parametrize("streaming", [True, False])
def test_a_schema_change_mid_load_lands_every_row_with_the_new_column(warehouse, streaming):
    wh = warehouse if streaming else buffered(warehouse)
    wider = pa.schema([*SCHEMA, ("extra", pa.string())])
    changed = Batch(
        "items",
        pa.record_batch(
            [pa.array([3], pa.int64()), pa.array(["c"]), pa.array([1], pa.int64()), ["e"]],
            schema=wider,
        ),
    )
    script = [rows((1, "a", 1)), rows((2, "b", 1)), changed, rows((4, "d", 1)), checkpoint()]
    entry = run(wh, ScriptedSource(script))
    got = wh.query("SELECT id, name, extra FROM raw.items ORDER BY id").to_pylist()
    assert [(r["id"], r["name"], r["extra"]) for r in got] == [
        (1, "a", None),
        (2, "b", None),
        (3, "c", "e"),
        (4, "d", None),
    ]
    assert entry.inserted == 4
    assert entry.schema_changes and "extra" in entry.schema_changes


@pytest.mark.parametrize("streaming", [True, False])
def test_a_source_failure_mid_load_leaves_the_previous_load(warehouse, streaming):
    wh = warehouse if streaming else buffered(warehouse)
    run(wh, ScriptedSource([rows((1, "a", 1)), checkpoint()]))
    script = [rows((2, "b", 1)), rows((3, "c", 1)), rows((4, "d", 1)), checkpoint()]
    with pytest.raises(RuntimeError, match="source died"):
        run(wh, ScriptedSource(script, fail_at=2), run_id="r2")
    assert wh.query("SELECT id FROM raw.items").to_pylist() == [{"id": 1}]
    run(wh, ScriptedSource(script), run_id="r3")
    got = wh.query("SELECT id FROM raw.items ORDER BY id").to_pylist()
    assert [r["id"] for r in got] == [2, 3, 4]


def test_feed_raises_the_writes_error_in_the_loop():
    def write(reader: pa.RecordBatchReader) -> None:
        reader.read_next_batch()
        raise WarehouseError("disk full")

    feed = Feed(SCHEMA, write, depth=1)
    batch = rows((1, "a", 1)).data
    with pytest.raises(WarehouseError, match="disk full"):
        for _ in range(10):  # the write stops taking batches: put must not block forever
            feed.put(batch)
        feed.finish()


def test_feed_abort_makes_the_write_fail_and_waits_for_it():
    seen: list[BaseException] = []
    started = threading.Event()

    def write(reader: pa.RecordBatchReader) -> None:
        started.set()
        try:
            reader.read_all()
        except BaseException as exc:
            seen.append(exc)
            raise

    feed = Feed(SCHEMA, write)
    feed.put(rows((1, "a", 1)).data)
    started.wait(5)
    feed.abort()
    assert len(seen) == 1 and isinstance(seen[0], FeedAborted)


def test_feed_finish_returns_after_the_write_took_every_batch():
    taken: list[int] = []

    def write(reader: pa.RecordBatchReader) -> None:
        taken.extend(b.num_rows for b in reader)

    feed = Feed(SCHEMA, write)
    for n in (1, 2, 3):
        feed.put(rows(*[(i, "a", 1) for i in range(n)]).data)
    feed.finish()
    assert taken == [1, 2, 3]


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
    with pytest.raises(SchemaError, match="null primary key"):
        run(warehouse, source, mode=mode)
    assert source.closed.wait(10)
    assert warehouse.query("SELECT count(*) AS n FROM raw.items").to_pylist() == [{"n": 0}]
    status = warehouse.query("SELECT status FROM _mds_runs").to_pylist()
    assert status == [{"status": "failed"}]


@pytest.mark.parametrize("streaming", [True, False])
def test_a_deduped_first_load_goes_direct_and_keeps_the_latest_row_per_key(warehouse, streaming):
    """An empty region's first load of a deduped stream streams into the table and drops
    superseded rows at its commit (the highest cursor wins; a NULL cursor loses; a row read
    twice is kept once); the next commit of the same run, and a region loaded after another,
    still end with one row per key."""
    wh = warehouse if streaming else buffered(warehouse)
    script = [
        rows((1, "a", 5), (2, "b", 5), (3, "c-old", 1), (6, "f", 1)),
        rows((1, "a2", 6), (3, "c", 2), (4, "d", None), (4, "d2", 3), (6, "f", 1)),
        checkpoint(),
        rows((2, "b3", 6), (5, "e", 1)),
        checkpoint(),
    ]
    latest = [(1, "a2", 6), (2, "b3", 6), (3, "c", 2), (4, "d2", 3), (5, "e", 1), (6, "f", 1)]
    for region in ("eu", "us"):  # us: the table exists and holds another region's rows
        cfg = SourceConfig.model_validate(
            {"connector": "scripted", "schema": "raw", "streams": {"items": {"deletes": "none"}}}
        )
        plan = plan_stream("src", cfg, ScriptedSource([]).discover(), "items")
        entry = sync_stream(
            wh, ScriptedSource(script), plan, RunContext("p", region, "r1"), policy=EVERY_CHECKPOINT
        )
        got = wh.query(
            "SELECT id, name, updated_at FROM raw.items WHERE _mds_region = ? ORDER BY id",
            [region],
        ).to_pylist()
        assert [tuple(r.values()) for r in got] == latest, region
        assert (entry.inserted, entry.updated, entry.checkpoints) == (6, 1, 2), region
