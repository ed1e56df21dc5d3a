"""A backfill partition is replaced in one transaction, and an ill-defined one is refused.

What a failed partition leaves is compared with what was there before, every
column of every row (``_mds_*`` included): a failure at any warehouse call, or
a kill at any moment, leaves the table as it was before the partition or as
it is after it, never in between.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import connectors
from connectors.base import (
    SOURCE_DELETED_AT,
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    Message,
    State,
    StreamSpec,
)
from stack.config import load_config
from stack.errors import ConfigError, WarehouseError
from stack.run import backfill, pipeline
from stack.run.backfill import BackfillSelection
from stack.run.backfill import load as partition_load
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import SCALE
from tests.kill import run_worker
from tests.test_backfill import write_config

ROOT = Path(__file__).resolve().parent.parent
DEMO_STREAMS = ("customers", "orders", "order_items", "marketing_spend")
FEED_STREAMS = ("events", "items")
LOAD_COLUMNS = ("_mds_run_id", "_mds_loaded_at")


@pytest.fixture(autouse=True)
def _counting_connector(monkeypatch):
    monkeypatch.setitem(connectors.REGISTRY, "counting", "tests.counting_source:CountingSource")
    monkeypatch.setitem(connectors.REGISTRY, "history", "tests.test_backfill_atomic:HistorySource")


def everything(folder: Path, schema: str, streams: tuple[str, ...]) -> dict[str, list[tuple]]:
    """Every column of every row of each stream's table, sorted: the byte-for-byte view."""
    found = {}
    with DuckDBWarehouse(folder / "warehouse") as wh:
        for name in streams:
            rows = wh.query(f"SELECT * FROM {schema}.{name} ORDER BY ALL").to_pylist()
            found[name] = [tuple(r.values()) for r in rows]
    return found


def data_rows(folder: Path, schema: str, streams: tuple[str, ...]) -> dict[str, set[tuple]]:
    """The tables without the load's own columns (run id, load time): what a reload repeats."""
    found = {}
    with DuckDBWarehouse(folder / "warehouse") as wh:
        for name in streams:
            columns = [c for c in wh.columns(schema, name) if c not in LOAD_COLUMNS]
            quoted = ", ".join(f'"{c}"' for c in columns)
            rows = wh.query(f"SELECT {quoted} FROM {schema}.{name}").to_pylist()
            found[name] = {tuple(r.values()) for r in rows}
    return found


def backfill_ledger(folder: Path) -> list[tuple]:
    with DuckDBWarehouse(folder / "warehouse") as wh:
        if wh.columns(wh.meta_schema, backfill.BACKFILLS_TABLE) is None:
            return []
        rows = wh.query(
            "SELECT stream, partition_start, status FROM _mds_backfills ORDER BY ALL"
        ).to_pylist()
    return [tuple(r.values()) for r in rows]


# -- the demo, as shipped ---------------------------------------------------------------------


def demo_config(folder: Path, partition_by: bool) -> Path:
    """The shipped stack.yml, one region, smaller days, no dbt or checks."""
    config = yaml.safe_load((ROOT / "stack.yml").read_text())
    config["targets"]["local"]["path"] = str(folder / "warehouse")
    config["regions"] = {"eu": config["regions"]["eu"]}
    config["sources"]["shop"]["config"]["orders_per_day"] = 100
    for key in ("dbt", "checks", "lineage", "publish"):
        config.pop(key, None)
    if not partition_by:
        config.pop("backfill")
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def demo_days(path: Path, runs: int) -> None:
    config = load_config(path)
    for _ in range(runs):
        pipeline.run_pipeline(path, None, pipeline.select(config, "eu"), transform=False)


