"""One Airbyte ``read`` of one stream as mdstack messages: batches, deletes, checkpoints.

:func:`read_messages` consumes the connector's stdout lines as they come. RECORD lines are
kept as bytes (a prefix test finds the usual compact ones without parsing them; any other
line is parsed with orjson and dispatched on its ``type``) and converted a block at a time
by :class:`connectors.airbyte.records.Records`. Then:

* **STATE** (per-stream for this stream, GLOBAL, or LEGACY) becomes a
  :class:`~connectors.base.Checkpoint` that follows exactly the records before it, so they
  commit with it. Records are converted in blocks of up to ``batch_size`` records (or
  :data:`MAX_BLOCK_BYTES`: memory stays bounded however rarely the connector checkpoints);
  a STATE closes the block when a second has passed since the last checkpoint, else it is
  yielded with the records before it once the block is full (see :class:`_Blocks`). The
  stored state is ``{"airbyte_state": [...]}``: the latest STATE message of each kind,
  exactly the list a ``--state`` file holds;
* records with ``_ab_cdc_deleted_at`` set (CDC sources) become
  :class:`~connectors.base.Deletes` of their primary key, in stream order with the rows;
  a CDC source's ``_ab_cdc_updated_at`` goes with its rows as their change times
  (:attr:`~connectors.base.Batch.changed_at`: a history stream's versions start then);
* **LOG** goes to logging at its level; a **TRACE** of type ERROR raises a ConnectorError
  (retryable for ``transient_error``) after nothing more is yielded; **CONTROL** messages
  (the connector asking to change its stored config) are logged and ignored.

The read ends, once the connector exited with code 0, with the remaining records and a
checkpoint of the last state (the state it started from if the connector sent none).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.airbyte.json_schema import CDC_DELETED_AT, CDC_UPDATED_AT
from connectors.airbyte.process import Scrubber, log_message, parse_line, raise_for_trace
from connectors.airbyte.records import Records
from connectors.base import SOURCE_DELETED_AT, Batch, Checkpoint, Deletes, Message, State
from connectors.errors import ConnectorError

log = logging.getLogger("connectors.airbyte")

STATE_KEY = "airbyte_state"
"""mdstack's stored state of an Airbyte stream: ``{STATE_KEY: [STATE message, ...]}``."""
MAX_BLOCK_BYTES = 64 << 20
CHECKPOINT_SECONDS = 1.0
"""A STATE closes the block being gathered once this long has passed since the last one."""
_RECORD_PREFIXES = (b'{"type":"RECORD"', b'{"type": "RECORD"')


class States:
    """The latest STATE messages that concern one stream, in ``--state`` list form."""

    def __init__(self, source: str, stream: str, stored: State | None) -> None:
        self.source, self.stream = source, stream
        self._latest: dict[str, dict[str, Any]] = {}
        messages = (stored or {}).get(STATE_KEY, [])
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ConnectorError(
                f'the state is not {{"{STATE_KEY}": [<Airbyte STATE message>, ...]}}: {stored!r}'[
                    :300
                ],
                source=source,
                stream=stream,
                hint="reset the stream's state to read it again from the start",
            )
        for message in messages:
            self.update(message)

    def update(self, state: Any) -> bool:
        """Take a STATE message's ``state``; whether it concerns this stream."""
        if not isinstance(state, Mapping):
            return False
        kind = state.get("type") or ("LEGACY" if "data" in state else None)
        if kind == "STREAM":
            stream = state.get("stream") or {}
            if (stream.get("stream_descriptor") or {}).get("name") != self.stream:
                return False
        elif kind not in ("GLOBAL", "LEGACY"):
            return False
        kept = {k: copy.deepcopy(v) for k, v in state.items() if not k.endswith("Stats")}
        self._latest[kind] = kept
        return True

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``--state`` file's content: the latest state of each kind."""
        return list(self._latest.values())

    def value(self) -> State:
        """The state mdstack stores (and hands back to the next read)."""
        return {STATE_KEY: self.messages}


