"""Expiring a lake whose catalog is in PostgreSQL without breaking its environments.

An environment of such a lake is a copy of its catalog (:mod:`._ducklake_pg_envs`) that
reads the lake's own data files. Expiring the lake's old snapshots schedules the files
only they used for deletion, and some of them an environment may still read (it was
cloned before they were replaced). Between DuckLake's expire and its cleanup, the files
scheduled that any environment's catalog names are moved aside, into
:data:`KEPT` in the lake's catalog schema, in one transaction: the cleanup never sees
them. Each expire first moves back those no environment names any more (it was dropped,
or published over), so they go then.

Clones wait while the files to keep are decided (:func:`clones_paused`): a clone that
copied the catalog before the expire and committed after the decision would name
files the cleanup deletes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from stack.warehouse._ducklake_pg_envs import clone_lock, environments, files_sql

KEPT = "mdstack_files_kept_for_environments"
"""Files the lake no longer needs that an environment still reads: DuckLake's own
``ducklake_files_scheduled_for_deletion`` rows, set aside."""
_SCHEDULED = "ducklake_files_scheduled_for_deletion"


@contextmanager
def clones_paused(conninfo: str, schema: str) -> Iterator[None]:
    """No clone of the lake in ``schema`` starts or runs during the block."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (clone_lock(schema),))
        yield


def keep_environments_files(conninfo: str, schema: str) -> int:
    """Set aside the scheduled files an environment names; put back the ones set aside
    before that none names now. Returns how many are set aside."""
    ref = sql.Identifier
    with psycopg.connect(conninfo) as conn, conn.transaction():
        scheduled, kept = ref(schema, _SCHEDULED), ref(schema, KEPT)
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)").format(kept, scheduled)
        )
        named: list[sql.Composable] = [
            sql.SQL("SELECT path FROM ({}) AS f").format(files_sql(env))
            for env in environments(conn, schema)
        ]
        read = sql.SQL(" UNION ").join(named or [sql.SQL("SELECT NULL::text WHERE false")])
        whole = sql.SQL(
            "CASE WHEN path_is_relative THEN (SELECT value FROM {} WHERE key = 'data_path' "
            "AND scope IS NULL) || path ELSE path END"
        ).format(ref(schema, "ducklake_metadata"))
        move = (
            "WITH moved AS (DELETE FROM {source} WHERE {whole} {test} IN ({read}) RETURNING *) "
            "INSERT INTO {target} SELECT * FROM moved"
        )
        for source, target, test in ((kept, scheduled, "NOT"), (scheduled, kept, "")):
            conn.execute(
                sql.SQL(move).format(
                    source=source, target=target, whole=whole, test=sql.SQL(test), read=read
                )
            )
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(kept)).fetchone()
    return int(row[0]) if row else 0
