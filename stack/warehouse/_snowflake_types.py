"""Arrow <-> Snowflake types for the Snowflake adapter: pure, no connection.

* :func:`snowflake_type`: the column type DDL writes for an Arrow type.
* :func:`arrow_type`, :func:`result_schema`, :func:`conform`, :func:`rows_table`:
  the Arrow types query results come back as.
* :func:`engine_type`: a Snowflake column type named in the engine's (DuckDB's)
  dialect, so both adapters answer :meth:`columns` in one vocabulary.
* :func:`native_type`, :func:`alterable`: what a column rebuild compares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa

from stack.errors import SchemaError

_PLAIN_TYPES: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_integer, "NUMBER(38,0)"),
    (pa.types.is_floating, "FLOAT"),
    (pa.types.is_string, "VARCHAR"),
    (pa.types.is_large_string, "VARCHAR"),
    (pa.types.is_string_view, "VARCHAR"),
    (pa.types.is_null, "VARCHAR"),
    (pa.types.is_binary, "BINARY"),
    (pa.types.is_large_binary, "BINARY"),
    (pa.types.is_fixed_size_binary, "BINARY"),
    (pa.types.is_date, "DATE"),
    (pa.types.is_time, "TIME"),
    (pa.types.is_list, "VARIANT"),
    (pa.types.is_large_list, "VARIANT"),
    (pa.types.is_fixed_size_list, "VARIANT"),
    (pa.types.is_struct, "VARIANT"),
    (pa.types.is_map, "VARIANT"),
)
"""Arrow type families whose Snowflake type takes nothing from the Arrow type's parameters."""


def snowflake_type(arrow: pa.DataType, column: str | None = None) -> str:
    """The Snowflake column type for an Arrow type (of ``column``, named in errors).

    >>> snowflake_type(pa.int32()), snowflake_type(pa.timestamp("us", tz="UTC"))
    ('NUMBER(38,0)', 'TIMESTAMP_TZ')

    Raises:
        SchemaError: no Snowflake type holds it (durations, intervals, decimals > 38 digits).
    """
    if pa.types.is_dictionary(arrow):
        return snowflake_type(arrow.value_type, column)
    where = f"column {column!r}: " if column else ""
    if pa.types.is_decimal(arrow):
        if arrow.precision > 38:
            raise SchemaError(
                f"{where}decimal precision {arrow.precision} exceeds Snowflake's 38 digits",
                key=column,
                hint="cast the column to float64 or string in the source",
            )
        return f"NUMBER({arrow.precision},{arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMP_TZ" if arrow.tz else "TIMESTAMP_NTZ"
    for is_family, sf_type in _PLAIN_TYPES:
        if is_family(arrow):
            return sf_type
    raise SchemaError(
        f"{where}no Snowflake type for Arrow type {arrow}",
        key=column,
        hint="cast the column to a supported type (number, string, timestamp...) in the source",
    )


