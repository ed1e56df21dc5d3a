"""What CDC needs from the PostgreSQL server, one finding per prerequisite, each with its fix.

The connector owns this knowledge in one place: a CDC read raises the first failing
prerequisite (:func:`check_prerequisites`), ``check`` names the server-wide ones
(:func:`server_problems`), and ``mdstack doctor`` shows every one of them, passed or not,
plus the replication slots and the WAL they hold back (:func:`findings`). A fix is the exact
SQL to paste wherever one exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg
from psycopg import sql

from connectors.base import Finding
from connectors.errors import ConnectorError
from connectors.postgres import fetch
from connectors.postgres import publication as publications
from connectors.postgres import slot as slots
from connectors.postgres.cdc import (
    Connection,
    Target,
    _row,
    _sql_text,
    _value,
    slot_name,
    stream_slot_name,
)
from connectors.postgres.config import SESSION, PostgresConfig
from connectors.postgres.errors import translate_error

__all__ = [
    "SLOT_LAG_WARN_BYTES",
    "Finding",
    "check_prerequisites",
    "findings",
    "server_findings",
    "server_problems",
    "table_findings",
]

SLOT_LAG_WARN_BYTES = 1 << 30
"""WAL a slot may hold back before it is worth a warning: the server keeps it on disk."""
STATEMENT_TIMEOUT_MS = 10_000
"""No preflight query waits longer (a catalog lock must not hang ``mdstack doctor``)."""


def server_findings(
    conn: Connection, publication: str, tables: Sequence[Target] = ()
) -> list[Finding]:
    """wal_level, the user's replication attribute, the publication (last): server-wide."""
    return [
        _wal_level(conn),
        _replication_role(conn),
        _publication(conn, publication, tables),
    ]


def server_problems(conn: Connection, publication: str) -> list[tuple[str, str]]:
    """(message, fix) for each server-wide CDC prerequisite missing."""
    return [(f.detail, f.fix) for f in server_findings(conn, publication) if f.failed]


def check_prerequisites(conn: Connection, target: Target, publication: str) -> None:
    """Raise a ConnectorError that names the SQL to run when CDC cannot work for ``target``."""
    found = server_findings(conn, publication) + table_findings(conn, target, publication)
    for finding in found:
        if finding.failed:
            raise target.error(finding.detail, finding.fix)


def table_findings(conn: Connection, target: Target, publication: str) -> list[Finding]:
    """Whether the publication carries the table's changes, and whether they carry its key."""
    return [_published(conn, target, publication), _identity(conn, target)]


def _published(conn: Connection, target: Target, publication: str) -> Finding:
    name = f"{target.schema}.{target.table} published"
    row = conn.execute(
        "SELECT pubinsert AND pubupdate AND pubdelete,"
        " EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname"
        "         AND t.schemaname = %s AND t.tablename = %s)"
        " FROM pg_publication p WHERE pubname = %s",
        (target.schema, target.table, publication),
    ).fetchone()
    pub = sql.Identifier(publication)
    if row is None:
        return Finding(name, "fail", f"publication {publication!r} does not exist")
    if not row[1]:
        if publications.may_add(conn, publication, target):
            return Finding(name, "warn", f"not in publication {publication!r}: a sync adds it")
        fix = sql.SQL("ALTER PUBLICATION {} ADD TABLE {};").format(pub, target.qualified)
        return Finding(
            name,
            "fail",
            f"table {target.schema}.{target.table} is not in publication {publication!r}",
            _sql_text(conn, fix),
        )
    if not row[0]:
        publish = sql.SQL(
            "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');"
        )
        return Finding(
            name,
            "fail",
            f"publication {publication!r} does not publish inserts, updates and deletes",
            _sql_text(conn, publish.format(pub)),
        )
    return Finding(name, "ok", f"in publication {publication!r}")


