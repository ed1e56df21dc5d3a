"""``incremental_deduped_history`` beyond the model: change times, full reads, new columns.

The model-based test (``test_engine_model``) checks which versions a history table holds;
these check the times they are valid, and the ways a history table is written besides
records and tombstones: a full refresh, snapshot delete detection, schema evolution, and
records older than the current version.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pyarrow as pa
import pytest

from connectors.base import Batch, Catalog
from stack.config import SourceConfig
from stack.errors import ConfigError, SchemaError
from stack.load import plan_stream
from stack.load.staged import Replacement
from stack.sql import table
from stack.warehouse.base import Warehouse
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import HISTORY, POLICIES, SCHEMA, STREAM, check_history, sync
from tests.scripted import SCHEMA as ITEMS
from tests.scripted import ScriptedSource, checkpoint, deletes, rows

T0 = datetime(2026, 12, 1, 9, 0)


def changes(*records: tuple[int, str, int], at: list[datetime]) -> Batch:
    """Records with the times the source changed them (a CDC source's commit times)."""
    return Batch(rows(*records).stream, rows(*records).data, pa.array(at, pa.timestamp("us")))


def versions(wh: Warehouse, region: str, *columns: str) -> list[tuple]:
    """The region's versions, by key and start: (id, name, current, *columns)."""
    extra = "".join(f", {c}" for c in columns)
    result = wh.query(
        f"SELECT id, name, _mds_is_current{extra} FROM {table(SCHEMA, STREAM)} "
        "WHERE _mds_region = ? ORDER BY id, _mds_valid_from, _mds_valid_to NULLS LAST",
        [region],
    )
    return [tuple(r.values()) for r in result.to_pylist()]


def run(wh: Warehouse, region: str, source: ScriptedSource, run_id: str, **options) -> None:
    options.setdefault("deletes", "hard")
    options.setdefault("policy", POLICIES["every checkpoint"])
    sync(wh, source, mode=HISTORY, region=region, run_id=run_id, **options)


class Declared(ScriptedSource):
    """The scripted source, its stream declared otherwise (``changes``: fields of its spec)."""

    def __init__(self, script: list, **changes: object) -> None:
        super().__init__(script)
        self.changes = changes

    def discover(self) -> Catalog:
        spec = super().discover().stream("items")
        return Catalog((dataclasses.replace(spec, **self.changes),))


def without_cursor(script: list) -> Declared:
    """The scripted source with no cursor (as a CDC stream has none)."""
    return Declared(script, cursor=None)


def test_a_key_changed_three_times_in_one_batch_is_three_versions_valid_from_each_change(
    warehouse, regions
):
    region = regions()
    at = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=5)]
    said = [changes((1, "a", 1), (1, "b", 2), (1, "c", 3), (2, "x", 1), at=[*at, T0]), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1")
    assert versions(warehouse, region, "_mds_valid_from", "_mds_valid_to") == [
        (1, "a", False, at[0], at[1]),
        (1, "b", False, at[1], at[2]),
        (1, "c", True, at[2], None),
        (2, "x", True, T0, None),
    ]
    # The next change of key 1 ends its current version at its own time.
    later = [*said, changes((1, "d", 4), at=[T0 + timedelta(hours=1)]), checkpoint()]
    run(warehouse, region, ScriptedSource(later), "r2")
    assert versions(warehouse, region, "_mds_valid_to")[2:4] == [
        (1, "c", False, T0 + timedelta(hours=1)),
        (1, "d", True, None),
    ]
    check_history(warehouse, region, "hard", later)


def test_a_time_before_the_current_version_is_taken_as_its_start(warehouse, regions):
    """Versions never end before they start, whatever clocks the source's times came from."""
    region = regions()
    said = [changes((1, "a", 1), at=[T0]), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1")
    said += [changes((1, "b", 2), at=[T0 - timedelta(days=1)]), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r2")
    assert versions(warehouse, region, "_mds_valid_from", "_mds_valid_to") == [
        (1, "a", False, T0, T0),
        (1, "b", True, T0, None),
    ]


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_a_full_refresh_keeps_the_history_and_ends_what_the_source_no_longer_has(
    warehouse, regions, deletes: str
):
    region = regions()
    first = [rows((1, "a", 1), (2, "b", 1), (3, "c", 1)), checkpoint()]
    run(warehouse, region, ScriptedSource(first), "r1", deletes=deletes)
    now = [rows((1, "a", 1), (2, "b2", 2)), checkpoint()]
    run(warehouse, region, ScriptedSource(now), "r2", deletes=deletes, replace=Replacement())
    ended = [(3, "c", False)] + ([(3, "c", True)] if deletes == "soft" else [])
    assert versions(warehouse, region) == [
        (1, "a", True),
        (2, "b", False),
        (2, "b2", True),
        *ended,
    ]


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_snapshot_delete_detection_ends_the_versions_of_keys_that_vanished(
    warehouse, regions, deletes: str
):
    region = regions()
    said = [rows((1, "a", 1), (2, "b", 1)), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1", deletes=deletes)
    source = ScriptedSource(said, snapshot=[rows((1, "a", 1)), checkpoint()])
    run(warehouse, region, source, "r2", deletes=deletes, delete_detection="snapshot")
    soft = deletes == "soft"
    assert versions(warehouse, region, "_mds_deleted_at IS NOT NULL") == [
        (1, "a", True, False),
        (2, "b", False, False),
        *([(2, "b", True, True)] if soft else []),
    ]
    view = warehouse.query(f"SELECT id FROM {table(SCHEMA, STREAM + '_current')}")
    assert sorted(view.column(0).to_pylist()) == ([1, 2] if soft else [1])
    # Run again: nothing more vanished, nothing changes.
    run(warehouse, region, source, "r3", deletes=deletes, delete_detection="snapshot")
    assert len(versions(warehouse, region)) == (3 if soft else 2)


def test_a_new_column_reaches_the_history_and_its_current_view(warehouse, regions):
    region = regions()
    said = [rows((1, "a", 1)), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1")
    wider = ITEMS.append(pa.field("colour", pa.string()))
    data = pa.record_batch([[1], ["a"], [2], ["red"]], schema=wider)
    said += [Batch("items", data), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r2")
    assert versions(warehouse, region, "colour") == [(1, "a", False, None), (1, "a", True, "red")]
    view = warehouse.query(f"SELECT id, colour FROM {table(SCHEMA, STREAM + '_current')}")
    assert view.to_pylist() == [{"id": 1, "colour": "red"}]
    # A run killed between adding the column and remaking the view left it without: the
    # next run remakes it.
    stale = f"SELECT id FROM {table(SCHEMA, STREAM)} WHERE _mds_is_current"
    warehouse.execute(f"CREATE OR REPLACE VIEW {table(SCHEMA, STREAM + '_current')} AS {stale}")
    run(warehouse, region, ScriptedSource(said), "r3")
    view = warehouse.query(f"SELECT id, colour FROM {table(SCHEMA, STREAM + '_current')}")
    assert view.to_pylist() == [{"id": 1, "colour": "red"}]


@pytest.mark.parametrize("on_bad_record", ["fail", "quarantine"])
def test_a_record_older_than_the_current_version_is_never_a_version(
    warehouse, regions, on_bad_record: str
):
    region = regions()
    said = [rows((1, "b", 5)), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1")
    said += [rows((1, "a", 3), (2, "x", 1)), checkpoint()]
    if on_bad_record == "fail":
        with pytest.raises(SchemaError, match="older than the row already loaded"):
            run(warehouse, region, ScriptedSource(said), "r2", on_bad_record=on_bad_record)
        assert versions(warehouse, region) == [(1, "b", True)]
        return
    run(warehouse, region, ScriptedSource(said), "r2", on_bad_record=on_bad_record)
    assert versions(warehouse, region) == [(1, "b", True), (2, "x", True)]
    quarantined = warehouse.query(
        f"SELECT count(*) FROM {table(warehouse.meta_schema, '_mds_quarantine')} "
        "WHERE region = ? AND stream = ?",
        [region, STREAM],
    )
    assert quarantined.column(0)[0].as_py() == 1


def test_a_key_back_after_a_hard_delete_starts_no_earlier_than_its_end(warehouse, regions):
    """Its new version never overlaps the one the delete ended, whatever the clocks."""
    region = regions()
    gone = datetime(2100, 1, 1)
    said = [rows((1, "a", 1)), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1")
    said += [
        deletes(1, at=(gone - datetime(1970, 1, 1)) // timedelta(microseconds=1)),
        checkpoint(),
    ]
    run(warehouse, region, ScriptedSource(said), "r2")
    said += [rows((1, "b", 2)), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r3")
    assert versions(warehouse, region, "_mds_valid_to", "_mds_valid_from")[1:] == [
        (1, "b", True, None, gone)
    ]
    assert versions(warehouse, region, "_mds_valid_to")[0] == (1, "a", False, gone)
    check_history(warehouse, region, "hard", said)


def test_a_deduped_table_turned_history_keeps_its_rows_as_current_versions(warehouse, regions):
    region, said = regions(), [rows((1, "a", 1), (2, "b", 1)), checkpoint()]
    policy = POLICIES["every checkpoint"]
    options = dict(deletes="hard", region=region, policy=policy)
    sync(warehouse, ScriptedSource(said), mode="incremental_deduped", run_id="r1", **options)
    said += [rows((1, "a2", 2)), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r2")
    assert versions(warehouse, region) == [(1, "a", False), (1, "a2", True), (2, "b", True)]
    check_history(warehouse, region, "hard", said)
    # Back to incremental_deduped would merge into every version of a key: refused.
    with pytest.raises(ConfigError, match="keeps every version") as refused:
        sync(warehouse, ScriptedSource(said), mode="incremental_deduped", run_id="r3", **options)
    assert refused.value.key == "sources.src.streams.items.sync"
    assert "items_current" in (refused.value.hint or "")


def test_a_history_stream_whose_view_would_take_another_streams_name_is_refused():
    spec = ScriptedSource([]).discover().stream("items")
    catalog = Catalog((spec, dataclasses.replace(spec, name="items_current")))
    streams = {"items": {"sync": HISTORY}, "items_current": {"sync": "incremental_deduped"}}
    config = SourceConfig.model_validate({"connector": "x", "schema": "raw", "streams": streams})
    with pytest.raises(ConfigError, match=r"raw\.items_current, would take the name") as refused:
        plan_stream("src", config, catalog, "items")
    assert refused.value.key == "sources.src.streams.items.sync"


def test_without_a_cursor_a_key_changed_in_three_syncs_then_read_again_is_three_versions(
    warehouse, regions
):
    """The order of a key's events then rests on the batch and the row's place alone (as for
    a CDC stream, which has no cursor): the version ended before and the current one must
    not tie."""
    region, said = regions(), []
    for name in ("a", "b", "c", "c"):  # the last: the same record read again
        said += [rows((1, name, 1)), checkpoint()]
        run(warehouse, region, without_cursor(list(said)), f"r{len(said)}")
    assert versions(warehouse, region) == [(1, "a", False), (1, "b", False), (1, "c", True)]
    check_history(warehouse, region, "hard", said)


def test_a_full_refresh_takes_the_source_as_it_is_even_where_its_cursor_went_back(
    warehouse, regions
):
    region = regions()
    run(warehouse, region, ScriptedSource([rows((1, "new", 5)), checkpoint()]), "r1")
    now = ScriptedSource([rows((1, "old", 3)), checkpoint()])
    run(warehouse, region, now, "r2", replace=Replacement(), on_bad_record="quarantine")
    assert versions(warehouse, region) == [(1, "new", False), (1, "old", True)]


def test_change_times_that_start_partway_through_a_commit_are_kept(warehouse, regions):
    """A CDC stream's first read: a snapshot without change times, then changes with them,
    in one commit."""
    region, later = regions(), datetime(2100, 1, 1)  # after the load time the snapshot gets
    said = [rows((1, "a", 1)), changes((1, "b", 2), at=[later]), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1", policy=POLICIES["coalesced"])
    assert versions(warehouse, region, "_mds_valid_to")[0] == (1, "a", False, later)
    assert versions(warehouse, region, "_mds_valid_from")[1] == (1, "b", True, later)


def test_a_tombstone_without_a_time_ends_the_version_at_the_load_time(warehouse, regions):
    region = regions()
    said = [changes((1, "a", 1), at=[T0]), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r1")
    said += [deletes(1, at=None), checkpoint()]
    run(warehouse, region, ScriptedSource(said), "r2")
    [(_, _, current, ended)] = versions(warehouse, region, "_mds_valid_to")
    assert not current and ended > T0


def test_an_appended_table_is_not_turned_into_a_history(warehouse, regions):
    """Several rows of a key: which would be current is not known; nothing changes."""
    region, said = regions(), [rows((1, "a", 1)), checkpoint(), rows((1, "b", 2)), checkpoint()]
    policy = POLICIES["every checkpoint"]
    options = dict(deletes="none", region=region, policy=policy)
    sync(warehouse, ScriptedSource(said), mode="incremental_append", run_id="r1", **options)
    with pytest.raises(ConfigError, match="several rows of one key"):
        run(warehouse, region, ScriptedSource(said), "r2")
    assert warehouse.columns(SCHEMA, STREAM + "_current") is None
    assert "_mds_is_current" not in (warehouse.columns(SCHEMA, STREAM) or {})


ZONED = pa.schema(
    [("id", pa.int64()), ("name", pa.string()), ("updated_at", pa.timestamp("us", "UTC"))]
)


def test_a_zoned_cursor_starts_versions_at_its_utc_time_whatever_the_sessions_zone(
    warehouse, regions
):
    if isinstance(warehouse, DuckDBWarehouse):
        warehouse.execute("SET TimeZone = 'America/New_York'")
    region, noon = regions(), datetime(2026, 12, 1, 12, 0)
    data = pa.record_batch([[1], ["a"], pa.array([noon], ZONED.field("updated_at").type)], ZONED)
    run(warehouse, region, Declared([Batch("items", data), checkpoint()], schema=ZONED), "r1")
    assert versions(warehouse, region, "_mds_valid_from") == [(1, "a", True, noon)]


@pytest.mark.parametrize("mode", ["incremental_deduped", HISTORY])
def test_without_a_cursor_the_last_record_of_a_key_wins_on_every_thread_count(tmp_path, mode: str):
    """Without a cursor only the order batches came in decides (a key comes once a batch:
    inside one, only a cursor orders): a first load keeps it with DuckDB writing on
    several threads too."""
    with DuckDBWarehouse(tmp_path / "wh", threads=4) as wh:
        for example in range(12):
            said = [
                rows(*((k, f"v{n}-{k}", 0) for k in range(1 + (n * 7 + example) % 3)))
                for n in range(2 + example % 9)
            ]
            last = {k: name for batch in said for k, name, _ in _records(batch)}
            region = f"r{example}"
            policy = POLICIES["coalesced"]
            options = dict(deletes="none", region=region, run_id=region, policy=policy)
            sync(wh, without_cursor([*said, checkpoint()]), mode=mode, **options)
            current = " AND _mds_is_current" if mode == HISTORY else ""
            got = wh.query(
                f"SELECT id, name FROM {table(SCHEMA, STREAM)} WHERE _mds_region = ?{current}",
                [region],
            ).to_pylist()
            assert {r["id"]: r["name"] for r in got} == last, f"example {example}"


def _records(batch: Batch) -> list[tuple]:
    data = batch.data.to_pydict()
    return list(zip(data["id"], data["name"], data["updated_at"], strict=True))
