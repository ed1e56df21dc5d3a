"""A DuckLake catalog rolled back to an earlier version: the catalog of a clone as of a run.

A clone **as of a version** N (``mdstack clone ENV --as-of RUN_ID``) is a clone
(:func:`~stack.warehouse._ducklake_envs.clone_lake`) whose catalog copy is then rolled back
to N, table by table of the DuckLake 1.0 catalog (:func:`roll_back`): writable, and
zero-copy but for the few delete files it rewrites. Its history ends at N, followed by one
version (the lake's latest + 1) holding N's content, so no version id the lake used is ever
given to other content (publishing's check compares ids, the run ledger records them). The
data files only later versions used stay linked in its folder until its own cleanup
(``mdstack expire`` on it).
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from stack.errors import WarehouseError
from stack.sql import ident, literal

FORMAT = "1.0"
"""The DuckLake catalog version :func:`roll_back` knows table by table."""
_VERSIONED = (
    "ducklake_schema",
    "ducklake_table",
    "ducklake_view",
    "ducklake_tag",
    "ducklake_column_tag",
    "ducklake_column",
    "ducklake_data_file",
    "ducklake_delete_file",
    "ducklake_partition_info",
    "ducklake_sort_info",
    "ducklake_macro",
)
"""Tables whose rows live from ``begin_snapshot`` up to (not including) ``end_snapshot``."""
_CHILDREN = (
    ("ducklake_file_column_stats", "data_file_id", "ducklake_data_file"),
    ("ducklake_file_variant_stats", "data_file_id", "ducklake_data_file"),
    ("ducklake_file_partition_value", "data_file_id", "ducklake_data_file"),
    ("ducklake_partition_column", "partition_id", "ducklake_partition_info"),
    ("ducklake_sort_expression", "sort_id", "ducklake_sort_info"),
    ("ducklake_macro_impl", "macro_id", "ducklake_macro"),
    ("ducklake_macro_parameters", "macro_id", "ducklake_macro"),
)
"""Rows that belong to a row of a versioned table: they go with it."""
_TABLES = frozenset(
    {
        *_VERSIONED,
        *(child for child, _, _ in _CHILDREN),
        "ducklake_metadata",
        "ducklake_snapshot",
        "ducklake_snapshot_changes",
        "ducklake_table_stats",
        "ducklake_table_column_stats",
        "ducklake_files_scheduled_for_deletion",
        "ducklake_inlined_data_tables",
        "ducklake_column_mapping",
        "ducklake_name_mapping",
        "ducklake_schema_versions",
    }
)
"""Every table of a DuckLake 1.0 catalog but the inlined ones: a catalog with any other is
not rolled back (its meaning is unknown here)."""
_INLINED_DATA = re.compile(r"ducklake_inlined_data_(\d+)_(\d+)")
_INLINED_DELETE = re.compile(r"ducklake_inlined_delete_(\d+)")
_CHANGE = re.compile(r"\w+:(\d+)")
_EMBEDDED = "_ducklake_internal_snapshot_id"
"""The column of a file that holds rows of several versions: each row's version."""
_VALUE_TYPES = {
    "boolean": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "int128": "HUGEINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "uint128": "UHUGEINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "date": "DATE",
    "time": "TIME",
    "timetz": "TIMETZ",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "timestamp_s": "TIMESTAMP_S",
    "timestamp_ms": "TIMESTAMP_MS",
    "timestamp_ns": "TIMESTAMP_NS",
    "interval": "INTERVAL",
}
"""DuckLake types whose bounds DuckLake compares as values (numbers, times, booleans), and
the DuckDB type they are read as; ``decimal(p,s)`` too. Others compare as strings."""
_STRING_TYPES = frozenset({"varchar", "blob", "uuid", "json"})
_NESTED_TYPES = frozenset({"struct", "list", "map"})


