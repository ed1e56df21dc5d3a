"""Snowflake through ``snowflake-connector-python``: the server warehouse.

One :class:`SnowflakeWarehouse` is one Snowflake session, opened with ``with``.
The engine's statements are DuckDB-dialect text; they are rendered for
Snowflake by :mod:`stack.warehouse._snowflake_sql` (sqlglot, cached per text)
and sent with ``?`` bind parameters (``paramstyle="qmark"``). Names keep
DuckDB's meaning: quoted names are case-sensitive, unquoted ones are read as
their quoted lower-case form (``raw.items`` is ``"raw"."items"``), which is
how the engine creates them. Results come back as Arrow typed from the
columns' Snowflake types (``NUMBER(p,0)`` -> int64, timestamps in us).

The adapter's other modules, each pure of the session it serves:

* ``_snowflake_sql.py``: rendering, and the statements the adapter owns (PUT,
  COPY, lock rows, column rebuilds, CLONE and SWAP WITH).
* ``_snowflake_types.py``: Arrow <-> Snowflake types.
* ``_snowflake_connect.py``: the connector's login arguments and dbt's profile.
* ``_snowflake_driver.py``: the connector's errors translated, results read as Arrow.
* ``_snowflake_envs.py``: publishing an environment (SWAP WITH, checked before and after).
* ``_snowflake_time_travel.py``: a version's time: queries and clones ``AT`` it.
* ``_snowflake_versions.py``: kept versions (``retention:``): a clone per run.

Session layout
    The session's current schema is the target's ``schema`` (the meta schema,
    created if missing), named exactly as written: mdstack quotes every name, so
    ``schema: MDSTACK`` is the usual Snowflake spelling. Staging tables are
    ``TEMPORARY`` tables there (session-private, gone with the session), and
    every bulk load goes through the session's ``TEMPORARY STAGE "_mds_load"``.

Bulk loads (``stage``, ``append``)
    Arrow -> one local Parquet file (fields ``c0``, ``c1``...) -> ``PUT ...
    AUTO_COMPRESS=FALSE`` -> ``COPY INTO <table> (<columns>) FROM (SELECT
    $1:"c0"::<type>, ... FROM @stage) FILES=('<file>') ... PURGE=TRUE``: the
    Arrow columns land in the table's columns of the same names, never row by
    row. The loaded row count is checked against the Arrow table.

Transactions
    ``BEGIN TRANSACTION`` / ``COMMIT`` / ``ROLLBACK``; a nested ``transaction()``
    joins the open one. Snowflake commits the open transaction before and after
    any DDL (even ``CREATE TEMPORARY TABLE``). The adapter makes that explicit:
    DDL sent inside a transaction is preceded by ``COMMIT`` and followed by a new
    ``BEGIN``, with a warning (the engine's direct load evolving a schema
    mid-transaction is the one known case).

Locks
    One row per held lock in ``<meta>._mds_locks`` (name, holder, acquired_at,
    expires_at), taken in a transaction (expired row deleted, then ours inserted if
    no row is left). A lease lasts ``lock_ttl`` seconds (default one hour); the
    holder renews it whenever it runs a statement outside a transaction and a
    quarter of the lease has passed. A run that died frees its locks when their
    lease runs out; deleting the row frees one at once.

fakesnow (``fakesnow: true`` on the target, or ``fakesnow=True``: tests, local development)
    fakesnow 0.11 (server mode) emulates most of the above; the flag enables
    exactly these workarounds, each for a fakesnow limitation, not a Snowflake one:

    * ``BEGIN`` runs, then fails describing its result (``002003 (42S02): Catalog
      Error: Table with name BEGIN does not exist!``): that error is ignored.
    * ``MERGE`` inside a transaction fails (``TransactionException: ... a single
      transaction can only write to a single attached database``: fakesnow builds a
      temporary table for it): inside a transaction, the engine's MERGE is sent as
      the equivalent ``UPDATE ... FROM`` + ``INSERT ... WHERE NOT EXISTS``.
    * ``COPY ... FILES=(...)`` fails for internal stages (``invalid URL prefix``):
      the COPY loads the whole stage, which holds just the one file.

    Real Snowflake gets the plain statements: MERGE in the transaction, FILES=.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import snowflake.connector
from snowflake.connector import errors as sf_errors

from stack.config.targets import SnowflakeTarget
from stack.errors import SyncConflict, WarehouseError
from stack.redact import register_secret
from stack.sql import ident, table
from stack.warehouse import _snowflake_sql as sfsql
from stack.warehouse import _snowflake_time_travel as travel
from stack.warehouse import _snowflake_types as sftypes
from stack.warehouse import _snowflake_versions as versions
from stack.warehouse._snowflake_connect import (
    DBT_ENV,
    connect_kwargs,
    dbt_env,
    dbt_env_fields,
    dbt_output,
    describe,
    endpoint,
    private_key_der,
)
from stack.warehouse._snowflake_driver import fetch, rows_loaded, translate
from stack.warehouse._snowflake_envs import (
    fingerprint,
    forget_base,
    publish_database,
    record_base,
)
from stack.warehouse.base import Capabilities, Expired, TableDiff

__all__ = ["DBT_ENV", "SnowflakeWarehouse", "connect_kwargs", "private_key_der"]

log = logging.getLogger(__name__)

_LOCK_TTL = 3600.0
_READS = frozenset({"SELECT", "WITH", "USE", "SHOW", "DESCRIBE"})
"""What a handle on a version (:meth:`SnowflakeWarehouse.as_of`) may send."""


class SnowflakeWarehouse:
    """A Snowflake session for one target, used as a context manager.

    Args:
        target: the Snowflake target, its secrets already resolved (``str`` or
            ``SecretStr``).
        query_tag: fields added to the session's ``QUERY_TAG`` JSON (``{"app":
            "mdstack"}``), e.g. ``{"run_id": ..., "pipeline": ...}``.
        connect_args: extra keyword arguments for ``snowflake.connector.connect``
            (``host``/``port``/``protocol`` of a test server, ``login_timeout``...).
        fakesnow: enable the workarounds for fakesnow listed in the module docstring.
        lock_ttl: seconds a lock's lease lasts without renewal.
        snapshot: read the warehouse as it was at this version (:meth:`current_snapshot`):
            in its kept database (``retention:``) if there is one, else through time
            travel; nothing can be written.
    """

    capabilities = Capabilities(
        dialect="snowflake",
        clone=True,
        swap=True,
        max_identifier_length=255,
        concurrent_writers=True,
    )

    def __init__(
        self,
        target: SnowflakeTarget,
        *,
        query_tag: Mapping[str, str] | None = None,
        connect_args: Mapping[str, Any] | None = None,
        fakesnow: bool = False,
        lock_ttl: float = _LOCK_TTL,
        snapshot: int | None = None,
    ) -> None:
        self.target = target
        self.meta_schema: str = target.schema_
        self.query_tag = {"app": "mdstack", **(query_tag or {})}
        self.connect_args = {**endpoint(target), **(connect_args or {})}
        self.fakesnow = fakesnow or target.fakesnow
        self.lock_ttl = lock_ttl
        self.snapshot = snapshot
        self._kept: str | None = None
        if target.retention is not None and not self.fakesnow:  # between kept versions
            self.capabilities = dataclasses.replace(self.capabilities, diff=True)
        for value in dbt_env_fields(target).values():
            register_secret(value)
        self._con: Any = None
        self._in_transaction = False
        self._leases: dict[str, str] = {}
        self._renewed = 0.0
        self._renewing = False
        self._locks_table = False

    # -- connection ---------------------------------------------------------------------------
    def __enter__(self) -> SnowflakeWarehouse:
        kwargs = connect_kwargs(self.target, self.query_tag, self.connect_args)
        log.debug("connecting to Snowflake: %s", describe(kwargs))
        with translate(f"connecting to Snowflake account {self.target.account}"):
            self._con = snowflake.connector.connect(**kwargs)
        try:
            if self.snapshot is None:
                self._use_meta_schema()
                self._run(sfsql.create_load_stage_sql(self.meta_schema))
            else:
                self._read_version(self.snapshot)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            self._in_transaction = False
            with contextlib.suppress(sf_errors.Error):
                con.close()  # temporary tables and the load stage end with the session

    @property
    def con(self) -> Any:
        if self._con is None:
            raise WarehouseError(
                "the warehouse connection is not open",
                hint="use the warehouse as a context manager (`with`)",
            )
        return self._con

    def _read_version(self, version: int) -> None:
        """Read the version's kept database if there is one, else through time travel."""
        self._kept = self._kept_database(version)
        if self._kept:
            self._run(f"USE DATABASE {ident(self._kept)}")
        with contextlib.suppress(WarehouseError):  # no meta schema: names are qualified
            self._run(f"USE SCHEMA {ident(self.meta_schema)}")

    def _kept_database(self, version: int) -> str | None:
        """The database that keeps ``version`` (``retention:``), if one does."""
        database = self.target.database
        if version not in versions.kept_versions(self._run, database):
            return None
        return versions.kept_database(database, version)

    def _use_meta_schema(self) -> None:
        """Make the meta schema current (temporary objects live there), creating it if needed."""
        use = f"USE SCHEMA {ident(self.meta_schema)}"
        try:
            self._run(use)
        except WarehouseError:
            self._run(f"CREATE SCHEMA IF NOT EXISTS {ident(self.meta_schema)}")
            self._run(use)

    # -- statements ---------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        rendered = sfsql.render(sql)
        if rendered.ddl and self._in_transaction:
            self._ddl_in_transaction(rendered.sql, params)
        elif rendered.merge_parts and self._in_transaction and self.fakesnow and not params:
            for part in rendered.merge_parts:
                self._run(part)
        else:
            self._run(rendered.sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        if self.snapshot is None:
            text = sfsql.render(sql).sql
        elif self._kept:
            text = travel.in_database(sfsql.parse(sql), self.target.database, self._kept)
        else:
            text = travel.as_of_query(sfsql.parse(sql), self.snapshot)
        cursor = self._run(text, params)
        with translate(text):
            return fetch(cursor)

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """Send one Snowflake statement; return its cursor. A handle on a version
        (:meth:`as_of`) sends only queries."""
        if self.snapshot is not None and sql.split(None, 1)[0].upper() not in _READS:
            raise WarehouseError(
                "this handle reads the warehouse as it was (--as-of): it cannot write",
                hint="to change an old version, `mdstack clone ENV --as-of ...` and write to ENV",
            )
        self._renew_leases()
        cursor = self.con.cursor()
        with translate(sql):
            cursor.execute(sql, list(params) if params else None)
        return cursor

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit on success, roll back on error; a nested call joins the open transaction."""
        if self._in_transaction:
            yield
            return
        self._begin()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            try:
                self._run("ROLLBACK")
            except WarehouseError as exc:  # the original error matters more
                log.warning("ROLLBACK failed: %s", exc)
            raise
        self._in_transaction = False
        self._run("COMMIT")

    def _begin(self) -> None:
        try:
            self._run("BEGIN TRANSACTION")
        except WarehouseError as exc:
            cause = exc.__cause__
            fakesnow_bug = (
                self.fakesnow
                and isinstance(cause, sf_errors.ProgrammingError)
                and "name BEGIN does not exist" in str(cause)
            )
            if not fakesnow_bug:
                raise

    def _ddl_in_transaction(self, sql: str, params: Sequence[Any] | None) -> None:
        """DDL commits Snowflake's open transaction: say so, and carry on in a new one."""
        log.warning(
            "Snowflake commits the open transaction before DDL; what was written so far "
            "is committed now: %s",
            sql[:200],
        )
        self._run("COMMIT")
        self._run(sql, params)
        self._begin()

    def _ddl(self, sql: str) -> None:
        if self._in_transaction:
            self._ddl_in_transaction(sql, None)
        else:
            self._run(sql)

    # -- tables -------------------------------------------------------------------------------
    def columns(self, schema: str, table_name: str) -> dict[str, str] | None:
        """Column name -> type, named in the engine's (DuckDB's) dialect.

        ``NUMBER(38,0)`` is ``BIGINT`` (mdstack's integer column, read as int64),
        ``TEXT`` is ``VARCHAR``, ``FLOAT`` is ``DOUBLE``, ``TIMESTAMP_NTZ`` is
        ``TIMESTAMP``, ``VARIANT`` is ``JSON``; see :func:`_snowflake_types.engine_type`.
        """
        info = self._columns(schema, table_name)
        if info is None:
            return None
        return {name: sftypes.engine_type(*spec) for name, spec in info.items()}

    def tables_columns(self, schema: str, tables: Sequence[str]) -> dict[str, dict[str, str]]:
        """One lookup per table: each may need a cut-short rebuild finished first."""
        found = {name: self.columns(schema, name) for name in tables}
        return {name: columns for name, columns in found.items() if columns is not None}

    def _columns(self, schema: str, table_name: str) -> dict[str, tuple] | None:
        """A table's columns, after finishing or undoing a column rebuild that was cut short.

        Snowflake commits each statement of a rebuild (:meth:`widen_columns`) on its own, so
        a run that died during one leaves a spare or an original aside; the next lookup
        puts every value back under its column's name (:func:`_snowflake_sql.widen_repair_sql`)
        before anyone reads the table's shape.
        """
        info = self._read_columns(schema, table_name)
        if info and (repair := sfsql.widen_repair_sql(schema, table_name, list(info))):
            log.warning(
                "%s: completing a column type change that was interrupted: %s",
                table(schema, table_name),
                "; ".join(repair),
            )
            for statement in repair:
                self._ddl(statement)
            info = self._read_columns(schema, table_name)
        return info

    def _read_columns(self, schema: str, table_name: str) -> dict[str, tuple] | None:
        rows = self._run(sfsql.columns_sql(), [schema, table_name]).fetchall()
        return {row[0]: tuple(row[1:]) for row in rows} or None

    def create_table(self, schema: str, table_name: str, columns: pa.Schema) -> None:
        """Create the table; its schema too if that is what failed (one statement if not)."""
        create = sfsql.create_table_sql(schema, table_name, columns)
        try:
            self._ddl(create)
            return
        except WarehouseError:
            self._ddl(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
        # CREATE SCHEMA makes the new schema current: temporary tables must stay in meta.
        self._run(f"USE SCHEMA {ident(self.meta_schema)}")
        self._ddl(create)

    def add_columns(self, schema: str, table_name: str, columns: pa.Schema) -> None:
        for field in columns:
            sf_type = sftypes.snowflake_type(field.type, field.name)
            self._ddl(sfsql.add_column_sql(schema, table_name, field.name, sf_type))

    def widen_columns(self, schema: str, table_name: str, columns: pa.Schema) -> None:
        """Change columns to wider types, keeping their values.

        In place where Snowflake allows it (a NUMBER's precision, a VARCHAR's
        length); a type that already holds the values (every integer width is
        ``NUMBER(38,0)``) is left alone; anything else (NUMBER -> FLOAT, anything ->
        VARCHAR) rebuilds the column (:func:`_snowflake_sql.widen_sql`): a spare is
        added and filled, the original renamed aside, the spare renamed to the name,
        and the original dropped last. Snowflake commits each statement on its own; a
        run that dies between two leaves every value in a column, and the next column
        lookup of the table (this one's included) completes or undoes the rebuild.
        """
        current = self._columns(schema, table_name) or {}
        for field in columns:
            if field.name not in current:
                raise WarehouseError(
                    f"cannot widen missing column {table(schema, table_name)}.{ident(field.name)}"
                )
            have = sftypes.native_type(*current[field.name])
            want = sftypes.snowflake_type(field.type, field.name)
            if have == want:
                continue
            for statement in sfsql.widen_sql(schema, table_name, field.name, have, want):
                if statement.startswith("UPDATE"):
                    self._run(statement)
                else:
                    self._ddl(statement)

    # -- locks --------------------------------------------------------------------------------
    @contextmanager
    def cursor(self) -> Iterator[SnowflakeWarehouse]:
        """A session of its own for another thread (a session runs one statement at a time,
        and owns its transaction and temporary tables)."""
        with self._twin(self.target, self.snapshot) as twin:
            yield twin

    def _twin(self, target: SnowflakeTarget, snapshot: int | None = None) -> SnowflakeWarehouse:
        """An unopened session like this one (its tag, endpoint, workarounds) on ``target``."""
        return SnowflakeWarehouse(
            target,
            query_tag=self.query_tag,
            connect_args=self.connect_args,
            fakesnow=self.fakesnow,
            lock_ttl=self.lock_ttl,
            snapshot=snapshot,
        )

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold a named lock for the block, across sessions; raise SyncConflict if taken.

        The lease lasts :attr:`lock_ttl` seconds and is renewed while the holder works;
        a holder that died frees the lock when its lease ends.
        """
        steps = sfsql.lock_sql(self.meta_schema)
        if not self._locks_table:
            self._ddl(sfsql.locks_table_sql(self.meta_schema))
            self._locks_table = True
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        if run_id := self.query_tag.get("run_id"):
            holder += f":{run_id}"
        with self.transaction():
            self._run(steps["expire"], [name])
            taken = self._run(steps["holder"], [name]).fetchone()
            if taken is None:
                self._run(steps["take"], [name, holder, int(self.lock_ttl)])
        if taken is not None:
            other, until = taken
            raise SyncConflict(
                f"another run holds {name!r} (holder {other}, lease until {until})",
                hint="wait for it to finish; two runs of the same stream and region would "
                "race on its state. If that run died, the lock frees itself when its lease "
                f"ends, or delete its row from {table(self.meta_schema, sfsql.LOCKS_TABLE)}",
            )
        self._leases[name] = holder
        self._renewed = time.monotonic()
        try:
            yield
        finally:
            del self._leases[name]
            if self._con is not None:
                try:
                    self._run(steps["release"], [name, holder])
                except WarehouseError as exc:
                    log.warning("could not release lock %r (its lease will end): %s", name, exc)

    def _renew_leases(self) -> None:
        """Extend held leases every quarter lease, outside transactions; stop if one was lost."""
        due = time.monotonic() - self._renewed > self.lock_ttl / 4
        if not self._leases or self._renewing or self._in_transaction or not due:
            return
        self._renewing = True
        try:
            renew = sfsql.lock_sql(self.meta_schema)["renew"]
            for name, holder in self._leases.items():
                cursor = self._run(renew, [int(self.lock_ttl), name, holder])
                if cursor.rowcount == 0:
                    raise SyncConflict(
                        f"lost the lock {name!r}: its lease ran out and another run may hold it",
                        hint="the run stopped to avoid racing; rerun it, or raise lock_ttl",
                    )
            self._renewed = time.monotonic()
        finally:
            self._renewing = False

    # -- bulk loads ---------------------------------------------------------------------------
    def stage_ref(self, name: str) -> str:
        """A temporary table of this session, in the current (meta) schema."""
        return ident(name)

    def stage(self, name: str, data: pa.Table) -> None:
        self._ddl(sfsql.create_stage_table_sql(name, data.schema))
        self._load(ident(name), data)

    def append(self, schema: str, table_name: str, data: pa.Table) -> None:
        self._load(table(schema, table_name), data)

    def drop_stage(self, name: str) -> None:
        self._ddl(f"DROP TABLE IF EXISTS {self.stage_ref(name)}")

    def _load(self, target: str, data: pa.Table) -> None:
        """PUT ``data`` as one Parquet file and COPY it into ``target`` by column name."""
        if data.num_rows == 0:
            return
        with tempfile.TemporaryDirectory(prefix="mdstack-") as folder:
            file = f"{uuid.uuid4().hex}.parquet"
            path = Path(folder) / file
            pq.write_table(data.rename_columns(sfsql.parquet_fields(data.schema)), path)
            self._run(sfsql.put_sql(str(path), self.meta_schema))
        only = None if self.fakesnow else file
        cursor = self._run(sfsql.copy_sql(target, data.schema, self.meta_schema, only))
        loaded = rows_loaded(cursor)
        if loaded != data.num_rows:
            raise WarehouseError(
                f"COPY INTO {target} loaded {loaded} of {data.num_rows} rows",
                hint="check the load history of the table (COPY_HISTORY) for the file",
            )

    # -- environments (CLONE and SWAP WITH) ----------------------------------------------------
    def environment(self, name: str) -> SnowflakeWarehouse:
        database = sfsql.environment_database(self.target.database, name)  # keeps no versions
        return self._twin(self.target.model_copy(update={"database": database, "retention": None}))

    def clone_into(self, name: str, as_of: int | None = None) -> SnowflakeWarehouse:
        """``CLONE`` of the database as it is or as it was at ``as_of`` (its kept database,
        else through time travel); such a clone keeps what the published database's
        ledger held when it was made, so that publishing it restores the old content
        unless a run wrote since (:func:`stack.warehouse._snowflake_envs.publish_database`)."""
        clone = self.environment(name)
        source, made = self.target.database, clone.target.database
        with self:
            if as_of is None:
                self._run(sfsql.clone_database_sql(source, made))
                forget_base(self._run, made, self.meta_schema)
                return clone
            base = fingerprint(self._run, source, self.meta_schema)
            if kept := self._kept_database(as_of):
                self._run(sfsql.clone_database_sql(kept, made))
            else:
                self._run(travel.clone_sql(source, made, as_of))
            record_base(self._run, made, self.meta_schema, base)
        return clone

    def publish(self, name: str) -> None:
        """``SWAP WITH``, refused if a run wrote here after the clone (see
        :func:`stack.warehouse._snowflake_envs.publish_database`)."""
        with self:
            publish_database(self._run, self.target.database, name, self.meta_schema)

    def drop_environment(self, name: str) -> None:
        with self:
            database = sfsql.environment_database(self.target.database, name)
            self._run(sfsql.drop_database_sql(database))

    def refresh_bi_file(self) -> None:
        """None: BI tools read Snowflake directly."""
        return None

    def current_snapshot(self) -> int:
        """Snowflake's clock now, in milliseconds: time travel reads the warehouse as it
        was then (:mod:`stack.warehouse._snowflake_time_travel`)."""
        return int(self._run(travel.NOW_SQL).fetchone()[0])

    def keep_version(self, version: int) -> None:
        """With ``retention:``, a zero-copy clone of the database as ``version``
        (:mod:`stack.warehouse._snowflake_versions`); fakesnow's clone of a database is
        empty, so none is made there."""
        if self.target.retention is None:
            return
        if self.fakesnow:
            log.warning("fakesnow cannot clone a database: version %d is not kept", version)
            return
        try:
            versions.keep(self._run, self.target.database, version)
        except WarehouseError as exc:  # the run published: its record goes on, time travel
            log.warning(
                "version %d is not kept (--as-of reads it through time travel): %s", version, exc
            )
        finally:
            self._run(f"USE DATABASE {ident(self.target.database)}")  # CREATE DATABASE moved it
            self._use_meta_schema()

    def snapshot_at(self, when: datetime) -> int | None:
        """With ``retention:``, the last version kept by ``when`` (None: none was); else
        ``when`` itself, not later than now: time travel reads any moment it keeps."""
        moment = min(travel.millis(when), self.current_snapshot())
        if self.target.retention is None:
            return moment
        return max(
            (v for v in versions.kept_versions(self._run, self.target.database) if v <= moment),
            default=None,
        )

    def diff(
        self, before: int, after: int | None, tables: Sequence[tuple[str, str]] | None = None
    ) -> list[TableDiff]:
        """Between two kept versions (``retention:``), or a kept one and now (the live
        database), each table compared whole
        (:func:`stack.warehouse._snowflake_versions.diff`)."""
        database = self.target.database
        kept = versions.kept_versions(self._run, database)
        missing = next((v for v in (before, after) if v is not None and v not in kept), None)
        if missing is not None:
            raise WarehouseError(
                f"version {missing} of {database} is not kept: mdstack diff on Snowflake "
                "compares kept versions",
                hint="set `retention:` on the target: each run then keeps its version"
                + ("" if kept else " (none is kept yet)"),
            )
        later = database if after is None else versions.kept_database(database, after)
        earlier = versions.kept_database(database, before)
        return versions.diff(self._run, earlier, later, self.meta_schema, tables)

    def expire(self, older_than: datetime, dry_run: bool = False) -> Expired:
        """Drop the kept versions (``retention:``) older than ``older_than``; time travel
        keeps what ``DATA_RETENTION_TIME_IN_DAYS`` says, whatever this does."""
        cutoff = travel.millis(older_than)
        with self:
            kept = versions.kept_versions(self._run, self.target.database)
            gone = [version for version in kept[:-1] if version < cutoff]  # never the newest
            if not dry_run:
                for version in gone:
                    versions.drop(self._run, self.target.database, version)
        left = [version for version in kept if version not in gone]
        oldest = datetime.fromtimestamp(left[0] / 1000, UTC) if left else None
        return Expired(len(gone), 0, oldest)

    def as_of(self, snapshot: int) -> SnowflakeWarehouse:
        """A read-only session on ``snapshot``: its kept database, or every table ``AT`` it."""
        return self._twin(self.target, snapshot)

    # -- dbt ----------------------------------------------------------------------------------
    def dbt_output(self) -> dict[str, Any]:
        """The dbt-snowflake profile output (see :func:`_snowflake_connect.dbt_output`)."""
        return dbt_output(self.target, self.query_tag, self.connect_args)

    def dbt_env(self) -> dict[str, str]:
        """Environment values for :meth:`dbt_output`'s ``env_var`` references (secrets)."""
        return dbt_env(self.target)
