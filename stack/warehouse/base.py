"""The ``Warehouse`` protocol every adapter implements, and its ``Capabilities``.

The sync engine speaks to a warehouse only through this protocol and through
the pure SQL generators in :mod:`stack.sql`, written once in DuckDB's
dialect and rendered for the adapter's ``capabilities.dialect``. Optional
features are capabilities, never ``hasattr`` checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do, so callers branch on features, not on names.

    Attributes:
        dialect: sqlglot dialect the adapter's SQL is rendered in.
        clone: zero-copy clones of tables, schemas and whole environments.
        swap: atomic swap of two tables or schemas.
        max_identifier_length: longest table or column name accepted.
        concurrent_writers: several processes may write at the same time.
        stream_append: ``append`` also takes a ``pa.RecordBatchReader`` and pulls it in
            one statement, inside the caller's open transaction, from another thread
            than the one holding it (the caller then leaves the connection to it).
        transactional_ddl: ``CREATE TABLE`` joins an open transaction instead of
            committing it, so several tables can be created in one commit.
        row_ids: every row, uncommitted ones included, has a unique ``rowid`` a
            statement can name (to delete one of two rows that are otherwise alike).
        diff: :meth:`Warehouse.diff` says what changed between two versions.
    """

    dialect: str
    clone: bool = False
    swap: bool = False
    max_identifier_length: int = 255
    concurrent_writers: bool = False
    stream_append: bool = False
    transactional_ddl: bool = False
    row_ids: bool = False
    diff: bool = False

    @property
    def streams_into_tables(self) -> bool:
        """Whether a load may write rows straight into its table: a schema change mid-load
        cannot commit part of them (DDL joins the transaction), and no other writer's
        commit can win a race that would have the load run again from rows it no longer
        has (streamed rows are not kept)."""
        return self.transactional_ddl and not self.concurrent_writers


@dataclass(frozen=True)
class BiFileWritten:
    """What :meth:`Warehouse.refresh_bi_file` wrote: the file, its tables and their rows."""

    path: Path
    tables: int
    rows: int


REGIONS = ("_mds_region", "region")
"""The column that names a row's region, for :meth:`Warehouse.diff`: the loaded tables',
else a model's own."""
BOOKKEEPING = ("_mds_run_id", "_mds_loaded_at")
"""Columns :meth:`Warehouse.diff` does not compare: every load rewrites them."""


@dataclass
class TableDiff:
    """What changed in one table and region between two versions of the warehouse."""

    table: str
    region: str
    added: int = 0
    changed: int = 0
    deleted: int = 0
    """Rows gone, and rows soft-deleted (their ``_mds_deleted_at`` set)."""
    columns: tuple[str, ...] = ()
    """The columns whose values changed in the changed rows."""
    rebuilt: bool = False
    """Compared whole, so a changed row counts as one deleted and one added: the table
    was created anew in between (a dbt table model), or the warehouse is Snowflake."""


@dataclass(frozen=True)
class Expired:
    """What :meth:`Warehouse.expire` removed (or, in a dry run, would remove)."""

    snapshots: int
    files: int
    oldest_kept: datetime | None
    """When the oldest snapshot still kept was taken: ``--as-of`` reaches back to it."""
    environments: tuple[str, ...] = ()
    """Environments whose catalog holds back older versions and their files (a lake whose
    catalog is in PostgreSQL: they read its files, and a publish checks the versions
    after the clone); dropping them lets the next expire remove those."""


