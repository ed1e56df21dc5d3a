"""A full refresh (``--full-refresh``): every mode reads from scratch and replaces the region's
rows in one transaction, leaving what a first read of the source leaves.

Rows deleted at the source since the last run are gone afterwards; the stored state is the
new read's; the change is audited in ``_mds_state_audit``. A refresh that fails leaves the
rows and the state as they were, and a reader in the middle of one sees the old rows.
"""

from __future__ import annotations

import getpass
import json
import threading
from collections.abc import Iterator

import pytest

from connectors.base import ConfiguredStream, Message, State
from stack.load import EVERY_CHECKPOINT, ledger, repair
from stack.load.ledger import StreamKey
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import (
    PIPELINE,
    SOURCE,
    STREAM,
    elsewhere,
    expected_rows,
    merge_path_only,
    run_ledger,
    stored_state,
    sync,
    table_rows,
)
from tests.scripted import ALL_MODES, ScriptedSource, checkpoint, deletes, rows

BEFORE: list[Message] = [
    rows((1, "a", 1), (2, "b", 1), (3, "c", 1)),
    checkpoint(),
    rows((4, "d", 2)),
    deletes(3, at=3),
    checkpoint(),
]
NOW: list[Message] = [
    rows((2, "b2", 5), (3, "c", 1)),
    checkpoint(),
    rows((5, "e", 6)),
    checkpoint(),
]
"""The source now: 1 and 4 were deleted, 2 changed, 3 came back, 5 is new."""
CASES = [(mode, "hard") for mode in ALL_MODES] + [("incremental_deduped", "soft")]
FAILING = [("incremental_append", "hard"), ("incremental_deduped", "soft")]
"""A direct load (rows stream into the table) and a staged one (a merge)."""


def key(region: str) -> StreamKey:
    return StreamKey(PIPELINE, SOURCE, STREAM, region)


def refresh(wh, source, mode: str, deletes: str, region: str = "eu", run_id: str = "r2"):
    """A full refresh of the region, as ``--full-refresh`` runs it."""
    swap = repair.full_refresh(wh, key(region), run_id)
    return sync(
        wh,
        source,
        mode=mode,
        deletes=deletes,
        region=region,
        run_id=run_id,
        policy=EVERY_CHECKPOINT,
        replace=swap,
    )


def every_row(wh) -> list[tuple]:
    """Every column of every row of ``raw.items``, in a fixed order."""
    found = wh.query("SELECT * FROM raw.items").to_pylist()
    return sorted((tuple(r.values()) for r in found), key=repr)


def first_runs(wh, mode: str, deletes: str) -> None:
    for region in ("eu", "us"):
        sync(
            wh,
            ScriptedSource(BEFORE),
            mode=mode,
            deletes=deletes,
            region=region,
            run_id="r1",
            policy=EVERY_CHECKPOINT,
        )


@pytest.mark.parametrize(("mode", "deletes"), CASES)
def test_a_full_refresh_leaves_what_a_first_read_of_the_source_leaves(warehouse, mode, deletes):
    merge_path_only(warehouse, mode)
    first_runs(warehouse, mode, deletes)
    other = elsewhere(warehouse, "eu")
    source = ScriptedSource(NOW)

    entry = refresh(warehouse, source, mode, deletes)

    assert source.states_seen == [None]  # from scratch, whatever the stored state
    assert table_rows(warehouse, "eu", mode) == expected_rows(mode, deletes, [("r2", NOW)])
    assert stored_state(warehouse, "eu") == {"position": len(NOW)}
    assert (entry.full_refresh, entry.checkpoints, entry.status) == (True, 1, "succeeded")
    assert elsewhere(warehouse, "eu") == other
    count = ledger.ledger_source_count(warehouse, PIPELINE)(SOURCE, STREAM, "eu")
    assert count == len(table_rows(warehouse, "eu", mode))
    (change,) = ledger.state_changes(warehouse, PIPELINE)
    assert (change["action"], change["user"], change["run_id"]) == (
        "full_refresh",
        getpass.getuser(),
        "r2",
    )
    assert json.loads(change["before"]) == {"position": len(BEFORE)}
    assert json.loads(change["after"]) == {"position": len(NOW)}

    # The next run resumes from the refresh's state.
    source.script = [*NOW, rows((6, "f", 7)), checkpoint()]
    sync(
        warehouse, source, mode=mode, deletes=deletes, region="eu", run_id="r3",
        policy=EVERY_CHECKPOINT,
    )  # fmt: skip
    assert source.states_seen[-1] == {"position": len(NOW)}


