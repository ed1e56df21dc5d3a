"""Pure SQL and type mapping for the Snowflake adapter: no connection, golden-tested.

* :func:`render` turns the engine's DuckDB-dialect statements into Snowflake's
  (sqlglot), keeping DuckDB's identifier semantics: the engine creates every
  object with a quoted, case-sensitive name, and DuckDB resolves unquoted names
  case-insensitively, so an unquoted name is rendered as the quoted lower-case
  name (``raw.items`` -> ``"raw"."items"``).
* Column definitions typed through :mod:`stack.warehouse._snowflake_types`.
* The statements the adapter owns (PUT, COPY, lock rows, column rebuilds), which
  sqlglot does not model or which the engine never writes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.tokens import Tokenizer, TokenType

from stack.errors import WarehouseError
from stack.sql import ident, table
from stack.warehouse._snowflake_types import SEMI_STRUCTURED, alterable, snowflake_type

LOAD_STAGE = "_mds_load"
"""The session's temporary internal stage that every bulk load goes through."""
LOCKS_TABLE = "_mds_locks"

_DDL = (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)


# -- statements of the engine -----------------------------------------------------------------
@dataclass(frozen=True)
class Rendered:
    """An engine statement rendered for Snowflake.

    Attributes:
        sql: the statement text to send.
        ddl: Snowflake commits an open transaction before and after it.
        merge_parts: for a ``MERGE``, the same change as ``UPDATE`` + ``INSERT`` (used
            where MERGE cannot run inside a transaction: fakesnow); else empty.
    """

    sql: str
    ddl: bool
    merge_parts: tuple[str, ...] = ()


@functools.lru_cache(maxsize=2048)
def render(sql: str) -> Rendered:
    """Render one DuckDB-dialect statement (``?`` placeholders) for Snowflake.

    >>> render('SELECT id FROM raw.items WHERE "Name" = ?').sql
    'SELECT "id" FROM "raw"."items" WHERE "Name" = ?'

    Raises:
        WarehouseError: the statement cannot be parsed (names the statement).
    """
    tree = parse(sql)
    parts = _merge_parts(tree) if isinstance(tree, exp.Merge) else ()
    return Rendered(sf(tree), isinstance(tree, _DDL), parts)


def parse(sql: str) -> exp.Expr:
    """One DuckDB-dialect statement as a tree, each unquoted name folded to lower case
    as DuckDB resolves it (:func:`render` sends it quoted).

    Raises:
        WarehouseError: the statement cannot be parsed (names the statement).
    """
    try:
        tree = sqlglot.parse_one(_split_placeholder_casts(sql), read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise WarehouseError(
            f"cannot translate to Snowflake: {exc}\n  statement: {sql[:300]}"
        ) from exc
    for name in tree.find_all(exp.Identifier):  # DuckDB folds unquoted names to lower case
        if not name.quoted:
            name.set("this", name.this.lower())
    return tree


def sf(node: exp.Expr) -> str:
    """``node`` as Snowflake SQL, every name quoted."""
    return node.sql("snowflake", identify=True)


def _split_placeholder_casts(sql: str) -> str:
    """``?::VARCHAR`` -> ``? ::VARCHAR``.

    sqlglot (30.17) reads ``?::`` as one token (Databricks' try-cast operator) in
    every dialect, so DuckDB's ``placeholder::type`` fails to parse without a space.
    """
    if "?::" not in sql:
        return sql
    out, last = [], 0
    for token in Tokenizer().tokenize(sql):
        if token.token_type == TokenType.QDCOLON:
            out.append(sql[last : token.start + 1] + " ")
            last = token.start + 1
    return "".join(out) + sql[last:]


def _merge_parts(merge: exp.Merge) -> tuple[str, ...]:
    """``MERGE`` (one matched UPDATE, one not-matched INSERT) as ``UPDATE`` then ``INSERT``.

    Equivalent when the UPDATE leaves the ON columns unchanged and the source has one
    row per key, as in :func:`stack.sql.merge_sql`; other shapes give ``()``.
    """
    whens = merge.args["whens"].expressions
    update = next((w for w in whens if w.args.get("matched")), None)
    insert = next((w for w in whens if not w.args.get("matched")), None)
    if len(whens) != 2 or update is None or insert is None:
        return ()
    if not isinstance(update.args["then"], exp.Update) or not isinstance(
        insert.args["then"], exp.Insert
    ):
        return ()
    target, source, on = merge.this, merge.args["using"], merge.args["on"]
    where = exp.and_(on, update.args["condition"]) if update.args.get("condition") else on
    sets = ", ".join(sf(e) for e in update.args["then"].expressions)
    first = f"UPDATE {sf(target)} SET {sets} FROM {sf(source)} WHERE {sf(where)}"
    then = insert.args["then"]
    columns = ", ".join(sf(c) for c in then.this.expressions)
    values = ", ".join(sf(v) for v in then.expression.expressions)
    absent = f"NOT EXISTS (SELECT 1 FROM {sf(target)} WHERE {sf(on)})"
    if insert.args.get("condition"):
        absent += f" AND {sf(insert.args['condition'])}"
    bare = target.copy()
    bare.set("alias", None)
    second = f"INSERT INTO {sf(bare)} ({columns}) SELECT {values} FROM {sf(source)} WHERE {absent}"
    return first, second


# -- statements of the adapter ----------------------------------------------------------------
def column_defs(columns: pa.Schema) -> str:
    """``"a" NUMBER(38,0), "b" VARCHAR`` for a CREATE TABLE."""
    return ", ".join(f"{ident(f.name)} {snowflake_type(f.type, f.name)}" for f in columns)


def create_table_sql(schema: str, name: str, columns: pa.Schema) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table(schema, name)} ({column_defs(columns)})"


