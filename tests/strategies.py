"""Hypothesis strategies for the engine's tests: source histories and the messages that carry them.

A *history* is what happens to one source table, in rounds: each round is what
one sync reads. Every operation has a strictly increasing cursor
(``updated_at``) and is one of

* ``insert``: a new key,
* ``update``: a live key gets new values,
* ``delete``: a live key is deleted (a CDC tombstone),
* ``reinsert``: a deleted key is emitted again,
* ``ghost_delete``: a tombstone for a key that was never emitted as a record.

:func:`histories` draws such a history; :func:`scripts` also draws how each
round travels, as :mod:`tests.scripted` messages: records in Arrow batches of
random sizes (rows shuffled inside a batch), tombstones, checkpoints at random
places, each round ending with one. :func:`change_rounds` makes rounds of one
fixed shape from a seeded ``random.Random``, for tests that need a long,
reproducible script (a fault at every step, the crash worker).

The table ``items`` has an int64 primary key ``id``, a string ``name`` and an
int64 cursor ``updated_at``; a tombstone's time is its cursor, in microseconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from hypothesis import strategies as st

from connectors.base import SOURCE_DELETED_AT, Batch, Checkpoint, Deletes, Message
from tests.scripted import SCHEMA

OpKind = Literal["insert", "update", "delete", "reinsert", "ghost_delete"]
STREAM = "items"
INT64 = (-(2**63), 2**63 - 1)
MAX_ROUNDS = 4
MAX_OPS = 30


@dataclass(frozen=True)
class Op:
    """One change at the source: a record (insert, update, reinsert) or a tombstone."""

    kind: OpKind
    id: int
    cursor: int
    name: str | None = None

    @property
    def is_delete(self) -> bool:
        return self.kind in ("delete", "ghost_delete")


Round = tuple[Op, ...]


@dataclass(frozen=True)
class Script:
    """A history and the messages each of its rounds is read as."""

    rounds: tuple[Round, ...]
    messages: tuple[tuple[Message, ...], ...]

    def until(self, count: int) -> list[Message]:
        """The messages of the first ``count`` rounds: what the source has said by then."""
        return [m for round_ in self.messages[:count] for m in round_]


class _Table:
    """The source table while a history is made: which keys are live, deleted, used."""

    def __init__(self, first_cursor: int) -> None:
        self.live: list[int] = []
        self.deleted: list[int] = []
        self.used: set[int] = set()
        self.cursor = first_cursor

    def kinds(self) -> list[OpKind]:
        kinds: list[OpKind] = ["insert", "ghost_delete"]
        if self.live:
            kinds += ["update", "delete"]
        if self.deleted:
            kinds.append("reinsert")
        return kinds

    def apply(
        self,
        kind: OpKind,
        pick: Callable[[list[int]], int],
        fresh: Callable[[set[int]], int],
        name: Callable[[], str | None],
    ) -> Op:
        self.cursor += 1
        if kind in ("insert", "ghost_delete"):
            key = fresh(self.used)
            self.used.add(key)
        else:
            key = pick(self.deleted if kind == "reinsert" else self.live)
        if kind in ("insert", "reinsert"):
            self.live.append(key)
        if kind == "reinsert":
            self.deleted.remove(key)
        if kind == "delete":
            self.live.remove(key)
            self.deleted.append(key)
        is_record = kind in ("insert", "update", "reinsert")
        return Op(kind, key, self.cursor, name() if is_record else None)


def _unused(key: int, used: set[int]) -> int:
    """``key``, or the smallest non-negative key not used yet (no filtering: draws stay cheap)."""
    return key if key not in used else next(k for k in range(len(used) + 1) if k not in used)


keys = st.integers(0, 15) | st.integers(*INT64)
"""Primary keys: often small, so that histories tested side by side share keys (in different
regions: the engine must keep them apart), else anywhere in int64."""

names = st.none() | st.text(alphabet="ab zé'\"\\", max_size=4)
"""Values of the string column: nulls, quotes, backslashes and non-ASCII included."""


@st.composite
def histories(
    draw: st.DrawFn, max_rounds: int = MAX_ROUNDS, max_ops: int = MAX_OPS
) -> tuple[Round, ...]:
    """A source history: 1..``max_rounds`` rounds of 0..``max_ops`` operations each."""
    table = _Table(draw(st.integers(0, 2**40), label="first cursor"))
    rounds = []
    for _ in range(draw(st.integers(1, max_rounds), label="rounds")):
        ops = []
        for _ in range(draw(st.integers(0, max_ops), label="ops")):
            kind = draw(st.sampled_from(table.kinds()))
            ops.append(
                table.apply(
                    kind,
                    pick=lambda keys: draw(st.sampled_from(keys)),
                    fresh=lambda used: _unused(draw(keys), used),
                    name=lambda: draw(names),
                )
            )
        rounds.append(tuple(ops))
    return tuple(rounds)


def change_rounds(rng: random.Random, count: int, size: int) -> list[list[Message]]:
    """``count`` rounds of [records, tombstones, records, checkpoint] from a seeded ``rng``.

    Every batch is non-empty, so every round commits the same way: ``size``
    inserts and about ``size / 3`` updates (some of keys inserted in the same
    batch), deletes of loaded keys plus one tombstone for a key never emitted,
    then re-inserts of deleted keys and one more insert.
    """
    table = _Table(rng.randrange(2**40))

    def make(kind: OpKind) -> Op:
        return table.apply(
            kind,
            pick=rng.choice,
            fresh=lambda used: _unused(rng.randrange(*INT64), used),
            name=lambda: rng.choice([None, "a", "b", "zé"]),
        )

    rounds = []
    for _ in range(count):
        first = [make("insert") for _ in range(size)]
        first += [make("update") for _ in range(max(1, size // 3))]
        ends = [make("delete") for _ in range(max(1, size // 4))] + [make("ghost_delete")]
        last = [make("reinsert") for _ in range(max(1, size // 8))] + [make("insert")]
        rounds.append([records(first), tombstones(ends), records(last), Checkpoint(STREAM, {})])
    return rounds


def records(ops: Sequence[Op]) -> Batch:
    """One batch of records (``ops`` must all be records)."""
    return Batch(
        STREAM,
        pa.record_batch(
            [
                pa.array([op.id for op in ops], pa.int64()),
                pa.array([op.name for op in ops], pa.string()),
                pa.array([op.cursor for op in ops], pa.int64()),
            ],
            schema=SCHEMA,
        ),
    )


def tombstones(ops: Sequence[Op]) -> Deletes:
    """One batch of tombstones: key and deletion time (the op's cursor, in microseconds)."""
    return Deletes(
        STREAM,
        pa.record_batch(
            {
                "id": pa.array([op.id for op in ops], pa.int64()),
                SOURCE_DELETED_AT: pa.array([op.cursor for op in ops], pa.timestamp("us")),
            }
        ),
    )


def _runs(ops: Sequence[Op]) -> list[list[Op]]:
    """Consecutive ops of the same sort (records or tombstones), in order."""
    runs: list[list[Op]] = []
    for op in ops:
        if runs and runs[-1][0].is_delete == op.is_delete:
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs


def layout_messages(
    ops: Sequence[Op],
    batch_size: Callable[[int], int],
    checkpoint_after: Callable[[], bool],
    shuffle: Callable[[list[Op]], list[Op]] = list,
) -> list[Message]:
    """The messages one round is read as; the last message is always a checkpoint.

    Args:
        batch_size: given how many ops of one sort remain, how many go in the next batch.
        checkpoint_after: whether a checkpoint follows the batch just made.
        shuffle: reorders the records of a batch (the order inside a batch carries no meaning).
    """
    messages: list[Message] = []
    for run in _runs(ops):
        while run:
            size = batch_size(len(run))
            batch, run = run[:size], run[size:]
            messages.append(tombstones(batch) if batch[0].is_delete else records(shuffle(batch)))
            if checkpoint_after():
                messages.append(Checkpoint(STREAM, {}))
    if not messages or not isinstance(messages[-1], Checkpoint):
        messages.append(Checkpoint(STREAM, {}))
    return messages


@st.composite
def round_messages(draw: st.DrawFn, ops: Sequence[Op]) -> list[Message]:
    """How one round travels: random batch sizes, shuffled batches, random checkpoints."""
    return layout_messages(
        ops,
        batch_size=lambda left: draw(st.integers(1, left)),
        checkpoint_after=lambda: draw(st.sampled_from([False, False, False, True])),
        shuffle=lambda batch: draw(st.permutations(batch)),
    )


@st.composite
def scripts(draw: st.DrawFn, max_rounds: int = MAX_ROUNDS, max_ops: int = MAX_OPS) -> Script:
    """A history and the messages of each of its rounds."""
    rounds = draw(histories(max_rounds, max_ops))
    return Script(rounds, tuple(tuple(draw(round_messages(r))) for r in rounds))
