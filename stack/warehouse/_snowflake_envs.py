"""Publishing a Snowflake environment: ``SWAP WITH``, refused if the published side moved.

An environment is a zero-copy ``CLONE`` of the target's database
(:func:`stack.warehouse._snowflake_sql.environment_database` names it). Publishing
swaps the two databases in one atomic statement; :func:`publish_database` checks
first, and again right after, that no run wrote to the published database since
the clone, the same promise :mod:`stack.warehouse._ducklake_envs` keeps with
snapshot ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stack.errors import WarehouseError
from stack.sql import ident
from stack.warehouse import _snowflake_sql as sfsql

__all__ = ["Fingerprint", "Run", "fingerprint", "forget_base", "publish_database", "record_base"]

Run = Callable[[str, Sequence[Any] | None], Any]
"""Sends one Snowflake statement with its parameters and returns the cursor."""


def publish_database(run: Run, published: str, name: str, meta_schema: str) -> None:
    """``SWAP WITH``: one atomic exchange; the environment then holds the old content.

    Refused, as on DuckLake, when a run wrote to the published database after the
    clone: the swap would move its rows into the environment, which the pipeline
    then drops. Snowflake has no snapshot id, so "changed" is read from the ledger
    tables every write of mdstack changes (:data:`_snowflake_sql.LEDGER_TABLES`):
    the published ones must still hash as the environment's copies, or, for a clone
    of an older version (a restore), as they did when it was made (:func:`record_base`).
    A write that lands between that check and the swap shows in the environment right
    after it: the swap is then undone (a second swap) and the publish refused. Writes
    made outside mdstack are not seen.

    Args:
        run: the session's statement runner.
        published: the target's database.
        name: the environment's name.
        meta_schema: the schema holding the ledger tables.

    Raises:
        WarehouseError: the published database changed after the clone.
    """
    database = sfsql.environment_database(published, name)
    base = fingerprint(run, published, meta_schema)
    restoring = _stored_base(run, database, meta_schema)
    own = fingerprint(run, database, meta_schema)
    again = (
        "rerun: the next run audits on top of the newer data"
        if restoring is None
        else f"clone it again (`mdstack clone {name} --as-of ...`): a run wrote since"
    )
    if base != (own if restoring is None else restoring):
        raise WarehouseError(
            f"the published warehouse changed while {name} was being audited "
            "(a run wrote to it after the clone)",
            hint=again,
        )
    swap = sfsql.swap_databases_sql(published, database)
    run(swap, None)
    if fingerprint(run, database, meta_schema) == base:
        forget_base(run, published, meta_schema)  # restored: the warehouse's own content now
        return
    run(swap, None)  # the write is in the old content: make that the published again
    if fingerprint(run, database, meta_schema) == own:
        raise WarehouseError(
            f"the published warehouse changed while {name} was being published; "
            "the swap was undone",
            hint=again,
        )
    raise WarehouseError(
        f"runs wrote to {published} while {name} was being published and while the "
        f"swap was undone: database {database} holds a write {published} lacks",
        hint=f"copy the rows of the runs in {database}'s _mds_runs that {published} "
        "lacks before anything replaces or drops it (the next audit's clone would)",
    )


Fingerprint = list[tuple[str, object]]
"""Each ledger table a database holds and a hash of its content."""


def fingerprint(run: Run, database: str, meta_schema: str) -> Fingerprint:
    """The ledger tables ``database`` holds and a hash of each one's content."""
    tables = run(sfsql.ledger_tables_sql(database), [meta_schema]).fetchall()
    names = [row[0] for row in tables]
    if not names:
        return []
    hashes = run(sfsql.fingerprint_sql(database, meta_schema, names), None).fetchone()
    return list(zip(names, hashes, strict=True))


def record_base(run: Run, clone: str, meta_schema: str, base: Fingerprint) -> None:
    """Keep in ``clone`` (made of an older version) ``base``, the ledger fingerprint the
    published database had just before: the clone's ledger is the old one, so publishing
    it checks the published database against this instead of against the clone's own.
    The lock rows the clone holds are its version's, long let go: they go."""
    for statement in sfsql.restore_base_sql(clone, meta_schema):
        run(statement, None)
    for table_name, hashed in base:
        run(f"INSERT INTO {_base_ref(clone, meta_schema)} VALUES (?, ?)", [table_name, hashed])
    if run(sfsql.table_exists_sql(clone, sfsql.LOCKS_TABLE), [meta_schema]).fetchall():
        run(f"DELETE FROM {ident(clone)}.{ident(meta_schema)}.{ident(sfsql.LOCKS_TABLE)}", None)


def forget_base(run: Run, database: str, meta_schema: str) -> None:
    """Drop what :func:`record_base` kept in ``database``: a plain clone of a database that
    holds one (a restore published, or cut short after the swap) is no restore."""
    run(f"DROP TABLE IF EXISTS {_base_ref(database, meta_schema)}", None)


def _stored_base(run: Run, database: str, meta_schema: str) -> Fingerprint | None:
    """What :func:`record_base` kept in ``database``; None where it kept nothing."""
    if not run(sfsql.table_exists_sql(database, sfsql.RESTORE_BASE), [meta_schema]).fetchall():
        return None
    rows = run(f"SELECT * FROM {_base_ref(database, meta_schema)} ORDER BY 1", None).fetchall()
    return [(str(name), hashed) for name, hashed in rows]


def _base_ref(database: str, meta_schema: str) -> str:
    return f"{ident(database)}.{ident(meta_schema)}.{ident(sfsql.RESTORE_BASE)}"
