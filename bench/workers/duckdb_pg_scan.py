"""DuckDB's own postgres scanner: ``CREATE TABLE AS SELECT * FROM postgres_scan(...)``.

Into a plain DuckDB file (not DuckLake): what a user of DuckDB alone would write. The
extension is loaded offline from the ``duckdb-extension-postgres-scanner`` wheel that
mdstack installs (the same file ``connectors/postgres/fetch.py`` loads). Timed: connect,
LOAD and the CREATE TABLE AS.

Usage: ``python duckdb_pg_scan.py CONNINFO SCHEMA TABLE OUT.duckdb``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import duckdb
from _report import Stopwatch, emit


def extension_file() -> Path:
    spec = importlib.util.find_spec("duckdb_extension_postgres_scanner")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("duckdb-extension-postgres-scanner is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "extensions" / f"v{duckdb.__version__}" / "postgres_scanner.duckdb_extension"


def main() -> None:
    conninfo, schema, table, out = sys.argv[1:5]
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    with Stopwatch() as sw:
        con = duckdb.connect(out, config=config)
        con.execute(f"LOAD '{extension_file()}'")
        con.execute(
            "CREATE TABLE t AS SELECT * FROM postgres_scan(?, ?, ?)", [conninfo, schema, table]
        )
        con.close()
    with duckdb.connect(out) as con:
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    emit(sw.seconds, rows, table_rows=rows)


if __name__ == "__main__":
    main()
