"""One replication slot per source: every CDC stream of the source reads the one slot.

A PostgreSQL server allows ``max_replication_slots`` slots (10 by default), and each slot
decodes the whole WAL again. So a source has one slot, named by ``replication.slot``
(render it per region, ``slot: mds_{{ region }}``), and one read decodes the WAL once for
every stream (:func:`connectors.postgres.cdc.read_changes`).

* **Release**: the slot is advanced only to the smallest LSN every stream of the source
  has committed, selected in this run or not (the engine gives their states through
  ``held``), at the start of a read, between snapshot chunks and once the read's last
  states are committed: a stream that did not run keeps the changes it has not loaded
  yet. A read without ``held`` (one stream read alone) advances nothing.
* **Snapshots in chunks** (the DBLog approach): a new stream, or one refreshed in full,
  starts reading changes at the WAL flush position (``L0``,
  :func:`~connectors.postgres.cdc.start_position`), never moving the slot, and copies its
  table in key order, ``replication.snapshot_chunk`` rows at a time, with a pass over the
  changes of every stream between chunks. Each chunk is read once every transaction whose
  changes were already yielded is visible (:func:`~connectors.postgres.cdc.settle`), and the
  pass after it yields every change committed since, so the last image of a key always
  wins and every checkpoint is an exact copy of the keys copied so far. The state carries
  the last key copied (``{"lsn": ..., "snapshot": {"after": [...]}}``): a killed snapshot
  resumes after its last committed chunk, and the slot advances while a big table loads.
* **Streams from before slots were shared** had a slot of their own,
  ``<slot>_<schema>_<table>``. Such a stream keeps its changes: its own slot is read up to
  the source slot's confirmed position (from there on the source's slot has them), its
  state then checkpoints there, and its own slot is dropped by the first read that finds
  the stream's committed state at or past the source slot's position.
* **A lost slot** (dropped, invalidated, failed over) loses the changes of every stream:
  the read fails with the command that re-snapshots the source, before anything is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from connectors.base import Batch, Checkpoint, Message, State
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.postgres import cdc
from connectors.postgres import slot as slots
from connectors.postgres.cdc import Connection, Target
from connectors.postgres.config import Replication

Chunk = Callable[[Target, Sequence[str] | None], Iterator[pa.RecordBatch]]
"""Reads the next chunk of a target's table: at most ``replication.snapshot_chunk`` rows,
in key order, after the key given as text (None: from the first)."""

Held = Callable[[], Sequence[str]]
"""The committed LSN of every stream of the source, as of the call."""


@dataclass(frozen=True)
class Position:
    """Where a stream's read starts: the LSN of its changes (None: a new snapshot) and,
    while its snapshot is being copied, the last key copied (``after``, None: no chunk yet)."""

    lsn: str | None
    copying: bool = False
    after: tuple[str, ...] | None = None

    @classmethod
    def of(cls, state: State | None) -> Position:
        """The position a state saved (the caller has checked its shape)."""
        state = state or {}
        snapshot = state.get("snapshot")
        if not isinstance(snapshot, Mapping):
            return cls(state.get("lsn"))
        after = snapshot.get("after")
        return cls(state.get("lsn"), True, None if after is None else tuple(after))


def read(
    conn: Connection,
    source: str,
    repl: Replication,
    reads: Sequence[tuple[Target, Position]],
    held: Held | None,
    size: int,
    chunk: Chunk,
) -> Iterator[Message]:
    """Read each target from its position through the source's slot; see the module doc.

    Args:
        reads: each stream's target and where its state left it.
        held: the committed LSNs of every stream of the source; None advances nothing.
        size: the keys all windows may hold together before one is yielded.
        chunk: reads the next chunk of a target's table.
    """
    slot = cdc.slot_name(repl.slot)
    targets = {t.stream: t for t, _ in reads}
    lsns = {t.stream: cdc.lsn_int(p.lsn) for t, p in reads if p.lsn is not None}
    copying = {t.stream: p.after for t, p in reads if p.lsn is not None and p.copying}
    if lsns:
        fail = _failure(source)
        yield from _prepare(conn, repl, slot, targets, lsns, held, size, fail)
    for target, position in reads:
        if position.lsn is None:
            lsns[target.stream] = cdc.lsn_int(cdc.start_position(conn, target, slot))
            copying[target.stream] = None
    done: set[str] = set()
    while True:
        yield from _pass(conn, repl, slot, targets, lsns, copying, done, size)
        for stream in done:
            del copying[stream]
        done.clear()
        if not copying:
            return
        if held is not None:
            release(conn, slot, held())
        cdc.settle(conn, _failure(source))
        for stream, after in copying.items():
            rows, last = 0, None
            for batch in chunk(targets[stream], after):
                yield Batch(stream, batch)
                rows, last = rows + batch.num_rows, batch
            if last is None or rows < repl.snapshot_chunk:
                done.add(stream)
            else:
                copying[stream] = last_key(last, targets[stream].primary_key)


def last_key(batch: pa.RecordBatch, key: Sequence[str]) -> tuple[str, ...]:
    """The key of the batch's last row as text PostgreSQL casts back to the column's type."""
    row = batch.slice(batch.num_rows - 1)
    values = []
    for name in key:
        column = row.column(name)
        if pa.types.is_binary(column.type):
            values.append("\\x" + (column[0].as_py() or b"").hex())
        else:
            values.append(column.cast(pa.string())[0].as_py())
    return tuple(values)


def _pass(
    conn: Connection,
    repl: Replication,
    slot: str,
    targets: Mapping[str, Target],
    lsns: dict[str, int],
    copying: Mapping[str, tuple[str, ...] | None],
    done: set[str],
    size: int,
) -> Iterator[Message]:
    """One read of every stream's changes up to the WAL flush position, each checkpoint
    carrying the stream's snapshot progress while it copies."""
    positions = {stream: (targets[stream], lsn) for stream, lsn in lsns.items()}
    for message in cdc.read_changes(conn, slot, repl.publication, positions, size):
        if isinstance(message, Checkpoint):
            lsns[message.stream] = cdc.lsn_int(message.state["lsn"])
            if message.stream in copying and message.stream not in done:
                after = copying[message.stream]
                progress = {"after": None if after is None else list(after)}
                message = dataclasses.replace(
                    message, state={**message.state, "snapshot": progress}
                )
        yield message