def _identity(conn: Connection, target: Target) -> Finding:
    """Updates and deletes must carry the key: REPLICA IDENTITY DEFAULT needs a primary key,
    NOTHING never does, FULL always does, USING INDEX when the index covers the key."""
    name = f"{target.schema}.{target.table} replica identity"
    label = _IDENTITIES.get(target.replica_identity, target.replica_identity)
    if not target.primary_key:
        return Finding(
            name,
            "fail",
            "CDC needs a primary key to merge changes and delete rows",
            "add a PRIMARY KEY to the table or set `primary_key:` for the stream",
        )
    identity = _identity_columns(conn, target)
    if identity is None or not set(target.primary_key) <= identity:
        fix = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL;").format(target.qualified)
        return Finding(
            name,
            "fail",
            f"deletes and updates of {target.schema}.{target.table} do not carry the key "
            f"{list(target.primary_key)} (replica identity {label})",
            _sql_text(conn, fix),
        )
    return Finding(name, "ok", f"{label}: carries the key {list(target.primary_key)}")


def findings(
    cfg: PostgresConfig,
    source: str,
    streams: Mapping[str, tuple[str, ...] | None],
    slot_lag_warn: int = SLOT_LAG_WARN_BYTES,
) -> list[Finding]:
    """Every CDC prerequisite of a source, for the tables behind ``streams``.

    Args:
        cfg: the source's config (with ``replication`` set).
        source: the source's name, for messages.
        streams: each CDC stream and its configured primary key (None: the table's own).
        slot_lag_warn: warn when a slot holds back more WAL than this many bytes.

    Returns:
        A ``connects`` finding first; when the server answers, the server-wide findings,
        one per table, then the source's slot (and any slot a stream still has of its own).
    """
    repl = cfg.replication
    assert repl is not None, "findings() is for sources with replication"
    params = cfg.libpq(password=True)
    params["options"] = f"{SESSION} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    try:
        with psycopg.connect(**params, autocommit=True) as conn:
            targets = _targets(conn, cfg, source, streams)
            found = [Finding("connects", "ok", cfg.where)]
            server = server_findings(conn, repl.publication, targets)
            found += server
            for target in targets:
                published, identity = table_findings(conn, target, repl.publication)
                found += [identity] if server[-1].status != "ok" else [published, identity]
            found += _unread(conn, source, repl.publication, targets)
            found.append(_slot(conn, source, slot_name(repl.slot), slot_lag_warn))
            found += [f for t in targets if (f := _own_slot(conn, t, repl.slot)) is not None]
    except ConnectorError as exc:
        return [Finding("connects", "fail", exc.message, exc.hint or "")]
    except psycopg.Error as exc:
        error = translate_error(exc, cfg, source, None)
        return [Finding("connects", "fail", error.message, error.hint or "")]
    return found


def _targets(
    conn: Connection,
    cfg: PostgresConfig,
    source: str,
    streams: Mapping[str, tuple[str, ...] | None],
) -> list[Target]:
    """The tables CDC reads for ``streams`` (views and such are read by query, not CDC)."""
    tables = {t.stream: t for t in fetch.tables(conn, cfg.schemas, cfg.tables, source)}
    missing = sorted(set(streams) - set(tables))
    if missing:
        raise ConnectorError(
            f"no table for streams {missing} in schemas {list(cfg.schemas)}",
            source=source,
            hint="fix the stream names in stack.yml, or the source's `schemas:`/`tables:`",
        )
    return [
        Target.of(source, name, table, streams[name] or ())
        for name, table in tables.items()
        if name in streams and table.kind in _TABLE_KINDS
    ]


def _wal_level(conn: Connection) -> Finding:
    level = _value(conn, "SHOW wal_level")
    if level == "logical":
        return Finding("wal_level", "ok", "logical")
    return Finding(
        "wal_level",
        "fail",
        f"logical replication needs wal_level = logical (it is {level!r})",
        "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL",
    )


def _replication_role(conn: Connection) -> Finding:
    may, superuser, user = _row(
        conn,
        "SELECT rolsuper OR rolreplication, rolsuper, current_user"
        " FROM pg_roles WHERE rolname = current_user",
    )
    if may:
        what = "superuser" if superuser else "REPLICATION"
        return Finding("replication role", "ok", f"user {user!r} has {what}")
    fix = sql.SQL("ALTER ROLE {} WITH REPLICATION;").format(sql.Identifier(user))
    return Finding(
        "replication role",
        "fail",
        f"user {user!r} may not use replication slots",
        _sql_text(conn, fix),
    )


