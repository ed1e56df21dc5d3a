"""The direct load: records go straight into the destination, inside one open transaction.

Append and overwrite streams without deletes need no merge, so staging them
would copy every row twice. Instead a transaction is opened at the first
write of a commit, batches are appended to the destination as they arrive
(buffered to ~200 k rows per statement), and the commit writes the state and
the ledger row and then COMMITs: data and state still land together, and
readers see the old table until then. Memory stays bounded by the buffer.
"""

from __future__ import annotations

from contextlib import ExitStack

import pyarrow as pa

from connectors.base import State
from stack import ledger, sql
from stack.apply import LoadContext
from stack.errors import SchemaError
from stack.plan import utcnow
from stack.staging import BUFFER_ROWS


class DirectLoad:
    """Append records to the destination in an open transaction; commit with the state."""

    def __init__(self, lc: LoadContext, max_rows: int = BUFFER_ROWS) -> None:
        self.lc = lc
        self.max_rows = max_rows
        self.state: State | None = None
        self._pending = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._bad: list[pa.RecordBatch] = []
        self._tx: ExitStack | None = None

    @property
    def rows(self) -> int:
        return self._pending

    def add(self, batch: pa.RecordBatch) -> None:
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        self._pending += batch.num_rows
        if self._buffered >= self.max_rows:
            self._flush()

    def migrate(self, schema: pa.Schema) -> None:
        """The schema changed: write out the batches of the old schema first."""
        self._flush()

    def add_deletes(self, keys: pa.RecordBatch) -> None:
        raise SchemaError(
            "the source sent deletes for a stream it declared without them",
            source=self.lc.plan.source,
            stream=self.lc.plan.name,
            hint="fix the source's discover(), or set `deletes: none` on the stream",
        )

    def add_bad(self, records: pa.RecordBatch) -> None:
        self._bad.append(records)  # rare and small: kept until the commit
        self._pending += records.num_rows

    def commit(self) -> None:
        wh, plan, ctx, entry = self.lc.wh, self.lc.plan, self.lc.ctx, self.lc.entry
        self._begin()
        self._flush()
        now = utcnow()
        if self._bad:
            bad = pa.Table.from_batches(self._bad)
            meta = {
                "run_id": ctx.run_id,
                "pipeline": ctx.pipeline,
                "source": plan.source,
                "stream": plan.name,
                "region": ctx.region,
                "quarantined_at": now,
            }
            wh.append(wh.meta_schema, ledger.QUARANTINE_TABLE, _with_constants(bad, meta))
            entry.quarantined += bad.num_rows
        if self.state is not None:
            ledger.write_state(wh, self.lc.key, self.state, ctx.run_id, now)
        entry.checkpoints += 1
        self.lc.record()
        tx, self._tx = self._tx, None
        tx.close()  # COMMIT
        self._bad, self._pending, self.state = [], 0, None

    def close(self) -> None:
        """Roll back whatever was written since the last commit."""
        self._buffer, self._buffered, self._bad = [], 0, []
        if self._tx is not None:
            tx, self._tx = self._tx, None
            tx.__exit__(RuntimeError, RuntimeError("load aborted"), None)

    def _begin(self) -> None:
        if self._tx is not None:
            return
        tx = ExitStack()
        tx.enter_context(self.lc.wh.transaction())
        self._tx = tx
        if self.lc.plan.mode == "full_refresh_overwrite":
            self.lc.wh.execute(sql.clear_region_sql(self.lc.plan.target), [self.lc.ctx.region])

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._begin()
        data = pa.Table.from_batches(self._buffer)  # one schema: migrate() flushed the old
        ctx = self.lc.ctx
        meta = {sql.REGION: ctx.region, sql.RUN_ID: ctx.run_id, sql.LOADED_AT: ctx.loaded_at}
        self.lc.wh.append(self.lc.plan.schema, self.lc.plan.name, _with_constants(data, meta))
        self.lc.entry.inserted += data.num_rows
        self._buffer, self._buffered = [], 0


def _with_constants(data: pa.Table, values: dict[str, object]) -> pa.Table:
    """Add columns holding one value each (vectorised: no per-row Python)."""
    for name, value in values.items():
        scalar = pa.scalar(value)
        column = pa.repeat(scalar, data.num_rows) if data.num_rows else pa.array([], scalar.type)
        data = data.append_column(name, column)
    return data
