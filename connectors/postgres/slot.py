"""A stream's replication slot as the server reports it, and the one way back when it is gone.

A slot that was dropped, lost in a failover, or invalidated by the server (it held back
more WAL than ``max_slot_wal_keep_size``, or a standby's recovery conflicted with it) can no
longer give the changes since the stream's state. Nothing can recover them: the stream needs
a new snapshot, and only a full refresh gives an exact copy, since it replaces the stream's
rows (a state reset would merge the snapshot into them and keep the keys deleted meanwhile).
Reads and ``mdstack doctor`` say so in the same words, before anything is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class SlotInfo:
    """The columns of ``pg_replication_slots`` CDC needs, whatever the server's version."""

    plugin: str | None
    confirmed_flush_lsn: str | None
    active_pid: int | None
    held_back: int | None  # bytes of WAL from its restart LSN to the server's: kept for it
    wal_status: str | None  # reserved, extended, unreserved (at risk), lost (PostgreSQL 13+)
    invalidated: str | None  # why the server invalidated it, None while it is usable
    prevent: str  # what keeps that from happening again


def inspect(conn: Connection, slot: str) -> SlotInfo | None:
    """The slot ``slot``, or None when there is no such slot.

    The row is read as JSON so that columns newer servers add (``conflicting`` in 16,
    ``invalidation_reason`` in 17) are used where they exist, without a version check.
    """
    row = conn.execute(
        "SELECT to_jsonb(s), pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint"
        " FROM pg_replication_slots s WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    info: dict[str, Any] = row[0]
    invalidated, prevent = _invalidation(conn, info)
    return SlotInfo(
        plugin=info.get("plugin"),
        confirmed_flush_lsn=info.get("confirmed_flush_lsn"),
        active_pid=info.get("active_pid"),
        held_back=row[1],
        wal_status=info.get("wal_status"),
        invalidated=invalidated,
        prevent=prevent,
    )


def held_back(conn: Connection, slot: str) -> int | None:
    """Bytes of WAL the server keeps for ``slot`` now (None: no such slot, or it lost its
    WAL): what a read reports with its last checkpoint, for the run ledger."""
    info = inspect(conn, slot)
    return None if info is None else info.held_back


def _invalidation(conn: Connection, info: dict[str, Any]) -> tuple[str | None, str]:
    reason = info.get("invalidation_reason")  # PostgreSQL 17+
    if reason is None and info.get("conflicting"):  # 16: a conflict with recovery
        return (
            "it conflicted with recovery on this standby (catalog rows it needed were "
            "removed on the primary, or the primary's wal_level is no longer logical)",
            "on the primary, set hot_standby_feedback = on for this standby's slot, and keep "
            "wal_level = logical",
        )
    if reason is None and info.get("wal_status") == "lost":
        reason = "wal_removed"
    if reason is None:
        return None, ""
    if reason == "wal_removed":
        keep = conn.execute("SHOW max_slot_wal_keep_size").fetchone()
        limit = keep[0] if keep else "?"
        return (
            "the server removed WAL it still needed (it held back more than"
            f" max_slot_wal_keep_size = {limit})",
            "raise max_slot_wal_keep_size or sync this stream more often",
        )
    return _REASONS.get(reason, (f"the server invalidated it ({reason})", ""))


_REASONS = {
    "rows_removed": (
        "catalog rows it still needed were removed on the primary",
        "on the primary, set hot_standby_feedback = on for this standby",
    ),
    "wal_level_insufficient": (
        "the primary's wal_level is no longer logical",
        "keep wal_level = logical on the primary",
    ),
    "idle_timeout": (
        "it was unused for longer than idle_replication_slot_timeout",
        "sync this stream more often than idle_replication_slot_timeout",
    ),
}


def resnapshot(source: str, stream: str) -> str:
    """The fix for changes that cannot be read any more: the exact command."""
    return (
        f"take a new snapshot of the stream: mdstack sync --source {source} --stream {stream}"
        " --full-refresh (add --region R to refresh one region). It re-creates the slot and"
        " replaces the stream's rows in one transaction, so rows deleted meanwhile go too"
    )


def resnapshot_source(source: str) -> str:
    """The fix when the source's slot can no longer give what its streams need."""
    return (
        f"take a new snapshot of every stream of the source: mdstack sync --source {source}"
        " --full-refresh (add --region R to refresh one region). It re-creates the slot and"
        " replaces each stream's rows in one transaction, so rows deleted meanwhile go too"
    )
