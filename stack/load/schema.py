"""Schema evolution: fit every incoming batch to the destination table, by the stream's policy.

A stream's destination has an Arrow schema. Each batch is compared with it
column by column:

* a column that fits (the same type, or one that casts without loss: int32
  into int64) is cast;
* a new column, or a type the destination must widen to hold (int -> bigint
  -> double, int64 and decimal(38, 0) -> decimal(38, 0), anything -> string),
  is a **schema change**, handled by the policy:
  ``evolve`` applies it (add the column, widen the type), ``freeze`` fails before
  anything is written (naming the column and both types), ``discard`` drops the
  offending column from the data and records that it did;
* a column the batch lacks is filled with nulls.

Everything here is pure Arrow: no warehouse, no SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from connectors._json_arrow import as_text, exact_supertype
from stack.config.sources import SchemaPolicy
from stack.errors import SchemaError


@dataclass(frozen=True)
class SchemaChange:
    """One difference between a batch and its destination, and what was done about it."""

    column: str
    kind: Literal["add", "widen"]
    old: str | None
    new: str
    action: Literal["applied", "discarded"]

    def describe(self) -> str:
        what = (
            f"new column {self.column} {self.new}"
            if self.kind == "add"
            else (f"column {self.column} {self.old} -> {self.new}")
        )
        return f"{what} ({self.action})"


def supertype(current: pa.DataType, incoming: pa.DataType) -> pa.DataType:
    """The narrowest type holding values of both: the destination type after a change."""
    if current == incoming or pa.types.is_null(incoming):
        return current
    if pa.types.is_null(current):
        return incoming
    if _is_text(current):
        return current
    if pa.types.is_integer(current) and pa.types.is_integer(incoming):
        return max(current, incoming, key=lambda t: t.bit_width)
    if exact := exact_supertype(current, incoming):
        return exact
    if _is_number(current) and _is_number(incoming):
        return pa.float64()
    if pa.types.is_timestamp(current) and pa.types.is_timestamp(incoming):
        return current
    if {_kind(current), _kind(incoming)} == {"date", "timestamp"}:
        return current if pa.types.is_timestamp(current) else incoming
    return pa.string()


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _kind(t: pa.DataType) -> str:
    return "date" if pa.types.is_date(t) else "timestamp" if pa.types.is_timestamp(t) else "other"


class StreamSchema:
    """The destination schema of one stream, evolving as batches arrive.

    Args:
        current: the destination's data columns (metadata columns excluded).
        policy: what to do with schema changes.
        columns: if set, only these columns are kept (selected columns).
        required: columns that must never be discarded (primary key, cursor).
    """

    def __init__(
        self,
        current: pa.Schema,
        policy: SchemaPolicy = "evolve",
        columns: Sequence[str] | None = None,
        required: Sequence[str] = (),
    ) -> None:
        self.current = current
        self.policy = policy
        self.selected = tuple(columns) if columns else None
        self.required = tuple(required)
        self.discarded: set[str] = set()

    def fit(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[SchemaChange]]:
        """Return ``batch`` cast to the (possibly evolved) schema, and the changes found.

        Raises:
            SchemaError: a change under ``freeze``, or a required column that cannot be kept.
        """
        if self.selected:
            batch = batch.select([n for n in batch.schema.names if n in self.selected])
        changes = [c for f in batch.schema if (c := self._compare(f)) is not None]
        for change in changes:
            self._apply(change, batch.schema.field(change.column).type)
        return self._cast(batch), changes

    def _compare(self, incoming: pa.Field) -> SchemaChange | None:
        if incoming.name in self.discarded:
            return None
        index = self.current.get_field_index(incoming.name)
        if index < 0:
            return SchemaChange(incoming.name, "add", None, str(incoming.type), self._action())
        old = self.current.field(index).type
        new = supertype(old, incoming.type)
        if new == old:
            return None
        return SchemaChange(incoming.name, "widen", str(old), str(new), self._action())

    def _action(self) -> Literal["applied", "discarded"]:
        return "discarded" if self.policy == "discard" else "applied"

    def _apply(self, change: SchemaChange, incoming: pa.DataType) -> None:
        if self.policy == "freeze" or (self.policy == "discard" and change.column in self.required):
            raise SchemaError(
                f"schema change refused: {change.describe().rsplit(' (', 1)[0]}",
                key=change.column,
                hint="set `schema_policy: evolve` on the stream to accept it, or `discard` "
                "to drop the column",
            )
        if self.policy == "discard":
            self.discarded.add(change.column)
            return
        if change.kind == "add":
            self.current = self.current.append(pa.field(change.column, incoming))
        else:
            index = self.current.get_field_index(change.column)
            widened = pa.field(change.column, supertype(self.current.field(index).type, incoming))
            self.current = self.current.set(index, widened)

    def _cast(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for field in self.current:
            if field.name in batch.schema.names and field.name not in self.discarded:
                arrays.append(_cast(batch.column(field.name), field.type))
            else:
                arrays.append(pa.nulls(batch.num_rows, field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.current)


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    if array.type == target:
        return array
    if _is_text(target) and pa.types.is_nested(array.type):  # Arrow casts no struct to text
        return pa.array(as_text(array.to_pylist()), pa.string()).cast(target)
    if _is_text(target) and not (_is_text(array.type) or pa.types.is_null(array.type)):
        return pc.cast(array, pa.string(), safe=False).cast(target)
    # Unsafe only where precision, not range, may go: timestamp units, int -> float.
    return pc.cast(
        array, target, safe=not (pa.types.is_timestamp(target) or pa.types.is_floating(target))
    )