def read_messages(
    lines: Iterable[bytes],
    records: Records,
    states: States,
    *,
    keys: tuple[str, ...],
    deletes: bool,
    batch_size: int,
    scrub: Scrubber,
) -> Iterator[Message]:
    """The connector's stdout lines as mdstack messages (see the module docstring)."""
    source, name = states.source, states.stream
    blocks = _Blocks(records, name, keys if deletes else None)
    for line in lines:
        if not line.startswith(_RECORD_PREFIXES):
            message = parse_line(line, source, scrub) or {}
            kind = message.get("type")
            if kind == "STATE":
                if states.update(message.get("state")):
                    yield from blocks.state(states.value())
                continue
            if kind == "LOG":
                log_message(source, message.get("log"), scrub)
                continue
            if kind == "TRACE":
                raise_for_trace(source, message.get("trace"), scrub, name)
                continue
            if kind != "RECORD":
                if kind is not None:
                    log.info("%s: ignored a %s message", source, kind)
                continue
        blocks.add(line)
        if len(blocks.lines) >= batch_size or blocks.size >= MAX_BLOCK_BYTES:
            yield from blocks.flush()
    yield from blocks.flush()  # up to a waiting state, with its checkpoint
    yield from blocks.flush()  # the records after it: the last checkpoint commits them
    yield Checkpoint(name, states.value())


class _Blocks:
    """RECORD lines waiting to be converted, and the latest STATE among them.

    A STATE's checkpoint must follow exactly the records before it. Converting a block per
    STATE would make tiny batches (``source-faker`` sends one every 100 records), so a STATE
    only closes the block when :data:`CHECKPOINT_SECONDS` have passed since the last one
    went out; otherwise it waits, and the block, once full, is cut at the STATE: the records
    before it, the checkpoint, and the rest stays for the next block.
    """

    def __init__(self, records: Records, stream: str, keys: tuple[str, ...] | None) -> None:
        self.records, self.stream, self.keys = records, stream, keys
        self.lines: list[bytes] = []
        self.size = 0
        self.pending: tuple[int, State] | None = None  # (records before it, state)
        self.last = time.monotonic()

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)

    def state(self, state: State) -> Iterator[Message]:
        self.pending = (len(self.lines), state)
        if not self.lines or time.monotonic() - self.last >= CHECKPOINT_SECONDS:
            yield from self.flush()

    def flush(self) -> Iterator[Message]:
        """Everything covered by the pending state, with its checkpoint; if there is none,
        the whole block without one."""
        cut, state = self.pending if self.pending else (len(self.lines), None)
        self.pending = None
        done, self.lines = self.lines[:cut], self.lines[cut:]
        self.size = sum(map(len, self.lines))
        yield from self._convert(done)
        if state is not None:
            yield Checkpoint(self.stream, state)
        self.last = time.monotonic()

    def _convert(self, lines: list[bytes]) -> Iterator[Message]:
        if not lines:
            return
        batch = self.records.to_batch(lines, max(map(len, lines)))
        if self.keys is not None:
            yield from _split_deletes(self.stream, batch, self.keys)
        elif batch.num_rows:
            yield _rows(self.stream, batch)


def _rows(name: str, batch: pa.RecordBatch) -> Batch:
    """A batch of records, with their CDC change times (``_ab_cdc_updated_at``) where the
    source sends them: a history stream's versions are valid from them."""
    if CDC_UPDATED_AT not in batch.schema.names:
        return Batch(name, batch)
    return Batch(name, batch, _utc(batch.column(CDC_UPDATED_AT)))


def _utc(times: pa.Array) -> pa.Array:
    """A CDC time column (a timestamp, or ISO 8601 text) as naive UTC ``timestamp[us]``."""
    if pa.types.is_timestamp(times.type):
        return times.cast(pa.timestamp("us"))  # UTC wall time, as every source's times
    return times.cast(pa.string()).cast(pa.timestamp("us", "UTC")).cast(pa.timestamp("us"))


def _split_deletes(name: str, batch: pa.RecordBatch, keys: tuple[str, ...]) -> Iterator[Message]:
    """Rows and deletes of a batch, in their order: runs of live rows become batches, runs
    of deleted ones (``_ab_cdc_deleted_at`` set) Deletes of their keys."""
    deleted = batch.column(CDC_DELETED_AT).is_valid().to_numpy(zero_copy_only=False)
    bounds = [0, *(np.flatnonzero(np.diff(deleted.astype(np.int8))) + 1), batch.num_rows]
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue
        part = batch.slice(start, end - start)
        if not deleted[start]:
            yield _rows(name, part)
            continue
        at = _utc(part.column(CDC_DELETED_AT))
        columns = [part.column(k) for k in keys]
        yield Deletes(name, pa.RecordBatch.from_arrays([*columns, at], [*keys, SOURCE_DELETED_AT]))