def create_stage_table_sql(name: str, columns: pa.Schema) -> str:
    """A session-private staging table, in the session's current (meta) schema."""
    return f"CREATE TEMPORARY TABLE IF NOT EXISTS {ident(name)} ({column_defs(columns)})"


def create_load_stage_sql(meta_schema: str) -> str:
    return f"CREATE TEMPORARY STAGE IF NOT EXISTS {table(meta_schema, LOAD_STAGE)}"


def put_sql(path: str, meta_schema: str) -> str:
    """Upload one local Parquet file to the load stage, as is (PUT would gzip it)."""
    if "'" in path:
        raise WarehouseError(f"a load file path cannot contain a quote: {path}")
    return f"PUT 'file://{path}' @{table(meta_schema, LOAD_STAGE)} AUTO_COMPRESS=FALSE"


def parquet_fields(columns: pa.Schema) -> list[str]:
    """The field names a load file uses for ``columns``: ``c0``, ``c1``... (any name is safe)."""
    return [f"c{i}" for i in range(len(columns))]


def copy_sql(target: str, columns: pa.Schema, meta_schema: str, file: str | None) -> str:
    """COPY one staged Parquet file into ``target``'s ``columns``, by name.

    A transformation COPY (as the connector's ``write_pandas`` does): the file's
    fields are named by :func:`parquet_fields`, each read and cast to its column's
    Snowflake type, into the column list named like the Arrow schema.
    ``file`` restricts the COPY to that file (``FILES=``); ``None`` loads the whole stage.
    """
    names = ", ".join(ident(f.name) for f in columns)
    fields = ", ".join(
        f"$1:{ident(field)}::{snowflake_type(f.type, f.name)}"
        for field, f in zip(parquet_fields(columns), columns, strict=True)
    )
    files = f" FILES=('{file}')" if file else ""
    if file and "'" in file:
        raise WarehouseError(f"a load file name cannot contain a quote: {file}")
    stage = table(meta_schema, LOAD_STAGE)
    return (
        f"COPY INTO {target} ({names}) FROM (SELECT {fields} FROM @{stage})"
        f"{files} FILE_FORMAT=(TYPE=PARQUET USE_LOGICAL_TYPE=TRUE BINARY_AS_TEXT=FALSE) PURGE=TRUE"
    )


def add_column_sql(schema: str, name: str, column: str, sf_type: str) -> str:
    return f"ALTER TABLE {table(schema, name)} ADD COLUMN IF NOT EXISTS {ident(column)} {sf_type}"


WIDEN_SPARE = "__mds_widen"
"""Suffix of the column a rebuild fills with the wider values before it takes the name."""
WIDEN_ASIDE = "__mds_narrow"
"""Suffix of the original column while the filled spare takes its name (dropped last)."""