@pytest.mark.parametrize(("mode", "deletes"), FAILING)
def test_a_failed_full_refresh_leaves_the_rows_and_the_state_and_audits_nothing(
    warehouse, mode, deletes
):
    first_runs(warehouse, mode, deletes)
    rows_before = every_row(warehouse)

    with pytest.raises(RuntimeError, match="source died"):
        refresh(warehouse, ScriptedSource(NOW, fail_at=2), mode, deletes)

    assert every_row(warehouse) == rows_before
    assert stored_state(warehouse, "eu") == {"position": len(BEFORE)}
    assert ledger.state_changes(warehouse, PIPELINE) == []
    assert run_ledger(warehouse, "eu")[-1]["status"] == "failed"


def test_a_full_refresh_whose_read_checkpoints_nothing_leaves_no_state(warehouse):
    first_runs(warehouse, "incremental_deduped", "hard")
    refresh(warehouse, ScriptedSource([rows((7, "g", 9))]), "incremental_deduped", "hard")
    assert table_rows(warehouse, "eu", "incremental_deduped") == [("", 7, "g", 9, None)]
    assert stored_state(warehouse, "eu") is None  # the old one covered rows that are gone
    (change,) = ledger.state_changes(warehouse, PIPELINE)
    assert json.loads(change["before"]) == {"position": len(BEFORE)} and change["after"] is None


class Paused:
    """A source whose read stops after its first batch until ``go`` is set; ``paused`` is
    set once it has stopped (the load has taken that batch)."""

    def __init__(self, inner: ScriptedSource) -> None:
        self.inner, self.name = inner, inner.name
        self.paused, self.go = threading.Event(), threading.Event()

    def discover(self):
        return self.inner.discover()

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        for index, message in enumerate(self.inner.read(stream, state)):
            yield message
            if index == 0:
                self.paused.set()
                assert self.go.wait(60), "the test never let the read go on"


@pytest.mark.parametrize("mode", ["incremental_append", "incremental_deduped"])
def test_a_reader_during_a_full_refresh_sees_the_old_rows_then_the_new(tmp_path, mode):
    """Direct (append: rows stream into the table in an open transaction) and staged
    (deduped) loads; a second connection counts the region's rows meanwhile."""

    def region_rows(wh) -> list[tuple]:
        found = wh.query("SELECT id, name FROM raw.items WHERE _mds_region = 'eu' ORDER BY ALL")
        return [tuple(r.values()) for r in found.to_pylist()]

    with DuckDBWarehouse(tmp_path / "wh", threads=1) as wh:
        first_runs(wh, mode, "hard")
        old, old_state = region_rows(wh), stored_state(wh, "eu")
        source = Paused(ScriptedSource(NOW))
        done: list[object] = []

        def reload() -> None:
            with wh.cursor() as writer:
                try:
                    done.append(refresh(writer, source, mode, "hard"))
                except BaseException as exc:
                    done.append(exc)
                    source.paused.set()

        worker = threading.Thread(target=reload)
        worker.start()
        try:
            assert source.paused.wait(60)
            with wh.cursor() as reader:
                assert region_rows(reader) == old
                assert stored_state(reader, "eu") == old_state
        finally:
            source.go.set()
            worker.join(60)
        assert not isinstance(done[0], BaseException), done
        with wh.cursor() as reader:
            new = region_rows(reader)
            assert new == sorted({(r[1], r[2]) for r in expected_rows(mode, "hard", [("", NOW)])})
            assert stored_state(reader, "eu") == {"position": len(NOW)}
