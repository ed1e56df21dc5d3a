"""The PostgreSQL side of the benchmarks: the server, the bench tables, the changes, the floor.

The server defaults to ``127.0.0.1:5432``, user ``postgres``, database ``test``
(override with ``BENCH_PG_HOST``, ``BENCH_PG_PORT``, ``BENCH_PG_USER``,
``BENCH_PG_PASSWORD``, ``BENCH_PG_DATABASE``). Every table lives in a schema named
``bench_*`` that the bench creates and drops.

The table has 10 columns of mixed types (bigint key, int, text, varchar, a status
text, numeric(12,2), double with NULLs, boolean, date, and the ``updated_at``
timestamp cursor), generated server-side by ``generate_series``. It is UNLOGGED
(quicker to fill, read exactly like a logged table), then ``VACUUM (FREEZE,
ANALYZE)``: otherwise the first reader pays for setting hint bits and the tool
that runs first looks slower.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

ROWS_SQL = """
INSERT INTO {table}
SELECT g,
       (g * 7919) %% 100000,
       'customer ' || g,
       'user' || g || '@example.com',
       (ARRAY['new', 'active', 'paused', 'closed'])[1 + g %% 4],
       ((g * 37) %% 1000000) / 100.0,
       CASE WHEN g %% 50 = 0 THEN NULL ELSE (g %% 1000) / 7.0 END,
       g %% 3 = 0,
       DATE '2020-01-01' + (g %% 2000)::int,
       {updated_at}
FROM generate_series(%s::bigint, %s::bigint) AS g
"""
"""Rows ``g`` of the bench's table, from the two last parameters; ``updated_at`` is an
expression of ``g`` (and of parameters before those)."""
_CREATED_AT = sql.SQL("TIMESTAMP '2024-01-01' + g * INTERVAL '1 second'")
_COLUMNS = """(
    id bigint {key},
    account_id integer NOT NULL,
    name text NOT NULL,
    email varchar(120),
    status text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    score double precision,
    active boolean NOT NULL,
    created_on date NOT NULL,
    updated_at timestamp NOT NULL
)"""
_CHUNK = 2_000_000


@dataclass(frozen=True)
class PgServer:
    """Where the bench's PostgreSQL is, and how each tool is told about it."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str | None = None
    database: str = "test"

    @classmethod
    def from_env(cls) -> PgServer:
        env = os.environ
        return cls(
            host=env.get("BENCH_PG_HOST", cls.host),
            port=int(env.get("BENCH_PG_PORT", cls.port)),
            user=env.get("BENCH_PG_USER", cls.user),
            password=env.get("BENCH_PG_PASSWORD") or None,
            database=env.get("BENCH_PG_DATABASE", cls.database),
        )

    @property
    def url(self) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.database}"

    @property
    def conninfo(self) -> str:
        """libpq key=value string (DuckDB's postgres_scan takes this)."""
        info = f"host={self.host} port={self.port} user={self.user} dbname={self.database}"
        return info + (f" password={self.password}" if self.password else "")

    def source_config(self, schema: str, table: str) -> dict[str, object]:
        """The mdstack PostgresSource config reading just ``schema.table``."""
        config: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "schemas": [schema],
            "tables": [table],
        }
        return config | ({"password": self.password} if self.password else {})

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)

    def problem(self) -> str | None:
        """Why the server cannot be used, or None when it can."""
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"PostgreSQL not reachable at {self.host}:{self.port} ({first})"
        return None

    def env(self) -> dict[str, str]:
        """libpq environment variables, for psql."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.database,
        }
        return env | ({"PGPASSWORD": self.password} if self.password else {})


def create_table(
    pg: PgServer,
    schema: str,
    table: str,
    rows: int,
    *,
    key: bool = True,
    cursor_index: bool = False,
) -> None:
    """(Re)create ``schema.table`` with ``rows`` generated rows, vacuumed and analysed."""
    name = sql.Identifier(schema, table)
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        columns = _COLUMNS.format(key="PRIMARY KEY" if key else "NOT NULL")
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} " + columns).format(name))
        for start in range(1, rows + 1, _CHUNK):
            stop = min(start + _CHUNK - 1, rows)
            rows_sql = sql.SQL(ROWS_SQL).format(table=name, updated_at=_CREATED_AT)
            conn.execute(rows_sql, (start, stop))
        if cursor_index:
            index = sql.Identifier(f"{table}_updated_at")
            conn.execute(sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(index, name))
        conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(name))


def apply_changes(
    pg: PgServer, schema: str, table: str, update_every: int = 100, delete_every: int = 1000
) -> tuple[int, int]:
    """Update 1/``update_every`` of the rows (``updated_at`` bumped past every existing
    value, ``amount`` changed) and delete 1/``delete_every`` of them (disjoint sets).

    Returns:
        (rows updated, rows deleted).
    """
    name = sql.Identifier(schema, table)
    update = sql.SQL(
        "UPDATE {} SET updated_at = TIMESTAMP '2030-01-01' + id * INTERVAL '1 microsecond', "
        "amount = amount + 1 WHERE id % {} = 7"
    ).format(name, sql.Literal(update_every))
    delete = sql.SQL("DELETE FROM {} WHERE id % {} = 3").format(name, sql.Literal(delete_every))
    with pg.connect() as conn:
        updated = conn.execute(update).rowcount
        deleted = conn.execute(delete).rowcount
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(name))
    return updated, deleted


def drop_schema(pg: PgServer, schema: str) -> None:
    with pg.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def table_bytes(pg: PgServer, schema: str, table: str) -> int:
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass)", (f"{schema}.{table}",)
        ).fetchone()
    return int(row[0]) if row else 0


def floor_command(pg: PgServer, schema: str, table: str) -> list[str]:
    """``COPY (SELECT * ...) TO STDOUT (FORMAT binary)``: the server's own export, via psql
    (or a psycopg worker when psql is missing); the caller sends stdout to /dev/null."""
    statement = (
        f'COPY (SELECT * FROM "{schema}"."{table}") TO STDOUT (FORMAT binary)'  # bench names
    )
    psql = shutil.which("psql")
    if psql:
        return [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", statement]
    worker = Path(__file__).resolve().parent / "workers" / "pg_copy.py"
    return [sys.executable, str(worker), pg.conninfo, statement]
