"""Streams one read serves: synced together, each into its own table, state and ledger row.

A source that reads several streams in one pass (:class:`~connectors.base.SharedRead`:
PostgreSQL CDC through one replication slot per source) hands the engine one interleaved
flow of messages. Each stream still loads as :func:`~stack.load.sync.sync_stream` loads
it (the same :class:`~stack.load.sync.StreamRun`), on a warehouse handle of its own, so
each commits its rows and its state in its own transaction. The first failure stops the
read: what every stream committed before it stays committed, and each stream's next read
starts from its own state.

The source also gets the committed state of the source's other declared streams: a stream
this run does not load still holds the shared log at its position.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import ExitStack

from connectors.base import Message, SharedRead, Source, State
from connectors.errors import ConnectorError, MdstackError
from stack.load import ledger, repair
from stack.load.plan import CommitPolicy, RunContext, StreamPlan
from stack.load.sync import Progress, StreamRun
from stack.warehouse.base import Warehouse

__all__ = ["sync_group"]

log = logging.getLogger(__name__)


def sync_group(
    wh: Warehouse,
    source: Source,
    plans: Sequence[StreamPlan],
    ctx: RunContext,
    others: Sequence[str] = (),
    progress: Progress | None = None,
    policy: CommitPolicy = CommitPolicy(),
    full_refresh: bool = False,
    finished: dict[str, ledger.RunEntry] | None = None,
) -> dict[str, ledger.RunEntry]:
    """Read ``plans``' streams in one pass of ``source`` and load each into its table.

    Args:
        others: the source's other declared streams; their committed states go to the
            read (it releases nothing they still need), their tables are left alone.
        full_refresh: read every stream from scratch and replace its region's rows in one
            transaction, audited (:func:`stack.load.repair.full_refresh`).
        finished: filled with each stream's entry once it has succeeded, so that a caller
            can tell, after a failure, the streams that had finished before it.

    Returns:
        Each stream's run-ledger entry, by stream name.

    Raises:
        SyncConflict: another run of one of the streams and region is in progress.
        MdstackError: anything that stops one stream stops them all; the ledger records
            each as failed and committed checkpoints stay committed.
    """
    assert isinstance(source, SharedRead), "a source without a shared read syncs per stream"
    name = plans[0].source
    with ExitStack() as stack:
        stack.enter_context(ctx.logging(f"{name}.{'+'.join(p.name for p in plans)}"))
        for plan in sorted(plans, key=lambda p: p.name):
            key = ledger.StreamKey(ctx.pipeline, plan.source, plan.name, ctx.region)
            stack.enter_context(wh.lock(key.lock))
        runs: dict[str, StreamRun] = {}
        try:
            for plan in plans:
                cursor = stack.enter_context(wh.cursor())
                key = ledger.StreamKey(ctx.pipeline, plan.source, plan.name, ctx.region)
                swap = repair.full_refresh(cursor, key, ctx.run_id) if full_refresh else None
                runs[plan.name] = StreamRun(cursor, plan, ctx, progress, policy, swap)
            states = {stream: run.open() for stream, run in runs.items()}
            elsewhere = _committed(wh, ctx, name, others)

            def held() -> list[State]:
                return [r.committed for r in runs.values() if r.committed] + elsewhere

            messages = source.read_group([r.read for r in runs.values()], states, held)
            for message in messages:
                _route(runs, message).feed(message)
            for stream, run in runs.items():
                run.finish(source)
                if finished is not None:
                    finished[stream] = run.entry
            _release(wh, source, list(runs.values()), held())
        except Exception as exc:
            for run in runs.values():
                if run.entry.status != "succeeded":
                    run.fail(exc)
            raise
        finally:
            for run in runs.values():
                run.close()
        for run in runs.values():
            _log(run)
        return {stream: run.entry for stream, run in runs.items()}


def _release(
    wh: Warehouse, source: SharedRead, runs: Sequence[StreamRun], held: Sequence[State]
) -> None:
    """Let the source release its log up to the states just committed, and record in each
    run's ledger row what the server keeps for it now. The data is in: a failure here only
    leaves the log held until the next read releases it."""
    try:
        kept = source.release(held)
    except MdstackError as exc:
        log.warning("the source kept its change log held back: %s", exc.message)
        return
    if kept is None:
        return
    with wh.transaction():
        for run in runs:
            run.entry.replication_lag_bytes = kept
            ledger.record(wh, run.entry)


def _committed(wh: Warehouse, ctx: RunContext, source: str, streams: Sequence[str]) -> list[State]:
    keys = (ledger.StreamKey(ctx.pipeline, source, s, ctx.region) for s in streams)
    return [state for key in keys if (state := ledger.read_state(wh, key)) is not None]


def _route(runs: Mapping[str, StreamRun], message: Message) -> StreamRun:
    run = runs.get(message.stream)
    if run is None:
        raise ConnectorError(
            f"the source sent a message for stream {message.stream!r}, which this read"
            f" does not load ({sorted(runs)})",
            stream=message.stream,
            hint="this is a bug of the source: report it with the run's log",
        )
    return run


def _log(run: StreamRun) -> None:
    entry = run.entry
    log.info(
        "%s [%s] %s: %s read, %s inserted, %s updated, %s deleted in %.1fs",
        run.plan.lock_name,
        run.ctx.region,
        entry.status,
        f"{entry.rows_read:,}",
        f"{entry.inserted:,}",
        f"{entry.updated:,}",
        f"{entry.deleted:,}",
        entry.seconds,
    )
