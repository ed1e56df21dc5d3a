"""Arrow types as Airbyte JSON Schemas: what a stream's ``json_schema`` says about its records.

Airbyte describes records with JSON Schema (draft-07) plus ``airbyte_type`` hints for the
types JSON lacks (timestamps with or without a time zone, 64-bit integers). The mapping
follows how records are written as JSON (:mod:`connectors.airbyte_serve`): timestamps,
dates and times as ISO strings, binary as base64, decimals as numbers.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.types as pat

JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"


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
