"""Kept versions of a Snowflake warehouse: a zero-copy clone of the database per run.

Time travel reads a table only back to when that table was made, and on a warehouse
mdstack runs, tables are made anew all the time: dbt replaces its table models on every
run, and a publish by ``SWAP WITH`` makes the published database a clone whose tables
start their history at the swap. With ``retention:`` on the target, each run therefore
also keeps the warehouse as it left it: ``CREATE DATABASE <database>$V<version> CLONE
<database> AT(...)``, named by the run's version (Snowflake's clock, in milliseconds;
``$`` never appears in an environment's name). It keeps the database's parameters (its
time travel retention among them): a restore made of it publishes them unchanged.
``--as-of``, ``clone --as-of`` and ``diff`` of that run read the kept database; a time
reads the last version kept by then; ``mdstack expire`` drops the ones older than the
retention, never the newest.

A clone keeps each view's text: a view that names its tables with the database
(``ANALYTICS.staging.orders``) reads the live database from any clone. dbt's views do not
(``dbt_project/macros/relation_in_its_database.sql``); views made by hand should not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stack.errors import WarehouseError
from stack.sql import ident
from stack.warehouse import _snowflake_time_travel as travel
from stack.warehouse._snowflake_envs import Run
from stack.warehouse.base import BOOKKEEPING, REGIONS, TableDiff

log = logging.getLogger(__name__)

MARK = "$V"
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
    """Keep ``database`` as it was at ``version`` (kept already: nothing): cloned through
    time travel, so that another region's commit after the version is not the run's (as
    it is now where time travel is off). Snowflake makes a database it creates the
    session's current one: the caller moves back."""
    kept = ident(kept_database(database, version))
    clone = f"CREATE DATABASE IF NOT EXISTS {kept} CLONE {ident(database)}"
    try:
        run(f"{clone} {travel.at_sql(version)}", None)
    except WarehouseError as exc:
        log.warning("keeping version %d as it is now, not through time travel: %s", version, exc)
        run(clone, None)


def drop(run: Run, database: str, version: int) -> None:
    run(f"DROP DATABASE IF EXISTS {ident(kept_database(database, version))}", None)


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
        region = next((c for c in columns if c.lower() in REGIONS), None)
        by = ident(region) if region else "''"
        ref = f"{ident(after)}.{ident(schema)}.{ident(name)}"
        if (schema, name) not in old:
            sql = f"SELECT {by} AS region, COUNT(*) AS added, 0 AS deleted FROM {ref} GROUP BY 1"
        else:
            shared = [
                c for c in columns if c in old[(schema, name)] and c.lower() not in BOOKKEEPING
            ]
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