class Warehouse(Protocol):
    """A connection to one warehouse target, used as a context manager."""

    capabilities: Capabilities
    meta_schema: str
    """Schema holding the ``_mds_state`` and ``_mds_runs`` tables."""

    def __enter__(self) -> Warehouse: ...

    def __exit__(self, *exc: object) -> None: ...

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement written in DuckDB's dialect (rendered for the target)."""
        ...

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run one query and return its result as an Arrow table."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Commit on success, roll back on any exception (and re-raise it)."""
        ...

    def columns(self, schema: str, table: str) -> dict[str, str] | None:
        """Column name -> SQL type of an existing table, or ``None`` if it does not exist."""
        ...

    def tables_columns(self, schema: str, tables: Sequence[str]) -> dict[str, dict[str, str]]:
        """:meth:`columns` of several tables of one schema at once (one lookup where the
        warehouse allows: each costs a catalog read); tables that do not exist are absent."""
        ...

    def create_table(self, schema: str, table: str, columns: pa.Schema) -> None:
        """Create ``schema.table`` (and the schema) with columns typed from Arrow."""
        ...

    def add_columns(self, schema: str, table: str, columns: pa.Schema) -> None:
        """Add columns to an existing table (schema evolution)."""
        ...

    def widen_columns(self, schema: str, table: str, columns: pa.Schema) -> None:
        """Change existing columns to wider types (schema evolution), keeping their values."""
        ...

    def lock(self, name: str) -> AbstractContextManager[None]:
        """Hold a named lock for the block; raise ``SyncConflict`` if another run holds it."""
        ...

    def cursor(self) -> AbstractContextManager[Warehouse]:
        """A handle on this open warehouse for another thread, closed with the block.

        It has its own transactions and staging tables, so streams sync in parallel
        threads of one process; closing it leaves this warehouse open.
        """
        ...

    def append(self, schema: str, table: str, data: pa.Table) -> None:
        """Append Arrow rows to a table, matching columns by name (the bulk write path)."""
        ...

    def stage(self, name: str, data: pa.Table) -> None:
        """Append rows to a session-private staging table, creating it on first use."""
        ...

    def stage_ref(self, name: str) -> str:
        """SQL reference to the staging table ``name`` (for the SQL generators)."""
        ...

    def drop_stage(self, name: str) -> None:
        """Drop a staging table if it exists."""
        ...

    def environment(self, name: str) -> Warehouse:
        """The (unopened) environment ``name`` of this target: a clone's home."""
        ...

    def clone_into(self, name: str, as_of: int | None = None) -> Warehouse:
        """Zero-copy clone of this whole warehouse as environment ``name`` (replacing it).

        Call with the warehouse closed. Writes to either side never show in the other.
        ``as_of``: a version :meth:`current_snapshot` gave (the run ledger records each
        run's): the clone holds the warehouse as it was then, and is writable. Raises
        ``WarehouseError`` where that cannot be done exactly (a version no longer kept, a
        warehouse that keeps none), leaving environment ``name`` as it was.
        """
        ...

    def publish(self, name: str) -> None:
        """Atomically make environment ``name`` what this warehouse holds (write-audit-publish).

        Readers see the old content or the new, never a mix. Raises ``WarehouseError``
        if this warehouse changed after the environment was cloned from it. A warehouse
        that several processes write at once publishes what the environment changed (its
        relations replace the published ones), and refuses only when the published side
        changed one of those same relations meanwhile.
        """
        ...

    def drop_environment(self, name: str) -> None:
        """Remove environment ``name`` (never touches this warehouse's data)."""
        ...

    def current_snapshot(self) -> int:
        """The version the (open) warehouse is at now, to open it :meth:`as_of` later
        (DuckLake: its snapshot id; Snowflake: its clock, in milliseconds)."""
        ...

    def keep_version(self, version: int) -> None:
        """Keep the (open) warehouse as it is now as ``version`` where it keeps versions
        only on request (Snowflake with ``retention:``); a run's record calls it."""
        ...

    def snapshot_at(self, when: datetime) -> int | None:
        """The version the (open) warehouse was at, at ``when`` (aware, or naive UTC): its
        last commit by then; None where it had none yet."""
        ...

    def as_of(self, snapshot: int) -> Warehouse:
        """A read-only handle on the warehouse as it was at ``snapshot`` (unopened)."""
        ...

    def diff(
        self, before: int, after: int | None, tables: Sequence[tuple[str, str]] | None = None
    ) -> list[TableDiff]:
        """Rows added, changed and deleted from version ``before`` to ``after`` (the open
        warehouse's :meth:`current_snapshot` values; None: now), per table and region;
        ``tables`` None: every table but mdstack's own."""
        ...

    def expire(self, older_than: datetime, dry_run: bool = False) -> Expired:
        """Forget the versions taken before ``older_than`` (never the current one) and
        delete the files only they used; environments keep theirs."""
        ...

    def refresh_bi_file(self) -> BiFileWritten | None:
        """Rewrite the file BI tools read, after a good publish (a DuckDB target's
        ``bi_file:``); None where there is none (Snowflake: BI tools read it directly)."""
        ...

    def dbt_output(self) -> dict[str, Any]:
        """The dbt profile output for this target (credentials as env references)."""
        ...

    def dbt_env(self) -> dict[str, str]:
        """``DBT_ENV_SECRET_*`` values the profile refers to (dbt scrubs them from its logs)."""
        ...
