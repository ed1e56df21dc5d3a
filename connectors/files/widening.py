"""Arrow types across files: one type for columns that differ, and batches fitted to it.

:func:`widen` gives the narrowest type holding values of two types (int -> int64 ->
float64, date -> timestamp, anything else that differs -> string) and :func:`unify` a
schema for several files; :func:`conform` fits a batch to a schema, widening a column
*in that batch* where a value does not fit, so the engine's schema policy decides.
:func:`rebatch` cuts the fitted batches to the configured size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from connectors._json_arrow import BIG_INTEGER, exact_supertype

CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
"""What a failed Arrow cast raises."""


def plain(t: pa.DataType) -> pa.DataType:
    """The type mdstack keeps for ``t``: plain string/binary/list instead of large or view
    variants (polars emits those), dictionary values instead of dictionaries, text for
    decimals of more than 38 digits, decimal(38, 0) for uint64."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return plain(t.value_type)
    if pa.types.is_decimal(t) and t.precision > 38:
        return pa.string()  # beyond DuckDB's and Snowflake's decimals: exact as text
    if t == pa.uint64():
        return BIG_INTEGER  # beyond int64, as JSON's big integers: every warehouse holds it
    if pa.types.is_large_list(t):
        return pa.list_(plain(t.value_type))
    return t


def widen(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest type holding values of both: int -> int64 -> float64, int and
    decimal -> the decimal holding both (up to 38 digits), date -> timestamp, anything else
    that differs -> string."""
    a, b = plain(a), plain(b)
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    if exact := exact_supertype(a, b):
        return exact
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
    if any(f(a) for f in numeric) and any(f(b) for f in numeric):
        return pa.float64()
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and a.tz == b.tz:
        return pa.timestamp("us", a.tz)
    if {_kind(a), _kind(b)} == {"date", "timestamp"}:
        return a if pa.types.is_timestamp(a) else b
    return pa.string()


def _kind(t: pa.DataType) -> str:
    return "date" if pa.types.is_date(t) else "timestamp" if pa.types.is_timestamp(t) else ""


def unify(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    """Columns of ``a`` then the new ones of ``b``, each of the :func:`widen`-ed type."""
    fields = {f.name: plain(f.type) for f in a}
    for f in b:
        fields[f.name] = widen(fields[f.name], f.type) if f.name in fields else plain(f.type)
    return pa.schema(list(fields.items()))


def conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """``batch`` with the columns of ``target`` in order (missing ones null), each cast to its
    target type or, where a value does not fit, widened (int -> float64 -> string); columns
    ``target`` lacks follow, as they are."""
    arrays: list[pa.Array] = []
    names = batch.schema.names
    for field in target:
        if field.name in names:
            arrays.append(_fit(batch.column(field.name), field.type))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    extra = [n for n in names if n not in target.names]
    arrays += [_fit(batch.column(n), plain(batch.column(n).type)) for n in extra]
    return pa.RecordBatch.from_arrays(arrays, names=[*target.names, *extra])


def _fit(column: pa.Array, target: pa.DataType) -> pa.Array:
    if column.type == target:
        return column
    fallbacks = [target]
    if pa.types.is_integer(target):
        fallbacks.append(pa.float64())
    fallbacks += [pa.string(), plain(column.type)]
    for candidate in fallbacks:
        try:
            return pc.cast(column, candidate)
        except CAST_ERRORS:
            continue
    return column


def rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows (the last one, and one before a schema change, fewer)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if pending and batch.schema != pending[0].schema:
            yield pa.concat_batches(pending)
            pending, rows = [], 0
        offset = 0
        while offset < batch.num_rows:
            take = min(size - rows, batch.num_rows - offset)
            pending.append(batch.slice(offset, take))
            rows, offset = rows + take, offset + take
            if rows == size:
                yield pa.concat_batches(pending)
                pending, rows = [], 0
    if pending:
        yield pa.concat_batches(pending)
