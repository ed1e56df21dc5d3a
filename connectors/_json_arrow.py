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
CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)
"""What Arrow raises when values do not fit a type: a reason to widen, not a bug."""


def loads(data: bytes | str) -> Any:
    """A JSON document as Python values, exactly (see the module docstring).

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``; orjson's error is one too).
    """
    raw = data.encode() if isinstance(data, str) else data
    if _INEXACT.search(raw) is None:
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


def utc_timestamps(array: pa.Array) -> pa.Array:
    """ISO 8601 text as UTC timestamps: offsets converted, values without one taken as UTC."""
    try:
        return array.cast(TIMESTAMP)
    except pa.ArrowInvalid:
        return pc.cast(array, pa.timestamp("us")).cast(TIMESTAMP)
