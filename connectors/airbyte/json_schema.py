"""Arrow types as Airbyte JSON Schemas: what a stream's ``json_schema`` says about its records.

Airbyte describes records with JSON Schema (draft-07) plus ``airbyte_type`` hints for the
types JSON lacks (timestamps with or without a time zone, 64-bit integers). The mapping
follows how records are written as JSON (:mod:`connectors.airbyte.serve`): timestamps,
dates and times as ISO strings, binary as base64, decimals as numbers.

The other way, :func:`json_schema_to_arrow` types a stream's records for reading
(:mod:`connectors.airbyte`). Nested values (objects, arrays) and values whose type the schema
leaves open (no ``type``, several types, ``anyOf`` of different kinds) become **JSON text**
(``pa.string()``), as nested values do in every mdstack source; :func:`is_json_text` tells
which fields those are, so a reader knows to serialise them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.types as pat

JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
CDC_DELETED_AT = "_ab_cdc_deleted_at"
"""The column Airbyte's CDC sources set on a record that was deleted (the record carries
the key and this time)."""
CDC_UPDATED_AT = "_ab_cdc_updated_at"
"""The column Airbyte's CDC sources set to when each record changed (its commit time)."""
TIMESTAMP_TZ = pa.timestamp("us", "UTC")
TIMESTAMP = pa.timestamp("us")
_SCALARS = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
_NESTED = ("object", "array")


def arrow_to_json_schema(schema: pa.Schema) -> dict[str, Any]:
    """The Airbyte ``json_schema`` of records with this Arrow schema (every column nullable)."""
    return {
        "$schema": JSON_SCHEMA_DRAFT,
        "type": "object",
        "additionalProperties": True,
        "properties": {f.name: _nullable(arrow_type_to_json(f.type)) for f in schema},
    }


def arrow_type_to_json(dtype: pa.DataType) -> dict[str, Any]:
    """The JSON Schema of one Arrow type (without null)."""
    if pat.is_boolean(dtype):
        return {"type": "boolean"}
    if pat.is_integer(dtype):
        return {"type": "integer", "airbyte_type": "integer"}
    if pat.is_floating(dtype) or pat.is_decimal(dtype):
        return {"type": "number"}
    if pat.is_timestamp(dtype):
        zone = "timestamp_with_timezone" if dtype.tz else "timestamp_without_timezone"
        return {"type": "string", "format": "date-time", "airbyte_type": zone}
    if pat.is_date(dtype):
        return {"type": "string", "format": "date"}
    if pat.is_time(dtype):
        return {"type": "string", "format": "time", "airbyte_type": "time_without_timezone"}
    if pat.is_binary(dtype) or pat.is_large_binary(dtype) or pat.is_fixed_size_binary(dtype):
        return {"type": "string", "contentEncoding": "base64"}
    if pat.is_list(dtype) or pat.is_large_list(dtype) or pat.is_fixed_size_list(dtype):
        return {"type": "array", "items": _nullable(arrow_type_to_json(dtype.value_type))}
    if pat.is_struct(dtype):
        fields = (dtype.field(i) for i in range(dtype.num_fields))
        return {
            "type": "object",
            "properties": {f.name: _nullable(arrow_type_to_json(f.type)) for f in fields},
        }
    if pat.is_map(dtype):
        return {"type": "object"}
    if pat.is_null(dtype):
        return {}
    return {"type": "string"}  # strings, durations, and anything written as text


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if kind is None:
        return schema
    return {**schema, "type": ["null", kind]}


def json_schema_to_arrow(json_schema: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema of a stream's records: one nullable field per property, in order."""
    props = json_schema.get("properties") or {}
    return pa.schema([pa.field(str(name), json_to_arrow_type(p)) for name, p in props.items()])


def json_to_arrow_type(prop: Mapping[str, Any] | bool) -> pa.DataType:
    """The Arrow type of one property's JSON Schema (see the module docstring).

    ``integer`` -> int64; ``number`` -> float64 (int64 with ``airbyte_type: integer``);
    ``boolean`` -> bool; ``string`` -> string, or with ``format: date-time`` a UTC
    timestamp (naive with ``airbyte_type: timestamp_without_timezone``), with ``format:
    date`` a date32; anything else -> JSON text.
    """
    kind = _kind(prop)
    if kind is None or kind in _NESTED or not isinstance(prop, Mapping):
        return pa.string()
    if kind == "string":
        fmt, hint = prop.get("format"), prop.get("airbyte_type")
        if fmt == "date-time" or hint in ("timestamp_with_timezone", "timestamp_without_timezone"):
            return TIMESTAMP if hint == "timestamp_without_timezone" else TIMESTAMP_TZ
        return pa.date32() if fmt == "date" or hint == "date" else pa.string()
    if kind == "number" and prop.get("airbyte_type") == "integer":
        return pa.int64()
    return _SCALARS.get(kind, pa.string())


def is_json_text(prop: Mapping[str, Any] | bool) -> bool:
    """Whether a field's values are carried as JSON text (nested or untyped values)."""
    kind = _kind(prop)
    return kind is None or kind in _NESTED


def _kind(prop: Mapping[str, Any] | bool) -> str | None:
    """The one JSON type a property's values have besides null (``"null"`` if only null),
    or None if there is not exactly one."""
    if not isinstance(prop, Mapping):
        return None
    declared = prop.get("type")
    if declared is None:
        options = prop.get("anyOf") or prop.get("oneOf")
        kinds = {_kind(option) for option in options or ()} - {"null"}
        return kinds.pop() if len(kinds) == 1 else None
    types = [t for t in ([declared] if isinstance(declared, str) else declared) if t != "null"]
    if not types:
        return "null"
    return types[0] if len(types) == 1 else None