class NotKept(Exception):
    """The version to clone is older than the oldest the lake keeps (``mdstack expire``)."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


def roll_back(catalog: Path, data: Path, version: int) -> None:
    """Make the DuckLake catalog file ``catalog`` hold the lake as it was at ``version``.

    ``data`` is the folder its data files are in (relative paths are relative to it).
    Follows the DuckLake 1.0 specification, table by table:

    * versioned rows (schemas, tables, views, columns, tags, column tags, data and delete
      files, partitioning, sorting, macros; the rows of ``ducklake_inlined_data_*``): those
      that began after ``version`` go, those that ended after it live again;
    * rows that belong to one of those (file column and variant statistics and partition
      values, partition columns, sort expressions, macro bodies and parameters) go with
      it; name mappings and table or schema options of objects made after ``version`` go
      (their ids are at or above its ``next_catalog_id``); inlined deletions of file rows
      made after it go; inlined-data tables registered after it (a ``schema_version``
      above its) are dropped with their registration, and so are those of tables gone;
    * ``ducklake_schema_versions``, snapshots and their changes after it go; one snapshot
      numbered after the lake's latest is added with its content (see the module doc);
    * a delete file kept that also holds later deletions (DuckLake 1.0 merges a data
      file's deletions into one file, each tagged with its version) is replaced, for the
      clone only, by a file of the deletions up to ``version``;
    * the statistics of the tables a later version touched are computed again from what
      the catalog holds up to ``version``, as DuckLake keeps them: ``record_count`` and
      ``file_size_bytes`` of every file and inlined row written (deletions never lower
      them); column bounds, nulls and NaNs over those files' statistics and inlined rows
      (never narrower than the data: DuckDB answers queries from them); ``next_row_id``
      keeps the latest value, above every row id ever handed out. Other tables'
      statistics are as they were at ``version``: nothing changed them since;
    * the files only later versions used (and replaced delete files) are scheduled for
      deletion: the clone's own cleanup removes its links to them, never the lake's files.

    Raises:
        NotKept: the catalog no longer holds ``version``.
        WarehouseError: the catalog cannot be rolled back exactly: another DuckLake
            version than :data:`FORMAT`, a table this code does not know, or a data file
            that holds rows of ``version`` and of later ones (maintenance such as
            ``ducklake_flush_inlined_data`` or a file merge ran after it).
    """
    with duckdb.connect(str(catalog)) as con:
        con.execute("SET TimeZone = 'UTC'")
        _known_format(con)
        at = con.execute(
            "SELECT schema_version, next_catalog_id, next_file_id FROM ducklake_snapshot "
            "WHERE snapshot_id = ?",
            [version],
        ).fetchone()
        if at is None:
            raise NotKept(version)
        row = con.execute(
            "SELECT max(snapshot_id), max(next_catalog_id), max(next_file_id) "
            "FROM ducklake_snapshot"
        ).fetchone()
        assert row is not None
        last, catalog_ids, file_ids = row
        if last == version:
            return
        schema_version, next_catalog_id, next_file_id = at
        con.execute("BEGIN TRANSACTION")
        try:
            mixed = _mixed_delete_files(con, data, version, next_file_id)
            changed = _changed_tables(con, version, next_file_id)
            gone = [f for f in _files(con) if f.begin > version] + mixed
            _roll_back_rows(con, version, schema_version, next_catalog_id)
            for new_id, f in enumerate(mixed, start=file_ids):
                _rewrite_deletes(con, data, f, version, new_id)
            for table_id in sorted(changed):
                _restat(con, table_id)
            if gone:
                con.executemany(
                    "INSERT INTO ducklake_files_scheduled_for_deletion VALUES (?, ?, ?, now())",
                    [[f.id, f.path, f.relative] for f in gone],
                )
            # The lake's latest version + 1, with version's content: ids are never reused.
            con.execute(
                "INSERT INTO ducklake_snapshot VALUES (?, now(), ?, ?, ?)",
                [last + 1, schema_version, catalog_ids, file_ids + len(mixed)],
            )
            con.execute(
                "INSERT INTO ducklake_snapshot_changes VALUES (?, '', 'mdstack', ?, NULL)",
                [last + 1, f"mdstack clone --as-of: the lake as it was at version {version}"],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _known_format(con: duckdb.DuckDBPyConnection) -> None:
    row = con.execute("SELECT value FROM ducklake_metadata WHERE key = 'version'").fetchone()
    found = row[0] if row else None
    unknown = sorted(
        name
        for name in _tables(con)
        if name.startswith("ducklake_")
        and name not in _TABLES
        and not _INLINED_DATA.fullmatch(name)
        and not _INLINED_DELETE.fullmatch(name)
    )
    if found != FORMAT or unknown:
        what = f"DuckLake catalog version {found}" if found != FORMAT else f"tables {unknown}"
        raise WarehouseError(
            f"clone --as-of knows the DuckLake {FORMAT} catalog table by table; this one "
            f"has {what}",
            hint="clone it as it is now (without --as-of), or read the version with "
            "`mdstack sql --as-of RUN_ID`",
        )


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main' ORDER BY 1"
        ).fetchall()
    ]


@dataclass(frozen=True)
class _File:
    """A data or delete file of the catalog: where it is (relative to the data path when
    ``relative``), the version it began at and the last version it holds rows of."""

    id: int
    delete: bool
    table_id: int
    begin: int
    partial_max: int | None
    path: str
    relative: bool


def _files(con: duckdb.DuckDBPyConnection) -> list[_File]:
    """Every data and delete file, its path resolved through its table's and schema's."""
    rows = con.execute(
        """
        WITH t AS (
            SELECT DISTINCT ON (table_id) table_id, schema_id, coalesce(path, '') AS path,
                coalesce(path_is_relative, true) AS rel
            FROM ducklake_table ORDER BY table_id, begin_snapshot DESC),
        s AS (
            SELECT DISTINCT ON (schema_id) schema_id, coalesce(path, '') AS path,
                coalesce(path_is_relative, true) AS rel
            FROM ducklake_schema ORDER BY schema_id, begin_snapshot DESC),
        f AS (
            SELECT data_file_id AS id, false AS is_delete, table_id, begin_snapshot,
                partial_max, path, path_is_relative AS rel
            FROM ducklake_data_file
            UNION ALL
            SELECT delete_file_id, true, table_id, begin_snapshot, partial_max, path,
                path_is_relative
            FROM ducklake_delete_file)
        SELECT f.id, f.is_delete, f.table_id, f.begin_snapshot, f.partial_max,
            CASE WHEN NOT f.rel THEN f.path
                 WHEN NOT t.rel THEN t.path || f.path
                 ELSE s.path || t.path || f.path END,
            f.rel AND t.rel AND s.rel
        FROM f JOIN t USING (table_id) JOIN s USING (schema_id)
        ORDER BY f.id
        """
    ).fetchall()
    return [_File(*row) for row in rows]


def _mixed_delete_files(
    con: duckdb.DuckDBPyConnection, data: Path, version: int, next_file_id: int
) -> list[_File]:
    """The delete files the rolled-back catalog keeps that also hold later deletions.

    DuckLake 1.0 writes the rows of several versions into one file, each row tagged with
    its version, the file beginning at the oldest: a delete on a data file that already
    has a delete file writes a new one with both (and drops the old one from the
    catalog), and maintenance (flushing inlined rows, merging files) does the same with
    data. Reading at ``version`` skips the later rows; a clone that writes on from
    ``version`` would not. ``partial_max`` names the last version a file holds rows of; a
    file written after ``version`` that claims an earlier one without it is read.

    Raises:
        WarehouseError: a data file holds rows of ``version`` and of later versions: data
            files are not rewritten (a copy of data is no zero-copy clone).
    """
    mixed = []
    for f in _files(con):
        if f.begin > version:
            continue
        last = f.partial_max
        if last is None and f.id >= next_file_id:
            last = _last_version_in(data / f.path if f.relative else Path(f.path))
        if last is None or last <= version:
            continue
        if not f.delete:
            raise WarehouseError(
                f"version {version} cannot be cloned exactly: maintenance after it (such as "
                "ducklake_flush_inlined_data or ducklake_merge_adjacent_files) wrote its rows "
                f"into {f.path}, which also holds rows of version {last}",
                hint="read the version with `mdstack sql --as-of RUN_ID`, or clone a run "
                "made after that maintenance",
            )
        if not f.relative:
            raise WarehouseError(
                f"version {version} cannot be cloned exactly: {f.path} (outside the lake's "
                f"data path) holds deletions of version {version} and of version {last}",
                hint="read the version with `mdstack sql --as-of RUN_ID`",
            )
        mixed.append(f)
    return mixed


def _rewrite_deletes(
    con: duckdb.DuckDBPyConnection, data: Path, f: _File, version: int, new_id: int
) -> None:
    """Give the clone a delete file of its own holding the deletions of ``f`` made up to
    ``version`` (a few KB: row positions), in ``f``'s place under a new file id."""
    source = data / f.path
    target = source.with_name(f"ducklake-{uuid.uuid4()}-delete.parquet")
    try:
        with duckdb.connect() as reader:
            fields = reader.execute(
                "SELECT name, field_id FROM parquet_schema(?) WHERE field_id IS NOT NULL",
                [str(source)],
            ).fetchall()
            ids = ", ".join(f"{ident(name)}: {int(field)}" for name, field in fields)
            reader.execute(
                f"COPY (SELECT * FROM read_parquet({literal(str(source))}) "
                f"WHERE {ident(_EMBEDDED)} <= {int(version)} ORDER BY pos) "
                f"TO {literal(str(target))} (FORMAT parquet, FIELD_IDS {{{ids}}})"
            )
            row = reader.execute(
                f"SELECT count(*), max({ident(_EMBEDDED)}) FROM read_parquet(?)", [str(target)]
            ).fetchone()
    except duckdb.Error as exc:
        target.unlink(missing_ok=True)
        raise WarehouseError(
            f"cannot write the deletions of version {version} of {f.path}: {exc}",
            hint="read the version with `mdstack sql --as-of RUN_ID`",
        ) from exc
    assert row is not None
    count, last = row
    if count == 0:  # cannot happen (the file begins at or before version): nothing to delete
        target.unlink()
        con.execute("DELETE FROM ducklake_delete_file WHERE delete_file_id = ?", [f.id])
        return
    with open(target, "rb") as handle:
        handle.seek(-8, os.SEEK_END)
        footer = int.from_bytes(handle.read(4), "little")
    stored = con.execute(
        "SELECT path FROM ducklake_delete_file WHERE delete_file_id = ?", [f.id]
    ).fetchone()
    assert stored is not None
    path = stored[0].rpartition("/")[0]
    con.execute(
        "UPDATE ducklake_delete_file SET delete_file_id = ?, path = ?, delete_count = ?, "
        "file_size_bytes = ?, footer_size = ?, partial_max = ? WHERE delete_file_id = ?",
        [
            new_id,
            f"{path}/{target.name}" if path else target.name,
            count,
            target.stat().st_size,
            footer,
            last,
            f.id,
        ],
    )


def _last_version_in(path: Path) -> int | None:
    """The last version a file holds rows of, if it holds rows of several."""
    try:
        with duckdb.connect() as con:
            names = {
                r[0]
                for r in con.execute("SELECT name FROM parquet_schema(?)", [str(path)]).fetchall()
            }
            if _EMBEDDED not in names:
                return None
            row = con.execute(
                f"SELECT max({ident(_EMBEDDED)}) FROM read_parquet(?)", [str(path)]
            ).fetchone()
    except duckdb.Error as exc:
        raise WarehouseError(
            f"cannot read {path} to tell which versions it holds: {exc}",
            hint="clone it as it is now (without --as-of), or read the version with "
            "`mdstack sql --as-of RUN_ID`",
        ) from exc
    return None if row is None or row[0] is None else int(row[0])


def _changed_tables(con: duckdb.DuckDBPyConnection, version: int, next_file_id: int) -> set[int]:
    """The tables a version after ``version`` touched: their statistics are redone."""
    after = "begin_snapshot > $v OR end_snapshot > $v"
    found = {
        row[0]
        for row in con.execute(
            f"""
            SELECT table_id FROM ducklake_table WHERE {after}
            UNION SELECT table_id FROM ducklake_column WHERE {after}
            UNION SELECT table_id FROM ducklake_data_file WHERE {after} OR data_file_id >= $f
            UNION SELECT table_id FROM ducklake_delete_file WHERE {after} OR delete_file_id >= $f
            """,
            {"v": version, "f": next_file_id},
        ).fetchall()
    }
    for (changes,) in con.execute(
        "SELECT changes_made FROM ducklake_snapshot_changes WHERE snapshot_id > ?", [version]
    ).fetchall():
        found.update(int(x) for x in _CHANGE.findall(changes or ""))
    for name in _tables(con):
        if match := _INLINED_DATA.fullmatch(name):
            if con.execute(
                f"SELECT 1 FROM {ident(name)} WHERE {after.replace('$v', '?')} LIMIT 1",
                [version, version],
            ).fetchone():
                found.add(int(match[1]))
        elif (match := _INLINED_DELETE.fullmatch(name)) and con.execute(
            f"SELECT 1 FROM {ident(name)} WHERE begin_snapshot > ? LIMIT 1", [version]
        ).fetchone():
            found.add(int(match[1]))
    return found


def _roll_back_rows(
    con: duckdb.DuckDBPyConnection, version: int, schema_version: int, next_catalog_id: int
) -> None:
    """Every catalog table but the statistics back to ``version`` (see :func:`roll_back`)."""
    for name in _VERSIONED:
        con.execute(f"DELETE FROM {name} WHERE begin_snapshot > ?", [version])
        con.execute(f"UPDATE {name} SET end_snapshot = NULL WHERE end_snapshot > ?", [version])
    tables = "(SELECT table_id FROM ducklake_table)"
    for name, inlined in con.execute(
        f"SELECT table_name, schema_version > ? OR table_id NOT IN {tables} "
        "FROM ducklake_inlined_data_tables",
        [schema_version],
    ).fetchall():
        if inlined:  # registered after version (a new table or schema), or its table is gone
            con.execute(f"DROP TABLE IF EXISTS {ident(name)}")
            con.execute("DELETE FROM ducklake_inlined_data_tables WHERE table_name = ?", [name])
    for name in _tables(con):
        if _INLINED_DATA.fullmatch(name):
            con.execute(f"DELETE FROM {ident(name)} WHERE begin_snapshot > ?", [version])
            con.execute(
                f"UPDATE {ident(name)} SET end_snapshot = NULL WHERE end_snapshot > ?", [version]
            )
        elif match := _INLINED_DELETE.fullmatch(name):
            if con.execute(
                f"SELECT 1 FROM ducklake_table WHERE table_id = {int(match[1])}"
            ).fetchone():
                con.execute(f"DELETE FROM {ident(name)} WHERE begin_snapshot > ?", [version])
            else:
                con.execute(f"DROP TABLE {ident(name)}")
    for child, key, parent in _CHILDREN:
        con.execute(f"DELETE FROM {child} WHERE {key} NOT IN (SELECT {key} FROM {parent})")
    # Name mappings and objects' options: ids are handed out from next_catalog_id.
    for name in ("ducklake_column_mapping", "ducklake_name_mapping"):
        con.execute(f"DELETE FROM {name} WHERE mapping_id >= ?", [next_catalog_id])
    con.execute(
        "DELETE FROM ducklake_metadata WHERE scope IN ('schema', 'table') AND scope_id >= ?",
        [next_catalog_id],
    )
    con.execute("DELETE FROM ducklake_schema_versions WHERE begin_snapshot > ?", [version])
    con.execute("DELETE FROM ducklake_snapshot_changes WHERE snapshot_id > ?", [version])
    con.execute("DELETE FROM ducklake_snapshot WHERE snapshot_id > ?", [version])
    for name in ("ducklake_table_stats", "ducklake_table_column_stats"):
        con.execute(f"DELETE FROM {name} WHERE table_id NOT IN {tables}")
    con.execute(
        "DELETE FROM ducklake_table_column_stats s WHERE NOT EXISTS (SELECT 1 FROM "
        "ducklake_column c WHERE c.table_id = s.table_id AND c.column_id = s.column_id)"
    )


@dataclass(frozen=True)
class _Column:
    id: int
    name: str
    type: str
    parent: int | None
    initial_default: str | None


def _columns(con: duckdb.DuckDBPyConnection, table_id: int, at: int | None) -> list[_Column]:
    """The table's columns live at version ``at`` (None: the rolled-back catalog's live ones)."""
    live = (
        "end_snapshot IS NULL"
        if at is None
        else "begin_snapshot <= $at AND (end_snapshot IS NULL OR end_snapshot > $at)"
    )
    rows = con.execute(
        f"SELECT column_id, column_name, column_type, parent_column, initial_default "
        f"FROM ducklake_column WHERE table_id = $t AND {live} ORDER BY column_order",
        {"t": table_id} | ({} if at is None else {"at": at}),
    ).fetchall()
    return [_Column(*row) for row in rows]


def _restat(con: duckdb.DuckDBPyConnection, table_id: int) -> None:
    """Compute a table's statistics again from what the rolled-back catalog holds live."""
    live_table = con.execute(
        "SELECT 1 FROM ducklake_table WHERE table_id = ? AND end_snapshot IS NULL", [table_id]
    ).fetchone()
    if live_table is None:  # dropped before the version: its statistics stayed as they were
        return
    inlined = _inlined_tables(con, table_id)
    # As DuckLake counts them: every row and byte written (deleting leaves them counted).
    files = con.execute(
        "SELECT count(*), sum(record_count), sum(file_size_bytes), "
        "max(row_id_start + record_count) FROM ducklake_data_file WHERE table_id = ?",
        [table_id],
    ).fetchone()
    assert files is not None
    file_count, records, size, file_rows = files
    inlined_rows, inlined_next = 0, 0
    for table in inlined:
        row = con.execute(
            f"SELECT count(*), coalesce(max(row_id) + 1, 0) FROM {ident(table.name)}"
        ).fetchone()
        assert row is not None
        inlined_rows, inlined_next = inlined_rows + row[0], max(inlined_next, row[1])
    if file_count == 0 and inlined_rows == 0:  # nothing was written to it up to the version
        con.execute("DELETE FROM ducklake_table_stats WHERE table_id = ?", [table_id])
        con.execute("DELETE FROM ducklake_table_column_stats WHERE table_id = ?", [table_id])
        return
    before = con.execute(
        "SELECT next_row_id FROM ducklake_table_stats WHERE table_id = ?", [table_id]
    ).fetchone()
    next_row_id = max(before[0] if before else 0, file_rows or 0, inlined_next)
    con.execute("DELETE FROM ducklake_table_stats WHERE table_id = ?", [table_id])
    con.execute(
        "INSERT INTO ducklake_table_stats VALUES (?, ?, ?, ?)",
        [table_id, (records or 0) + inlined_rows, next_row_id, size or 0],
    )
    columns = _columns(con, table_id, None)
    parents = {c.parent for c in columns}
    redone, found = [], []
    for column in columns:
        if column.id in parents or column.type in _NESTED_TYPES:
            continue  # statistics are kept for the leaves of a nested column
        kind = _value_type(column.type)
        if kind is None and column.type not in _STRING_TYPES:
            continue  # bounds this code cannot order (geometry, variant): kept as they were
        redone.append(column.id)
        bounds = _bounds(con, table_id, column, kind, file_count > 0, inlined)
        if bounds is not None:
            found.append([table_id, column.id, *bounds])
    if redone:
        con.execute(
            "DELETE FROM ducklake_table_column_stats WHERE table_id = ? AND list_contains(?, "
            "column_id)",
            [table_id, redone],
        )
    if found:
        con.executemany(
            "INSERT INTO ducklake_table_column_stats VALUES (?, ?, ?, ?, ?, ?, NULL)", found
        )


def _value_type(ducklake_type: str) -> str | None:
    """The DuckDB type DuckLake reads a value-compared bound as; None: compared as text."""
    if match := re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", ducklake_type):
        return f"DECIMAL({match[1]}, {match[2]})"
    return _VALUE_TYPES.get(ducklake_type)


@dataclass(frozen=True)
class _Inlined:
    """An inlined-data table of a table: its name, the table's columns when it was made
    (by id) and the names of the columns it has."""

    name: str
    columns: dict[int, _Column]
    present: frozenset[str]


def _inlined_tables(con: duckdb.DuckDBPyConnection, table_id: int) -> list[_Inlined]:
    """The table's inlined-data tables, each with the columns the table had when it was
    made (its rows have those; a column added later reads as its initial default)."""
    found = []
    for name, schema_version in con.execute(
        "SELECT table_name, schema_version FROM ducklake_inlined_data_tables "
        "WHERE table_id = ? ORDER BY schema_version",
        [table_id],
    ).fetchall():
        row = con.execute(
            "SELECT coalesce("
            " (SELECT min(begin_snapshot) FROM ducklake_schema_versions"
            "  WHERE table_id = $t AND schema_version = $s),"
            " (SELECT min(snapshot_id) FROM ducklake_snapshot WHERE schema_version >= $s),"
            " (SELECT min(begin_snapshot) FROM ducklake_table WHERE table_id = $t))",
            {"t": table_id, "s": schema_version},
        ).fetchone()
        assert row is not None
        columns = {c.id: c for c in _columns(con, table_id, int(row[0]))}
        present = frozenset(r[0] for r in con.execute(f"DESCRIBE {ident(name)}").fetchall())
        found.append(_Inlined(name, columns, present))
    return found


def _bounds(
    con: duckdb.DuckDBPyConnection,
    table_id: int,
    column: _Column,
    kind: str | None,
    has_files: bool,
    inlined: list[_Inlined],
) -> tuple[bool, bool | None, str | None, str | None] | None:
    """A column's (contains_null, contains_nan, min, max) over the live files and inlined
    rows, merged as DuckLake merges them (bounds unknown in one source: unknown); None: no
    live row has the column (no statistics)."""
    floating = column.type in ("float32", "float64")
    default = "NULL::VARCHAR" if column.initial_default is None else literal(column.initial_default)
    # A row per source: has values, contains null, contains nan, min, max, bounds known.
    sources = []
    if has_files:  # a file written before the column was added holds its initial default
        sources.append(
            f"SELECT CASE WHEN s.data_file_id IS NULL THEN {default} IS NOT NULL"
            f" ELSE coalesce(s.value_count, 1) > 0 END,"
            f" CASE WHEN s.data_file_id IS NULL THEN {default} IS NULL"
            f" ELSE coalesce(s.null_count > 0, true) END,"
            f" s.contains_nan,"
            f" CASE WHEN s.data_file_id IS NULL THEN {default} ELSE s.min_value END,"
            f" CASE WHEN s.data_file_id IS NULL THEN {default} ELSE s.max_value END,"
            f" s.data_file_id IS NULL OR (s.min_value IS NOT NULL AND s.max_value IS NOT NULL)"
            f" FROM ducklake_data_file f LEFT JOIN ducklake_file_column_stats s"
            f" ON s.data_file_id = f.data_file_id AND s.column_id = {column.id}"
            f" WHERE f.table_id = {table_id}"
        )
    for table in inlined:
        values = _inlined_values(table, column.id)
        if values is None:  # rows inlined before the column was added: its initial default
            sources.append(
                f"SELECT {default} IS NOT NULL, {default} IS NULL, NULL::BOOLEAN, {default},"
                f" {default}, true FROM {ident(table.name)} LIMIT 1"
            )
            continue
        text = "CAST(v AS VARCHAR)"
        order = f"TRY_CAST(v AS {kind})" if kind else text
        # DuckLake leaves contains_nan unknown for inlined rows.
        sources.append(
            f"SELECT count(v) > 0, bool_or(v IS NULL), NULL::BOOLEAN,"
            f" arg_min({text}, {order}), arg_max({text}, {order}), true"
            f" FROM ({values}) HAVING count(*) > 0"
        )
    if not sources:
        return None
    lo, hi = (f"TRY_CAST(lo AS {kind})", f"TRY_CAST(hi AS {kind})") if kind else ("lo", "hi")
    row = con.execute(
        f"""
        WITH src(has_values, has_null, has_nan, lo, hi, known) AS (
            {" UNION ALL ".join(f"({q})" for q in sources)})
        SELECT count(*), bool_or(has_null),
            bool_or(has_values AND has_nan IS NULL), bool_or(has_values AND has_nan),
            bool_or(has_values AND (NOT known OR {lo} IS NULL OR {hi} IS NULL)),
            arg_min(lo, {lo}) FILTER (has_values), arg_max(hi, {hi}) FILTER (has_values)
        FROM src
        """
    ).fetchone()
    assert row is not None
    found, has_null, nan_unknown, has_nan, bounds_unknown, low, high = row
    if not found:
        return None
    contains_nan = (None if nan_unknown else bool(has_nan)) if floating else None
    if bounds_unknown:
        low = high = None
    return bool(has_null), contains_nan, low, high


def _inlined_values(table: _Inlined, column_id: int) -> str | None:
    """A query of the values a column has in the rows of an inlined-data table (a column
    ``v``; a list's or map's values unnested); None: the table has no such column."""
    path: list[_Column] = []
    found: int | None = column_id
    while found is not None:
        column = table.columns.get(found)
        if column is None:
            return None
        path.append(column)
        found = column.parent
    path.reverse()
    if path[0].name not in table.present:
        return None
    query = f"SELECT {ident(path[0].name)} AS v FROM {ident(table.name)}"
    for parent, child in itertools.pairwise(path):
        if parent.type == "struct":
            query = f"SELECT struct_extract(v, {literal(child.name)}) AS v FROM ({query})"
        elif parent.type == "list":
            query = f"SELECT unnest(v) AS v FROM ({query})"
        elif parent.type == "map":
            part = "map_keys" if child.name == "key" else "map_values"
            query = f"SELECT unnest({part}(v)) AS v FROM ({query})"
        else:
            return None
    return query
