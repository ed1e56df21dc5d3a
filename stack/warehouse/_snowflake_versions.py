"""Kept versions of a Snowflake warehouse: a zero-copy clone of the database per run.

Time travel reads a table only back to when that table was made, and on a warehouse
mdstack runs, tables are made anew all the time: dbt replaces its table models on every
run, and a publish by ``SWAP WITH`` makes the published database a clone whose tables
start their history at the swap. With ``retention:`` on the target, each run therefore
also keeps the warehouse as it left it: ``CREATE DATABASE <database>$v<version> CLONE
<database>``, named by the run's version (Snowflake's clock, in milliseconds; ``$``
never appears in an environment's name). ``--as-of`` and ``clone --as-of`` of that run
read the kept database; ``mdstack expire`` drops the ones older than the retention.

A clone keeps each view's text, and dbt writes views naming their tables with the
database (``ANALYTICS.staging.orders``): such a view would read the live database from
a kept version. :func:`repoint_views` rewrites, in the clone, every view that names the
database it was cloned from to name the clone (or, for an environment made of a kept
version, to name the published database back, as the environments' views do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlglot
from sqlglot import exp

from stack.sql import ident
from stack.warehouse.base import BOOKKEEPING, REGIONS, TableDiff

log = logging.getLogger(__name__)

Run = Callable[[str, Sequence[Any] | None], Any]
"""Sends one Snowflake statement with its parameters and returns the cursor."""
MARK = "$v"
"""Between the database's name and the version, in a kept version's name."""


def kept_database(database: str, version: int) -> str:
    """The name of the database that keeps ``database`` as it was at ``version``."""
    return f"{database}{MARK}{version}"


def kept_versions(run: Run, database: str) -> list[int]:
    """The versions of ``database`` kept, oldest first."""
    rows = run(
        f"SELECT database_name FROM {ident(database)}.information_schema.databases "
        "WHERE startswith(database_name, ?)",
        [f"{database}{MARK}"],
    ).fetchall()
    found = (str(row[0]).removeprefix(f"{database}{MARK}") for row in rows)
    return sorted(int(v) for v in found if v.isdigit())


def keep(run: Run, database: str, version: int) -> None:
    """Keep ``database`` as it is now as ``version`` (a clone; kept already: nothing).
    Snowflake makes a database it creates the session's current one: the caller moves
    back."""
    kept = kept_database(database, version)
    run(f"CREATE DATABASE IF NOT EXISTS {ident(kept)} CLONE {ident(database)}", None)
    repoint_views(run, kept, database, kept)


def drop(run: Run, database: str, version: int) -> None:
    run(f"DROP DATABASE IF EXISTS {ident(kept_database(database, version))}", None)


def repoint_views(run: Run, database: str, old: str, new: str) -> int:
    """Make each view of ``database`` that names database ``old`` name ``new`` instead;
    returns how many were made again. A view whose text cannot be read is left as it is
    (with a warning: it reads ``old``)."""
    rows = run(
        "SELECT table_schema, table_name, view_definition FROM "
        f"{ident(database)}.information_schema.views WHERE table_schema <> 'INFORMATION_SCHEMA'",
        None,
    ).fetchall()
    made = 0
    for schema, name, text in rows:
        try:
            statement = sqlglot.parse_one(text or "", read="snowflake")
        except sqlglot.errors.ParseError:
            statement = None
        if not isinstance(statement, exp.Create):
            log.warning(
                "view %s.%s.%s may read %s: its text cannot be read", database, schema, name, old
            )
            continue
        view = statement.find(exp.Table)
        named = [t for t in statement.find_all(exp.Table) if _names(t.args.get("catalog"), old)]
        if view is None or not [t for t in named if t is not view]:
            continue
        for t in named:
            t.set("catalog", exp.to_identifier(new, quoted=True))
        view.set("catalog", exp.to_identifier(database, quoted=True))  # never another's view
        view.set("db", exp.to_identifier(schema, quoted=True))
        statement.set("replace", True)
        run(statement.sql("snowflake"), None)
        made += 1
    return made


def _names(catalog: exp.Identifier | None, database: str) -> bool:
    """Whether ``catalog`` names ``database`` (Snowflake folds an unquoted name to upper case)."""
    if not isinstance(catalog, exp.Identifier):
        return False
    return catalog.this == database if catalog.quoted else catalog.this.upper() == database


def diff(
    run: Run, before: str, after: str, meta_schema: str, tables: Sequence[tuple[str, str]] | None
) -> list[TableDiff]:
    """Per ``(schema, table)`` of database ``after`` (default: every table but mdstack's
    own and dbt's leftovers) and region: rows added and deleted since database
    ``before``. Each table is compared whole, rows counted by their hash on either side
    (a changed row is one deleted and one added); the columns both sides have count,
    but for the bookkeeping ones."""
    old, new = _columns(run, before), _columns(run, after)
    if tables is None:
        tables = sorted(
            key
            for key in new
            if not (key[0] == meta_schema and key[1].startswith("_mds_")) and "__dbt_" not in key[1]
        )
    found: list[TableDiff] = []
    for schema, name in tables:
        columns = new.get((schema, name))
        if columns is None:
            continue
        region = next((c for c in REGIONS if c in columns), None)
        by = ident(region) if region else "''"
        ref = f"{ident(after)}.{ident(schema)}.{ident(name)}"
        if (schema, name) not in old:
            sql = f"SELECT {by} AS region, COUNT(*) AS added, 0 AS deleted FROM {ref} GROUP BY 1"
        else:
            shared = [c for c in columns if c in old[(schema, name)] and c not in BOOKKEEPING]
            was = f"{ident(before)}.{ident(schema)}.{ident(name)}"
            sql = _compare_sql(was, ref, shared, by)
        for region_value, added, deleted in run(sql, None).fetchall():
            if added or deleted:
                label = f"{schema}.{name}"
                found.append(
                    TableDiff(label, region_value or "", int(added), 0, int(deleted), (), True)
                )
    return sorted(found, key=lambda d: (d.table, d.region))


def _columns(run: Run, database: str) -> dict[tuple[str, str], list[str]]:
    """Each base table of ``database`` and its columns, in order."""
    rows = run(
        "SELECT c.table_schema, c.table_name, c.column_name FROM "
        f"{ident(database)}.information_schema.columns c JOIN "
        f"{ident(database)}.information_schema.tables t ON t.table_schema = c.table_schema "
        "AND t.table_name = c.table_name WHERE t.table_type = 'BASE TABLE' "
        "AND c.table_schema <> 'INFORMATION_SCHEMA' ORDER BY 1, 2, c.ordinal_position",
        None,
    ).fetchall()
    found: dict[tuple[str, str], list[str]] = {}
    for schema, name, column in rows:
        found.setdefault((str(schema), str(name)), []).append(str(column))
    return found


def _compare_sql(old: str, new: str, columns: Sequence[str], region: str) -> str:
    """Rows added and deleted per region from ``old`` to ``new``: ``(region, added,
    deleted)``, each distinct row counted by its hash on both sides."""
    names = ", ".join(ident(c) for c in columns)

    def counted(relation: str) -> str:
        return (
            f"SELECT {region} AS r, HASH({names}) AS h, COUNT(*) AS n FROM {relation} GROUP BY 1, 2"
        )

    return (
        f"WITH o AS ({counted(old)}), w AS ({counted(new)}) "
        "SELECT COALESCE(w.r, o.r) AS region, "
        "SUM(GREATEST(COALESCE(w.n, 0) - COALESCE(o.n, 0), 0)) AS added, "
        "SUM(GREATEST(COALESCE(o.n, 0) - COALESCE(w.n, 0), 0)) AS deleted "
        "FROM o FULL OUTER JOIN w ON o.r IS NOT DISTINCT FROM w.r AND o.h = w.h "
        "GROUP BY 1 ORDER BY 1"
    )