_TEXT = {"TEXT", "VARCHAR", "STRING", "CHAR", "CHARACTER", "NCHAR", "NVARCHAR"}
_NUMBER = {"NUMBER", "FIXED", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT"}
_FLOAT = {"FLOAT", "REAL", "DOUBLE", "DOUBLE PRECISION", "FLOAT4", "FLOAT8"}
SEMI_STRUCTURED = {"VARIANT", "OBJECT", "ARRAY"}
"""Snowflake's semi-structured types: read as JSON text."""


def arrow_type(sf_type: str, precision: int | None = None, scale: int | None = None) -> pa.DataType:
    """The Arrow type mdstack reads a Snowflake type as (the type in query results).

    ``NUMBER(p,0)`` is an integer column (``int64``), ``NUMBER(p,s)`` a decimal;
    timestamps are microseconds, as DuckDB returns them; semi-structured values
    are JSON text.
    """
    name = sf_type.upper()
    if name in _NUMBER:
        if scale:
            return pa.decimal128(precision or 38, scale)
        return pa.int64()
    if name in _FLOAT:
        return pa.float64()
    if name == "BOOLEAN":
        return pa.bool_()
    if name == "DATE":
        return pa.date32()
    if name == "TIME":
        return pa.time64("us")
    if name in ("TIMESTAMP_NTZ", "TIMESTAMP", "DATETIME"):
        return pa.timestamp("us")
    if name in ("TIMESTAMP_TZ", "TIMESTAMP_LTZ"):
        return pa.timestamp("us", tz="UTC")
    if name in ("BINARY", "VARBINARY"):
        return pa.binary()
    return pa.string()  # TEXT, VARIANT/OBJECT/ARRAY (JSON text), GEOGRAPHY...


def result_schema(columns: Sequence[tuple[str, str, int | None, int | None]]) -> pa.Schema:
    """The Arrow schema of a result from its columns' (name, Snowflake type, precision, scale)."""
    return pa.schema(
        [
            pa.field(name, arrow_type(sf_type, precision, scale))
            for name, sf_type, precision, scale in columns
        ]
    )


def conform(chunk: pa.Table, schema: pa.Schema) -> pa.Table:
    """A result chunk cast to ``schema``.

    Snowflake sends integers in the narrowest width per chunk and timestamps in
    nanoseconds; casting every chunk keeps results stable. A value the cast cannot
    hold (a ``NUMBER(38,0)`` beyond int64) keeps the chunk's own type.
    """
    return pa.table([_cast(chunk.column(i), f.type) for i, f in enumerate(schema)], schema.names)


def rows_table(rows: Sequence[tuple], schema: pa.Schema) -> pa.Table:
    """A JSON result's rows (SHOW, DML counts) as Arrow, typed by ``schema`` where they fit."""
    columns: list[Sequence[object]] = (
        list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    )
    return pa.table([_array(v, f.type) for v, f in zip(columns, schema, strict=True)], schema.names)


def _cast(column: pa.ChunkedArray, wanted: pa.DataType) -> pa.ChunkedArray:
    if column.type == wanted:
        return column
    lossy = pa.types.is_timestamp(wanted) or pa.types.is_time(wanted)  # ns -> us truncates
    try:
        return column.cast(wanted, safe=not lossy)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return column


def _array(values: Sequence[object], wanted: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(values)


def engine_type(sf_type: str, precision: int | None = None, scale: int | None = None) -> str:
    """A Snowflake column type named in the engine's (DuckDB's) dialect.

    >>> engine_type("NUMBER", 38, 0), engine_type("TEXT"), engine_type("FLOAT")
    ('BIGINT', 'VARCHAR', 'DOUBLE')
    """
    name = sf_type.upper()
    if name in SEMI_STRUCTURED:
        return "JSON"
    arrow = arrow_type(name, precision, scale)
    if pa.types.is_decimal(arrow):
        return f"DECIMAL({arrow.precision},{arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMP WITH TIME ZONE" if arrow.tz else "TIMESTAMP"
    return _ENGINE_NAMES.get(arrow, name)


_ENGINE_NAMES = {
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.time64("us"): "TIME",
    pa.binary(): "BLOB",
    pa.string(): "VARCHAR",
}


def native_type(sf_type: str, precision: int | None, scale: int | None) -> str:
    """A column's type as :func:`snowflake_type` writes it (``TEXT`` -> ``VARCHAR``)."""
    name = sf_type.upper()
    if name in _NUMBER:
        return f"NUMBER({precision or 38},{scale or 0})"
    if name in _TEXT:
        return "VARCHAR"
    if name in _FLOAT:
        return "FLOAT"
    return name


def alterable(current: str, wanted: str) -> bool:
    """Whether ``ALTER COLUMN ... SET DATA TYPE`` can change ``current`` into ``wanted``.

    Snowflake only widens in place: more digits for a NUMBER of the same scale, a
    longer VARCHAR. Everything else (NUMBER -> FLOAT, anything -> VARCHAR) is rebuilt.
    """
    if current.startswith("NUMBER(") and wanted.startswith("NUMBER("):
        (p1, s1), (p2, s2) = (_digits(current), _digits(wanted))
        return s1 == s2 and p2 >= p1
    return current.startswith("VARCHAR") and wanted == "VARCHAR"


def _digits(number: str) -> tuple[int, int]:
    precision, scale = number[len("NUMBER(") : -1].split(",")
    return int(precision), int(scale)
