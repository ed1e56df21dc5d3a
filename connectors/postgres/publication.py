"""The source's publication follows the CDC streams of ``stack.yml``.

pgoutput sends the changes of the tables a publication holds at each change's position, so a
stream added to ``stack.yml`` needs its table in the publication before its snapshot starts.
A read adds it (``ALTER PUBLICATION ... ADD TABLE``), or creates the publication when it is
missing (``CREATE PUBLICATION ... FOR TABLE``), where the role may: it owns the publication
and the table (or may create in the database). Where it may not, nothing is tried and the
read fails with the exact SQL to run (:mod:`connectors.postgres.preflight`).

A table no stream reads any more is not dropped from the publication by a read: a
publication can serve other subscribers, and what it carries is its owner's call.
``mdstack doctor`` names such tables with the SQL that drops them (their changes are
decoded and skipped until then).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from psycopg import sql

from connectors.postgres.cdc import Connection, Target, _sql_text, _value

__all__ = ["exists", "follow", "may_add", "may_create", "unread"]

log = logging.getLogger(__name__)


def follow(conn: Connection, publication: str, targets: Sequence[Target]) -> list[str]:
    """Create the publication, or add the targets' tables it lacks, where the role may.

    Returns the statements run (each logged), none when nothing was missing or allowed.
    """
    pub = sql.Identifier(publication)
    if not exists(conn, publication):
        if not targets or not may_create(conn, targets):
            return []
        tables = sql.SQL(", ").join(t.qualified for t in targets)
        statements = [sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, tables)]
    else:
        missing = [t for t in targets if not _published(conn, publication, t)]
        allowed = [t for t in missing if may_add(conn, publication, t)]
        statements = [
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(pub, t.qualified) for t in allowed
        ]
    done = []
    for statement in statements:
        conn.execute(statement)
        done.append(_sql_text(conn, statement))
        log.info("publication %s: %s", publication, done[-1])
    return done


def may_add(conn: Connection, publication: str, target: Target) -> bool:
    """Whether the role owns (is a member of the owner of) the publication and the table."""
    return bool(
        _value(
            conn,
            "SELECT NOT p.puballtables AND pg_has_role(p.pubowner, 'USAGE')"
            " AND pg_has_role(c.relowner, 'USAGE')"
            " FROM pg_publication p, pg_class c"
            " WHERE p.pubname = %s AND c.oid = %s::regclass",
            (publication, _sql_text(conn, target.qualified)),
        )
    )


def may_create(conn: Connection, targets: Sequence[Target]) -> bool:
    """Whether the role may create a publication in the database for every table."""
    owns = all(
        _value(
            conn,
            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = %s::regclass",
            (_sql_text(conn, t.qualified),),
        )
        for t in targets
    )
    return owns and bool(
        _value(conn, "SELECT has_database_privilege(current_database(), 'CREATE')")
    )


def unread(conn: Connection, publication: str, targets: Sequence[Target]) -> list[str]:
    """``schema.table`` of each table the publication lists that no target reads (none for
    a publication ``FOR ALL TABLES``: it has no list to drop from)."""
    rows = conn.execute(
        "SELECT t.schemaname, t.tablename FROM pg_publication_tables t"
        " JOIN pg_publication p USING (pubname)"
        " WHERE t.pubname = %s AND NOT p.puballtables ORDER BY 1, 2",
        (publication,),
    ).fetchall()
    read = {(t.schema, t.table) for t in targets}
    return [f"{schema}.{table}" for schema, table in rows if (schema, table) not in read]


def exists(conn: Connection, publication: str) -> bool:
    """Whether the database has the publication."""
    query = "SELECT 1 FROM pg_publication WHERE pubname = %s"
    return conn.execute(query, (publication,)).fetchone() is not None


def _published(conn: Connection, publication: str, target: Target) -> bool:
    query = (
        "SELECT 1 FROM pg_publication_tables"
        " WHERE pubname = %s AND schemaname = %s AND tablename = %s"
    )
    return conn.execute(query, (publication, target.schema, target.table)).fetchone() is not None
