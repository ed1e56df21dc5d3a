"""The file BI tools read: a plain DuckDB database holding copies of the published schemas.

A DuckLake catalog is metadata about Parquet files; a tool with a DuckDB driver (Superset
through duckdb-engine, Metabase's DuckDB driver, a notebook) that opens it sees catalog
tables, not the marts. After every good publish the chosen schemas are copied into a new
DuckDB file beside the lake, which then replaces the old one in one ``rename``: a reader
that has the old file open keeps reading it whole (its inode lives on until it lets go),
and one that opens the path after the rename reads the new one whole, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb

from stack import sql
from stack.warehouse._ducklake_envs import fsync
from stack.warehouse.base import BiFileWritten

OUT = "_mds_bi_out"
"""The alias the new file is attached under while it is written."""


def write_bi_file(
    con: duckdb.DuckDBPyConnection, lake: str, path: Path, schemas: Sequence[str]
) -> BiFileWritten:
    """Copy every table and view of ``schemas`` in catalog ``lake`` into a new DuckDB file,
    then move it to ``path`` in one rename (views become tables: the file stands alone).

    A schema the lake does not hold yet (no dbt run so far) is left out, not an error.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.writing")
    tables = rows = 0
    con.execute(f"ATTACH {sql.literal(str(staged))} AS {OUT}")
    try:
        for schema in schemas:
            names = con.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_catalog = ? AND table_schema = ? ORDER BY table_name",
                [lake, schema],
            ).fetchall()
            if not names:
                continue
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {OUT}.{sql.ident(schema)}")
            for (name,) in names:
                [(count,)] = con.execute(  # DuckDB answers a CREATE TABLE AS with its rows
                    f"CREATE TABLE {OUT}.{sql.ident(schema)}.{sql.ident(name)} AS"
                    f" SELECT * FROM {sql.ident(lake)}.{sql.ident(schema)}.{sql.ident(name)}"
                ).fetchall()
                tables, rows = tables + 1, rows + count
        con.execute(f"DETACH {OUT}")  # checkpoints: the whole file is on disk
        fsync(staged)
        os.replace(staged, path)
        fsync(path.parent)
    except BaseException:
        _detach_quietly(con)
        raise
    finally:
        for leftover in (staged, staged.with_name(staged.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return BiFileWritten(path, tables, rows)


def _detach_quietly(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # failing already: the caller's error says why
        con.execute(f"DETACH DATABASE IF EXISTS {OUT}")
