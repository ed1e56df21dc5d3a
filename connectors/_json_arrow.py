"""JSON values into Arrow values: the conversions every JSON-reading source shares.

A column that does not fit one Arrow type is carried as text, each value as its JSON text
(``1``, ``true``, ``{"a":1}``); ISO 8601 text becomes a UTC timestamp. Both the REST source
(:mod:`connectors.rest.columns`) and the Airbyte record reader
(:mod:`connectors.airbyte.records`) convert this way, so a value lands the same whichever
source read it.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", "UTC")
BIG_INTEGER = pa.decimal128(38, 0)
"""The type of integers beyond int64: exact up to 38 digits, on DuckDB and Snowflake alike."""
_BIG_LIMIT = 10**38
_INEXACT = re.compile(rb"\d{20}|-\d{19}")
"""Digits orjson may read as a float: beyond u64 (20 digits) or below int64's minimum."""
_NON_FINITE = re.compile(rb"NaN|Infinity")


_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
"""A translation table: every digit to ``0``, every other byte to a space."""
_NINETEEN = b"0" * 19


def inexact(data: bytes) -> bool:
    """Whether ``data`` may hold an integer that a float reader (orjson, polars) rounds.

    A run of 19 digits is looked for first, as a run of ``0`` in the translated bytes (two C
    loops: 0.2 ms for a 200 kB page, against 3.5 ms for the pattern alone); only a page
    that has one is searched with the pattern."""
    return _NINETEEN in data.translate(_DIGITS) and _INEXACT.search(data) is not None


CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)
"""What Arrow raises when values do not fit a type: a reason to widen, not a bug."""


def loads(data: bytes | str) -> Any:
    """A JSON document as Python values, exactly (see the module docstring).

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``; orjson's error is one too).
    """
    raw = data.encode() if isinstance(data, str) else data
    if not inexact(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            if _NON_FINITE.search(raw) is None:
                raise
    return json.loads(raw)


def json_text(value: Any) -> str:
    """A value's compact JSON text (integers beyond 64 bits included, which orjson refuses;
    NaN and infinities as Python writes them, where orjson writes null)."""
    if type(value) is float and not math.isfinite(value):
        return json.dumps(value)
    if type(value) is Decimal:  # a big integer read earlier as decimal(38, 0)
        return str(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def big_integers(values: list[Any]) -> pa.Array | None:
    """Integers some of which do not fit int64 as :data:`BIG_INTEGER`; None where a value is
    not an integer or has more than 38 digits."""
    if not all(v is None or (type(v) is int and -_BIG_LIMIT < v < _BIG_LIMIT) for v in values):
        return None
    return pa.array(values, BIG_INTEGER)


def as_text(values: list[Any]) -> list[str | None]:
    """Strings as they are, other values as their JSON text (``1``, ``true``, ``{"a":1}``)."""
    return [v if v is None or type(v) is str else json_text(v) for v in values]


def json_array(values: list[Any]) -> pa.Array:
    """One column of JSON values: in the Arrow type they share (integers and floats: float64,
    integers beyond int64: :func:`big_integers`), else as text (:func:`as_text`)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds & {dict, list} and not (bool in kinds and len(kinds) > 1):
        try:
            array = pa.array(values)
            return array.cast(BIG_INTEGER) if pa.types.is_unsigned_integer(array.type) else array
        except CONVERSION_ERRORS:
            exact = big_integers(values)
            if exact is not None:
                return exact
    return pa.array(as_text(values), pa.string())


def exact_supertype(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type holding a decimal and another number without losing a digit, or None where
    the decimal is not involved: an integer and a decimal -> the decimal holding both (int64
    and decimal(38, 0) -> decimal(38, 0)), text beyond 38 digits; a decimal of more than
    15 digits (more than float64 holds) and a float -> text."""
    if pa.types.is_decimal(a) and not pa.types.is_decimal(b):
        a, b = b, a
    if not pa.types.is_decimal(b) or pa.types.is_decimal(a):
        return None
    if pa.types.is_integer(a):
        precision = max(b.precision, len(str(2**a.bit_width)) + b.scale)
        return pa.decimal128(precision, b.scale) if precision <= 38 else pa.string()
    if pa.types.is_floating(a) and b.precision > 15:
        return pa.string()
    return None


def utc_timestamps(array: pa.Array) -> pa.Array:
    """ISO 8601 text as UTC timestamps: offsets converted, values without one taken as UTC."""
    try:
        return array.cast(TIMESTAMP)
    except pa.ArrowInvalid:
        return pc.cast(array, pa.timestamp("us")).cast(TIMESTAMP)
