"""Streams that another system loads into the warehouse: record the load, write no rows.

An ``airbyte_server`` source runs an Airbyte sync job, and Airbyte's destination writes
the tables. The engine's part is bookkeeping: a ledger row per stream (``running`` while
the job runs, then its outcome and the rows the job reports) and the stream's state, in
one transaction. A stream whose load moved rows, or that Airbyte refreshes in full, counts
as changed (:func:`stack.run.pipeline.changed_streams`), so dbt rebuilds what is downstream.
"""

from __future__ import annotations

import logging

from connectors.base import Batch, Checkpoint, Deletes, ExternalLoad, Source, State
from stack.errors import SchemaError
from stack.load import ledger
from stack.load.plan import RunContext, StreamPlan, utcnow
from stack.warehouse.base import Warehouse

log = logging.getLogger(__name__)


def sync_external(
    wh: Warehouse, source: Source, plan: StreamPlan, ctx: RunContext
) -> ledger.RunEntry:
    """Run the source's external load of one stream and record it (call holding the lock).

    ``rows_read`` and ``inserted`` are the rows the external system reports for the load
    (an Airbyte job reports one total for all the streams it synced).

    Raises:
        MdstackError: the load failed; the ledger records it as failed.
    """
    entry, key = ledger.new_run(plan, ctx)
    state: State | None = None
    try:
        ledger.begin_run(wh, key, ctx.run_id)
        ledger.record(wh, entry)
        for message in source.read(plan.stream, ledger.read_state(wh, key)):
            if isinstance(message, ExternalLoad):
                entry.rows_read += message.rows or 0
                entry.inserted += message.rows or 0
                log.info(
                    "%s: loaded externally by %s (%s rows, %s bytes)",
                    plan.name,
                    message.job or "another system",
                    message.rows,
                    message.bytes,
                )
            elif isinstance(message, Checkpoint):
                state = message.state
            elif isinstance(message, Batch | Deletes):
                raise SchemaError(
                    "the source yielded records for a stream it declares loaded externally",
                    source=plan.source,
                    stream=plan.name,
                )
        entry.status, entry.finished_at = "succeeded", utcnow()
        entry.seconds = (entry.finished_at - entry.started_at).total_seconds()
        with wh.transaction():
            if state is not None:
                ledger.write_state(wh, key, state, ctx.run_id, ctx.loaded_at)
            entry.checkpoints += state is not None
            ledger.record(wh, entry)
    except Exception as exc:
        entry.status, entry.finished_at = "failed", utcnow()
        entry.seconds = (entry.finished_at - entry.started_at).total_seconds()
        entry.error = ledger.describe_error(exc)
        ledger.record_failure(lambda: ledger.record(wh, entry), entry)
        raise
    return entry