def widen_sql(schema: str, name: str, column: str, current: str, wanted: str) -> list[str]:
    """Statements changing a column's type to a wider one, keeping its values.

    In place where Snowflake allows it; else a rebuild: a spare column is added and
    filled, the original renamed aside, the spare renamed to the column's name, and
    only then the original dropped. No statement drops the only copy of a value, and
    Snowflake commits each on its own: :func:`widen_repair_sql` finishes or undoes a
    rebuild cut between any two of them.
    """
    target = table(schema, name)
    if alterable(current, wanted):
        return [f"ALTER TABLE {target} ALTER COLUMN {ident(column)} SET DATA TYPE {wanted}"]
    spare, aside = ident(column + WIDEN_SPARE), ident(column + WIDEN_ASIDE)
    value = (
        f"TO_JSON({ident(column)})" if current in SEMI_STRUCTURED and wanted == "VARCHAR" else None
    )
    return [
        f"ALTER TABLE {target} ADD COLUMN {spare} {wanted}",
        f"UPDATE {target} SET {spare} = {value or f'CAST({ident(column)} AS {wanted})'}",
        f"ALTER TABLE {target} RENAME COLUMN {ident(column)} TO {aside}",
        f"ALTER TABLE {target} RENAME COLUMN {spare} TO {ident(column)}",
        f"ALTER TABLE {target} DROP COLUMN {aside}",
    ]


def widen_repair_sql(schema: str, name: str, columns: Sequence[str]) -> list[str]:
    """Statements bringing a table whose column rebuild (:func:`widen_sql`) was cut short
    back to one column per name; none when no rebuild was.

    Read from the table's column names alone; every case keeps each value:

    * ``c`` and ``c__mds_widen``: cut before the original was touched. The spare (a
      copy) is dropped; ``c`` still has its old type, and the next widening redoes it.
    * no ``c``, ``c__mds_narrow``: cut between the two renames. The original takes its
      name back and the spare is dropped: the rebuild is undone.
    * ``c`` and ``c__mds_narrow``: cut before the last DROP. ``c`` is the filled spare;
      the original, aside, is dropped: the rebuild is done.
    * no ``c``, ``c__mds_widen`` alone: cut between the DROP and the RENAME of an earlier
      rebuild, which dropped the original first. The filled spare takes the name.
    """
    present = set(columns)
    target = table(schema, name)
    statements = []
    for base in sorted(_rebuilt(present)):
        spare, aside = base + WIDEN_SPARE, base + WIDEN_ASIDE
        if base not in present and aside in present:
            statements.append(f"ALTER TABLE {target} RENAME COLUMN {ident(aside)} TO {ident(base)}")
            aside = ""
        elif base not in present and spare in present:
            statements.append(f"ALTER TABLE {target} RENAME COLUMN {ident(spare)} TO {ident(base)}")
            spare = ""
        statements += [
            f"ALTER TABLE {target} DROP COLUMN {ident(leftover)}"
            for leftover in (spare, aside)
            if leftover in present
        ]
    return statements


def _rebuilt(columns: set[str]) -> set[str]:
    """Names of the columns whose rebuild left a spare or an original aside in ``columns``."""
    return {
        c[: -len(suffix)]
        for c in columns
        for suffix in (WIDEN_SPARE, WIDEN_ASIDE)
        if c.endswith(suffix) and len(c) > len(suffix)
    }


def locks_table_sql(meta_schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table(meta_schema, LOCKS_TABLE)} "
        f"({ident('name')} VARCHAR, {ident('holder')} VARCHAR, "
        f"{ident('acquired_at')} TIMESTAMP_TZ, {ident('expires_at')} TIMESTAMP_TZ)"
    )


