"""A CDC source of scenario 8: a schema of keyed tables, its publication and slot, and the
``stack.yml`` that syncs it into a DuckLake warehouse in the scenario's scratch folder.

:class:`Source` creates the tables (``generate_series``, vacuumed and frozen), writes the
config, runs nothing itself: the parts of the scenario measure ``mdstack sync`` with
:meth:`Source.sync_argv` and compare what landed with the source (:meth:`Source.checksum`,
:meth:`Source.landed`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from bench._measure import Tool
from bench._pg import PgServer
from bench._pg_tools import restore
from stack.warehouse.duckdb import DuckDBWarehouse

RAW = "raw_cdc"
_COLUMNS = (
    "(id bigint PRIMARY KEY, name text NOT NULL, n integer NOT NULL,"
    " amount numeric(12, 2) NOT NULL, updated_at timestamptz NOT NULL)"
)
ROWS = (
    "INSERT INTO {} SELECT g, 'row ' || g, 0, (g %% 10000) / 100.0, now()"
    " FROM generate_series(%s::bigint, %s::bigint) g"
)
_LAG = (
    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
    " FROM pg_replication_slots WHERE slot_name = %s"
)


@dataclass
class Source:
    """One CDC source of the bench: its schema, publication and slot share one name."""

    pg: PgServer
    name: str
    tables: list[str]
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "stack.yml"

    @property
    def warehouse(self) -> Path:
        return self.folder / "warehouse"

    def create(self, rows_each: int, snapshot_chunk: int | None = None) -> None:
        """The tables of ``rows_each`` rows, the publication, and ``stack.yml``
        (``replication.snapshot_chunk`` when given, else the connector's default)."""
        with self.pg.connect() as conn:
            _drop(conn, self.name)
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.name)))
            for table in self.tables:
                name = sql.Identifier(self.name, table)
                conn.execute(sql.SQL("CREATE TABLE {} " + _COLUMNS).format(name))
                conn.execute(sql.SQL(ROWS).format(name), (1, rows_each))
                conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(name))
            listed = sql.SQL(", ").join(sql.Identifier(self.name, t) for t in self.tables)
            pub = sql.Identifier(self.name)
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, listed))
        replication: dict[str, object] = {"slot": self.name, "publication": self.name}
        if snapshot_chunk is not None:
            replication["snapshot_chunk"] = snapshot_chunk
        source = {
            "connector": "postgres",
            "schema": RAW,
            "config": self.pg.source_config(self.name, self.tables[0])
            | {"tables": self.tables, "replication": replication},
            "streams": {t: {"sync": "incremental_deduped"} for t in self.tables},
        }
        stack = {
            "name": "bench",
            "target": "local",
            "targets": {"local": {"type": "duckdb", "path": str(self.warehouse)}},
            "sources": {"pg": source},
        }
        self.config.write_text(yaml.safe_dump(stack, sort_keys=False))

    def sync_argv(self) -> list[str]:
        return [mdstack(), "sync", "--source", "pg", "--config", str(self.config)]

    def sync_tool(self, name: str, before: Callable[[], None] | None) -> Tool:
        return Tool(name, lambda: (self.sync_argv(), {}, self.folder), before=before)

    def save(self, label: str) -> Callable[[], None]:
        """Copy the warehouse and the source's slot aside; returns the hook that puts both
        back. A sync releases the slot up to the states it committed: a warehouse put back
        alone would be behind its slot (the sync would refuse it, as it must)."""
        copy = self.folder / f"warehouse.{label}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.warehouse, copy, symlinks=True)
        saved = self.copy_slot(f"{self.name}_{label}", self.name)
        put_back = restore(copy, self.warehouse)

        def before() -> None:
            put_back()
            self.copy_slot(self.name, saved)

        return before

    def copy_slot(self, name: str, template: str | None = None) -> str:
        with self.pg.connect() as conn:
            if conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,)
            ).fetchone():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            conn.execute(
                "SELECT pg_copy_logical_replication_slot(%s, %s)", (template or self.name, name)
            )
        return name

    def lsn(self) -> str:
        with self.pg.connect() as conn:
            return str(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]

    def checksum(self) -> tuple[int, int]:
        """Rows and sum of ``n`` over every table, in PostgreSQL."""
        with self.pg.connect() as conn:
            rows = total = 0
            for table in self.tables:
                query = sql.SQL("SELECT count(*), coalesce(sum(n), 0) FROM {}")
                got = conn.execute(query.format(sql.Identifier(self.name, table))).fetchone()
                rows, total = rows + int(got[0]), total + int(got[1])  # type: ignore[index]
        return rows, total

    def landed(self) -> tuple[int, int]:
        """The same over the synced tables in the warehouse."""
        rows = total = 0
        with DuckDBWarehouse(self.warehouse) as wh:
            for table in self.tables:
                got = wh.query(
                    f'SELECT count(*) AS r, coalesce(sum(n), 0) AS s FROM "{RAW}"."{table}"'
                ).to_pylist()[0]
                rows, total = rows + int(got["r"]), total + int(got["s"])
        return rows, total

    def stored_state(self, table: str) -> dict[str, Any] | None:
        """The state of the table's stream, as ``mdstack state show --json`` prints it."""
        argv = [mdstack(), "state", "show", "--json", "--source", "pg"]
        argv += ["--config", str(self.config)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode:
            raise RuntimeError(f"mdstack state show failed: {done.stderr.strip()[-500:]}")
        rows = json.loads(done.stdout)
        return next((r["state"] for r in rows if r["stream"] == table), None)

    def last_run(self, table: str) -> dict[str, Any]:
        """The latest ``_mds_runs`` row of the table's stream (the warehouse's run ledger)."""
        with DuckDBWarehouse(self.warehouse) as wh:
            runs = f'"{wh.meta_schema}"."_mds_runs"'
            got = wh.query(
                f"SELECT * FROM {runs} WHERE source = ? AND stream = ?"
                " ORDER BY started_at DESC LIMIT 1",
                ["pg", table],
            ).to_pylist()
        if not got:
            raise RuntimeError(f"no run of {table} in {runs}")
        return got[0]

    def lag(self) -> tuple[float, float]:
        """MB of WAL the source's slot holds back: by confirmed_flush_lsn, by restart_lsn."""
        with self.pg.connect() as conn:
            got = conn.execute(_LAG, (self.name,)).fetchone()
        return (got[0] / 2**20, got[1] / 2**20) if got else (float("nan"), float("nan"))

    def forget(self) -> None:
        """Back to before the first sync: the slots dropped, the warehouse deleted."""
        with self.pg.connect() as conn:
            _drop_slots(conn, self.name)
        shutil.rmtree(self.warehouse, ignore_errors=True)

    def drop(self) -> None:
        with self.pg.connect() as conn:
            _drop(conn, self.name)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    """The bench's slots, publication and schema."""
    _drop_slots(conn, name)
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _drop_slots(conn: psycopg.Connection[Any], name: str) -> None:
    """The source's slot ``name`` and the bench's copies of it (``name_*``)."""
    for (slot,) in conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s OR slot_name LIKE %s",
        (name, f"{name}\\_%"),
    ).fetchall():
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def mdstack() -> str:
    """The ``mdstack`` command of the interpreter running the bench (as a user runs it)."""
    beside = Path(sys.executable).with_name("mdstack")
    return str(beside) if beside.exists() else shutil.which("mdstack") or "mdstack"