def _prepare(
    conn: Connection,
    repl: Replication,
    slot: str,
    targets: Mapping[str, Target],
    lsns: dict[str, int],
    held: Held | None,
    size: int,
    fail: cdc.Fail,
) -> Iterator[Message]:
    """Check the slot can give what the streams need, release what all have committed, and
    move streams that still have a slot of their own onto the source's."""
    own: dict[str, str] = {}  # streams that still have a slot of their own
    for stream, target in targets.items():
        name = cdc.stream_slot_name(repl.slot, target.schema, target.table)
        if stream in lsns and name != slot and slots.inspect(conn, name) is not None:
            own[stream] = name
    if own and set(own) == set(lsns) and slots.inspect(conn, slot) is None:
        # Every stream read so far had a slot of its own: the source's slot starts here.
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    since = cdc.lsn_text(min(lsns.values()))
    source = next(iter(targets.values())).source
    confirmed = cdc.usable(conn, slot, fail, slots.resnapshot_source(source), since)
    drains: dict[str, str] = {}
    for stream, lsn in lsns.items():
        old = own.get(stream)
        if old is not None and lsn >= confirmed:  # the source's slot has all it needs
            conn.execute("SELECT pg_drop_replication_slot(%s)", (old,))
        elif old is not None:
            drains[stream] = old
        else:
            cdc.check_behind(targets[stream], slot, lsn, confirmed)
    if held is not None:
        cdc.advance(conn, slot, confirmed, min([*lsns.values(), *map(cdc.lsn_int, held())]))
    for stream, old in drains.items():
        target, lsn = targets[stream], lsns[stream]
        mine = cdc.usable(conn, old, target.error, target.resnapshot, cdc.lsn_text(lsn))
        cdc.check_behind(target, old, lsn, mine)
        cdc.advance(conn, old, mine, lsn)
        positions = {stream: (target, lsn)}
        yield from cdc.read_changes(conn, old, repl.publication, positions, size, confirmed)
        lsns[stream] = confirmed  # where its last checkpoint put it


def release(conn: Connection, slot: str, committed: Sequence[str]) -> None:
    """Advance the slot to the smallest of the ``committed`` LSNs (every stream's)."""
    info = slots.inspect(conn, slot)
    if committed and info is not None and info.confirmed_flush_lsn:
        to = min(map(cdc.lsn_int, committed))
        cdc.advance(conn, slot, cdc.lsn_int(info.confirmed_flush_lsn), to)


def _failure(source: str) -> cdc.Fail:
    def fail(message: str, hint: str, retryable: bool = False) -> ConnectorError:
        cls = SourceUnavailable if retryable else ConnectorError
        return cls(message, source=source, hint=hint)

    return fail
