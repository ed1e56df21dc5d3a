"""Schema evolution policies on Arrow batches: evolve, freeze, discard, selected columns."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stack.errors import SchemaError
from stack.load.schema import StreamSchema, supertype

BASE = pa.schema([("id", pa.int64()), ("qty", pa.int32()), ("day", pa.date32())])


def batch(**columns: pa.Array) -> pa.RecordBatch:
    return pa.record_batch(columns)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.int64(), pa.int32(), pa.int64()),
        (pa.int64(), pa.float64(), pa.float64()),
        (pa.int64(), pa.string(), pa.string()),
        (pa.string(), pa.int64(), pa.string()),
        (pa.date32(), pa.timestamp("us"), pa.timestamp("us")),
        (pa.bool_(), pa.int64(), pa.string()),
        (pa.int64(), pa.null(), pa.int64()),
    ],
)
def test_supertype_widens_safely(old, new, expected):
    assert supertype(old, new) == expected


def test_evolve_adds_columns_widens_types_and_fills_missing_with_nulls():
    schema = StreamSchema(BASE)
    data = batch(id=pa.array([1, 2]), qty=pa.array([2**40, 3]), note=pa.array(["a", None]))
    fitted, changes = schema.fit(data)
    assert [c.describe() for c in changes] == [
        "column qty int32 -> int64 (applied)",
        "new column note string (applied)",
    ]
    assert fitted.schema == pa.schema(
        [("id", pa.int64()), ("qty", pa.int64()), ("day", pa.date32()), ("note", pa.string())]
    )
    assert fitted.column("qty").to_pylist() == [2**40, 3]
    assert fitted.column("day").to_pylist() == [None, None]


def test_anything_can_widen_to_string_and_values_are_kept_as_text():
    schema = StreamSchema(BASE)
    fitted, _ = schema.fit(batch(id=pa.array([1]), day=pa.array(["soon"])))
    assert fitted.column("day").to_pylist() == ["soon"]
    fitted, changes = schema.fit(batch(id=pa.array([2]), day=pa.array([20260101])))
    assert changes == [] and fitted.column("day").to_pylist() == ["20260101"]


def test_freeze_fails_naming_column_and_both_types():
    with pytest.raises(SchemaError, match=r"column qty int32 -> string") as err:
        StreamSchema(BASE, "freeze").fit(batch(id=pa.array([1]), qty=pa.array(["x"])))
    assert err.value.key == "qty"


def test_discard_drops_offending_columns_and_keeps_the_rest():
    schema = StreamSchema(BASE, "discard")
    fitted, changes = schema.fit(batch(id=pa.array([1]), qty=pa.array(["x"]), extra=pa.array([1])))
    assert [c.describe() for c in changes] == [
        "column qty int32 -> string (discarded)",
        "new column extra int64 (discarded)",
    ]
    assert fitted.schema == BASE and fitted.column("qty").to_pylist() == [None]
    fitted, changes = schema.fit(batch(id=pa.array([2]), qty=pa.array(["y"])))
    assert changes == [] and fitted.column("qty").to_pylist() == [None]


def test_discard_never_drops_the_primary_key():
    schema = StreamSchema(BASE, "discard", required=["id"])
    with pytest.raises(SchemaError, match="id"):
        schema.fit(batch(id=pa.array(["a"])))


def test_selected_columns_leave_the_others_out():
    schema = StreamSchema(pa.schema([("id", pa.int64())]), columns=["id", "qty"])
    fitted, changes = schema.fit(batch(id=pa.array([1]), qty=pa.array([2]), secret=pa.array(["s"])))
    assert fitted.schema.names == ["id", "qty"]
    assert [c.column for c in changes] == ["qty"]
