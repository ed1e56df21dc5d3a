"""JSON values into Arrow values: the conversions every JSON-reading source shares.

A column that does not fit one Arrow type is carried as text, each value as its JSON text
(``1``, ``true``, ``{"a":1}``); ISO 8601 text becomes a UTC timestamp. Both the REST source
(:mod:`connectors.rest.columns`) and the Airbyte record reader
(:mod:`connectors.airbyte.records`) convert this way, so a value lands the same whichever
source read it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", "UTC")
CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)
"""What Arrow raises when values do not fit a type: a reason to widen, not a bug."""


def json_text(value: Any) -> str:
    """A value's compact JSON text (integers beyond 64 bits included, which orjson refuses)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def as_text(values: list[Any]) -> list[str | None]:
    """Strings as they are, other values as their JSON text (``1``, ``true``, ``{"a":1}``)."""
    return [v if v is None or type(v) is str else json_text(v) for v in values]


def utc_timestamps(array: pa.Array) -> pa.Array:
    """ISO 8601 text as UTC timestamps: offsets converted, values without one taken as UTC."""
    try:
        return array.cast(TIMESTAMP)
    except pa.ArrowInvalid:
        return pc.cast(array, pa.timestamp("us")).cast(TIMESTAMP)
