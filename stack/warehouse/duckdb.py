"""DuckDB on DuckLake: the embedded default warehouse.

Layout of a warehouse folder ``W``::

    W/catalog.ducklake   DuckLake catalog (a DuckDB file: one process at a time)
    W/data/              Parquet data files (DuckLake DATA_PATH)
    W/.extensions/       DuckDB extension directory, filled from the PyPI package

The DuckLake extension is linked offline from ``duckdb-extension-ducklake``
into ``W/.extensions`` (never into ``~/.duckdb``). Every commit is a DuckLake
snapshot. Staging tables are DuckDB temp tables of this connection: batches
land there outside any transaction, and one transaction then writes the lake
(DuckDB allows one written database per transaction).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa

from connectors._http_redact import Redactor
from connectors.duckdb_extensions import FROM_WHEELS_ONLY, load, packaged_extension
from stack.config.targets import BiFile, ObjectStorage, PostgresCatalog
from stack.errors import SyncConflict, WarehouseBusy, WarehouseError, WriteConflict
from stack.sql import ident, literal, table
from stack.warehouse import _ducklake_pg_envs as pg_envs
from stack.warehouse import _ducklake_pg_expire as pg_expire
from stack.warehouse import _ducklake_s3 as s3
from stack.warehouse._bi_file import write_bi_file
from stack.warehouse._ducklake_diff import diff as lake_diff
from stack.warehouse._ducklake_envs import (
    BUSY_WAIT_SECONDS,
    CATALOG_FILE,
    DATA_DIR,
    clone_lake,
    drop_lake,
    environment_path,
    open_error,
    publish_lake,
    set_data_path,
    wait_while_locked,
)
from stack.warehouse._ducklake_pg import PASSWORD_ENV, RETRIES, PostgresCatalogLink
from stack.warehouse._ducklake_rollback import NotKept
from stack.warehouse.base import BiFileWritten, Capabilities, Expired, TableDiff

EXTENSION_DIR = ".extensions"
log = logging.getLogger(__name__)
ALIAS = "lake"
ENV_ALIAS = "mds_env"
"""The alias an environment's lake is attached under while it is published."""
_STORAGE_HINT = (
    "the lake's data files in object storage could not be read or written: check the target's"
    " data_path and storage (endpoint, region, key_id, secret) and the bucket's permissions"
)
_LAKE_OPTIONS = {"parquet_row_group_size": 30_000}
"""DuckLake options set on a lake that has none of its own. Each writer thread buffers a
whole Parquet row group: 30 k rows instead of 122,880 keeps a 2 M-row load near 300 MB
of peak RSS instead of ~400 MB (measured), at no loss of speed."""


def ducklake_extension_file() -> Path:
    """The DuckLake extension binary shipped by the ``duckdb-extension-ducklake`` wheel."""
    return _extension("duckdb_extension_ducklake", "ducklake", "duckdb-extension-ducklake")


def postgres_extension_file() -> Path:
    """DuckDB's postgres extension binary (a lake's PostgreSQL catalog is reached with it)."""
    return _extension(
        "duckdb_extension_postgres_scanner", "postgres_scanner", "duckdb-extension-postgres-scanner"
    )


def httpfs_extension_file() -> Path:
    """DuckDB's httpfs extension binary (a lake's ``s3://`` data path is reached with it)."""
    return _extension("duckdb_extension_httpfs", "httpfs", "duckdb-extension-httpfs")


def _extension(package: str, name: str, wheel: str) -> Path:
    path = packaged_extension(package, name)
    if path is None:
        raise WarehouseError(
            f"DuckDB's {name} extension for DuckDB {duckdb.__version__} is not installed",
            hint=f"pip install '{wheel}=={duckdb.__version__}' (it must match duckdb's version)",
        )
    return path


