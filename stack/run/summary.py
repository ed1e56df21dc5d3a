"""What one pipeline run did: each stream's ledger entry, the transform step, the dashboards.

A stream's result is its run ledger entry (:class:`~stack.load.ledger.RunEntry`); a stream
whose step died before returning one gets :func:`failed_entry`. :class:`RunSummary` gathers
a run's results; the CLI prints it, :mod:`stack.run.report` writes it as Markdown,
:mod:`stack.run.alerts` and :mod:`stack.lineage` report it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stack.bi import HookResult
from stack.load import RunContext, utcnow
from stack.load.ledger import RunEntry
from stack.redact import redact
from stack.run.parallel import StreamJob
from stack.transform.result import TransformResult

FULL_REFRESH = "full_refresh_overwrite"


def failed_entry(ctx: RunContext, job: StreamJob, error: BaseException) -> RunEntry:
    """The entry of a stream whose step died before returning its ledger entry.

    Its mode is unknown (empty), its counts are zero and its times are when the failure
    was seen; the error text is redacted.
    """
    now = utcnow()
    return RunEntry(
        run_id=ctx.run_id,
        pipeline=ctx.pipeline,
        source=job.source,
        stream=job.stream,
        region=ctx.region,
        mode="",
        status="failed",
        started_at=now,
        finished_at=now,
        error=redact(str(error)),
    )


def changed_streams(entries: Iterable[RunEntry]) -> dict[str, dict[str, bool]]:
    """source -> {stream: was fully refreshed} for streams that wrote anything.

    A ``--full-refresh`` run of any mode counts as fully refreshed: rows it replaced may
    be gone, which dbt's incremental models only see when rebuilt.
    """
    changed: dict[str, dict[str, bool]] = {}
    for e in entries:
        full = e.mode == FULL_REFRESH or e.full_refresh
        if e.inserted or e.updated or e.deleted or full:
            changed.setdefault(e.source, {})[e.stream] = full
    return changed


@dataclass
class RunSummary:
    """What one pipeline run did, per stream and for dbt: printed at the end of a run.

    Prefect flows return it as it is (results are pickled when Prefect persists them).
    """

    run_id: str
    region: str
    streams: list[RunEntry] = field(default_factory=list)
    dbt: TransformResult | None = None
    dashboards: list[HookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        streams_ok = all(s.status == "succeeded" for s in self.streams)
        return streams_ok and (self.dbt is None or self.dbt.ok)

    @property
    def published(self) -> bool:
        """The transform step published its build (the dashboards may refresh)."""
        return self.dbt is not None and self.dbt.published

    def failure(self) -> str:
        """What failed, in one line: the streams, the dbt nodes, then the blocking checks."""
        failed = [
            f"stream {s.source}.{s.stream}: {s.error}"
            for s in self.streams
            if s.status != "succeeded"
        ]
        failed += self.dbt.failures() if self.dbt else []
        return "; ".join(failed) or "the run failed"
