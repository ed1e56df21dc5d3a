"""Schema policies, selected columns, bad records, locks and snapshot delete detection."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from connectors.base import Batch
from stack.errors import SchemaError, SyncConflict
from stack.load import CommitPolicy
from tests.contract.test_sync import run, state, table
from tests.scripted import ScriptedSource, checkpoint, rows


def batch(**columns) -> Batch:
    return Batch("items", pa.record_batch(columns))


def columns(wh) -> dict[str, str]:
    return wh.columns("raw", "items")


def test_evolve_adds_a_column_mid_read_and_widens_a_type_to_text(warehouse):
    script = [
        rows((1, "a", 1)),
        batch(
            id=pa.array([2]),
            name=pa.array(["b"]),
            updated_at=pa.array([2]),
            color=pa.array(["red"]),
        ),
        checkpoint(),
        batch(id=pa.array([3]), name=pa.array([33]), updated_at=pa.array([3])),
        checkpoint(),
    ]
    entry = run(warehouse, ScriptedSource(script), policy=CommitPolicy())
    assert columns(warehouse)["color"] == "VARCHAR"
    got = warehouse.query("SELECT id, name, color FROM raw.items ORDER BY id").to_pylist()
    assert got == [
        {"id": 1, "name": "a", "color": None},
        {"id": 2, "name": "b", "color": "red"},
        {"id": 3, "name": "33", "color": None},
    ]
    assert json.loads(entry.schema_changes) == ["new column color string (applied)"]


def test_evolve_widens_int_to_bigint_to_double_keeping_values(warehouse):
    narrow = pa.schema([("id", pa.int64()), ("qty", pa.int32()), ("updated_at", pa.int64())])
    script = [
        Batch(
            "items",
            pa.record_batch(
                [pa.array([1]), pa.array([5], pa.int32()), pa.array([1])], schema=narrow
            ),
        ),
        checkpoint(),
        batch(id=pa.array([2]), qty=pa.array([2**40]), updated_at=pa.array([2])),
        checkpoint(),
        batch(id=pa.array([3]), qty=pa.array([1.5]), updated_at=pa.array([3])),
        checkpoint(),
    ]
    entry = run(warehouse, ScriptedSource(script))
    assert columns(warehouse)["qty"] == "DOUBLE"
    got = warehouse.query("SELECT qty FROM raw.items ORDER BY id").column(0).to_pylist()
    assert got == [5.0, 2.0**40, 1.5]
    assert json.loads(entry.schema_changes) == [
        "new column qty int32 (applied)",
        "column qty int32 -> int64 (applied)",
        "column qty int64 -> double (applied)",
    ]


def test_freeze_fails_before_writing_anything(warehouse):
    script = [
        rows((1, "a", 1)),
        batch(
            id=pa.array([2]), name=pa.array(["b"]), updated_at=pa.array([2]), extra=pa.array([1])
        ),
        checkpoint(),
    ]
    with pytest.raises(SchemaError, match="new column extra int64") as err:
        run(warehouse, ScriptedSource(script), schema_policy="freeze")
    assert err.value.key == "extra"
    assert table(warehouse) == [] and "extra" not in columns(warehouse)
    assert state(warehouse) is None


def test_discard_drops_the_column_and_records_it_in_the_ledger(warehouse):
    script = [
        batch(id=pa.array([1]), name=pa.array(["a"]), updated_at=pa.array([1]), qty=pa.array([5])),
        checkpoint(),
    ]
    run(warehouse, ScriptedSource(script))  # evolve: qty joins the table
    script += [
        batch(
            id=pa.array([2]),
            name=pa.array(["b"]),
            updated_at=pa.array([2]),
            qty=pa.array(["many"]),
            extra=pa.array([1]),
        ),
        checkpoint(),
    ]
    entry = run(warehouse, ScriptedSource(script), schema_policy="discard", run_id="r2")
    got = warehouse.query("SELECT id, qty FROM raw.items ORDER BY id").to_pylist()
    assert got == [{"id": 1, "qty": 5}, {"id": 2, "qty": None}]
    assert "extra" not in columns(warehouse) and columns(warehouse)["qty"] == "BIGINT"
    assert json.loads(entry.schema_changes) == [
        "column qty int64 -> string (discarded)",
        "new column extra int64 (discarded)",
    ]


def test_selected_columns_keep_keys_and_cursor_and_nothing_else(warehouse):
    run(warehouse, ScriptedSource([rows((1, "secret", 1)), checkpoint()]), columns=["id"])
    assert set(columns(warehouse)) == {
        "id",
        "updated_at",
        "_mds_region",
        "_mds_run_id",
        "_mds_loaded_at",
        "_mds_deleted_at",
    }


def test_unknown_selected_column_is_a_config_error(warehouse):
    from stack.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown columns"):
        run(warehouse, ScriptedSource([]), columns=["nope"])


def test_null_keys_are_quarantined_with_the_reason_and_the_rest_loads(warehouse):
    bad = batch(
        id=pa.array([None, 2], pa.int64()), name=pa.array(["x", "b"]), updated_at=pa.array([1, 1])
    )
    entry = run(warehouse, ScriptedSource([bad, checkpoint()]), on_bad_record="quarantine")
    assert table(warehouse) == [(2, "b", 1, False)]
    assert entry.quarantined == 1
    kept = warehouse.query("SELECT reason, record FROM _mds_quarantine").to_pylist()
    assert kept == [
        {"reason": "null primary key", "record": '{"id": null, "name": "x", "updated_at": 1}'}
    ]


def test_a_second_run_of_the_same_stream_and_region_is_refused(warehouse):
    with warehouse.lock("p.eu.src.items"), pytest.raises(SyncConflict, match="another run"):
        run(warehouse, ScriptedSource([rows((1, "a", 1)), checkpoint()]))
    with warehouse.lock("p.us.src.items"):  # another region is a different lock
        run(warehouse, ScriptedSource([rows((1, "a", 1)), checkpoint()]))


@pytest.mark.parametrize(
    ("deletes", "expected"),
    [
        ("hard", [(2, "b", 2, False)]),
        ("soft", [(1, "a", 1, True), (2, "b", 2, False)]),
    ],
)
def test_snapshot_delete_detection_finds_keys_that_vanished(warehouse, deletes, expected):
    script = [rows((1, "a", 1), (2, "b", 2)), checkpoint()]
    run(warehouse, ScriptedSource(script), delete_mode=deletes)
    now = ScriptedSource(script, snapshot=[rows((2, "b", 2))])
    entry = run(warehouse, now, delete_mode=deletes, delete_detection="snapshot", run_id="r2")
    assert table(warehouse) == expected
    assert entry.deleted == 1


def test_snapshot_detection_with_a_window_only_considers_recent_rows(warehouse):
    stamp = pa.timestamp("us")
    old, recent = pa.scalar(0, stamp), pa.scalar(10**16, stamp)  # 1970 and 2286
    spec = {
        "id": pa.array([1, 2]),
        "name": pa.array(["old", "recent"]),
        "updated_at": pa.array([old, recent], stamp),
    }
    script = [Batch("items", pa.record_batch(spec)), checkpoint()]
    source = ScriptedSource(script, snapshot=[])
    source.discover = lambda: _timestamp_catalog()
    run(warehouse, source)
    source.snapshot = [
        Batch(
            "items",
            pa.record_batch(
                {
                    "id": pa.array([99]),
                    "name": pa.array(["z"]),
                    "updated_at": pa.array([recent], stamp),
                }
            ),
        )
    ]
    run(warehouse, source, delete_detection="snapshot", delete_window="30d", run_id="r2")
    names = warehouse.query("SELECT name FROM raw.items ORDER BY id").column(0).to_pylist()
    assert names == ["old"]


def _timestamp_catalog():
    from connectors.base import Catalog, StreamSpec
    from tests.scripted import ALL_MODES

    schema = pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("updated_at", pa.timestamp("us"))]
    )
    return Catalog((StreamSpec("items", schema, ("id",), "updated_at", ALL_MODES, True),))


def test_empty_snapshot_never_deletes_everything(warehouse):
    script = [rows((1, "a", 1)), checkpoint()]
    run(warehouse, ScriptedSource(script))
    run(warehouse, ScriptedSource(script, snapshot=[]), delete_detection="snapshot", run_id="r2")
    assert table(warehouse) == [(1, "a", 1, False)]


def test_full_refresh_with_soft_deletes_keeps_vanished_rows_marked(warehouse):
    run(
        warehouse,
        ScriptedSource([rows((1, "a", 1), (2, "b", 1))]),
        "full_refresh_overwrite",
        delete_mode="soft",
    )
    entry = run(
        warehouse,
        ScriptedSource([rows((2, "b2", 2), (3, "c", 2))]),
        "full_refresh_overwrite",
        delete_mode="soft",
        run_id="r2",
    )
    assert table(warehouse) == [(1, "a", 1, True), (2, "b2", 2, False), (3, "c", 2, False)]
    assert (entry.inserted, entry.updated, entry.deleted) == (1, 1, 1)
    run(
        warehouse,
        ScriptedSource([rows((1, "back", 3))]),
        "full_refresh_overwrite",
        delete_mode="soft",
        run_id="r3",
    )
    assert table(warehouse) == [(1, "back", 3, False), (2, "b2", 2, True), (3, "c", 2, True)]
