r"""Catalog and fetch path of :mod:`connectors.postgres`: PostgreSQL relations as Arrow.

* :func:`tables` reads the catalog (``pg_class``, ``pg_attribute``, ``pg_index``) into
  :class:`Table`\ s, mapping each column type to Arrow (see ``connectors.postgres``).
* :class:`Scanner` streams a relation or a query through DuckDB's postgres scanner, loaded
  offline from the PyPI package ``duckdb-extension-postgres-scanner``. A table whose columns
  DuckDB reads exactly takes the attached scan: binary COPY over ctid ranges of
  :data:`RANGE_PAGES` pages, read by up to ``readers`` connections at once (one DuckDB thread
  each) that share one exported snapshot. Anything else (views, other types, ordered
  incremental reads) goes through ``postgres_query`` with the casts of :func:`select`: one
  binary COPY, run and ordered by the server, in bounded memory.

The scanner shares the snapshot only where PostgreSQL can export one: not on a standby
(``pg_is_in_recovery()``, or a WAL receiver running), not on Aurora. There it reads the
ranges in transactions of their own, each seeing another moment; :func:`shares_snapshot`
tells the source to read with one connection instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql
from sqlglot import exp

from connectors.duckdb_extensions import FROM_WHEELS_ONLY, load, packaged_extension
from connectors.errors import ConnectorError


@dataclass(frozen=True)
class Column:
    """One column: its declared type, its Arrow type, and how each fetch path reads it."""

    name: str
    pg_type: str  # format_type(): how the column is declared
    arrow: pa.DataType
    cast: str  # the type the query path casts to, matching ``arrow``
    fast: bool  # DuckDB's attached scan reads it exactly


_TYPES: dict[str, tuple[pa.DataType, str]] = {
    "int2": (pa.int16(), "int2"),
    "int4": (pa.int32(), "int4"),
    "int8": (pa.int64(), "int8"),
    "float4": (pa.float32(), "float4"),
    "float8": (pa.float64(), "float8"),
    "bool": (pa.bool_(), "bool"),
    "date": (pa.date32(), "date"),
    "timestamp": (pa.timestamp("us"), "timestamp"),
    "timestamptz": (pa.timestamp("us", "UTC"), "timestamptz"),
    "time": (pa.time64("us"), "time"),
    "bytea": (pa.binary(), "bytea"),
}
_TEXT = ("text", "varchar", "uuid", "json", "jsonb")  # DuckDB reads them exactly as strings
# char(n) is not among them: ::text drops its padding, as PostgreSQL's own comparisons do
_OUTPUT = "output"  # no cast: the type's own text output (inet::text would add a /32)
_DUCK = {
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.string(): "VARCHAR",
    pa.date32(): "DATE",
    pa.timestamp("us"): "TIMESTAMP",
    pa.timestamp("us", "UTC"): "TIMESTAMPTZ",
    pa.time64("us"): "TIME",
    pa.binary(): "BLOB",
}


def _map_column(
    name: str, pg_type: str, typname: str, kind: str, category: str, mod: int, dom: bool
):
    """Map one catalog column (base type of a domain) to Arrow and to the query-path cast."""
    if typname in _TYPES:
        arrow, cast = _TYPES[typname]
        return Column(name, pg_type, arrow, cast, not dom)
    if typname == "numeric":
        precision, scale = ((mod - 4) >> 16) & 0xFFFF, (mod - 4) & 0xFFFF
        if mod >= 4 and 0 < precision <= 38 and scale <= precision:
            cast = f"numeric({precision},{scale})"
            return Column(name, pg_type, pa.decimal128(precision, scale), cast, not dom)
        return Column(name, pg_type, pa.float64(), "float8", False)
    plain = typname in _TEXT or kind == "e" or category == "A"  # ::text is their output form
    cast = "text" if plain or typname == "bpchar" else _OUTPUT
    return Column(name, pg_type, pa.string(), cast, plain and not dom)


@dataclass(frozen=True)
class Table:
    """One relation (table, view, ...) as discovered, and the stream it becomes."""

    schema: str
    name: str
    kind: str  # pg_class.relkind
    replica_identity: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    stream: str

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.arrow) for c in self.columns])

    @property
    def fast(self) -> bool:
        return self.kind == "r" and all(c.fast for c in self.columns)

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


_COLUMNS = """
SELECT n.nspname, c.relname, c.relkind, c.relreplident, a.attname,
       format_type(a.atttypid, a.atttypmod), b.typname, b.typtype, b.typcategory,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, t.typtype = 'd'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition AND n.nspname = ANY(%s)
