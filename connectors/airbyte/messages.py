"""Airbyte protocol messages as bytes: what ``mdstack-source`` writes, one JSON line each.

Records are the hot path: a whole Arrow batch becomes NDJSON in one call (polars writes
it), and each line is wrapped into a RECORD envelope with bytes operations, so no Python
object is built per row. Columns JSON cannot hold are converted per column first:
timestamps to ISO 8601 strings, binary to base64, decimals to numbers.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from connectors.airbyte.json_schema import CDC_DELETED_AT, arrow_to_json_schema
from connectors.base import SOURCE_DELETED_AT, Catalog, State, StreamSpec

if TYPE_CHECKING:
    import polars as pl

_ISO = "%Y-%m-%dT%H:%M:%S%.6f"


def now_ms() -> int:
    return int(time.time() * 1000)


def message(kind: str, key: str, body: Any) -> bytes:
    """One AirbyteMessage line: ``{"type": kind, key: body}``."""
    return orjson.dumps({"type": kind, key: body}) + b"\n"


def spec_message(connection_spec: dict[str, Any], docs_url: str) -> bytes:
    return message(
        "SPEC", "spec", {"connectionSpecification": connection_spec, "documentationUrl": docs_url}
    )


def status_message(ok: bool, text: str = "") -> bytes:
    status: dict[str, Any] = {"status": "SUCCEEDED" if ok else "FAILED"}
    if text:
        status["message"] = text
    return message("CONNECTION_STATUS", "connectionStatus", status)


def catalog_message(catalog: Catalog) -> bytes:
    return message("CATALOG", "catalog", {"streams": [airbyte_stream(s) for s in catalog.streams]})


def airbyte_stream(spec: StreamSpec) -> dict[str, Any]:
    """A discovered stream in Airbyte's words (``AirbyteStream``)."""
    json_schema = arrow_to_json_schema(spec.schema)
    if spec.emits_deletes:
        deleted = {"type": ["null", "string"], "format": "date-time"}
        json_schema["properties"][CDC_DELETED_AT] = deleted | {
            "airbyte_type": "timestamp_with_timezone"
        }
    modes = [
        m for m in ("full_refresh", "incremental") if any(s.startswith(m) for s in spec.sync_modes)
    ]
    stream: dict[str, Any] = {
        "name": spec.name,
        "json_schema": json_schema,
        "supported_sync_modes": modes,
        "source_defined_cursor": spec.cursor is not None,
        "is_resumable": "incremental" in modes,
    }
    if spec.cursor:
        stream["default_cursor_field"] = [spec.cursor]
    if spec.primary_key:
        stream["source_defined_primary_key"] = [[k] for k in spec.primary_key]
    return stream


def state_message(stream: str, state: State, records: int) -> bytes:
    """A per-stream STATE: ``stream_state`` is the source's checkpoint state as is."""
    return message(
        "STATE",
        "state",
        {
            "type": "STREAM",
            "stream": {"stream_descriptor": {"name": stream}, "stream_state": state},
            "sourceStats": {"recordCount": float(records)},
        },
    )


def log_message(level: str, text: str) -> bytes:
    return message("LOG", "log", {"level": level, "message": text})


def status_trace(stream: str, status: str) -> bytes:
    """A STREAM_STATUS trace: STARTED, RUNNING, COMPLETE or INCOMPLETE."""
    return message(
        "TRACE",
        "trace",
        {
            "type": "STREAM_STATUS",
            "emitted_at": float(now_ms()),
            "stream_status": {"stream_descriptor": {"name": stream}, "status": status},
        },
    )


def error_trace(text: str, internal: str, failure_type: str, stream: str | None = None) -> bytes:
    """An ERROR trace; ``failure_type`` is system_error, config_error or transient_error."""
    error: dict[str, Any] = {
        "message": text,
        "internal_message": internal,
        "failure_type": failure_type,
    }
    if stream:
        error["stream_descriptor"] = {"name": stream}
    return message(
        "TRACE", "trace", {"type": "ERROR", "emitted_at": float(now_ms()), "error": error}
    )


def record_lines(stream: str, batch: pa.RecordBatch, emitted_at: int) -> bytes:
    """RECORD lines for every row of ``batch`` (no per-row Python objects)."""
    if batch.num_rows == 0:
        return b""
    import polars as pl  # here: spec, check and discover need not load it

    buffer = io.BytesIO()
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)  # a batch is a frame; only an array is a Series
    _jsonable(frame).write_ndjson(buffer)
    lines = buffer.getvalue().rstrip(b"\n").split(b"\n")
    head = b'{"type":"RECORD","record":{"stream":%s,"emitted_at":%d,"data":' % (
        orjson.dumps(stream),
        emitted_at,
    )
    tail = b"}}\n"
    return head + (tail + head).join(lines) + tail


def delete_lines(stream: str, keys: pa.RecordBatch, emitted_at: int) -> bytes:
    """RECORD lines for CDC deletes: the key columns and ``_ab_cdc_deleted_at`` (UTC)."""
    at = keys.column(SOURCE_DELETED_AT)
    if not at.type.tz:
        at = at.cast(pa.timestamp(at.type.unit, tz="UTC"))
    columns = [keys.column(n) for n in keys.schema.names if n != SOURCE_DELETED_AT]
    names = [n for n in keys.schema.names if n != SOURCE_DELETED_AT]
    return record_lines(
        stream, pa.record_batch([*columns, at], names=[*names, CDC_DELETED_AT]), emitted_at
    )


def _jsonable(frame: pl.DataFrame) -> pl.DataFrame:
    """Convert, per column, what JSON cannot hold: timestamps, binary, decimals."""
    import polars as pl

    converted = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            converted.append(column.dt.to_string(_ISO + ("%:z" if dtype.time_zone else "")))
        elif dtype == pl.Binary:
            converted.append(column.bin.encode("base64"))
        elif isinstance(dtype, pl.Decimal):
            converted.append(column.cast(pl.Float64))
    return frame.with_columns(converted) if converted else frame
