"""How a source's field names become warehouse columns: decided once per stream, and stored.

Sources name fields as they like (``id`` and ``ID`` in one record, an empty key, the
same word in NFC and NFD); DuckDB and Snowflake fold names case-insensitively. So a
field keeps its name as a column unless that name cannot be one:

* the name is taken to Unicode NFC (NFD ``é`` and NFC ``é`` are one column);
* an empty name becomes ``_empty``; control characters become ``_``;
* a name longer than 255 characters (Snowflake's limit, applied everywhere so every
  warehouse gets the same columns) is cut, with a hash of the whole name appended;
* a name that folds (case-insensitively) onto a column already taken, by another field
  or by mdstack's ``_mds_*`` metadata, gets the first free suffix ``_2``, ``_3``...

Which field came first decides who keeps the plain name, and a rename is stored in
``_mds_columns`` before its column is created: the next run maps ``ID`` to the same
column whatever order the fields arrive in, on every warehouse. Everything downstream
(create, insert, merge, schema evolution, deletes, keys, cursors) sees column names only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from stack import sql
from stack.load.plan import StreamPlan
from stack.sql import ident, table
from stack.warehouse.base import Warehouse

MAX_LENGTH = 255
"""Longest column name on every warehouse (Snowflake's identifier limit)."""
EMPTY = "_empty"
COLUMNS_TABLE = "_mds_columns"
COLUMNS_SCHEMA = pa.schema(
    [
        ("schema_name", pa.string()),
        ("table_name", pa.string()),
        ("source_name", pa.string()),
        ("column_name", pa.string()),
        ("reason", pa.string()),
        ("run_id", pa.string()),
    ]
)
"""One row per renamed field of a destination table (fields loaded as named have none)."""

_RESERVED = (*sql.META_COLUMNS, *sql.HISTORY_COLUMNS, sql.SEQ, sql.POS, sql.CHANGED_AT)


def _fold(name: str) -> str:
    return name.casefold()


def _clean(name: str) -> tuple[str, list[str]]:
    """The name as a column would carry it before collisions, and why it differs."""
    reasons = []
    clean = unicodedata.normalize("NFC", name)
    if clean != name:
        reasons.append("Unicode NFC")
    if any(unicodedata.category(c) == "Cc" for c in clean):
        clean = "".join("_" if unicodedata.category(c) == "Cc" else c for c in clean)
        reasons.append("control characters")
    if not clean:
        clean = EMPTY
        reasons.append("empty name")
    if len(clean) > MAX_LENGTH:
        clean = _cut(clean, clean)
        reasons.append(f"longer than {MAX_LENGTH} characters")
    return clean, reasons


def _cut(base: str, whole: str, suffix: str = "") -> str:
    """``base`` cut so that it, a hash of ``whole`` and ``suffix`` fit ``MAX_LENGTH``."""
    if len(base) + len(suffix) <= MAX_LENGTH:
        return base + suffix
    digest = "_" + hashlib.sha1(whole.encode()).hexdigest()[:8]
    return base[: MAX_LENGTH - len(digest) - len(suffix)] + digest + suffix


def _coalesce(first: pa.Array, second: pa.Array) -> pa.Array:
    """One column from two fields of one record that name it (NFC and NFD): first non-null."""
    if first.type != second.type:
        first, second = first.cast(pa.string()), second.cast(pa.string())
    return pc.coalesce(first, second)


@dataclass(frozen=True)
class Rename:
    """A field loaded under another name, and why."""

    source: str
    column: str
    reason: str

    def describe(self) -> str:
        return f"field {self.source!r} loaded as column {self.column!r} ({self.reason})"


@dataclass
class ColumnNames:
    """Field -> column for one destination table: the stored renames plus the table's columns.

    Args:
        renames: the renames stored for the table, field name -> column name.
        existing: the table's columns (none if it does not exist yet).
    """

    renames: dict[str, str] = field(default_factory=dict)
    existing: Iterable[str] = ()
    new: list[Rename] = field(default_factory=list)
    """Renames decided since the last :meth:`store` (written before their columns exist)."""

    def __post_init__(self) -> None:
        self._columns: dict[str, str] = dict(self.renames)
        targets = set(self.renames.values())
        self._taken = {_fold(c) for c in (*_RESERVED, *self.existing, *targets)}
        # A column of the table that no rename produced holds the field of the same name.
        for column in self.existing:
            if column not in targets and column not in _RESERVED:
                self._columns.setdefault(column, column)
        self._by_nfc = {unicodedata.normalize("NFC", f): c for f, c in self._columns.items()}

    def column(self, name: str) -> str:
        """The column of field ``name``, deciding it (for good) on first sight."""
        if (known := self._columns.get(name)) is not None:
            return known
        same = self._by_nfc.get(unicodedata.normalize("NFC", name))
        if same is not None:  # the same name in another Unicode form: the same column
            self._columns[name] = same
            self.new.append(Rename(name, same, "Unicode NFC"))
            return same
        clean, reasons = _clean(name)
        column = clean
        if _fold(clean) in self._taken:
            n = 2
            while _fold(column := _cut(clean, name, f"_{n}")) in self._taken:
                n += 1
            reasons.append(f"{clean!r} is taken, case-insensitively")
        self._columns[name] = self._by_nfc[unicodedata.normalize("NFC", name)] = column
        self._taken.add(_fold(column))
        if column != name:
            self.new.append(Rename(name, column, "; ".join(reasons)))
        return column

    def columns(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.column(n) for n in names)

    def schema(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` with every field under its column name."""
        return pa.schema([f.with_name(self.column(f.name)) for f in schema])

    def batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with every column under its column name (no copy of the data)."""
        names = self.columns(batch.schema.names)
        if names == tuple(batch.schema.names):
            return batch
        if len(set(names)) == len(names):
            return batch.rename_columns(list(names))
        merged: dict[str, pa.Array] = {}
        for column, array in zip(names, batch.columns, strict=True):
            merged[column] = array if column not in merged else _coalesce(merged[column], array)
        return pa.RecordBatch.from_pydict(merged)

    def store(self, wh: Warehouse, schema: str, name: str, run_id: str) -> list[Rename]:
        """Write the renames decided since the last call; return them.

        Called before the columns they name are created: a crash after it leaves a stored
        rename whose column does not exist yet, which the next run creates under it.
        """
        new, self.new = self.new, []
        if new:
            wh.execute(
                f"INSERT INTO {table(wh.meta_schema, COLUMNS_TABLE)} "
                + "VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(new)),
                [v for r in new for v in (schema, name, r.source, r.column, r.reason, run_id)],
            )
        return new


def stored_renames(wh: Warehouse, schema: str, name: str) -> list[Rename]:
    """The renames stored for ``schema.name``: its ``_mds_columns`` rows."""
    stored = wh.query(
        f"SELECT {ident('source_name')}, {ident('column_name')}, {ident('reason')} "
        f"FROM {table(wh.meta_schema, COLUMNS_TABLE)} "
        f"WHERE {ident('schema_name')} = ? AND {ident('table_name')} = ?",
        [schema, name],
    ).to_pylist()
    return [Rename(r["source_name"], r["column_name"], r["reason"]) for r in stored]


def load_names(wh: Warehouse, schema: str, name: str, columns: Iterable[str] | None) -> ColumnNames:
    """The stored renames of ``schema.name``, with its existing ``columns`` (None: no table)."""
    renames = {r.source: r.column for r in stored_renames(wh, schema, name)}
    return ColumnNames(renames, columns or ())


def column_plan(plan: StreamPlan, names: ColumnNames) -> StreamPlan:
    """``plan`` in column names: the declared schema, keys, cursor and selected columns.

    The source still reads the original plan's stream: it knows its fields, not our columns.
    """
    stream, spec = plan.stream, plan.stream.spec
    spec = dataclasses.replace(
        spec,
        schema=names.schema(spec.schema),
        primary_key=names.columns(spec.primary_key),
        cursor=spec.cursor and names.column(spec.cursor),
        immutable=names.columns(spec.immutable),
    )
    stream = dataclasses.replace(
        stream,
        spec=spec,
        cursor=stream.cursor and names.column(stream.cursor),
        primary_key=names.columns(stream.primary_key),
    )
    return dataclasses.replace(
        plan, stream=stream, columns=plan.columns and names.columns(plan.columns)
    )