ORDER BY n.nspname, c.relname, a.attnum
"""
_KEYS = """
SELECT n.nspname, c.relname, a.attname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisprimary AND n.nspname = ANY(%s)
ORDER BY n.nspname, c.relname, k.ord
"""


def tables(
    conn: psycopg.Connection, schemas: Sequence[str], include: Sequence[str] | None, source: str
) -> list[Table]:
    """The relations of ``schemas`` (or those named in ``include``) with columns and keys.

    Streams are named after the table, or ``<schema>_<table>`` when several schemas are read.

    Raises:
        ConnectorError: a name in ``include`` is not found, or two relations map to one stream.
    """
    wanted: list[tuple[str | None, str]] = [
        (s, t) if dot else (None, s) for s, dot, t in (n.partition(".") for n in include or ())
    ]
    schemas = list(dict.fromkeys([*schemas, *(s for s, _ in wanted if s)]))
    keys: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in conn.execute(_KEYS, (schemas,)):
        keys.setdefault((schema, table), []).append(column)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for schema, table, kind, ident, *col in conn.execute(_COLUMNS, (schemas,)):
        entry = found.setdefault((schema, table), {"kind": kind, "ident": ident, "cols": []})
        entry["cols"].append(_map_column(*col))
    for schema, table in wanted:
        if not any(t == table and schema in (None, s) for s, t in found):
            raise ConnectorError(
                f"table {table if schema is None else f'{schema}.{table}'!r} not found "
                f"in schemas {schemas}",
                source=source,
                key="tables",
                hint="fix the name in `tables:` or add its schema to `schemas:`",
            )
    out: list[Table] = []
    names: dict[str, str] = {}
    for (schema, table), entry in found.items():
        if wanted and not any(t == table and s in (None, schema) for s, t in wanted):
            continue
        stream = table if len(schemas) == 1 else f"{schema}_{table}"
        if stream in names:
            raise ConnectorError(
                f"{names[stream]} and {schema}.{table} both map to stream {stream!r}",
                source=source,
                key="tables",
                hint="leave one of them out with `tables:`",
            )
        names[stream] = f"{schema}.{table}"
        pk = tuple(keys.get((schema, table), ()))
        out.append(
            Table(schema, table, entry["kind"], entry["ident"], tuple(entry["cols"]), pk, stream)
        )
    return out


def _extension_file() -> Path:
    """The postgres_scanner binary shipped by the ``duckdb-extension-postgres-scanner`` wheel."""
    path = packaged_extension("duckdb_extension_postgres_scanner", "postgres_scanner")
    if path is None:
        raise ConnectorError(
            f"DuckDB's postgres extension for DuckDB {duckdb.__version__} is not installed",
            hint=f"pip install 'duckdb-extension-postgres-scanner=={duckdb.__version__}'",
        )
    return path


RANGE_PAGES = 1000
"""Heap pages (8 kB each) per ctid range: a table of fewer pages is one range, one reader."""

_SNAPSHOT_EXPORTABLE = """
SELECT NOT pg_is_in_recovery()
       AND NOT EXISTS (SELECT FROM pg_stat_wal_receiver)
       AND to_regproc('aurora_version') IS NULL