def lock_sql(meta_schema: str) -> dict[str, str]:
    """The lock row's statements, by step. Parameters are listed per step.

    * ``expire`` (name): drop the row of a lease that ran out. Its table lock also
      serializes concurrent takers: the next step of a second taker runs after the
      first one's COMMIT, and sees its row.
    * ``holder`` (name): the current holder and lease end, if any.
    * ``take`` (name, holder, ttl seconds): insert our row.
    * ``renew`` (ttl seconds, name, holder): extend our lease; 0 rows means it was lost.
    * ``release`` (name, holder): delete our row.
    """
    locks = table(meta_schema, LOCKS_TABLE)
    name, holder, until = ident("name"), ident("holder"), ident("expires_at")
    expiry = "DATEADD(second, ?, CURRENT_TIMESTAMP())"
    return {
        "expire": f"DELETE FROM {locks} WHERE {name} = ? AND {until} < CURRENT_TIMESTAMP()",
        "holder": f"SELECT {holder}, {until} FROM {locks} WHERE {name} = ?",
        "take": (
            f"INSERT INTO {locks} ({name}, {holder}, {ident('acquired_at')}, {until}) "
            f"SELECT ?, ?, CURRENT_TIMESTAMP(), {expiry}"
        ),
        "renew": f"UPDATE {locks} SET {until} = {expiry} WHERE {name} = ? AND {holder} = ?",
        "release": f"DELETE FROM {locks} WHERE {name} = ? AND {holder} = ?",
    }


def columns_sql() -> str:
    """A table's columns from ``information_schema`` (parameters: schema, table)."""
    return (
        "SELECT column_name, data_type, numeric_precision, numeric_scale "
        "FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position"
    )


def environment_database(database: str, env: str) -> str:
    """The database holding environment ``env`` of ``database`` (a zero-copy clone)."""
    if not env or not all(c.isalnum() or c in "-_" for c in env):
        raise WarehouseError(
            f"invalid environment name {env!r}", hint="use letters, digits, '-' and '_'"
        )
    return f"{database}_{env}"


def clone_database_sql(source: str, target: str) -> str:
    """Zero-copy clone of a whole database (Snowflake ``CLONE``), replacing the target."""
    return f"CREATE OR REPLACE DATABASE {ident(target)} CLONE {ident(source)}"


LEDGER_TABLES = ("_mds_backfills", "_mds_runs", "_mds_state")
"""Meta tables every mdstack write to a database changes (a sync's commit writes its
ledger row and state with its rows; a backfill partition its own row): whether a
database changed since it was cloned is whether these did (``stack.load.ledger``,
``stack.run.backfill`` name them)."""


def ledger_tables_sql(database: str) -> str:
    """Which of :data:`LEDGER_TABLES` ``database`` holds (parameter: the meta schema)."""
    names = ", ".join(f"'{name}'" for name in LEDGER_TABLES)
    return (
        f"SELECT table_name FROM {ident(database)}.information_schema.tables "
        f"WHERE table_schema = ? AND table_name IN ({names}) ORDER BY table_name"
    )


def fingerprint_sql(database: str, meta_schema: str, tables: Sequence[str]) -> str:
    """One row: a hash of each table's whole content (``HASH_AGG``: order-independent)."""
    hashes = ", ".join(
        f"(SELECT HASH_AGG(*) FROM {ident(database)}.{ident(meta_schema)}.{ident(name)})"
        for name in tables
    )
    return f"SELECT {hashes}"


RESTORE_BASE = "_mds_restore_base"
"""In a clone of an older version: the published database's ledger fingerprint when the
clone was made (``stack.warehouse._snowflake_envs.record_base``)."""


def restore_base_sql(database: str, meta_schema: str) -> list[str]:
    """Make ``database``'s (empty) :data:`RESTORE_BASE` table, its schema if needed."""
    schema = f"{ident(database)}.{ident(meta_schema)}"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE OR REPLACE TABLE {schema}.{ident(RESTORE_BASE)} "
        '("ledger_table" VARCHAR, "hash" NUMBER(38, 0))',
    ]


def table_exists_sql(database: str, name: str) -> str:
    """Whether ``database`` holds table ``name`` (parameter: its schema)."""
    return (
        f"SELECT table_name FROM {ident(database)}.information_schema.tables "
        f"WHERE table_schema = ? AND table_name = '{name}'"
    )


def swap_databases_sql(published: str, audited: str) -> str:
    """Atomically exchange two databases' contents and names (``SWAP WITH``)."""
    return f"ALTER DATABASE {ident(published)} SWAP WITH {ident(audited)}"


def drop_database_sql(database: str) -> str:
    return f"DROP DATABASE IF EXISTS {ident(database)}"