class DuckDBWarehouse:
    """A short-lived connection to a DuckLake warehouse folder.

    Open it with ``with``; a second process holding the catalog makes the
    open wait up to ``busy_timeout`` seconds, then fail with
    :class:`WarehouseBusy` (retryable).
    """

    capabilities = Capabilities(
        dialect="duckdb",
        clone=True,
        swap=False,
        max_identifier_length=255,
        concurrent_writers=False,
        stream_append=True,
        transactional_ddl=True,
        row_ids=True,
        diff=True,
    )
    meta_schema = "main"

    def __init__(
        self,
        path: Path,
        threads: int = 4,
        memory_limit: str = "1GB",
        busy_timeout: float = BUSY_WAIT_SECONDS,
        read_only: bool = False,
        catalog: PostgresCatalog | None = None,
        data_path: str | None = None,
        storage: ObjectStorage | None = None,
        bi_file: BiFile | None = None,
        snapshot: int | None = None,
    ):
        self.snapshot = snapshot
        """Open the lake as it was at this DuckLake snapshot (read-only); None: as it is."""
        self.read_only = read_only or snapshot is not None
        self.bi_file = bi_file
        """Where the published schemas are copied for BI tools (:meth:`refresh_bi_file`)."""
        self.path = Path(path).resolve()
        self.pg = PostgresCatalogLink(catalog) if catalog is not None else None
        """The lake's PostgreSQL catalog; None: the DuckDB file ``W/catalog.ducklake``."""
        self._data_path = data_path
        self.storage = storage
        """How to reach an ``s3://`` data path (credentials resolved); None: DuckDB's defaults."""
        if self.pg is not None:  # several processes, on several machines, write at once
            self.capabilities = dataclasses.replace(self.capabilities, concurrent_writers=True)
        self.threads = threads
        self.memory_limit = memory_limit
        self.busy_timeout = busy_timeout
        self._con: duckdb.DuckDBPyConnection | None = None
        self._in_transaction = False
        self._writes = threading.RLock()
        """Held by the handle writing the lake (see :meth:`cursor`)."""

    # -- connection ---------------------------------------------------------------------------
    def __enter__(self) -> DuckDBWarehouse:
        if self.pg is not None:
            return self._enter_postgres(self.pg)
        (self.path / DATA_DIR).mkdir(parents=True, exist_ok=True)
        self._link_extension()
        con = self._connect()
        mode = ", READ_ONLY" if self.read_only else ""
        if self.snapshot is not None:
            mode += f", SNAPSHOT_VERSION {int(self.snapshot)}"

        def attach() -> None:
            statement = (
                f"ATTACH 'ducklake:{self.catalog}' AS {ALIAS} (DATA_PATH '{self.data_path}'{mode})"
            )
            try:
                try:
                    con.execute(statement)
                except duckdb.Error as exc:
                    if "does not match existing data path" not in str(exc):
                        raise
                    # The folder moved (a copied project, a container's mount): the catalog
                    # names the old one. Its files' paths are relative: point it here.
                    log.warning("warehouse %s was moved here: its catalog now says so", self.path)
                    set_data_path(self.catalog, self.path / DATA_DIR)
                    con.execute(statement)
            except duckdb.IOException as exc:
                raise open_error(exc, "cannot open the warehouse") from exc
            except duckdb.Error as exc:
                if self.snapshot is None:
                    raise
                raise _not_kept(self.snapshot) from exc

        busy = WarehouseBusy(
            f"the warehouse {self.path} is in use by another process",
            hint="wait for the other mdstack (or dbt, or a BI tool) to finish; "
            "a DuckDB-file catalog allows one process at a time",
        )
        try:
            wait_while_locked(attach, self.busy_timeout, busy)
        except WarehouseError:
            con.close()
            raise
        con.execute(f"USE {ALIAS}")
        if not self.read_only:
            _set_default_options(con)
        self._con = con
        return self

    def _enter_postgres(self, pg: PostgresCatalogLink) -> DuckDBWarehouse:
        """Attach the lake through its PostgreSQL catalog (no file lock: writers commit at
        once, and DuckLake retries a commit that raced another)."""
        remote = s3.is_remote(self.data_path)
        if not remote:
            Path(self.data_path).mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self._link_extension()
        con = self._connect()
        options = f"DATA_PATH {literal(self.data_path)}, METADATA_SCHEMA {literal(pg.schema)}"
        if self.read_only:
            options += ", READ_ONLY"
        if self.snapshot is not None:
            options += f", SNAPSHOT_VERSION {int(self.snapshot)}"
        try:
            if password := pg.catalog.password:
                con.execute("CREATE TEMPORARY SECRET (TYPE postgres, PASSWORD ?)", [password])
            if remote and self.storage is not None:
                s3.create_secret(con, self.storage, self.data_path)
            con.execute(f"SET ducklake_max_retry_count = {RETRIES}")
            attach = f"ATTACH {literal(pg.attach_path)} AS {ALIAS} ({options})"
            for attempt in range(CREATE_RACE_ATTEMPTS):
                try:
                    con.execute(attach)
                    break
                except duckdb.Error as exc:  # a fresh lake: another process created it first
                    if attempt + 1 == CREATE_RACE_ATTEMPTS or not _creation_race(exc):
                        raise
                    time.sleep(0.2 * (attempt + 1))
        except duckdb.Error as exc:
            con.close()
            secrets = filter(None, [pg.catalog.password, *s3.credentials(self.storage)])
            text = Redactor(secrets)(str(exc))
            raise WarehouseBusy(
                f"cannot open the lake's catalog {pg.where}: {text}",
                hint="check that the catalog database is up and reachable from here, and the "
                "user may create tables in it (the first open creates the catalog's tables)",
            ) from None
        con.execute(f"USE {ALIAS}")
        if not self.read_only:
            _set_default_options(con)
        self._con = con
        return self

    def __exit__(self, *exc: object) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @contextmanager
    def cursor(self) -> Iterator[DuckDBWarehouse]:
        """A handle on this open warehouse for another thread (see :meth:`Warehouse.cursor`).

        A DuckDB cursor: its own connection, transactions and staging tables on the same
        database instance. Two DuckLake transactions that both delete from a table (every
        commit replaces rows of ``_mds_state`` and ``_mds_runs``) conflict at COMMIT, so the
        handles take turns writing the lake: reads, staging and the sources run in parallel.
        """
        twin = copy.copy(self)
        twin._con, twin._in_transaction = self.con.cursor(), False
        try:
            twin._con.execute(f"USE {ALIAS}")
            yield twin
        finally:
            twin._con.close()

    @property
    def catalog(self) -> Path:
        return self.path / CATALOG_FILE

    @property
    def data_path(self) -> str:
        if self._data_path:
            return self._data_path.rstrip("/") + "/"
        return f"{self.path / DATA_DIR}/"

    def _config(self) -> dict[str, Any]:
        """Connection settings. Staging tables live in memory up to ``memory_limit`` and
        spill to ``W/.tmp`` beyond it, so a table larger than RAM still loads."""
        return {
            "extension_directory": str(self.path / EXTENSION_DIR),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": True,
            # More threads than cores add nothing to a load, but each buffers a row group.
            "threads": min(self.threads, os.cpu_count() or self.threads),
            "memory_limit": self.memory_limit,
            "temp_directory": str(self.path / ".tmp"),
            "preserve_insertion_order": False,
        }

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """This process's connection, the extensions the lake needs loaded from the wheels
        (:data:`~connectors.duckdb_extensions.FROM_WHEELS_ONLY`: no signature hashing)."""
        con = duckdb.connect(config=self._config() | FROM_WHEELS_ONLY)
        try:
            load(con, *self._extensions())
        except BaseException:
            con.close()
            raise
        return con

    def _extensions(self) -> list[Path]:
        """The extension binaries this lake is reached with."""
        wanted = [ducklake_extension_file()]
        if self.pg is not None:  # the catalog is reached through the postgres extension
            wanted.append(postgres_extension_file())
        if s3.is_remote(self.data_path):  # the data files are reached through httpfs
            wanted.append(httpfs_extension_file())
        return wanted

    def _link_extension(self) -> None:
        """Link the packaged DuckLake binary (and the postgres and httpfs ones a lake in
        PostgreSQL and S3 needs) into this warehouse's extension directory.

        A symlink, not DuckDB's ``INSTALL`` (which copies 36 MB per warehouse), and
        refreshed when the virtualenv moved. An existing link to the packaged (and so
        platform-specific) binary is found without asking DuckDB its platform, which
        costs a connection (~0.1 s) in every process.
        """
        versioned = self.path / EXTENSION_DIR / f"v{duckdb.__version__}"
        for extension in self._extensions():
            packaged = extension.resolve()
            found = versioned.glob(f"*/{extension.name}")
            if any(f.is_symlink() and f.resolve() == packaged for f in found):
                continue
            link = versioned / _platform() / extension.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(packaged)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise WarehouseError(
                "the warehouse connection is not open",
                hint="use the warehouse as a context manager (`with`)",
            )
        return self._con

    # -- statements ---------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._writes, _translate(sql):
            self.con.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        with _translate(sql):
            return self.con.execute(sql, params).to_arrow_table()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit on success, roll back on error; a nested call joins the open transaction."""
        if self._in_transaction:
            yield
            return
        with self._writes:  # held to the end: see cursor()
            self.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self._in_transaction = False
                self.con.execute("ROLLBACK")
                raise
            self._in_transaction = False
            # DuckDB turns COMMIT of an aborted transaction into a silent rollback; any failed
            # statement already raised above, so reaching here means every statement succeeded.
            self.execute("COMMIT")

    # -- tables -------------------------------------------------------------------------------
    def columns(self, schema: str, table_name: str) -> dict[str, str] | None:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position",
            [ALIAS, schema, table_name],
        ).fetchall()
        return dict(rows) if rows else None

    def tables_columns(self, schema: str, tables: Sequence[str]) -> dict[str, dict[str, str]]:
        rows = self.con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = ? AND list_contains(?, table_name) "
            "ORDER BY table_name, ordinal_position",
            [ALIAS, schema, list(tables)],
        ).fetchall()
        found: dict[str, dict[str, str]] = {}
        for name, column, kind in rows:
            found.setdefault(name, {})[column] = kind
        return found

    def create_table(self, schema: str, table_name: str, columns: pa.Schema) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
        with self._scan(columns.empty_table()) as empty:
            self.execute(
                f"CREATE TABLE IF NOT EXISTS {table(schema, table_name)} AS SELECT * FROM {empty}"
            )

    def add_columns(self, schema: str, table_name: str, columns: pa.Schema) -> None:
        types = self._sql_types(columns)
        for name, sql_type in types.items():
            self.execute(
                f"ALTER TABLE {table(schema, table_name)} ADD COLUMN IF NOT EXISTS "
                f"{ident(name)} {sql_type}"
            )

    def widen_columns(self, schema: str, table_name: str, columns: pa.Schema) -> None:
        """Change column types to wider ones, keeping the values.

        DuckLake promotes numeric types in place (int -> bigint -> double); any other
        widening (to text, date to timestamp) rebuilds the column in one transaction.
        """
        target = table(schema, table_name)
        for name, sql_type in self._sql_types(columns).items():
            try:
                self.execute(f"ALTER TABLE {target} ALTER COLUMN {ident(name)} TYPE {sql_type}")
                continue
            except WarehouseError as exc:
                if "widening type promotions" not in str(exc):
                    raise
            spare = ident(f"{name}__mds_widen")
            with self.transaction():
                self.execute(f"ALTER TABLE {target} ADD COLUMN {spare} {sql_type}")
                self.execute(f"UPDATE {target} SET {spare} = CAST({ident(name)} AS {sql_type})")
                self.execute(f"ALTER TABLE {target} DROP COLUMN {ident(name)}")
                self.execute(f"ALTER TABLE {target} RENAME COLUMN {spare} TO {ident(name)}")

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold a named lock for the block, across processes; raise SyncConflict if taken.

        An OS file lock in ``W/.locks``: released by the OS when its holder dies, so a
        killed run never leaves a stale lock behind. With a PostgreSQL catalog, an advisory
        lock in the catalog's database instead: it holds across machines, and the server
        releases it when its holder dies.
        """
        if self.pg is not None:
            with self.pg.lock(name):
                yield
            return
        folder = self.path / ".locks"
        folder.mkdir(exist_ok=True)
        with open(folder / f"{name}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SyncConflict(
                    f"another run holds {name!r}",
                    hint="wait for it to finish; two runs of the same stream and region "
                    "would race on its state",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sql_types(self, columns: pa.Schema) -> dict[str, str]:
        with self._scan(columns.empty_table()) as empty:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM {empty}").fetchall()
        return {row[0]: row[1] for row in rows}

    @contextmanager
    def _scan(self, data: pa.Table | pa.RecordBatch | pa.RecordBatchReader) -> Iterator[str]:
        """Expose Arrow data to SQL under a private view name, scanned in place (no copy)."""
        name = "_mds_arrow_scan"
        self.con.register(name, data)
        try:
            yield name
        finally:
            self.con.unregister(name)

    # -- staging ------------------------------------------------------------------------------
    def stage_ref(self, name: str) -> str:
        return f"temp.main.{ident(name)}"

    def stage(self, name: str, data: pa.Table) -> None:
        ref = self.stage_ref(name)
        with self._scan(data) as incoming, _translate(f"staging into {name}"):
            self.con.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {ident(name)} AS SELECT * FROM {incoming} LIMIT 0"
            )
            self.con.execute(f"INSERT INTO {ref} BY NAME SELECT * FROM {incoming}")

    def append(self, schema: str, table_name: str, data: pa.Table | pa.RecordBatchReader) -> None:
        """Append rows; a reader is pulled by one INSERT, in DuckDB's threads, batch by batch.

        One statement for a whole load keeps memory flat and overlaps the source with
        the Parquet writer; one INSERT per buffer instead made DuckLake hold native
        memory for every statement until the connection closed. A reader runs on the
        connection of the transaction its caller opened (the caller waits for it), so
        it takes no write turn of its own (see :meth:`cursor`).
        """
        statement = f"INSERT INTO {table(schema, table_name)} BY NAME SELECT * FROM "
        with self._scan(data) as incoming:
            if isinstance(data, pa.RecordBatchReader):
                with _translate(statement + incoming):
                    self.con.execute(statement + incoming)
            else:
                self.execute(statement + incoming)

    def drop_stage(self, name: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {self.stage_ref(name)}")

    # -- environments -------------------------------------------------------------------------
    def environment(self, name: str) -> DuckDBWarehouse:
        catalog = None
        if self.pg is not None:  # a schema of its own in the same catalog database
            schema = pg_envs.env_schema(self.pg.schema, name)
            catalog = self.pg.catalog.model_copy(update={"schema_": schema})
        return DuckDBWarehouse(
            environment_path(self.path, name),
            self.threads,
            self.memory_limit,
            self.busy_timeout,
            catalog=catalog,
            data_path=self.data_path if catalog else None,
            storage=self.storage if catalog else None,
        )

    def clone_into(self, name: str, as_of: int | None = None) -> DuckDBWarehouse:
        """A zero-copy clone; ``as_of``: of the lake as it was at that DuckLake snapshot, its
        catalog copy rolled back (:func:`~stack.warehouse._ducklake_rollback.roll_back`)."""
        if self.pg is None:
            target = environment_path(self.path, name)
            try:
                clone_lake(self.path, target, self.busy_timeout, as_of=as_of)
            except NotKept as gone:
                raise _not_kept(gone.version) from None
            return self.environment(name)
        if as_of is not None:
            raise WarehouseError(
                "clone --as-of works on a lake whose catalog is a DuckDB file for now",
                hint="an environment of a PostgreSQL catalog publishes what it changed since "
                "its clone, and a rolled-back clone changed nothing: publishing it would not "
                "bring the version back; read the version with `mdstack sql --as-of RUN_ID`",
            )
        env = self.environment(name)
        assert env.pg is not None
        env.delete_own_files()  # a clone replaces the environment: its files go first
        pg_envs.clone(self.pg.conninfo(password=True), self.pg.schema, env.pg.schema)
        return env

    def publish(self, name: str) -> None:
        if self.pg is None:
            publish_lake(environment_path(self.path, name), self.path, self.busy_timeout)
            return
        env = self.environment(name)
        assert env.pg is not None
        with psycopg.connect(self.pg.conninfo(password=True)) as conn:
            base = pg_envs.base_snapshot(conn, env.pg.schema)
            if not pg_envs.keeps_changes_after(conn, self.pg.schema, base):
                raise WarehouseError(
                    f"the published lake no longer keeps the versions made after {name}'s "
                    "clone (they were expired): what they changed cannot be checked",
                    hint=f"clone {name} again and redo its changes",
                )
            changed = pg_envs.changes(conn, env.pg.schema, base)
            replaced = pg_envs.changed_after(conn, self.pg.schema, base, changed, self.meta_schema)
        if replaced:
            raise WarehouseError(
                f"the published lake changed {', '.join(replaced)} while {name} held its own"
                " version",
                hint="rerun: the next run audits on top of the newer data (for a clone made by"
                " hand, clone again and redo its changes)",
            )
        with self:
            options = f"METADATA_SCHEMA {literal(env.pg.schema)}, READ_ONLY"
            self.con.execute(f"ATTACH {literal(env.pg.attach_path)} AS {ENV_ALIAS} ({options})")
            try:
                with self.transaction():
                    pg_envs.apply(self, changed, ALIAS, ENV_ALIAS, self.meta_schema)
            finally:
                self.con.execute(f"DETACH {ENV_ALIAS}")

    def refresh_bi_file(self) -> BiFileWritten | None:
        """Copy the published schemas into the BI file (``bi_file:``), swapped in one rename
        (:mod:`stack.warehouse._bi_file`); None when the target has none."""
        if self.bi_file is None:
            return None
        with self:
            written = write_bi_file(self.con, ALIAS, self.bi_file.path, self.bi_file.schemas)
        log.info("BI file %s: %d tables, %d rows", written.path, written.tables, written.rows)
        return written

    def current_snapshot(self) -> int:
        """The lake's current DuckLake snapshot (every commit makes one); on an open handle."""
        return int(self.query(f"FROM {ALIAS}.current_snapshot()").to_pylist()[0]["id"])

    def keep_version(self, version: int) -> None:
        """Nothing: DuckLake keeps every snapshot until ``expire``."""
        return None

    def snapshot_at(self, when: datetime) -> int | None:
        """The last DuckLake snapshot committed by ``when``, among those the lake keeps."""
        moment = when if when.tzinfo else when.replace(tzinfo=UTC)
        found = self.query(
            f"SELECT max(snapshot_id) AS id FROM {ALIAS}.snapshots() WHERE snapshot_time <= ?",
            [moment],
        ).to_pylist()[0]["id"]
        return None if found is None else int(found)

    def as_of(self, snapshot: int) -> DuckDBWarehouse:
        """The lake at ``snapshot``: its catalog attached with ``SNAPSHOT_VERSION``, read-only.
        Old snapshots stay readable until their files are cleaned up."""
        return DuckDBWarehouse(
            self.path,
            self.threads,
            self.memory_limit,
            self.busy_timeout,
            catalog=self.pg.catalog if self.pg is not None else None,
            data_path=self._data_path,
            storage=self.storage,
            snapshot=snapshot,
        )

    def diff(
        self, before: int, after: int | None, tables: Sequence[tuple[str, str]] | None = None
    ) -> list[TableDiff]:
        """From DuckLake's change feed where a table lived through both snapshots
        (:mod:`stack.warehouse._ducklake_diff`)."""
        if after is None:
            after = self.current_snapshot()
        if tables is None:
            tables = [
                (schema, name)
                for schema, name in self.con.execute(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_catalog = ? AND table_type = 'BASE TABLE' "
                    "AND NOT (table_schema = ? AND table_name LIKE '\\_mds\\_%' ESCAPE '\\') "
                    "AND table_name NOT LIKE '%\\_\\_dbt\\_%' ESCAPE '\\' ORDER BY 1, 2",
                    [ALIAS, self.meta_schema],
                ).fetchall()
            ]
        kept = {
            row[0]
            for row in self.con.execute(
                f"SELECT snapshot_id FROM {ALIAS}.snapshots() WHERE snapshot_id IN (?, ?)",
                [before, after],
            ).fetchall()
        }
        if missing := sorted({before, after} - kept):
            raise _not_kept(missing[0])
        return lake_diff(self.con, ALIAS, before, after, tables)

    def expire(self, older_than: datetime, dry_run: bool = False) -> Expired:
        """DuckLake's ``ducklake_expire_snapshots``, then its cleanup of the files no kept
        snapshot uses. An environment of a DuckDB-file catalog holds hard links to the
        files it was cloned with, so deleting the lake's links never breaks it. On a
        PostgreSQL catalog the versions after the oldest environment's clone are kept (its
        publish reads what they changed) and the files an environment names are set aside
        before the cleanup (:mod:`stack.warehouse._ducklake_pg_expire`)."""
        utc = older_than if older_than.tzinfo else older_than.replace(tzinfo=UTC)
        reading: set[str] = set()  # environments whose files are set aside
        which = "cleanup_all => true"
        with self:
            with self._environments_kept(dry_run) as clones:
                gone = self._expire_snapshots(utc, min(clones.values(), default=None), dry_run)
                if self.pg is not None and not dry_run:
                    conninfo = self.pg.conninfo(password=True)
                    prefix = pg_envs.env_schema(self.pg.schema, "")
                    schemas, decided = pg_expire.keep_environments_files(conninfo, self.pg.schema)
                    reading = {env.removeprefix(prefix) for env in schemas}
                    which = f"older_than => TIMESTAMPTZ {literal(decided.isoformat())}"
                files = self.con.execute(  # clones still wait: what they read is decided
                    f"CALL ducklake_cleanup_old_files({literal(ALIAS)}, {which}, "
                    f"dry_run => {str(dry_run).lower()})"
                ).fetchall()
            gone_ids = {row[0] for row in gone}
            kept = [
                (row[0], row[1])
                for row in self.con.execute(
                    f"SELECT snapshot_id, snapshot_time FROM {ALIAS}.snapshots() ORDER BY 1"
                ).fetchall()
                if row[0] not in gone_ids
            ]
        old = [version for version, taken in kept[:-1] if taken < utc]  # held back, not current
        held = {name for name, base in clones.items() if old and base < old[-1]} | reading
        return Expired(len(gone), len(files), kept[0][1] if kept else None, tuple(sorted(held)))

    def _expire_snapshots(self, older_than: datetime, up_to: int | None, dry_run: bool) -> list:
        """Expire the snapshots older than ``older_than`` (and not after ``up_to``, if
        given; never the current one); DuckLake's rows, one per snapshot expired."""
        which = f"older_than => TIMESTAMPTZ {literal(older_than.isoformat())}"
        if up_to is not None:
            ids = [
                row[0]
                for row in self.con.execute(
                    f"SELECT snapshot_id FROM {ALIAS}.snapshots() WHERE snapshot_time < ? "
                    f"AND snapshot_id <= ? AND snapshot_id < (SELECT max(snapshot_id) FROM "
                    f"{ALIAS}.snapshots()) ORDER BY 1",
                    [older_than, up_to],
                ).fetchall()
            ]
            if not ids:
                return []
            which = f"versions => [{', '.join(map(str, ids))}]::UBIGINT[]"
        return self.con.execute(
            f"CALL ducklake_expire_snapshots({literal(ALIAS)}, {which}, "
            f"dry_run => {str(dry_run).lower()})"
        ).fetchall()

    @contextmanager
    def _environments_kept(self, dry_run: bool) -> Iterator[dict[str, int]]:
        """On a PostgreSQL catalog: no expire of an environment (its catalog names the
        lake's files: expiring it would delete them), and no clone during the block.
        Yields each environment's name and the snapshot it was cloned at."""
        if self.pg is None:
            yield {}
            return
        conninfo = self.pg.conninfo(password=True)
        with ExitStack() as held:
            if not dry_run:
                held.enter_context(pg_expire.clones_paused(conninfo, self.pg.schema))
            with psycopg.connect(conninfo) as conn:
                if pg_envs.is_environment(conn, self.pg.schema):
                    raise WarehouseError(
                        "an environment of a lake whose catalog is in PostgreSQL reads the "
                        "lake's files: expiring it would delete them",
                        hint="expire the lake itself; drop the environment when done with it",
                    )
                prefix = pg_envs.env_schema(self.pg.schema, "")
                clones = {
                    env.removeprefix(prefix): pg_envs.base_snapshot(conn, env)
                    for env in pg_envs.environments(conn, self.pg.schema)
                }
            yield clones

    def drop_environment(self, name: str) -> None:
        if self.pg is not None:
            env = self.environment(name)
            assert env.pg is not None
            env.delete_own_files()
            pg_envs.drop(self.pg.conninfo(password=True), env.pg.schema)
        drop_lake(environment_path(self.path, name))

    def delete_own_files(self) -> None:
        """Delete the data files this environment of a PostgreSQL-catalog lake wrote since
        its clone (:func:`pg_envs.schedule_own_files`), through DuckLake's cleanup."""
        assert self.pg is not None
        if pg_envs.schedule_own_files(self.pg.conninfo(password=True), self.pg.schema):
            with self:
                self.con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)")

    # -- dbt ----------------------------------------------------------------------------------
    def dbt_env(self) -> dict[str, str]:
        """The catalog's password and the storage's credentials for the profile's
        ``env_var`` (a local DuckLake has none)."""
        env = s3.dbt_env(self.storage) if self.storage is not None else {}
        if self.pg is not None and self.pg.catalog.password:
            env[PASSWORD_ENV] = self.pg.catalog.password
        return env

    def dbt_output(self) -> dict[str, Any]:
        self._link_extension()
        return {
            "type": "duckdb",
            "path": ":memory:",
            "database": ALIAS,
            "schema": "main",
            # One dbt thread: concurrent DuckLake commits from dbt's threads conflict
            # (a view created by one thread was missing for another's tests).
            "threads": 1,
            "config_options": self._config(),
            "attach": [self._dbt_attach()],
            **self._dbt_secrets(),
        }

    def _dbt_attach(self) -> dict[str, Any]:
        if self.pg is None:
            path, options = f"ducklake:{self.catalog}", {"data_path": self.data_path}
        else:
            path = self.pg.attach_path
            options = {"data_path": self.data_path, "metadata_schema": self.pg.schema}
        return {"path": path, "alias": ALIAS, "options": options}

    def _dbt_secrets(self) -> dict[str, Any]:
        secrets = []
        if self.pg is not None and self.pg.catalog.password:
            password = "{{ env_var('" + PASSWORD_ENV + "') }}"
            secrets.append({"type": "postgres", "password": password})
        if self.storage is not None and s3.is_remote(self.data_path):
            secrets.append(s3.dbt_secret(self.storage, self.data_path))
        return {"secrets": secrets} if secrets else {}