"""


def shares_snapshot(conn: psycopg.Connection) -> bool:
    """Whether the attached scan's parallel ranges see one snapshot on this server (the
    extension exports none on a standby or on Aurora)."""
    row = conn.execute(_SNAPSHOT_EXPORTABLE).fetchone()
    return bool(row and row[0])


def _conninfo(params: Mapping[str, Any]) -> str:
    """libpq ``key='value'`` string (no password: DuckDB gets that through a secret)."""
    quote = lambda v: "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
    return " ".join(f"{k}={quote(v)}" for k, v in params.items())


class Scanner:
    """DuckDB with the PostgreSQL database attached read-only; close it after use.

    Args:
        params: libpq connection parameters, without the password.
        password: given to DuckDB as a secret, so it never appears in a statement.
        batch_size: rows per Arrow batch.
        readers: connections (and DuckDB threads) reading a table's ranges at once. Each
            holds DuckDB vectors of 2 048 rows and a connection's buffers (~1-2 MB), not a
            batch: the ranges' rows meet in one stream of ``batch_size``-row batches.
    """

    def __init__(
        self, params: Mapping[str, Any], password: str | None, batch_size: int, readers: int = 1
    ) -> None:
        self.batch_size = batch_size
        self.con = duckdb.connect(":memory:", config=FROM_WHEELS_ONLY)
        try:
            load(self.con, _extension_file())
            self.con.execute("SET pg_array_as_varchar = true")  # arrays in PostgreSQL's text form
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute(f"SET threads = {int(readers)}")
            self.con.execute(f"SET pg_pages_per_task = {RANGE_PAGES}")
            # The connection pool keeps its own default: capped at one connection, a read
            # and the catalog lookups of the same scanner wait on each other.
            secret = ""
            if password:
                self.con.execute("CREATE SECRET mds_pg (TYPE postgres, PASSWORD ?)", [password])
                secret = ", SECRET mds_pg"
            info = _conninfo(params).replace("'", "''")
            self.con.execute(f"ATTACH '{info}' AS pg (TYPE postgres, READ_ONLY{secret})")
        except BaseException:
            self.con.close()
            raise

    def close(self) -> None:
        self.con.close()

    def table(self, table: Table, conn: psycopg.Connection) -> pa.RecordBatchReader:
        """The whole relation, through the attached scan when its types allow."""
        if not table.fast:
            return self.query(select(table), conn)
        columns = [
            exp.cast(
                exp.column(c.name, quoted=True), exp.DataType.build(_duck(c.arrow), "duckdb")
            ).as_(c.name, quoted=True)
            for c in table.columns
        ]
        source = exp.table_(table.name, db=table.schema, catalog="pg", quoted=True)
        query = exp.select(*columns).from_(source).sql("duckdb")
        return self.con.execute(query).to_arrow_reader(self.batch_size)

    def query(self, statement: sql.Composable, conn: psycopg.Connection) -> pa.RecordBatchReader:
        """A PostgreSQL statement run by the server (one binary COPY), streamed."""
        text = statement.as_string(conn)
        reader = self.con.execute("SELECT * FROM postgres_query('pg', ?)", [text])
        return reader.to_arrow_reader(self.batch_size)


def _duck(arrow: pa.DataType) -> str:
    if pa.types.is_decimal(arrow):
        return f"DECIMAL({arrow.precision},{arrow.scale})"
    return _DUCK[arrow]


def select(table: Table, where: sql.Composable | None = None, order: str | None = None):
    """``SELECT col::cast AS col, ... FROM t [WHERE ...] [ORDER BY cursor [NULLS FIRST]]``."""
    output = sql.SQL("CASE WHEN {0} IS NOT NULL THEN format('%s', {0}) END AS {0}")
    columns = sql.SQL(", ").join(
        output.format(sql.Identifier(c.name))
        if c.cast == _OUTPUT
        else sql.SQL("{0}::{1} AS {0}").format(sql.Identifier(c.name), sql.SQL(c.cast))
        for c in table.columns
    )
    query = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier(table.schema, table.name))
    if where is not None:
        query = sql.SQL("{} WHERE {}").format(query, where)
    if order is not None:
        query = sql.SQL("{} ORDER BY {} NULLS FIRST").format(query, sql.Identifier(order))
    return query


def has_rows_after(
    conn: psycopg.Connection, table: Table, cursor: str, where: sql.Composable
) -> bool:
    """Whether any row passes ``where`` (the cursor's bound), asked only where an index leads
    with the cursor column, so the answer is a seek: an incremental read with nothing new
    then ends without starting DuckDB's scanner. Without such an index it is ``True``
    (asking would scan the table once more)."""
    relation = sql.Identifier(table.schema, table.name)
    indexed = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = i.indkey[0] WHERE i.indrelid = %s::regclass AND a.attname = %s)",
        (relation.as_string(conn), cursor),
    ).fetchone()
    if not (indexed and indexed[0]):
        return True
    found = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(relation, where)
    ).fetchone()
    return bool(found and found[0])


def chunk(
    table: Table, key: Sequence[str], after: Sequence[str] | None, rows: int
) -> sql.Composable:
    """The next ``rows`` rows of ``table`` in ``key`` order, after the key ``after`` (its
    values as text, cast back to the columns' types; None: from the first row).

    Comparisons and order use the table's own columns (their types and collations), not
    the text the query returns, so the order the chunks follow is the index's.
    """
    types = {c.name: c.pg_type for c in table.columns}
    columns = [sql.Identifier(table.schema, table.name, k) for k in key]
    where = None
    if after is not None:
        bound = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(types[k]))
            for k, v in zip(key, after, strict=True)
        )
        where = sql.SQL("({}) > ({})").format(sql.SQL(", ").join(columns), bound)
    return sql.SQL("{} ORDER BY {} LIMIT {}").format(
        select(table, where), sql.SQL(", ").join(columns), sql.Literal(rows)
    )


def batches(reader: pa.RecordBatchReader, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The reader's non-empty batches, cast to ``schema`` where DuckDB's types differ."""
    for batch in reader:
        if batch.num_rows:
            yield batch if batch.schema.equals(schema) else batch.cast(schema)
