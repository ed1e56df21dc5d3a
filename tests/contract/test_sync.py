"""The sync engine: what lands in the warehouse, and what state is stored, per mode."""

from __future__ import annotations

import pytest

from connectors.base import Checkpoint
from stack.config import SourceConfig
from stack.errors import SchemaError
from stack.load import EVERY_CHECKPOINT, CommitPolicy, RunContext, ledger, plan_stream, sync_stream
from tests.scripted import ScriptedSource, checkpoint, deletes, rows


def run(
    wh,
    source,
    mode="incremental_deduped",
    delete_mode="hard",
    region="eu",
    run_id="r1",
    policy=EVERY_CHECKPOINT,
    **stream,
):
    cfg = SourceConfig.model_validate(
        {
            "connector": "scripted",
            "schema": "raw",
            "streams": {"items": {"sync": mode, "deletes": delete_mode, **stream}},
        }
    )
    plan = plan_stream("src", cfg, source.discover(), "items")
    return sync_stream(wh, source, plan, RunContext("p", region, run_id), policy=policy)


def table(wh, region="eu"):
    result = wh.query(
        "SELECT id, name, updated_at, _mds_deleted_at IS NOT NULL AS deleted "
        "FROM raw.items WHERE _mds_region = ? ORDER BY id, updated_at",
        [region],
    )
    return [tuple(r.values()) for r in result.to_pylist()]


def state(wh, region="eu"):
    return ledger.read_state(wh, ledger.StreamKey("p", "src", "items", region))


def test_deduped_keeps_latest_cursor_per_key_and_stores_state(warehouse):
    source = ScriptedSource(
        [
            rows((1, "a", 1), (2, "b", 1), (1, "a2", 3), (1, "a-old", 2)),
            checkpoint(),
        ]
    )
    entry = run(warehouse, source)
    assert table(warehouse) == [(1, "a2", 3, False), (2, "b", 1, False)]
    assert state(warehouse) == {"position": 2}
    assert (entry.rows_read, entry.inserted, entry.updated, entry.status) == (4, 2, 0, "succeeded")


def test_second_run_resumes_from_committed_state_and_merges(warehouse):
    script = [rows((1, "a", 1), (2, "b", 1)), checkpoint()]
    source = ScriptedSource(script)
    run(warehouse, source)
    script += [rows((2, "b2", 5), (3, "c", 5)), checkpoint()]
    entry = run(warehouse, source, run_id="r2")
    assert source.states_seen == [None, {"position": 2}]
    assert table(warehouse) == [(1, "a", 1, False), (2, "b2", 5, False), (3, "c", 5, False)]
    assert (entry.rows_read, entry.inserted, entry.updated) == (2, 1, 1)


class SaysItsStateAgain(ScriptedSource):
    """Ends every resumed read on the state it was given, as a database source does when
    no row is newer than its cursor."""

    def read(self, stream, state):
        yield from super().read(stream, state)
        if state:
            yield Checkpoint("items", state)


def test_a_sync_with_nothing_new_commits_nothing_but_its_ledger_row(warehouse):
    source = SaysItsStateAgain([rows((1, "a", 1)), checkpoint()])
    run(warehouse, source)
    entry = run(warehouse, source, run_id="r2")
    assert (entry.status, entry.rows_read, entry.checkpoints) == ("succeeded", 0, 0)
    stored = warehouse.query(
        f"SELECT state, run_id FROM {warehouse.meta_schema}.{ledger.STATE_TABLE}"
    ).to_pylist()
    assert stored == [{"state": '{"position": 2}', "run_id": "r1"}]  # not written again
    runs = warehouse.query(
        f"SELECT run_id, status FROM {warehouse.meta_schema}.{ledger.RUNS_TABLE} ORDER BY run_id"
    ).to_pylist()
    assert runs == [
        {"run_id": "r1", "status": "succeeded"},
        {"run_id": "r2", "status": "succeeded"},
    ]
    assert table(warehouse) == [(1, "a", 1, False)]