@functools.cache
def _platform() -> str:
    """DuckDB's platform name (``linux_amd64``): the extension directory's sub-folder."""
    with duckdb.connect() as con:
        row = con.execute("PRAGMA platform").fetchone()
    if row is None:
        raise WarehouseError("DuckDB did not name its platform")
    return str(row[0])


CREATE_RACE_ATTEMPTS = 5
"""Opens of a lake whose catalog tables several processes are creating at once."""


def _creation_race(exc: duckdb.Error) -> bool:
    """Whether the error is two processes creating a fresh catalog's tables at once."""
    text = str(exc)
    return "duplicate key" in text or "already exists" in text


def _set_default_options(con: duckdb.DuckDBPyConnection) -> None:
    """Store :data:`_LAKE_OPTIONS` the lake lacks (persisted in the catalog; no snapshot)."""
    found = {row[0] for row in con.execute(f"SELECT option_name FROM {ALIAS}.options()").fetchall()}
    for name, value in _LAKE_OPTIONS.items():
        if name not in found:
            con.execute(f"CALL {ALIAS}.set_option(?, ?)", [name, value])


@contextmanager
def _translate(what: str) -> Iterator[None]:
    """Translate DuckDB's errors into the mdstack tree at one boundary."""
    try:
        yield
    except duckdb.TransactionException as exc:
        raise WriteConflict(
            f"write conflict: {exc}",
            hint="rerun; the other writer finished",
        ) from exc
    except duckdb.Error as exc:
        storage = isinstance(exc, duckdb.HTTPException)  # only httpfs raises it: s3:// files
        raise WarehouseError(
            f"{type(exc).__name__}: {exc}\n  while running: {what[:300]}",
            hint=_STORAGE_HINT if storage else None,
        ) from exc


def _not_kept(snapshot: int) -> WarehouseError:
    return WarehouseError(
        f"the warehouse no longer keeps version {snapshot}: `mdstack expire` removed it",
        hint="`retention:` on the target says how far back --as-of and diff reach",
    )
