"""What changed in a DuckLake warehouse between two snapshots, per table and region.

A table that lived through both snapshots is read through DuckLake's change feed
(``ducklake_table_changes``): only the rows it names are looked up, as they were at the
first snapshot and as they are at the second, matched by ``rowid`` (DuckLake keeps a
row's id through an update). So a row updated several times counts once, with the
columns whose values differ in the end; a row added then deleted counts not at all.
Rows gone and rows new are matched by value before they count, so a region that a full
refresh rewrote with the same rows shows no change. Bookkeeping columns
(``_mds_run_id``, ``_mds_loaded_at``) are not compared, and a row whose
``_mds_deleted_at`` became set is a soft delete.

A table created in between (dbt rebuilds its table models on every run) has no feed
that reaches back: its two versions are compared whole (``EXCEPT ALL``), so a changed
row shows as one row gone and one row new.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import duckdb

from stack.sql import ident, literal
from stack.warehouse.base import BOOKKEEPING, REGIONS, TableDiff

DELETED = "_mds_deleted_at"


@dataclass(frozen=True)
class _Table:
    """One table of the lake and its columns (at the later snapshot)."""

    lake: str
    schema: str
    name: str
    columns: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{ident(self.lake)}.{ident(self.schema)}.{ident(self.name)}"

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def compared(self) -> list[str]:
        """The columns whose values count: all but the bookkeeping ones."""
        return [c for c in self.columns if c not in BOOKKEEPING]

    @property
    def region(self) -> str | None:
        """The column that names a row's region, if any."""
        return next((c for c in REGIONS if c in self.columns), None)


def diff(
    con: duckdb.DuckDBPyConnection,
    lake: str,
    before: int,
    after: int,
    tables: Iterable[tuple[str, str]],
) -> list[TableDiff]:
    """Per ``(schema, table)`` and region: rows added, changed and deleted from snapshot
    ``before`` to ``after``; tables without a change are left out."""
    rebuilt = _created_between(con, lake, before, after)
    found: list[TableDiff] = []
    for schema, name in tables:
        columns = con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? "
            "AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [lake, schema, name],
        ).fetchall()
        one = _Table(lake, schema, name, tuple(row[0] for row in columns))
        if not _exists(con, one, after):  # created after ``after``: nothing to say
            continue
        compare = _whole if one.label in rebuilt else _fed
        found += compare(con, one, before, after)
    return found


def _exists(con: duckdb.DuckDBPyConnection, t: _Table, snapshot: int) -> bool:
    """Whether the lake had table ``t`` (by name) at ``snapshot``."""
    try:
        con.execute(f"SELECT 1 FROM {t.ref} AT (VERSION => {snapshot}) LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def _created_between(con: duckdb.DuckDBPyConnection, lake: str, before: int, after: int) -> set:
    rows = con.execute(
        f"SELECT unnest(changes['tables_created']) FROM {ident(lake)}.snapshots() "
        "WHERE snapshot_id > ? AND snapshot_id <= ? AND changes['tables_created'] IS NOT NULL",
        [before, after],
    ).fetchall()
    return {row[0] for row in rows}


def _fed(con: duckdb.DuckDBPyConnection, t: _Table, before: int, after: int) -> list[TableDiff]:
    values = ", ".join(ident(c) for c in t.compared)
    region = ident(t.region) if t.region else "''"
    differs = ", ".join(
        f"CASE WHEN a.{ident(c)} IS DISTINCT FROM b.{ident(c)} THEN {literal(c)} END"
        for c in t.compared
        if c != DELETED
    )
    soft = (
        f"a.{ident(DELETED)} IS NULL AND b.{ident(DELETED)} IS NOT NULL"
        if DELETED in t.columns
        else "false"
    )
    touched = (
        f"SELECT DISTINCT rowid FROM ducklake_table_changes({literal(t.lake)}, "
        f"{literal(t.schema)}, {literal(t.name)}, {before + 1}, {after})"
    )
    # Rows kept (same rowid) are changed, or soft-deleted; rows gone and rows new are
    # matched by value first, so a region rewritten with the same rows shows nothing.
    sql = f"""
        WITH touched AS ({touched}),
        a AS (SELECT rowid AS _mds_row, * FROM {t.ref} AT (VERSION => {before})
              WHERE rowid IN (SELECT rowid FROM touched)),
        b AS (SELECT rowid AS _mds_row, * FROM {t.ref} AT (VERSION => {after})
              WHERE rowid IN (SELECT rowid FROM touched)),
        kept AS (
            SELECT {f"b.{region}" if t.region else region} AS region,
                   CASE WHEN {soft} THEN 'deleted' ELSE 'changed' END AS kind,
                   list_filter([{differs}], x -> x IS NOT NULL) AS changed
            FROM a JOIN b ON a._mds_row = b._mds_row
        ),
        gone AS (SELECT {values} FROM a WHERE _mds_row NOT IN (SELECT _mds_row FROM b)),
        new AS (SELECT {values} FROM b WHERE _mds_row NOT IN (SELECT _mds_row FROM a))
        SELECT {region}, 'added', count(*), [] FROM (FROM new EXCEPT ALL FROM gone) GROUP BY ALL
        UNION ALL
        SELECT {region}, 'deleted', count(*), [] FROM (FROM gone EXCEPT ALL FROM new) GROUP BY ALL
        UNION ALL
        SELECT region, kind, count(*), list_distinct(flatten(list(changed))) FROM kept
        WHERE kind = 'deleted' OR len(changed) > 0 GROUP BY ALL
    """
    return _grouped(t.label, con.execute(sql).fetchall(), rebuilt=False)


def _whole(con: duckdb.DuckDBPyConnection, t: _Table, before: int, after: int) -> list[TableDiff]:
    names = ", ".join(ident(c) for c in t.compared)
    region = ident(t.region) if t.region else "''"
    old = f"SELECT {names} FROM {t.ref} AT (VERSION => {before})"
    new = f"SELECT {names} FROM {t.ref} AT (VERSION => {after})"
    if not _exists(con, t, before):  # created after ``before``: every row is new
        sql = f"SELECT {region} AS region, 'added' AS kind, count(*), [] FROM ({new}) GROUP BY ALL"
    else:
        sql = f"""
            SELECT {region} AS region, 'added' AS kind, count(*), [] FROM ({new} EXCEPT ALL {old})
            GROUP BY ALL
            UNION ALL
            SELECT {region}, 'deleted', count(*), [] FROM ({old} EXCEPT ALL {new}) GROUP BY ALL
        """
    return _grouped(t.label, con.execute(sql).fetchall(), rebuilt=True)


def _grouped(table: str, rows: list[tuple], rebuilt: bool) -> list[TableDiff]:
    by_region: dict[str, TableDiff] = {}
    for region, kind, count, columns in rows:
        found = by_region.setdefault(region or "", TableDiff(table, region or "", rebuilt=rebuilt))
        setattr(found, kind, getattr(found, kind) + count)  # deleted: gone and soft
        if kind == "changed":
            found.columns = tuple(sorted(columns))
    return [d for _, d in sorted(by_region.items()) if d.added or d.changed or d.deleted]