def test_the_shipped_demo_refuses_a_backfill_on_a_changing_cursor_and_converges_with_one(
    tmp_path,
):
    path = demo_config(tmp_path, partition_by=False)
    demo_days(path, 2)  # 30 days of history, then one more
    before = everything(tmp_path, "raw_shop", DEMO_STREAMS)

    with pytest.raises(ConfigError, match="partition_by") as refused:
        backfill.run_backfill(BackfillSelection(path, "2026-01-10", "2026-01-12", regions=("eu",)))
    assert "shop.customers" in str(refused.value) and "updated_at" in str(refused.value)
    assert everything(tmp_path, "raw_shop", DEMO_STREAMS) == before
    assert backfill_ledger(tmp_path) == []

    # As shipped (partition_by for the deduped streams) the same backfill works ...
    path = demo_config(tmp_path, partition_by=True)
    done = backfill.run_backfill(
        BackfillSelection(path, "2026-01-10", "2026-01-12", regions=("eu",))
    )
    assert {e.status for e in done} == {"succeeded"} and len(done) == 12
    assert all(e.replaced > 0 for e in done)
    # ... and, the history being the same, changes no value.
    assert data_rows(tmp_path, "raw_shop", DEMO_STREAMS) == data_rows_of(before)

    # The next sync converges to what a warehouse loaded from scratch holds.
    demo_days(path, 1)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    demo_days(demo_config(fresh, partition_by=True), 3)
    assert data_rows(tmp_path, "raw_shop", DEMO_STREAMS) == data_rows(
        fresh, "raw_shop", DEMO_STREAMS
    )


def data_rows_of(tables: dict[str, list[tuple]]) -> dict[str, set[tuple]]:
    """:func:`data_rows` of a snapshot taken with :func:`everything` (meta columns last:
    region, run id, load time, deleted-at)."""
    return {name: {(*r[:-4], r[-4], r[-1]) for r in rows} for name, rows in tables.items()}


def test_partitioning_on_an_immutable_cursor_or_another_column_is_allowed(tmp_path):
    path = demo_config(tmp_path, partition_by=False)
    # customers and orders would be cut on updated_at: refused, naming each fix.
    with pytest.raises(ConfigError, match=r"shop\.customers"):
        backfill.check_partitioning(
            BackfillSelection(path, "2026-01-10", "2026-01-10", streams=("customers",))
        )
    with pytest.raises(ConfigError, match=r"shop\.orders"):
        backfill.check_partitioning(
            BackfillSelection(path, "2026-01-10", "2026-01-10", streams=("orders",))
        )
    # order_items: the source declares its cursor immutable; marketing_spend is appended.
    backfill.check_partitioning(
        BackfillSelection(path, "2026-01-10", "2026-01-10", streams=("order_items",))
    )
    backfill.check_partitioning(
        BackfillSelection(path, "2026-01-10", "2026-01-10", streams=("marketing_spend",))
    )
    config = yaml.safe_load(path.read_text())
    config["backfill"] = {"partition_by": {"shop.orders": "updated_at"}}  # named, still its cursor
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="never changes"):
        backfill.check_partitioning(
            BackfillSelection(path, "2026-01-10", "2026-01-10", streams=("orders",))
        )


# -- a failure at every warehouse call --------------------------------------------------------

WAREHOUSE_CALLS = ("execute", "query", "append", "create_table", "add_columns", "drop_stage")


class Injected(WarehouseError):
    """The failure a test injects."""


class FailingWarehouse:
    """A warehouse whose ``fail_at``-th call (statement, append, commit) raises.

    Every other attribute is the real warehouse's: the engine runs unchanged.
    """

    def __init__(self, inner: Any, fail_at: int) -> None:
        self._inner = inner
        self.fail_at = fail_at
        self.calls = 0

    def _tick(self, what: str) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise Injected(f"injected failure at call {self.calls} ({what})")

    def __enter__(self) -> FailingWarehouse:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)

    @contextmanager
    def transaction(self):
        with self._inner.transaction():
            yield
            self._tick("commit")  # fails at the COMMIT: the transaction rolls back

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WAREHOUSE_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._tick(name)
            return attr(*args, **kwargs)

        return call


