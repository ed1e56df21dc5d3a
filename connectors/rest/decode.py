"""A page's body straight into Arrow, in the fetching thread, without Python objects per value.

Parsing a page with orjson and converting its records with ``RecordBatch.from_pylist`` holds
the GIL for every value, so one core did all of a read's parsing however many pages were
fetched at once. Arrow's JSON reader (``pyarrow.json``) parses in C++ with the GIL released:
the fetch pool's threads parse pages in parallel while others wait on the network.

A :class:`PageDecoder` reads a body against an *explicit* schema: the stream's columns in
the types the reading thread has settled on so far (:meth:`Columns.parse_types`), at the
place the record selector names (``$.data``, ``$.result.items[*]``, ``$``), plus the page
token of a cursor or next-URL pagination as text. Arrow's reader refuses what does not fit
that schema exactly (a number in a text column, ``4.5`` in an integer column, a boolean among
numbers, an object, a duplicate key, a record that is not an object; NaN, Infinity, text
that is not UTF-8 and ``-0`` in a float column are checked after it), and fields beyond it
are read as Arrow infers them (the reading thread then decides, see :meth:`Columns.fit`). So
the decoder answers only where orjson + :class:`Columns` would give the same values; anywhere
else (:attr:`Decoded.batch` is None) the page is parsed with orjson as before.

It is not used before the reading thread knows any column (the first pages), and it is turned
off for a stream where a page it could not decode left the types as they were (nested objects
on every page, say): the next pages would not fit either, and reading them twice costs more.

Measured on the bench API's pages (1,000 records of 10 scalar fields, 2 cores): orjson 0.95 ms
+ conversion 0.86 ms a page, all under the GIL; Arrow's reader 2.0-2.7 ms a page on one core
but 1.3 ms a page with 4 threads on 2 cores, leaving the GIL to the HTTP client. A read of
500 pages went from 2.1-2.8 s to 1.7-1.8 s (fetching and parsing alone: 1.5-1.7 s).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from connectors._json_arrow import CONVERSION_ERRORS, inexact
from connectors.rest.jsonpath import JsonPath

_ROOT = "_"
"""The key a top-level list of records is wrapped under (Arrow reads objects, not lists)."""


@dataclass(frozen=True)
class Decoded:
    """One attempt: the records as raw Arrow (None: the page did not fit ``types``), the
    document's page token alone at its place (``{"meta": {"next": "abc"}}``), and the
    column types the page was read against."""

    batch: pa.RecordBatch | None
    doc: dict[str, Any]
    types: Mapping[str, pa.DataType]


class PageDecoder:
    """Decodes pages of one stream into raw Arrow records; shared by the fetch threads."""

    def __init__(self, records: tuple[str, ...], token: tuple[str, ...] | None = None) -> None:
        """``records``: the keys down to the list of records (empty: the body is the list);
        ``token``: the keys down to the next-page token, if the pagination reads one."""
        self._records = records or (_ROOT,)
        self._wrap = not records
        self._token = token
        self._settled: tuple[dict[str, pa.DataType], pj.ParseOptions] | None = None
        self._types: dict[str, pa.DataType] = {}
        self.enabled = True

    @classmethod
    def of(cls, selector: JsonPath, token: JsonPath | None = None) -> PageDecoder | None:
        """A decoder for a record selector (and page-token path), or None where the paths are
        not plain keys or the token lives among the records."""
        keys = selector.plain_keys()
        if keys is None:
            return None
        token_keys = None
        if token is not None:
            token_keys = token.plain_keys()
            shared = min(len(keys), len(token_keys or ()))
            if not token_keys or keys[:shared] == token_keys[:shared]:
                return None  # the token at the root, among the records, or holding them
        return cls(keys, token_keys)

    def settle(self, types: Mapping[str, pa.DataType]) -> None:
        """Decode from now on against these column types (called by the reading thread)."""
        if not self.enabled or types == self._types:
            return
        self._types = dict(types)
        records = pa.list_(pa.struct(list(types.items())))
        fields = [_nest(self._records, records)]
        if self._token is not None:
            fields.append(_nest(self._token, pa.string()))
        options = pj.ParseOptions(
            explicit_schema=pa.schema(_merge(fields)),
            newlines_in_values=True,
            unexpected_field_behavior="infer",
        )
        self._settled = (self._types, options) if types else None  # one atomic swap

    def disable(self) -> None:
        """Stop decoding: pages of this stream do not fit the types they settle on."""
        self.enabled = False
        self._settled = None

    def decode(self, body: bytes) -> Decoded | None:
        """The page read against the settled types; None: nothing settled (or disabled).

        Runs in the fetch threads. The batch holds the known columns in their settled types,
        and any new field as Arrow inferred it.
        """
        settled = self._settled
        if settled is None:
            return None
        types, options = settled
        declined = Decoded(None, {}, types)
        if body.lstrip()[:1] != (b"[" if self._wrap else b"{"):
            return declined  # null, a BOM, not JSON: orjson's path answers (Arrow may crash)
        if pa.float64() in types.values() and inexact(body):
            return declined  # Arrow would round an integer of 20+ digits into a float column
        if self._wrap:
            body = b'{"' + _ROOT.encode() + b'":' + body + b"}"
        try:
            table = pj.read_json(
                io.BytesIO(body),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(body) + 1),
                parse_options=options,
            )
        except CONVERSION_ERRORS:
            return declined
        if table.num_rows != 1 or (self._wrap and table.column_names != [_ROOT]):
            return declined  # several JSON values, or text after the list: not one document
        lists = _follow(table, self._records)
        if lists is None or lists.null_count:
            return Decoded(pa.RecordBatch.from_pydict({}), self._doc(table), types)
        records = lists.flatten()
        if records.null_count:  # a null among the records: orjson's path names the error
            return declined
        batch = pa.RecordBatch.from_struct_array(records)
        if not _as_orjson_reads(batch):
            return declined
        return Decoded(batch, self._doc(table), types)

    def _doc(self, table: pa.Table) -> dict[str, Any]:
        if self._token is None:
            return {}
        token = _follow(table, self._token)
        value: Any = None if token is None else token[0].as_py()
        for key in reversed(self._token):
            value = {key: value}
        return value


def _as_orjson_reads(batch: pa.RecordBatch) -> bool:
    """Whether orjson would read these values alike: Arrow's reader also takes NaN and
    Infinity (not JSON), text that is not UTF-8, and reads the integer ``-0`` as -0.0."""
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid:
        return False
    for column in batch.columns:
        if pa.types.is_floating(column.type) and column.null_count < len(column):
            if not pc.all(pc.is_finite(column)).as_py():
                return False
            zeros = column.filter(pc.equal(column, 0.0))
            if len(zeros) and pc.any(pc.less(pc.divide(1.0, zeros), 0.0)).as_py():
                return False
    return True


def _nest(keys: tuple[str, ...], leaf: pa.DataType) -> pa.Field:
    """``("a", "b")`` and a type -> the field ``a: struct<b: type>``."""
    for key in reversed(keys[1:]):
        leaf = pa.struct([(key, leaf)])
    return pa.field(keys[0], leaf)


def _merge(fields: list[pa.Field]) -> list[pa.Field]:
    """Fields with the same name merged (the records and the token under one object)."""
    merged: dict[str, pa.Field] = {}
    for field in fields:
        have = merged.get(field.name)
        if have is not None and pa.types.is_struct(have.type) and pa.types.is_struct(field.type):
            inner = _merge([*have.type, *field.type])
            field = pa.field(field.name, pa.struct(inner))
        merged[field.name] = field
    return list(merged.values())


def _follow(table: pa.Table, keys: tuple[str, ...]) -> pa.Array | None:
    """The one-row column at ``keys``, or None where a key is absent."""
    if keys[0] not in table.column_names:
        return None
    array: pa.Array = table.column(keys[0]).combine_chunks()
    for key in keys[1:]:
        if not pa.types.is_struct(array.type) or array.type.get_field_index(key) < 0:
            return None
        array = array.field(key) if not array.null_count else pa.nulls(1)
    return array
