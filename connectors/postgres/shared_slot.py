"""One replication slot per source: every CDC stream of the source reads the one slot.

A PostgreSQL server allows ``max_replication_slots`` slots (10 by default), and each slot
decodes the whole WAL again. So a source has one slot, named by ``replication.slot``
(render it per region, ``slot: mds_{{ region }}``), and one read decodes the WAL once for
every stream (:func:`connectors.postgres.cdc.read_changes`).

* **Release**: the slot is advanced only to the smallest LSN every stream of the source
  has committed, selected in this run or not (the engine passes their states as ``held``):
  a stream that did not run keeps the changes it has not loaded yet. A read without
  ``held`` (one stream read alone) advances nothing.
* **New streams and full refreshes** never move the slot: the snapshot starts at the WAL
  flush position (``L0``, :func:`~connectors.postgres.cdc.begin_snapshot`) and the stream
  skips every transaction that committed before it.
* **Streams from before slots were shared** had a slot of their own,
  ``<slot>_<schema>_<table>``. Such a stream keeps its changes: its own slot is read up to
  the source slot's confirmed position (from there on the source's slot has them), its
  state then checkpoints there, and its own slot is dropped by the first read that finds
  the stream's committed state at or past the source slot's position.
* **A lost slot** (dropped, invalidated, failed over) loses the changes of every stream:
  the read fails with the command that re-snapshots the source, before anything is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from connectors.base import Checkpoint, Message
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.postgres import cdc
from connectors.postgres import slot as slots
from connectors.postgres.cdc import Connection, Target
from connectors.postgres.config import Replication

Snapshot = Callable[[Target], Iterator[Message]]
"""Streams the whole table of a target as Batch messages."""


def read(
    conn: Connection,
    source: str,
    repl: Replication,
    reads: Sequence[tuple[Target, str | None]],
    held: Sequence[str] | None,
    size: int,
    snapshot: Snapshot,
) -> Iterator[Message]:
    """Read each target from its LSN (None: a snapshot first) through the source's slot.

    Args:
        reads: each stream's target and the LSN of its state (None: take a snapshot).
        held: the committed LSN of every stream of the source; None advances nothing.
        size: the keys all windows may hold together before one is yielded.
        snapshot: reads a target's whole table.
    """
    slot = cdc.slot_name(repl.slot)
    changes = {t.stream: (t, cdc.lsn_int(lsn)) for t, lsn in reads if lsn is not None}
    if changes:
        yield from _changes(conn, source, repl, slot, changes, held, size)
    for target, lsn in reads:
        if lsn is None:
            start = cdc.begin_snapshot(conn, target, slot)
            yield from snapshot(target)
            held_back = slots.held_back(conn, slot)  # what the snapshot made the server keep
            yield Checkpoint(target.stream, {"lsn": start}, replication_lag_bytes=held_back)


def _changes(
    conn: Connection,
    source: str,
    repl: Replication,
    slot: str,
    changes: dict[str, tuple[Target, int]],
    held: Sequence[str] | None,
    size: int,
) -> Iterator[Message]:
    own: dict[str, str] = {}  # streams that still have a slot of their own
    for stream, (target, _) in changes.items():
        name = cdc.stream_slot_name(repl.slot, target.schema, target.table)
        if name != slot and slots.inspect(conn, name) is not None:
            own[stream] = name
    if own and set(own) == set(changes) and slots.inspect(conn, slot) is None:
        # Every stream read so far had a slot of its own: the source's slot starts here.
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    since = cdc.lsn_text(min(lsn for _, lsn in changes.values()))
    confirmed = cdc.usable(conn, slot, _failure(source), slots.resnapshot_source(source), since)
    drains: dict[str, str] = {}
    for stream, (target, lsn) in changes.items():
        old = own.get(stream)
        if old is not None and lsn >= confirmed:  # the source's slot has all it needs
            conn.execute("SELECT pg_drop_replication_slot(%s)", (old,))
        elif old is not None:
            drains[stream] = old
        else:
            cdc.check_behind(target, slot, lsn, confirmed)
    if held is not None:
        lsns = [lsn for _, lsn in changes.values()] + [cdc.lsn_int(h) for h in held]
        cdc.advance(conn, slot, confirmed, min(lsns))
    for stream, old in drains.items():
        target, lsn = changes[stream]
        mine = cdc.usable(conn, old, target.error, target.resnapshot, cdc.lsn_text(lsn))
        cdc.check_behind(target, old, lsn, mine)
        cdc.advance(conn, old, mine, lsn)
        positions = {stream: (target, lsn)}
        yield from cdc.read_changes(conn, old, repl.publication, positions, size, confirmed)
        changes[stream] = (target, confirmed)  # where its last checkpoint put it
    yield from cdc.read_changes(conn, slot, repl.publication, changes, size)


def _failure(source: str) -> cdc.Fail:
    def fail(message: str, hint: str, retryable: bool = False) -> ConnectorError:
        cls = SourceUnavailable if retryable else ConnectorError
        return cls(message, source=source, hint=hint)

    return fail
