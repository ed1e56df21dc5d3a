"""A source that replays scripted messages: the engine's tests drive every case through it.

It implements the real protocol from ``connectors.base``; tests decide what
the source says (records, deletes, checkpoints) and check what lands.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from connectors.base import (
    SOURCE_DELETED_AT,
    Batch,
    Catalog,
    Checkpoint,
    CheckResult,
    ConfiguredStream,
    Deletes,
    Message,
    State,
    StreamSpec,
)

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("updated_at", pa.int64())])
ALL_MODES = (
    "full_refresh_overwrite",
    "full_refresh_append",
    "incremental_append",
    "incremental_deduped",
)


def rows(*records: tuple[int, str, int]) -> Batch:
    ids, names, cursors = zip(*records, strict=True) if records else ((), (), ())
    data = pa.record_batch(
        [pa.array(ids, pa.int64()), pa.array(names, pa.string()), pa.array(cursors, pa.int64())],
        schema=SCHEMA,
    )
    return Batch("items", data)


def deletes(*keys: int, at: int | None = 0) -> Deletes:
    return Deletes(
        "items",
        pa.record_batch(
            {
                "id": pa.array(keys, pa.int64()),
                SOURCE_DELETED_AT: pa.array([at] * len(keys), pa.timestamp("us")),
            }
        ),
    )


def checkpoint() -> Checkpoint:
    """A checkpoint marker; the source fills in its position when it replays it."""
    return Checkpoint("items", {})


class ScriptedSource:
    """Replays ``script`` (a list of messages) from the position in the state on.

    Each checkpoint carries ``{"position": i}``: the index of the next message
    to replay, so a resumed incremental read continues exactly after the last
    commit; a full refresh replays the whole script.
    ``fail_at`` makes the read raise when it reaches that message; ``snapshot``, if
    given, is what a full-refresh read returns instead (the source's current rows).
    """

    name = "scripted"

    def __init__(
        self,
        script: list[Message],
        fail_at: int | None = None,
        snapshot: list[Message] | None = None,
    ) -> None:
        self.script = script
        self.fail_at = fail_at
        self.snapshot = snapshot
        self.states_seen: list[State | None] = []

    def spec(self) -> dict:
        return {"type": "object"}

    def check(self) -> CheckResult:
        return CheckResult(ok=True)

    def discover(self) -> Catalog:
        return Catalog((StreamSpec("items", SCHEMA, ("id",), "updated_at", ALL_MODES, True),))

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        self.states_seen.append(state)
        if self.snapshot is not None and not stream.incremental:
            yield from self.snapshot
            return
        start = state["position"] if state and stream.incremental else 0
        for index, message in enumerate(self.script[start:], start):
            if index == self.fail_at:
                raise RuntimeError(f"source died at message {index}")
            yield (
                Checkpoint("items", {"position": index + 1})
                if isinstance(message, Checkpoint)
                else message
            )
