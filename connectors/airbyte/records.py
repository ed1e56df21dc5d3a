"""RECORD lines of one Airbyte stream into an Arrow record batch, a block at a time.

The reader hands over raw stdout lines (bytes), never parsed messages: a block of RECORD
lines is parsed by Arrow's JSON reader in C++ (``pyarrow.json``) against the envelope
``{"record": {"stream", "data": {<typed columns>}}}`` built from the stream's JSON Schema,
so scalar columns (numbers, text, booleans, timestamps) cost no Python per row. Columns
carried as JSON text (nested objects and arrays, untyped values; see
:mod:`connectors.airbyte.json_schema`) are the exception: Arrow would build structs, so those
values are taken from one ``orjson`` pass over the block. Dates are read as text and cast.

A block whose values do not fit the declared types (an integer column holding ``4.5``, a
text column holding a number) is parsed again with orjson (with the standard library where a
line holds integers beyond 64 bits or NaN/Infinity: :func:`connectors._json_arrow.loads`):
each column is converted on its own and a column that does not fit becomes wider (integers
beyond int64 -> decimal(38, 0), other numbers -> float64) or text (values as their JSON
text), with a warning; the engine's schema policy then decides about the change.
Fields a record has beyond its stream's schema are dropped, unless the reader was handed
an ``undeclared`` callback (the schema came from a cache and may predate a column the source
gained since): the first record of the stream with a top-level field the schema does not
declare calls it with those fields, before its block becomes a batch; it raises, or returns
and such fields are dropped from then on. Detection costs no Python per row: where every
column is read by Arrow, the block is parsed with unexpected fields inferred and the
``data`` struct's type names any extra field; where columns carried as JSON text already
take an orjson pass, the union of its keys does (a set union in C). Either is confirmed on
the stream's own records (another stream's record may hold other fields). Nested fields
never count: a nested value is carried whole, as JSON text. A schema that declares no
properties at all gives one column, ``_airbyte_data``, with the whole record as JSON text,
and has no undeclared fields.

Measured on 20 k ``source-faker`` users (17 columns, one nested): Arrow's reader 5 us per
record without the nested column, 12 us with it; orjson + ``RecordBatch.from_pylist`` for
every column 19 us. ``source-faker`` itself takes 100-200 us to produce a record.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from connectors._json_arrow import (
    CONVERSION_ERRORS,
    as_text,
    big_integers,
    json_text,
    loads,
    utc_timestamps,
)
from connectors.airbyte.json_schema import is_json_text, json_schema_to_arrow

log = logging.getLogger("connectors.airbyte")

RAW_COLUMN = "_airbyte_data"
"""The one column of a stream whose JSON Schema declares no properties: the whole record."""
_MIN_BLOCK = 1 << 20


class Records:
    """Converts blocks of one stream's RECORD lines into batches of :attr:`schema`.

    ``undeclared``: called with the top-level fields a record has beyond the schema, the
    first time there are any, instead of dropping them unseen (see the module docstring).
    """

    def __init__(
        self,
        source: str,
        stream: str,
        json_schema: Mapping[str, Any],
        *,
        undeclared: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self.source, self.stream = source, stream
        self.schema = record_schema(json_schema)
        props = json_schema.get("properties") or {RAW_COLUMN: {}}
        self._undeclared = undeclared if RAW_COLUMN not in self.schema.names else None
        self._declared = frozenset(props)
        self._text = [name for name, prop in props.items() if is_json_text(prop)]
        self._dates = {f.name for f in self.schema if pa.types.is_date(f.type)}
        arrow_read = [
            pa.field(f.name, pa.string() if f.name in self._dates else f.type)
            for f in self.schema
            if f.name not in self._text
        ]
        envelope = pa.struct([("stream", pa.string()), ("data", pa.struct(arrow_read))])
        # Without an orjson pass to see the keys in, extra fields show in the parsed types.
        infer = self._undeclared is not None and not self._text
        self._parse = pj.ParseOptions(
            explicit_schema=pa.schema([("record", envelope)]),
            unexpected_field_behavior="infer" if infer else "ignore",
        )
        self._warned: set[str] = set()

    def to_batch(self, lines: Sequence[bytes], longest: int) -> pa.RecordBatch:
        """The block's records of this stream (records of other streams are dropped).

        Args:
            lines: RECORD lines, without their newline.
            longest: the length of the longest line (Arrow's block size must hold it).
        """
        try:
            return self._fast(lines, longest)
        except CONVERSION_ERRORS as exc:
            log.debug("%s.%s: block re-read value by value: %s", self.source, self.stream, exc)
            return self._slow(lines)

    def _fast(self, lines: Sequence[bytes], longest: int) -> pa.RecordBatch:
        block = max(_MIN_BLOCK, 2 * longest)
        table = pj.read_json(
            io.BytesIO(b"\n".join(lines)),
            read_options=pj.ReadOptions(block_size=block),
            parse_options=self._parse,
        )
        record = table.column("record").combine_chunks()
        ours = pc.equal(record.field("stream"), self.stream)
        everyone = pc.all(ours).as_py()
        data = record.field("data")
        parsed = {name: data.field(name) for name in (f.name for f in data.type)}
        seen: set[str] = set(parsed)
        if self._text:
            datas = [_data(loads(line)) for line in lines]
            parsed.update(self._text_columns(datas))
            if self._undeclared is not None:
                seen = set().union(*datas)
        if self._undeclared is not None and not seen <= self._declared:
            self._check(self._datas(lines))
        columns = []
        for f in self.schema:
            column = parsed[f.name]
            if f.name in self._dates:
                column = column.cast(pa.date32())
            columns.append(column)
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        return batch if everyone else batch.filter(ours)

    def _text_columns(self, datas: Sequence[dict[str, Any]]) -> dict[str, pa.Array]:
        return {
            name: pa.array(
                [None if (v := _value(d, name)) is None else json_text(v) for d in datas],
                pa.string(),
            )
            for name in self._text
        }

    def _datas(self, lines: Sequence[bytes]) -> list[dict[str, Any]]:
        """The ``data`` of each of the block's records of this stream."""
        messages = [loads(line) for line in lines]
        return [
            _data(m)
            for m in messages
            if isinstance(m.get("record"), dict) and m["record"].get("stream") == self.stream
        ]

    def _check(self, datas: Sequence[dict[str, Any]]) -> None:
        """Call ``undeclared`` if these records have fields the schema does not declare; if
        it returns, such fields are dropped from then on."""
        if self._undeclared is None:
            return
        found = tuple(sorted(set().union(*datas) - self._declared))
        if found:
            self._undeclared(found)
            self._undeclared = None

    def _slow(self, lines: Sequence[bytes]) -> pa.RecordBatch:
        datas = self._datas(lines)
        self._check(datas)
        columns, fields = [], []
        for f in self.schema:
            values = [_value(d, f.name) for d in datas]
            if f.name in self._text:
                column = pa.array(
                    [None if v is None else json_text(v) for v in values], pa.string()
                )
            else:
                column = self._convert(f, values)
            columns.append(column)
            fields.append(pa.field(f.name, column.type))
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))

    def _convert(self, f: pa.Field, values: list[Any]) -> pa.Array:
        """One column's values as its declared type, else wider, else JSON text."""
        try:
            if pa.types.is_date(f.type):
                return pa.array(values, pa.string()).cast(f.type)
            if pa.types.is_timestamp(f.type):  # offsets converted to UTC, none taken as UTC
                return utc_timestamps(pa.array(values, pa.string())).cast(f.type)
            return pa.array(values, f.type)
        except CONVERSION_ERRORS:
            pass
        if pa.types.is_integer(f.type):
            exact = big_integers(values)  # beyond int64: decimal(38, 0), every digit kept
            if exact is not None:
                return self._widened(f, exact)
            try:
                return self._widened(f, pa.array(values, pa.float64()))
            except CONVERSION_ERRORS:
                pass
        return self._widened(f, pa.array(as_text(values), pa.string()))

    def _widened(self, f: pa.Field, column: pa.Array) -> pa.Array:
        if f.name not in self._warned:
            self._warned.add(f.name)
            log.warning(
                "%s.%s: values of %r do not fit its declared type %s; read as %s",
                self.source,
                self.stream,
                f.name,
                f.type,
                column.type,
            )
        return column


def record_schema(json_schema: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema of a stream's records; a schema without ``properties`` (any record)
    gives one column, :data:`RAW_COLUMN`, holding each record as JSON text."""
    if not json_schema.get("properties"):
        return pa.schema([(RAW_COLUMN, pa.string())])
    return json_schema_to_arrow(json_schema)


def _value(data: dict[str, Any], name: str) -> Any:
    return data if name == RAW_COLUMN and RAW_COLUMN not in data else data.get(name)


def _data(message: Any) -> dict[str, Any]:
    record = message.get("record") if isinstance(message, dict) else None
    data = record.get("data") if isinstance(record, dict) else None
    return data if isinstance(data, dict) else {}