def test_a_failure_at_any_warehouse_call_leaves_the_partition_as_before_or_after(
    tmp_path, monkeypatch
):
    path = write_config(tmp_path, {"start": "2026-01-01", "end": "2026-01-06", "version": 1})
    pipeline.run_pipeline(path, None, pipeline.select(load_config(path), "us"), transform=False)
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "warehouse", pristine)
    before = everything(tmp_path, "raw_feed", FEED_STREAMS)
    write_config(tmp_path, {"start": "2026-01-01", "end": "2026-01-06", "version": 2})

    opened: list[FailingWarehouse] = []
    real_open = partition_load.open_target

    def failing_open(fail_at: int):
        def open_target(*args: Any) -> FailingWarehouse:
            opened.append(FailingWarehouse(real_open(*args), fail_at))
            return opened[-1]

        return open_target

    def one_partition() -> None:
        for stream in ("events", "items"):  # a deduped (staged) and an append (direct) load
            backfill.sync_partition(
                path, None, "us", "feed", stream, "2026-01-03", "2026-01-04", f"r-{stream}"
            )

    monkeypatch.setattr(partition_load, "open_target", failing_open(0))
    one_partition()
    after = everything(tmp_path, "raw_feed", FEED_STREAMS)
    assert all(after[s] != before[s] for s in FEED_STREAMS)
    total = sum(w.calls for w in opened)
    assert total > 20  # every statement, append and commit of the two loads was counted

    outcomes = set()
    for fail_at in range(1, total + 1):
        shutil.rmtree(tmp_path / "warehouse")
        shutil.copytree(pristine, tmp_path / "warehouse")
        monkeypatch.setattr(partition_load, "open_target", failing_open(fail_at))
        with contextlib.suppress(Injected):
            one_partition()
        monkeypatch.setattr(partition_load, "open_target", real_open)
        now, ledger = everything(tmp_path, "raw_feed", FEED_STREAMS), backfill_ledger(tmp_path)
        replaced = tuple(now[s] != before[s] for s in FEED_STREAMS)
        for stream, changed in zip(FEED_STREAMS, replaced, strict=True):
            if changed:  # then it is the whole partition, and nothing else
                assert data_rows_of(now)[stream] == data_rows_of(after)[stream], fail_at
                assert outside(now[stream]) == outside(before[stream]), fail_at
            done = (stream, date(2026, 1, 3), "succeeded") in ledger
            assert done == changed, (fail_at, stream)
        outcomes.add(replaced)
        one_partition()  # rerunning converges
        assert data_rows(tmp_path, "raw_feed", FEED_STREAMS) == data_rows_of(after)
    assert outcomes == {(False, False), (True, False), (True, True)}


def outside(rows: list[tuple]) -> list[tuple]:
    """The rows of other days than the partition's (2026-01-03), every column."""
    return [r for r in rows if r[1] != date(2026, 1, 3)]


# -- kill -9 at random moments ----------------------------------------------------------------

BACKFILL_WORKER = """
import sys
sys.path.insert(0, {root!r})
import connectors
connectors.REGISTRY["counting"] = "tests.counting_source:CountingSource"
from stack.run import backfill
print("ready", flush=True)
backfill.run_backfill(backfill.BackfillSelection({path!r}, "2026-01-01", "2026-01-04"))
print("done", flush=True)
"""


