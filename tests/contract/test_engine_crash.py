"""Exactly-once under failures: a fault at any step of a sync, then a rerun.

A :class:`FaultyWarehouse` wraps the warehouse under test and fails once, at
its N-th step: a step is any call of the warehouse protocol, plus the end of
every block such a call opens (a transaction's commit, a lock's release),
before and after the real end. After every fault the region's table must
equal the reference model for the state that was committed (so the state
matches the data), and the next run must carry on to the exact table.

SIGKILL: ``tests/crash_worker.py`` syncs a long script in a subprocess that is
killed at random moments; after each kill the state must still match the data,
and the final run must land the source exactly.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import Checkpoint, Message
from stack.errors import WarehouseError
from stack.load import EVERY_CHECKPOINT
from stack.warehouse.base import Warehouse
from tests import crash_worker
from tests.contract import (
    HISTORY,
    POLICIES,
    SCALE,
    Adapter,
    examples,
    expected_rows,
    merge_path_only,
    records_read,
    run_ledger,
    stored_state,
    sync,
    table_rows,
)
from tests.scripted import ScriptedSource
from tests.strategies import Script, change_rounds, scripts

ROOT = Path(__file__).resolve().parent.parent.parent


class FaultyWarehouse:
    """A warehouse that fails once, at step ``fail_at``, and records every step it saw."""

    PURE = frozenset({"stage_ref", "dbt_output"})
    """Methods that only compute a value: no I/O, nothing to fail."""

    def __init__(self, wh: Warehouse, fail_at: int | None = None) -> None:
        self._wh = wh
        self._fail_at = fail_at
        self.steps: list[str] = []

    def step(self, what: str) -> None:
        self.steps.append(what)
        if len(self.steps) - 1 == self._fail_at:
            raise WarehouseError(f"injected fault at step {self._fail_at}: {what}")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._wh, name)
        if not callable(attr) or name in self.PURE:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            what = f"{name} {args[0][:60]}" if name in ("execute", "query") else name
            self.step(what)
            result = attr(*args, **kwargs)
            if isinstance(result, AbstractContextManager):
                return _Block(self, what, result)
            return result

        return call


class _Block:
    """A block opened by a warehouse call: its end is two more steps (before and after)."""

    def __init__(self, wh: FaultyWarehouse, what: str, inner: AbstractContextManager) -> None:
        self.wh, self.what, self.inner = wh, what, inner

    def __enter__(self) -> Any:
        return self.inner.__enter__()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool | None:
        if kind is not None:
            return self.inner.__exit__(kind, exc, tb)
        try:
            self.wh.step(f"{self.what}: end of block")
        except WarehouseError as fault:
            self.inner.__exit__(type(fault), fault, fault.__traceback__)
            raise
        self.inner.__exit__(None, None, None)
        self.wh.step(f"{self.what}: after the block")
        return None


def position(wh: Warehouse, region: str) -> int:
    state = stored_state(wh, region)
    return state["position"] if state else 0


def committed_rows(wh: Warehouse, region: str, mode: str, deletes: str, script: list[Message]):
    """What the region must hold given its stored state (the state matches the data)."""
    return expected_rows(mode, deletes, [("", script[: position(wh, region)])])


def probe_steps(wh: Warehouse, region: str, per_run: int, **options) -> list[str]:
    """The steps of a run that reads ``per_run`` rounds (after a first run made the tables)."""
    rounds = change_rounds(random.Random(1), 1 + per_run, 3)
    sync(wh, ScriptedSource(rounds[0]), region=region, run_id="probe-1", **options)
    clean = FaultyWarehouse(wh)
    said = [m for r in rounds for m in r]
    sync(clean, ScriptedSource(said), region=region, run_id="probe-2", **options)
    return clean.steps


WRITE_PATHS = [
    # (mode, deletes, rounds each run reads): every write path, every step of it
    ("incremental_deduped", "soft", 1),  # staged: soft-delete UPDATE, MERGE
    (HISTORY, "soft", 1),  # staged: versions computed, current ones ended, new ones inserted
    ("incremental_append", "none", 2),  # direct: appends inside a transaction, then the next
    ("full_refresh_overwrite", "none", 1),  # direct: clear the region, append, at the end
]


@pytest.mark.parametrize(("mode", "deletes", "per_run"), WRITE_PATHS)
def test_a_fault_at_any_step_leaves_state_matching_data_and_a_rerun_exact(
    warehouse, regions, mode: str, deletes: str, per_run: int
):
    """One fault at each step of a run, one run after another; then a clean rerun.

    Incremental runs read ``per_run`` rounds past the committed state (a commit
    each); full refreshes read a longer script each time, so that their old and
    new tables differ.
    """
    merge_path_only(warehouse, mode)
    if mode == "incremental_append" and not warehouse.capabilities.transactional_ddl:
        pytest.skip(
            "without transactional DDL every load is staged: the staged commit, one per "
            "checkpoint, is the incremental_deduped case's (the append path is DuckDB's)"
        )
    options = dict(mode=mode, deletes=deletes, policy=EVERY_CHECKPOINT)
    steps = probe_steps(warehouse, regions(), per_run, **options)
    rounds = change_rounds(random.Random(2), per_run * len(steps) + 2, 3)
    script = [m for r in rounds for m in r]
    width, region, read = per_run * len(rounds[0]), regions(), len(rounds[0])
    # A first clean run, as in the probe: a region's first rows are inserted, not merged,
    # so its steps differ from those of the runs after it.
    sync(warehouse, ScriptedSource(script[:read]), region=region, run_id="first", **options)
    for fault, step in enumerate(steps):
        start = position(warehouse, region)
        said = script[: start + width] if mode.startswith("incremental") else script[: read + width]
        read = len(said)
        faulty = FaultyWarehouse(warehouse, fail_at=fault)
        with pytest.raises(WarehouseError, match="injected fault"):
            sync(faulty, ScriptedSource(said), region=region, run_id=f"fault-{fault}", **options)
        assert faulty.steps[: fault + 1] == steps[: fault + 1], "not the steps of the probe"
        ends = [i + 1 for i, m in enumerate(said) if isinstance(m, Checkpoint) and i >= start]
        assert position(warehouse, region) in [start, *ends]
        assert table_rows(warehouse, region, mode) == committed_rows(
            warehouse, region, mode, deletes, script
        ), f"after a fault at step {fault}: {step}"
        runs = {r["run_id"]: r["status"] for r in run_ledger(warehouse, region)}
        assert runs.get(f"fault-{fault}") != "running", f"after a fault at step {fault}: {step}"

    committed = position(warehouse, region)
    entry = sync(warehouse, ScriptedSource(script), region=region, run_id="rerun", **options)
    assert table_rows(warehouse, region, mode) == expected_rows(mode, deletes, [("", script)])
    assert stored_state(warehouse, region) == {"position": len(script)}
    read = script[committed:] if mode.startswith("incremental") else script
    assert entry.rows_read == records_read(read)
    assert run_ledger(warehouse, region)[-1]["status"] == "succeeded"


@pytest.mark.parametrize("mode", ["incremental_deduped", HISTORY])
def test_a_fault_at_any_step_of_a_first_load_leaves_state_matching_data(
    warehouse, regions, mode: str
):
    """A region's first load of a deduped (or history) stream without deletes (on DuckDB:
    straight into the table, duplicates dropped, or made versions, at the commit): one
    fault at each of its steps, each in a fresh region of a table another region fills;
    every region then holds what its stored state covers, and a rerun lands the model's
    table."""
    caps = warehouse.capabilities
    if caps.concurrent_writers or not caps.transactional_ddl:
        pytest.skip("every load is staged here: the staged path is the other fault test's")
    options = dict(mode=mode, deletes="none", policy=EVERY_CHECKPOINT)
    script = change_rounds(random.Random(3), 1, 3)[0]
    sync(warehouse, ScriptedSource(script), region=regions(), run_id="other", **options)
    clean = FaultyWarehouse(warehouse)
    sync(clean, ScriptedSource(script), region=regions(), run_id="probe", **options)
    region, used = regions(), []
    for fault, step in enumerate(clean.steps):
        faulty = FaultyWarehouse(warehouse, fail_at=fault)
        with pytest.raises(WarehouseError, match="injected fault"):
            sync(faulty, ScriptedSource(script), region=region, run_id=f"fault-{fault}", **options)
        assert table_rows(warehouse, region, mode) == committed_rows(
            warehouse, region, mode, "none", script
        ), f"after a fault at step {fault}: {step}"
        if position(warehouse, region):  # it committed: the next fault needs an empty region
            used.append(region)
            region = regions()
    for again in [*used, region]:
        sync(warehouse, ScriptedSource(script), region=again, run_id="rerun", **options)
        assert table_rows(warehouse, again, mode) == expected_rows(mode, "none", [("", script)]), (
            f"a rerun in {again}"
        )


def test_a_run_that_fails_before_reading_is_recorded_as_failed(warehouse, regions):
    """A fault after the run took its lock but before the source was read: still in the ledger."""
    options = dict(mode="incremental_deduped", deletes="hard", policy=EVERY_CHECKPOINT)
    steps = probe_steps(warehouse, regions(), 1, **options)
    region, script = regions(), change_rounds(random.Random(2), 1, 3)[0]
    unrecorded = []
    for fault, step in enumerate(steps[1:], 1):  # step 0 takes the lock: no run yet
        source = ScriptedSource(script)
        with pytest.raises(WarehouseError, match="injected fault"):
            sync(
                FaultyWarehouse(warehouse, fail_at=fault),
                source,
                region=region,
                run_id=f"fault-{fault}",
                **options,
            )
        if source.states_seen:
            break
        runs = {r["run_id"]: r["status"] for r in run_ledger(warehouse, region)}
        if runs.get(f"fault-{fault}") != "failed":
            unrecorded.append(step)
    assert fault > 1, "the probe found no step before the read"
    assert unrecorded == []


SourceCase = tuple[str, str]
SOURCE_CASES = [
    ("incremental_deduped", "hard"),
    ("incremental_deduped", "soft"),
    (HISTORY, "hard"),
    (HISTORY, "soft"),
    ("incremental_append", "hard"),
    ("incremental_append", "soft"),
    ("incremental_append", "none"),
    ("full_refresh_overwrite", "none"),
]


@given(
    script=scripts(max_rounds=1),
    case=st.sampled_from(SOURCE_CASES),
    policy=st.sampled_from(sorted(POLICIES)),
    data=st.data(),
)
@examples(5)
def test_a_source_that_dies_anywhere_then_a_rerun_gives_the_model_table(
    warehouse, regions, script: Script, case: SourceCase, policy: str, data: st.DataObject
):
    """The read dies at a random message: what is committed matches the state; a rerun is exact.

    With a commit per checkpoint, exactly the checkpoints before the failure are committed.
    """
    (mode, deletes), said = case, script.until(1)
    fail_at = data.draw(st.integers(0, len(said) - 1), label="fail at")
    schema = "history" if mode == HISTORY else "raw"  # its table has columns of its own
    region = regions()
    options = dict(mode=mode, deletes=deletes, policy=POLICIES[policy], schema=schema)
    with pytest.raises(RuntimeError, match="source died"):
        sync(warehouse, ScriptedSource(said, fail_at), region=region, run_id="dies", **options)
    committed = position(warehouse, region)
    checkpoints = [0] + [i + 1 for i, m in enumerate(said[:fail_at]) if isinstance(m, Checkpoint)]
    if POLICIES[policy] == EVERY_CHECKPOINT and mode.startswith("incremental"):
        assert committed == checkpoints[-1]
    assert committed in checkpoints
    assert table_rows(warehouse, region, mode, schema) == committed_rows(
        warehouse, region, mode, deletes, said
    )
    rerun = sync(warehouse, ScriptedSource(said), region=region, run_id="rerun", **options)
    assert table_rows(warehouse, region, mode, schema) == expected_rows(mode, deletes, [("", said)])
    assert stored_state(warehouse, region) == {"position": len(said)}
    assert rerun.rows_read == records_read(
        said[committed:] if mode != "full_refresh_overwrite" else said
    )
    assert [(r["run_id"], r["status"]) for r in run_ledger(warehouse, region)] == [
        ("dies", "failed"),
        ("rerun", "succeeded"),
    ]


def test_a_failed_full_refresh_append_leaves_no_partial_copy(warehouse, regions):
    """full_refresh_append: a run dies after some commits, then a rerun: one copy per success."""
    region, options = regions(), dict(mode="full_refresh_append", deletes="none")
    said = [m for r in change_rounds(random.Random(3), 3, 3) for m in r]
    sync(
        warehouse,
        ScriptedSource(said),
        region=region,
        run_id="first",
        policy=EVERY_CHECKPOINT,
        **options,
    )
    in_second_round = next(i for i, m in enumerate(said) if isinstance(m, Checkpoint)) + 2
    with pytest.raises(RuntimeError, match="source died"):
        sync(
            warehouse,
            ScriptedSource(said, fail_at=in_second_round),
            region=region,
            run_id="dies",
            policy=EVERY_CHECKPOINT,
            **options,
        )
    sync(
        warehouse,
        ScriptedSource(said),
        region=region,
        run_id="rerun",
        policy=EVERY_CHECKPOINT,
        **options,
    )
    assert table_rows(warehouse, region, "full_refresh_append") == expected_rows(
        "full_refresh_append", "none", [("first", said), ("rerun", said)]
    )


# -- SIGKILL ----------------------------------------------------------------------------------
WORKER = ROOT / "tests" / "crash_worker.py"
KILLS = 3 * SCALE


def kill_at_random(worker: subprocess.Popen, rng: random.Random) -> str:
    """SIGKILL ``worker`` after a random number of its batches, at a random point of a commit.

    The worker prints ``read`` after each batch; the longest gap between two is
    about a commit, so a pause drawn up to it lands anywhere in one.

    Returns:
        When the kill came, or "" if the worker had ended before it.
    """
    markers, seen, longest, last = rng.randrange(1, 2 * crash_worker.ROUNDS), 0, 0.0, 0.0
    while seen < markers and worker.stdout.readline() == "read\n":
        now = time.monotonic()
        seen, longest, last = seen + 1, max(longest, now - last) if last else 0.0, now
    pause = rng.uniform(0, longest)
    time.sleep(pause)
    alive = worker.poll() is None
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    return f"{pause:.3f}s after batch {seen}" if alive else ""


def test_sync_processes_killed_at_random_moments_then_a_rerun_land_the_source_exactly(
    adapter: Adapter, warehouse_location: Path
):
    if not adapter.shared_location:
        pytest.skip("this adapter's warehouse cannot be opened by another process")
    rng = random.Random()
    script = crash_worker.script()
    kills = []
    for life in range(KILLS):
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), adapter.name, str(warehouse_location), str(life)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert worker.stdout.readline() == "ready\n", worker.communicate()[1]
        kills.append(kill_at_random(worker, rng))
        with adapter.open(warehouse_location) as wh:
            for region, mode, deletes, schema in crash_worker.STREAMS:
                assert table_rows(wh, region, mode, schema) == committed_rows(
                    wh, region, mode, deletes, script
                ), f"life {life} killed {kills[-1]}: {region} does not match its state"
    assert any(kills), "every worker had ended before its kill"

    with adapter.open(warehouse_location) as wh:
        for region, mode, deletes, schema in crash_worker.STREAMS:
            sync(
                wh,
                ScriptedSource(script),
                mode=mode,
                deletes=deletes,
                region=region,
                schema=schema,
                run_id="rerun",
                policy=EVERY_CHECKPOINT,
            )
            expected = expected_rows(mode, deletes, [("", script)])
            assert table_rows(wh, region, mode, schema) == expected
            assert stored_state(wh, region) == {"position": len(script)}
            last = run_ledger(wh, region)[-1]
            assert (last["run_id"], last["status"]) == ("rerun", "succeeded")