def test_older_cursor_is_refused_or_quarantined_never_silently_dropped(warehouse):
    script = [rows((1, "new", 9)), checkpoint()]
    run(warehouse, ScriptedSource(script))
    script += [rows((1, "stale", 4), (2, "b", 5)), checkpoint()]
    with pytest.raises(SchemaError, match="cursor older than the row already loaded") as err:
        run(warehouse, ScriptedSource(script), run_id="r2")
    assert err.value.key == "updated_at"
    entry = run(warehouse, ScriptedSource(script), run_id="r3", on_bad_record="quarantine")
    assert (entry.rows_read, entry.inserted, entry.quarantined) == (2, 1, 1)
    assert table(warehouse) == [(1, "new", 9, False), (2, "b", 5, False)]
    kept = warehouse.query("SELECT run_id, reason, record FROM _mds_quarantine").to_pylist()
    assert kept == [
        {
            "run_id": "r3",
            "reason": "cursor went backwards: older than the row already loaded",
            "record": '{"id": 1, "name": "stale", "updated_at": 4}',
        }
    ]


def test_hard_delete_removes_row_and_later_upsert_in_same_checkpoint_wins(warehouse):
    source = ScriptedSource(
        [
            rows((1, "a", 1), (2, "b", 1), (3, "c", 1)),
            checkpoint(),
            deletes(1, 2),
            rows((2, "b-again", 7)),
            checkpoint(),
        ]
    )
    entry = run(warehouse, source)
    assert table(warehouse) == [(2, "b-again", 7, False), (3, "c", 1, False)]
    assert (entry.deleted, entry.inserted) == (2, 4)  # key 2 was removed, then inserted again


def test_soft_delete_marks_and_reappearing_key_is_undeleted(warehouse):
    script = [rows((1, "a", 1), (2, "b", 1)), checkpoint(), deletes(1, at=5), checkpoint()]
    run(warehouse, ScriptedSource(script), delete_mode="soft")
    assert table(warehouse) == [(1, "a", 1, True), (2, "b", 1, False)]
    script += [rows((1, "back", 9)), checkpoint()]
    run(warehouse, ScriptedSource(script), delete_mode="soft", run_id="r2")
    assert table(warehouse) == [(1, "back", 9, False), (2, "b", 1, False)]


def test_deletes_none_ignores_tombstones(warehouse):
    run(
        warehouse, ScriptedSource([rows((1, "a", 1)), deletes(1), checkpoint()]), delete_mode="none"
    )
    assert table(warehouse) == [(1, "a", 1, False)]


def test_full_refresh_overwrite_replaces_only_its_region(warehouse):
    run(warehouse, ScriptedSource([rows((1, "eu1", 1), (2, "eu2", 1))]), "full_refresh_overwrite")
    run(warehouse, ScriptedSource([rows((1, "us1", 1))]), "full_refresh_overwrite", region="us")
    run(warehouse, ScriptedSource([rows((3, "eu3", 1))]), "full_refresh_overwrite", run_id="r2")
    assert table(warehouse) == [(3, "eu3", 1, False)]
    assert table(warehouse, "us") == [(1, "us1", 1, False)]


def test_incremental_append_appends_only_new_records(warehouse):
    script = [rows((1, "a", 1)), checkpoint()]
    run(warehouse, ScriptedSource(script), "incremental_append")
    script += [rows((1, "a", 2)), checkpoint()]
    run(warehouse, ScriptedSource(script), "incremental_append", run_id="r2")
    assert table(warehouse) == [(1, "a", 1, False), (1, "a", 2, False)]


def test_full_refresh_append_adds_a_tagged_copy_per_run(warehouse):
    for run_id in ("r1", "r2"):
        run(
            warehouse,
            ScriptedSource([rows((1, "a", 1)), checkpoint()]),
            "full_refresh_append",
            run_id=run_id,
        )
    copies = warehouse.query("SELECT _mds_run_id FROM raw.items ORDER BY 1").column(0)
    assert copies.to_pylist() == ["r1", "r2"]