def test_kill_9_at_random_moments_of_a_multi_day_backfill_leaves_whole_partitions(tmp_path):
    source = {"start": "2026-01-01", "end": "2026-01-05", "rows_per_day": 100}
    path = write_config(tmp_path, {**source, "version": 1})
    pipeline.run_pipeline(path, None, pipeline.select(load_config(path), "us"), transform=False)
    before = everything(tmp_path, "raw_feed", FEED_STREAMS)
    write_config(tmp_path, {**source, "version": 2})
    script = tmp_path / "worker.py"
    script.write_text(BACKFILL_WORKER.format(root=str(ROOT), path=str(path)))
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "warehouse", pristine)

    started = time.perf_counter()
    whole = run_worker(script, kill_after=None)
    span = time.perf_counter() - started - whole  # the backfill alone, after "ready"
    rng = random.Random(20261206)
    kills = 0
    for _ in range(4 * SCALE):
        shutil.rmtree(tmp_path / "warehouse")
        shutil.copytree(pristine, tmp_path / "warehouse")
        kills += run_worker(script, kill_after=rng.uniform(0, span)) is None
        now = everything(tmp_path, "raw_feed", FEED_STREAMS)
        for stream in FEED_STREAMS:
            by_day: dict[date, set[int]] = {}
            for row in now[stream]:
                by_day.setdefault(row[1], set()).add(row[2] // 100_000)
            assert len(now[stream]) == len(before[stream]) == 4 * 100
            assert all(len(versions) == 1 for versions in by_day.values()), by_day
            reloaded = [d for d in sorted(by_day) if by_day[d] == {2}]
            assert reloaded == sorted(by_day)[: len(reloaded)]  # whole days, in order
            old = [r for r in now[stream] if r[1] not in reloaded]
            assert old == [r for r in before[stream] if r[1] not in reloaded]  # untouched
        backfill.run_backfill(
            BackfillSelection(path, "2026-01-01", "2026-01-04")
        )  # resumes, converges
        for rows in data_rows(tmp_path, "raw_feed", FEED_STREAMS).values():
            assert {r[2] // 100_000 for r in rows} == {2} and len(rows) == 4 * 100
    assert kills >= 1  # at least one kill landed inside the backfill


# -- random windows over random histories -----------------------------------------------------

HISTORY_SCHEMA = pa.schema(
    [("id", pa.int64()), ("created", pa.date32()), ("updated", pa.int64()), ("value", pa.int64())]
)
DAY0 = date(2026, 1, 1)


class HistorySource:
    """A table's change history, replayed up to ``now``: ``log`` appends every version,
    ``items`` keeps the latest by key and sees the tombstones. ``created`` never changes
    for an id; ``updated`` (the cursor) is the change's position in the history."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.ops = [tuple(op) for op in config["ops"]]  # (kind, id, value)
        self.now = int(config["now"])

    def discover(self) -> Catalog:
        modes = ("incremental_append", "incremental_deduped")
        fixed = ("id", "created")
        return Catalog(
            (
                StreamSpec("log", HISTORY_SCHEMA, ("id",), "updated", modes, immutable=fixed),
                StreamSpec(
                    "items", HISTORY_SCHEMA, ("id",), "updated", modes, True, immutable=fixed
                ),
            )
        )

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        start = state["pos"] if state else 0
        for position in range(start, self.now):
            kind, key, value = self.ops[position]
            if kind == "upsert":
                row = [[key], [DAY0 + timedelta(days=key % 5)], [position], [value]]
                yield Batch(stream.name, pa.record_batch(row, schema=HISTORY_SCHEMA))
            elif stream.name == "items":
                gone = {"id": [key], SOURCE_DELETED_AT: pa.array([position], pa.timestamp("us"))}
                yield Deletes(stream.name, pa.record_batch(gone))
        yield Checkpoint(stream.name, {"pos": self.now})


def history_config(folder: Path, ops: list, now: int) -> Path:
    config = {
        "name": "hist",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "warehouse")}},
        "regions": {"us": {}},
        "sources": {
            "h": {
                "connector": "history",
                "config": {"ops": [list(op) for op in ops], "now": now},
                "schema": "raw_h",
                "streams": {
                    "log": {"sync": "incremental_append", "deletes": "none"},
                    "items": {"sync": "incremental_deduped", "deletes": "hard"},
                },
            }
        },
        "backfill": {"partition_by": {"h.log": "created", "h.items": "created"}},
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@st.composite
def histories(draw) -> tuple[list, list]:
    """A history of upserts and deletes of 8 ids, and the steps taken along it: a sync up
    to a point, or a backfill of a window of days (a day's ids: ``id % 5``)."""
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["upsert", "upsert", "delete"]),
                st.integers(0, 7),
                st.integers(0, 99),
            ),
            min_size=1,
            max_size=25,
        )
    )
    steps, now = [], 0
    for _ in range(draw(st.integers(1, 4))):
        now = draw(st.integers(now, len(ops)))
        steps.append(("sync", now))
        first = draw(st.integers(0, 4))
        steps.append(("backfill", now, first, draw(st.integers(first, 4))))
    return ops, steps


@given(history=histories())
@example(history=([("delete", 1, 0), ("upsert", 1, 0)], [("sync", 2), ("backfill", 2, 0, 0)]))
@settings(
    max_examples=6 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example loads a warehouse
)
def test_random_backfills_over_random_histories_equal_a_full_reload(history):
    ops, steps = history
    with tempfile.TemporaryDirectory() as folder:
        loaded, fresh = Path(folder) / "loaded", Path(folder) / "fresh"
        loaded.mkdir()
        fresh.mkdir()
        for step in steps:
            path = history_config(loaded, ops, step[1])
            if step[0] == "sync":
                pipeline.run_pipeline(
                    path, None, pipeline.select(load_config(path), "us"), transform=False
                )
            else:
                first, last = (DAY0 + timedelta(days=d) for d in step[2:])
                backfill.run_backfill(BackfillSelection(path, first, last), force=True)
        path = history_config(fresh, ops, steps[-1][1])
        pipeline.run_pipeline(path, None, pipeline.select(load_config(path), "us"), transform=False)
        got = data_rows(loaded, "raw_h", ("log", "items"))
        assert got == data_rows(fresh, "raw_h", ("log", "items"))
