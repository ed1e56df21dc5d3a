"""Staging of a stream's batches between two commits, in bounded memory.

Sources often yield many small batches (one per page, per day, per kind of
change). Each round trip to the warehouse costs milliseconds, so batches are
buffered as Arrow in memory up to ``max_rows`` and then written to the
warehouse's staging table in one call: memory stays bounded by the buffer,
and the number of round trips by the data size, not the batch count.

Every row carries ``_mds_seq``, its batch's position in the read, so the
merge can tell which of two events for a key came last; a history stream's rows also
carry ``_mds_pos``, their place in the stage, to order a key's versions inside one batch.
"""

from __future__ import annotations

import pyarrow as pa

from stack.sql import POS, SEQ, ident
from stack.warehouse.base import Warehouse

BUFFER_ROWS = 200_000


class Stage:
    """One staging table (records or deletes) of one stream."""

    def __init__(
        self, wh: Warehouse, name: str, max_rows: int = BUFFER_ROWS, *, positions: bool = False
    ) -> None:
        self.wh = wh
        self.positions = positions
        self.base = name
        self.name = name
        self._generation = 0
        self.max_rows = max_rows
        self.rows = 0
        """Rows staged since the last :meth:`reset` (buffered or written)."""
        self.columns: list[str] = []
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._written = False

    @property
    def ref(self) -> str | None:
        """SQL reference to the staging table after :meth:`flush`, or None if it is empty."""
        return self.wh.stage_ref(self.name) if self.rows else None

    def add(self, batch: pa.RecordBatch, seq: int) -> None:
        """Buffer ``batch`` as event number ``seq``; write the buffer out when it is full."""
        self.columns.extend(n for n in batch.schema.names if n not in self.columns)
        # pa.repeat, not pa.array(np.full(...)): that imports numpy.ma (~0.2 s) in every run
        numbered = batch.append_column(SEQ, pa.repeat(pa.scalar(seq, pa.int64()), batch.num_rows))
        if self.positions:
            places = pa.array(range(self.rows, self.rows + batch.num_rows), pa.int64())
            numbered = numbered.append_column(POS, places)
        self._buffer.append(numbered)
        self._buffered += batch.num_rows
        self.rows += batch.num_rows
        if self._buffered >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        """Write buffered batches to the warehouse's staging table in one call."""
        if not self._buffer:
            return
        tables = [pa.Table.from_batches([b]) for b in self._buffer]
        self.wh.stage(self.name, pa.concat_tables(tables, promote_options="default"))
        self._buffer, self._buffered, self._written = [], 0, True

    def migrate(self, schema: pa.Schema) -> None:
        """The stream's schema changed: move what is staged to a table of the new schema.

        Call before adding the first batch of the new schema. Rare (a schema change
        in the middle of a commit), so a copy of the staged rows is fine.
        """
        self.flush()
        if self._written:
            old = self.wh.stage_ref(self.name)
            engine = [SEQ, POS] if self.positions else [SEQ]
            kept = [*(n for n in self.columns if n in schema.names), *engine]
            self._generation += 1
            self.name = f"{self.base}_{self._generation}"
            for name in engine:
                schema = schema.append(pa.field(name, pa.int64()))
            empty = schema.empty_table()
            self.wh.stage(self.name, empty)
            names = ", ".join(ident(n) for n in kept)
            self.wh.execute(
                f"INSERT INTO {self.wh.stage_ref(self.name)} ({names}) SELECT {names} FROM {old}"
            )
            self.wh.execute(f"DROP TABLE {old}")
        self.columns = [n for n in schema.names if n not in (SEQ, POS)]

    def reset(self) -> None:
        """Forget everything staged (after a commit, or when the stream ends)."""
        self._buffer, self._buffered, self.rows = [], 0, 0
        if self._written:
            self.wh.drop_stage(self.name)
            self._written = False
        self.name, self._generation = self.base, 0