def _publication(conn: Connection, publication: str, tables: Sequence[Target]) -> Finding:
    name = f"publication {publication}"
    if publications.exists(conn, publication):
        return Finding(name, "ok", "exists")
    if tables and publications.may_create(conn, tables):
        return Finding(name, "warn", "does not exist: a sync creates it for the CDC tables")
    listed = sql.SQL(", ").join(t.qualified for t in tables) if tables else None
    create = sql.SQL("CREATE PUBLICATION {} FOR TABLE {};").format(
        sql.Identifier(publication), listed or sql.SQL("<schema>.<table>, ...")
    )
    return Finding(
        name,
        "fail",
        f"publication {publication!r} does not exist",
        _sql_text(conn, create) + ("" if tables else "  -- or FOR ALL TABLES, as a superuser"),
    )


def _unread(
    conn: Connection, source: str, publication: str, targets: Sequence[Target]
) -> list[Finding]:
    """A warning for the tables the publication carries that no CDC stream reads."""
    tables = publications.unread(conn, publication, targets)
    if not tables:
        return []
    drop = sql.SQL("ALTER PUBLICATION {} DROP TABLE {};").format(
        sql.Identifier(publication),
        sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in tables),
    )
    return [
        Finding(
            f"publication {publication} tables",
            "warn",
            f"it also carries {', '.join(tables)}, which no CDC stream of {source} reads:"
            " their changes are decoded and skipped (unless another subscriber needs them)",
            _sql_text(conn, drop),
        )
    ]


def _slot(conn: Connection, source: str, slot: str, warn_bytes: int) -> Finding:
    """The source's slot: absent before the first sync; else the WAL it holds back."""
    name = f"slot {slot}"
    info = slots.inspect(conn, slot)
    if info is None:
        return Finding(name, "ok", "not created yet: the source's first CDC sync creates it")
    if info.invalidated:
        return Finding(
            name,
            "fail",
            f"invalidated: {info.invalidated}; the changes of every stream since are lost",
            f"{slots.resnapshot_source(source)}. Then, so it does not happen again: {info.prevent}",
        )
    held = info.held_back or 0
    drop = f"SELECT pg_drop_replication_slot('{slot}');"
    if info.wal_status == "unreserved":
        return Finding(
            name,
            "warn",
            f"holds back {_size(held)} of WAL, past max_slot_wal_keep_size: the next"
            " checkpoint invalidates it",
            f"sync the source now (`mdstack sync --source {source}`), and raise"
            " max_slot_wal_keep_size",
        )
    state = "inactive" if info.active_pid is None else "active"
    detail = f"{state}, holds back {_size(held)} of WAL for every CDC stream of the source"
    if held > warn_bytes:
        return Finding(
            name,
            "warn",
            f"{detail} (over {_size(warn_bytes)})",
            f"sync every CDC stream of the source (`mdstack sync --source {source}`): the slot"
            " advances only as far as the stream furthest behind; if the source no longer"
            f" reads by CDC: {drop}",
        )
    return Finding(name, "ok", detail)


def _own_slot(conn: Connection, target: Target, prefix: str) -> Finding | None:
    """A slot the stream had to itself before slots were shared, if it is still there."""
    slot = stream_slot_name(prefix, target.schema, target.table)
    if slot == slot_name(prefix) or slots.inspect(conn, slot) is None:
        return None
    return Finding(
        f"slot {slot}",
        "warn",
        f"{target.stream}'s slot of its own, from before the source's streams shared one:"
        " it holds WAL back until the stream's next sync moves it to the source's slot",
        f"sync the stream (`mdstack sync --source {target.source} --stream {target.stream}`)",
    )


def _identity_columns(conn: Connection, target: Target) -> set[str] | None:
    """Columns an old row image carries on update/delete; None if it carries none."""
    if target.replica_identity == "f":
        return {name for name, _, _ in target.columns}
    if target.replica_identity == "n":
        return None
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass"
        " AND CASE WHEN %s = 'd' THEN i.indisprimary ELSE i.indisreplident END",
        (_sql_text(conn, target.qualified), target.replica_identity),
    ).fetchall()
    return {r[0] for r in rows} or None


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


_TABLE_KINDS = ("r", "p")
_IDENTITIES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}