def test_regions_keep_separate_rows_and_state(warehouse):
    run(warehouse, ScriptedSource([rows((1, "eu", 1)), checkpoint()]))
    run(warehouse, ScriptedSource([rows((1, "us", 1)), deletes(1), checkpoint()]), region="us")
    assert table(warehouse) == [(1, "eu", 1, False)]
    assert table(warehouse, "us") == []
    assert state(warehouse) == {"position": 2} and state(warehouse, "us") == {"position": 3}


def test_crash_keeps_committed_checkpoints_and_rerun_converges(warehouse):
    script = [
        rows((1, "a", 1)),
        checkpoint(),
        rows((2, "b", 1)),
        checkpoint(),
        rows((3, "c", 1)),
        checkpoint(),
    ]
    with pytest.raises(RuntimeError, match="source died"):
        run(warehouse, ScriptedSource(script, fail_at=4))
    assert table(warehouse) == [(1, "a", 1, False), (2, "b", 1, False)]
    assert state(warehouse) == {"position": 4}
    runs = warehouse.query("SELECT status, error FROM _mds_runs").to_pylist()
    assert runs == [{"status": "failed", "error": "RuntimeError: source died at message 4"}]
    run(warehouse, ScriptedSource(script), run_id="r2")
    assert table(warehouse) == [(1, "a", 1, False), (2, "b", 1, False), (3, "c", 1, False)]


def test_null_primary_key_is_refused_with_the_column_named(warehouse):
    import pyarrow as pa

    from connectors.base import Batch
    from stack.errors import SchemaError
    from tests.scripted import SCHEMA

    bad = Batch(
        "items",
        pa.record_batch(
            [pa.array([None], pa.int64()), pa.array(["x"]), pa.array([1], pa.int64())],
            schema=SCHEMA,
        ),
    )
    with pytest.raises(SchemaError, match="null primary key") as err:
        run(warehouse, ScriptedSource([bad, checkpoint()]))
    assert err.value.key == "id"
    assert warehouse.columns("raw", "items") is not None
    assert table(warehouse) == []


def test_coalesced_commits_land_the_same_rows_and_the_last_state(warehouse):
    script = [
        rows((1, "a", 1)),
        checkpoint(),
        deletes(1),
        checkpoint(),
        rows((2, "b", 2)),
        checkpoint(),
    ]
    entry = run(warehouse, ScriptedSource(script), policy=CommitPolicy())
    assert entry.checkpoints == 1
    assert table(warehouse) == [(2, "b", 2, False)]
    assert state(warehouse) == {"position": 6}


def test_soft_delete_in_the_same_commit_lands_the_row_marked(warehouse):
    source = ScriptedSource([rows((1, "a", 1), (2, "b", 1)), deletes(1, at=5), checkpoint()])
    run(warehouse, source, delete_mode="soft")
    assert table(warehouse) == [(1, "a", 1, True), (2, "b", 1, False)]
    ledger_row = warehouse.query("SELECT deletes, rows_read, inserted FROM _mds_runs").to_pylist()
    assert ledger_row == [{"deletes": "soft", "rows_read": 2, "inserted": 2}]


def test_a_run_that_died_is_marked_aborted_by_the_next_run(warehouse):
    script = [rows((1, "a", 1)), checkpoint()]
    run(warehouse, ScriptedSource(script), run_id="killed")
    warehouse.execute("UPDATE _mds_runs SET status = 'running', finished_at = NULL")  # as if -9
    run(warehouse, ScriptedSource(script), run_id="next")
    runs = warehouse.query("SELECT run_id, status FROM _mds_runs ORDER BY started_at").to_pylist()
    assert runs == [
        {"run_id": "killed", "status": "aborted"},
        {"run_id": "next", "status": "succeeded"},
    ]
