"""Expiring a lake whose catalog is in PostgreSQL without breaking its environments.

An environment of such a lake is a copy of its catalog (:mod:`._ducklake_pg_envs`) that
reads the lake's own data files. Expiring the lake's old snapshots schedules the files
only they used for deletion, and some of them an environment may still read (it was
cloned before they were replaced). Between DuckLake's expire and its cleanup, the files
scheduled that any environment's catalog names are moved aside, into
:data:`KEPT` in the lake's catalog schema, in one transaction: the cleanup never sees
them. Each expire first moves back those no environment names any more (it was dropped,
or cloned again), so they go then.

Clones wait while the files to keep are decided and the cleanup runs
(:func:`clones_paused`): a clone that copied the catalog before the expire and
committed after the decision would name files the cleanup deletes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
from psycopg import sql

from stack.errors import WarehouseError
from stack.warehouse._ducklake_pg import lock_key
from stack.warehouse._ducklake_pg_envs import CLONE_LOCK, environments, files_sql

KEPT = "mdstack_files_kept_for_environments"
"""Files the lake no longer needs that an environment still reads: DuckLake's own
``ducklake_files_scheduled_for_deletion`` rows, set aside."""
_SCHEDULED = "ducklake_files_scheduled_for_deletion"


@contextmanager
def clones_paused(conninfo: str, schema: str) -> Iterator[None]:
    """No clone of the lake in ``schema`` starts or runs during the block."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(schema, CLONE_LOCK),))
        yield


def keep_environments_files(conninfo: str, schema: str) -> tuple[set[str], datetime]:
    """Set aside the scheduled files an environment names; put back the ones set aside
    before that none names now. Returns the schemas of the environments whose files are
    set aside, and when this was decided: files scheduled later (DuckLake maintenance run
    by hand meanwhile) were not looked at, and must wait for the next expire.

    Raises:
        WarehouseError: an environment's catalog names a file whose path cannot be told
            (nothing is deleted then: the cleanup does not run).
    """
    ref = sql.Identifier
    columns = sql.SQL("data_file_id, path, path_is_relative, schedule_start")
    with psycopg.connect(conninfo) as conn, conn.transaction():
        scheduled, kept = ref(schema, _SCHEDULED), ref(schema, KEPT)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (data_file_id BIGINT, path TEXT, "
                "path_is_relative BOOLEAN, schedule_start TIMESTAMPTZ)"
            ).format(kept)
        )
        conn.execute("CREATE TEMPORARY TABLE named (env TEXT, path TEXT) ON COMMIT DROP")
        for env in environments(conn, schema):
            conn.execute(
                sql.SQL("INSERT INTO named SELECT {}, path FROM ({}) AS f").format(
                    sql.Literal(env), files_sql(env)
                )
            )
        row = conn.execute("SELECT count(*) FROM named WHERE path IS NULL").fetchone()
        if row and row[0]:
            raise WarehouseError(
                "an environment's catalog names a file without a whole path: which files "
                "environments read cannot be told, so none is deleted",
                hint="drop the environments (mdstack drop-env) or report the catalog's rows",
            )
        whole = sql.SQL(
            "CASE WHEN s.path_is_relative THEN (SELECT value FROM {} WHERE key = 'data_path' "
            "AND scope IS NULL) || s.path ELSE s.path END"
        ).format(ref(schema, "ducklake_metadata"))
        move = (
            "WITH moved AS (DELETE FROM {source} AS s WHERE {test} EXISTS "
            "(SELECT 1 FROM named WHERE named.path = {whole}) RETURNING {columns}) "
            "INSERT INTO {target} ({columns}) SELECT {columns} FROM moved"
        )
        for source, target, test in ((kept, scheduled, "NOT"), (scheduled, kept, "")):
            conn.execute(
                sql.SQL(move).format(
                    source=source, target=target, test=sql.SQL(test), whole=whole, columns=columns
                )
            )
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT env FROM named JOIN {} AS s ON named.path = {}").format(
                kept, whole
            )
        ).fetchall()
        decided = conn.execute("SELECT now()").fetchone()
    assert decided is not None
    return {row[0] for row in rows}, decided[0]
