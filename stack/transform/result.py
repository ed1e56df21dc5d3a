"""What the transform step of a run did: the dbt build, the data checks, the publish.

:class:`TransformResult` is what :func:`stack.run.pipeline.transform_changes` returns
and what the run summary, the run report, alerts, lineage and the CLI read.
"""

from __future__ import annotations

from dataclasses import dataclass

from stack.transform.checks import DataCheckResult
from stack.transform.dbt import DbtRun, NodeResult

DBT_FAILED = ("error", "fail", "runtime error")
"""Node statuses a run reports as failed (a node that errored, a test that failed)."""


@dataclass(frozen=True)
class TransformResult:
    """One run's transform step.

    Args:
        run: the ``dbt build`` of the models downstream of the changed streams.
        published: the build reached the published warehouse (directly, or by the
            publish of the audit environment).
        audit: the audit environment kept for debugging after a build that was not
            published; None when there is none.
        blocked: a data check at severity ``error`` failed, so nothing was published.
        checks: dbt's source freshness as check results, then the ``checks:`` of
            ``stack.yml``.
        previous_run: the region's run before this one that recorded the warehouse's
            version, for ``mdstack diff previous_run this_run``; None when there is none.
    """

    run: DbtRun
    published: bool = False
    audit: str | None = None
    blocked: bool = False
    checks: tuple[DataCheckResult, ...] = ()
    previous_run: str | None = None

    @property
    def ok(self) -> bool:
        """dbt succeeded and no check blocked the publish."""
        return self.run.success and not self.blocked

    @property
    def failed_nodes(self) -> tuple[NodeResult, ...]:
        """The nodes whose status is one of :data:`DBT_FAILED`."""
        return tuple(n for n in self.run.nodes if n.status in DBT_FAILED)

    def failures(self) -> list[str]:
        """What failed, one line each: the dbt nodes, then the checks that blocked."""
        lines = [f"dbt {n.resource_type} {n.name} {n.status}" for n in self.failed_nodes]
        lines += [
            f"check {c.name} failed at severity error: {c.message}"
            for c in self.checks
            if c.blocking
        ]
        return lines
