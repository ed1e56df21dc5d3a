"""A DuckLake whose catalog is a PostgreSQL database: what differs from the DuckDB file.

* **Attach**: ``ATTACH 'ducklake:postgres:<libpq>' (DATA_PATH ..., METADATA_SCHEMA ...)``
  through DuckDB's postgres extension (from its PyPI wheel, linked next to DuckLake). The
  password never appears in a statement: it goes into a temporary DuckDB secret of type
  postgres, which the extension uses for a connection string without one (and, for dbt,
  into an environment variable its profile reads).
* **Several writers**: every commit is a PostgreSQL transaction on the catalog, so
  processes on several machines write one lake. Two commits that race and do not conflict
  are retried by DuckLake (``ducklake_max_retry_count`` raised to
  :data:`RETRIES`); a real conflict (both deleted from one table) fails the commit as
  busy, retryable, and the rerun starts from the committed state.
* **Locks** are PostgreSQL advisory locks on a connection of their own, keyed by the
  catalog's schema and the lock's name: they work across machines, and the server ends
  the session (and its locks) when the holding process dies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from connectors._http_redact import Redactor
from stack.config.targets import PostgresCatalog
from stack.errors import SyncConflict, WarehouseBusy

RETRIES = 100
"""DuckLake's retries of a commit that raced another (default 10): eight writers committing
at once lose races more often than ten times in a row."""
PASSWORD_ENV = "MDSTACK_LAKE_CATALOG_PASSWORD"
"""The environment variable dbt's profile reads the catalog's password from."""


class PostgresCatalogLink:
    """How DuckDB and dbt reach a lake's PostgreSQL catalog, and its advisory locks."""

    def __init__(self, catalog: PostgresCatalog, connect_timeout: int = 10) -> None:
        self.catalog = catalog
        self.connect_timeout = connect_timeout

    @property
    def schema(self) -> str:
        return self.catalog.schema_

    def conninfo(self, password: bool = False) -> str:
        """The libpq connection string (with the password only for psycopg's own use)."""
        c = self.catalog
        params: dict[str, Any] = {
            "host": c.host,
            "port": c.port,
            "dbname": c.database,
            "user": c.user,
            "connect_timeout": self.connect_timeout,
        }
        if c.sslmode:
            params["sslmode"] = c.sslmode
        if password and c.password:
            params["password"] = c.password
        return make_conninfo(**params)

    @property
    def attach_path(self) -> str:
        return f"ducklake:postgres:{self.conninfo()}"

    @property
    def where(self) -> str:
        c = self.catalog
        return f"postgres://{c.user}@{c.host}:{c.port}/{c.database} (schema {c.schema_})"

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold advisory lock ``name`` of this lake for the block; SyncConflict if taken."""
        key = lock_key(self.schema, name)
        try:
            conn = psycopg.connect(self.conninfo(password=True), autocommit=True)
        except psycopg.OperationalError as exc:
            raise WarehouseBusy(
                f"cannot reach the lake's catalog {self.where} to lock {name!r}: "
                f"{Redactor(filter(None, [self.catalog.password]))(str(exc))}",
                hint="check that the catalog database is up and reachable from here",
            ) from None
        with conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not row or not row[0]:
                raise SyncConflict(
                    f"another run holds {name!r}",
                    hint="wait for it to finish; two runs of the same stream and region "
                    "would race on its state",
                )
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def lock_key(schema: str, name: str) -> int:
    """The advisory lock key of lock ``name`` of the lake whose catalog is in ``schema``."""
    return int.from_bytes(
        hashlib.sha256(f"{schema}/{name}".encode()).digest()[:8], "big", signed=True
    )
