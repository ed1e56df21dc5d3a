"""One Airbyte ``read`` of one stream as mdstack messages: batches, deletes, checkpoints.

:func:`read_messages` consumes the connector's stdout lines as they come. RECORD lines are
kept as bytes (a prefix test finds the usual compact ones without parsing them; any other
line is parsed with orjson and dispatched on its ``type``) and converted a block at a time
by :class:`connectors._airbyte_records.Records`. Then:

* **STATE** (per-stream for this stream, GLOBAL, or LEGACY): the records buffered so far are
  yielded, then a :class:`~connectors.base.Checkpoint` of the new state, so everything up to
  the STATE message commits with it. The stored state is ``{"airbyte_state": [...]}``: the
  latest STATE message of each kind, exactly the list a ``--state`` file holds;
* a block also goes out when it reaches ``batch_size`` records or :data:`MAX_BLOCK_BYTES`
  (memory stays bounded however rarely the connector checkpoints), with no checkpoint;
* records with ``_ab_cdc_deleted_at`` set (CDC sources) become
  :class:`~connectors.base.Deletes` of their primary key, in stream order with the rows;
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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from connectors._airbyte_process import Scrubber, log_message, parse_line, raise_for_trace
from connectors._airbyte_records import Records
from connectors.base import DELETED_AT, Batch, Checkpoint, Deletes, Message, State
from connectors.errors import ConnectorError

log = logging.getLogger("connectors.airbyte")

CDC_DELETED_AT = "_ab_cdc_deleted_at"
"""The column Airbyte's CDC sources set on a record that was deleted."""
STATE_KEY = "airbyte_state"
"""mdstack's stored state of an Airbyte stream: ``{STATE_KEY: [STATE message, ...]}``."""
MAX_BLOCK_BYTES = 64 << 20
_RECORD_PREFIXES = (b'{"type":"RECORD"', b'{"type": "RECORD"')


class States:
    """The latest STATE messages that concern one stream, in ``--state`` list form."""

    def __init__(self, source: str, stream: str, stored: State | None) -> None:
        self.source, self.stream = source, stream
        self._latest: dict[str, dict[str, Any]] = {}
        messages = (stored or {}).get(STATE_KEY, [])
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ConnectorError(
                f"the stored state is not a list of Airbyte STATE messages: {stored!r}"[:300],
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
    block: list[bytes] = []
    size = longest = 0

    def flush() -> Iterator[Message]:
        nonlocal block, size, longest
        if block:
            batch = records.to_batch(block, longest)
            block, size, longest = [], 0, 0
            if deletes:
                yield from _split_deletes(name, batch, keys)
            elif batch.num_rows:
                yield Batch(name, batch)

    for line in lines:
        if not line.startswith(_RECORD_PREFIXES):
            message = parse_line(line, source, scrub)
            kind = message.get("type") if message else None
            if kind == "STATE":
                if states.update(message.get("state")):
                    yield from flush()
                    yield Checkpoint(name, states.value())
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
        block.append(line if line.endswith(b"\n") else line + b"\n")
        size += len(line)
        longest = max(longest, len(line))
        if len(block) >= batch_size or size >= MAX_BLOCK_BYTES:
            yield from flush()
    yield from flush()
    yield Checkpoint(name, states.value())


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
            yield Batch(name, part)
            continue
        at = part.column(CDC_DELETED_AT)
        if pa.types.is_timestamp(at.type):
            at = at.cast(pa.timestamp("us"))  # UTC wall time, as every source's deletes
        else:
            at = at.cast(pa.string()).cast(pa.timestamp("us", "UTC")).cast(pa.timestamp("us"))
        columns = [part.column(k) for k in keys]
        yield Deletes(name, pa.RecordBatch.from_arrays([*columns, at], [*keys, DELETED_AT]))
