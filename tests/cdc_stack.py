"""A ``stack.yml`` with one PostgreSQL CDC source ``pg``, and what the CDC tests look at.

What a user or a DBA sees: the command's outcome, the rows that landed in DuckDB next to the
source table's rows, the states stored, and the slots on the server and where they stand.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml
from typer.testing import CliRunner, Result

from stack.cli import app
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.servers.pg_server import PgCluster, connect_kwargs, drop_slots

MakeTables = Callable[..., tuple[psycopg.Connection, str, list[str]]]


def make_tables(cluster: PgCluster, rows: int) -> Iterator[MakeTables]:
    """Yields ``tables(count, rows=rows)``: a new schema of ``count`` tables ``t01``... of
    ``(id int PRIMARY KEY, name text, n int)`` with ``rows`` rows each, in one publication
    named after the schema. Schemas, publications and slots are dropped at the end."""
    made: list[str] = []
    with psycopg.connect(**connect_kwargs(cluster.dsn), autocommit=True) as conn:

        def tables(count: int, rows: int = rows) -> tuple[psycopg.Connection, str, list[str]]:
            schema = f"slot_{uuid.uuid4().hex[:8]}"
            made.append(schema)
            conn.execute(f"CREATE SCHEMA {schema}")
            names = [f"t{i:02d}" for i in range(1, count + 1)]
            for name in names:
                conn.execute(f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, name text, n int)")
                conn.execute(
                    f"INSERT INTO {schema}.{name}"
                    f" SELECT g, '{name} ' || g, 0 FROM generate_series(1, {rows}) g"
                )
            listed = ", ".join(f"{schema}.{n}" for n in names)
            conn.execute(f"CREATE PUBLICATION {schema} FOR TABLE {listed}")
            return conn, schema, names

        try:
            yield tables
        finally:
            for schema in made:
                drop_slots(conn, schema)
                conn.execute(f"DROP PUBLICATION {schema}")
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def write_config(
    folder: Path,
    dsn: dict[str, Any],
    schema: str,
    names: list[str],
    concurrency: int = 1,
    batch_size: int = 25,
    **replication: Any,
) -> Path:
    """``stack.yml`` in ``folder``: source ``pg`` reads ``names`` of ``schema`` by CDC
    (slot and publication named after the schema, plus ``replication``), into DuckDB."""
    source = {
        "connector": "postgres",
        "concurrency": concurrency,
        "schema": "raw_pg",
        "config": dsn
        | {
            "schemas": [schema],
            "batch_size": batch_size,  # 25: several windows and checkpoints per read
            "replication": {"slot": schema, "publication": schema} | replication,
        },
        "streams": {name: {"sync": "incremental_deduped"} for name in names},
    }
    config = {
        "name": "shared",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "wh")}},
        "sources": {"pg": source},
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def churn(
    conn: psycopg.Connection, schema: str, names: list[str], rng: random.Random, rows: int
) -> None:
    """Inserts, updates and deletes of keys up to ``3 * rows``, in transactions that touch one
    to three tables."""
    for _ in range(30):
        with conn.transaction():
            for name in rng.sample(names, rng.randint(1, min(3, len(names)))):
                table = f"{schema}.{name}"
                for _ in range(rng.randint(1, 6)):
                    key, what = rng.randint(1, 3 * rows), rng.random()
                    if what < 0.25:
                        conn.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
                    else:
                        conn.execute(
                            f"INSERT INTO {table} AS t VALUES (%s, %s, 0) ON CONFLICT (id)"
                            " DO UPDATE SET name = excluded.name, n = t.n + 1",
                            (key, f"v{rng.random():.6f}"),
                        )


def mdstack(path: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--config", str(path)])


def sync(path: Path, *more: str) -> Result:
    result = mdstack(path, "sync", "--source", "pg", *more)
    assert result.exit_code == 0, result.output
    return result


def landed(folder: Path, names: list[str]) -> dict[str, list[tuple]]:
    """The live rows of each table in the warehouse, sorted."""
    with DuckDBWarehouse(folder / "wh") as wh:
        return {
            name: sorted(
                tuple(r.values())
                for r in wh.query(
                    f"SELECT id, name, n FROM raw_pg.{name} WHERE _mds_deleted_at IS NULL"
                ).to_pylist()
            )
            for name in names
        }


def at_source(conn: psycopg.Connection, schema: str, names: list[str]) -> dict[str, list]:
    return {
        n: sorted(conn.execute(f"SELECT id, name, n FROM {schema}.{n}").fetchall()) for n in names
    }


def slots_of(conn: psycopg.Connection, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s ORDER BY 1",
        (f"{schema}%",),
    ).fetchall()
    return [r[0] for r in rows]


def confirmed(conn: psycopg.Connection, slot: str) -> str | None:
    """The slot's confirmed position; None while there is no such slot."""
    query = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
    row = conn.execute(query, (slot,)).fetchone()
    return None if row is None else row[0]


def states(path: Path) -> dict[str, dict]:
    """Each stream's stored state, as ``mdstack state show`` gives it."""
    result = mdstack(path, "state", "show", "--json", "--source", "pg")
    assert result.exit_code == 0, result.output
    return {row["stream"]: row.get("state") or {} for row in json.loads(result.stdout)}


def stored(path: Path) -> dict[str, str]:
    """Each stream's stored LSN."""
    return {stream: state.get("lsn") for stream, state in states(path).items()}


def lsn_le(conn: psycopg.Connection, a: str, b: str) -> bool:
    return conn.execute("SELECT %s::pg_lsn <= %s::pg_lsn", (a, b)).fetchone()[0]


_WORKER = """
import sys
sys.path.insert(0, {root!r})
from stack.config import load_config
from stack.load import EVERY_CHECKPOINT, RunContext, plan_stream
from stack.load.group import sync_group
from stack.run.scope import open_source
from stack.warehouse.duckdb import DuckDBWarehouse

config = load_config({path!r})
source = open_source(config, "pg", config.region_names()[0])
catalog = source.discover()
cfg = config.source("pg")
plans = [plan_stream("pg", cfg, catalog, name) for name in cfg.streams]
ctx = RunContext(config.name, config.region_names()[0], sys.argv[1])
with DuckDBWarehouse({wh!r}) as wh:
    print("ready", flush=True)
    sync_group(wh, source, plans, ctx, policy=EVERY_CHECKPOINT)
print("done", flush=True)
"""


def sync_worker(folder: Path, path: Path) -> Path:
    """A script (for :func:`tests.kill.run_worker`) that syncs every stream of ``pg`` of the
    config ``path`` in one shared read, committing at every checkpoint; its argument is the
    run id."""
    script = folder / "worker.py"
    script.write_text(_WORKER.format(root=str(ROOT), path=str(path), wh=str(folder / "wh")))
    return script
