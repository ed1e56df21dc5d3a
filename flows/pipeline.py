"""The pipeline flow: one task per stream, then dbt on what changed, then a summary.

Thin by design: each task calls one engine function from :mod:`stack.run.pipeline`
and passes ids and paths, never live connections. Stream tasks run in the
flow's thread pool, as many at once as ``max_parallel_streams`` and each
source's ``concurrency`` allow (:mod:`stack.run.parallel`; across flow runs, the
sources' global concurrency limits of :mod:`flows.limits`); they share the run's
warehouse and discovered sources through :mod:`stack.run.scope`. The run's
summary is kept as a Markdown artifact (:mod:`stack.run.report`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from flows.limits import source_limits, source_slot
from stack.bi import HookResult
from stack.config import StackConfig, load_config
from stack.config import config_path as default_config_path
from stack.errors import ConfigError, TransformError
from stack.load import RunContext
from stack.load.ledger import RunEntry
from stack.run import alerts
from stack.run import backfill as partitions
from stack.run import pipeline as engine
from stack.run import report as run_report
from stack.run.parallel import Bounds, StreamJob, run_bounded
from stack.run.summary import RunSummary, changed_streams, failed_entry
from stack.transform import NodeResult
from stack.transform.result import DBT_FAILED, TransformResult

SYNC_RETRIES = 3
SYNC_BACKOFF_SECONDS = 10
"""Retries wait 10, 20, 40 s, each plus up to 50 % jitter."""
DBT_TIMEOUT_SECONDS = 2 * 3600


def retryable(task: Any, task_run: Any, state: State) -> bool:
    """Retry only errors marked retryable (``exc.retryable``); unknown errors are not."""
    return getattr(state.result(raise_on_failure=False), "retryable", False) is True


@task(
    name="sync",
    task_run_name="sync {source}.{stream} [{region}]",
    retries=SYNC_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=SYNC_BACKOFF_SECONDS),
    retry_jitter_factor=0.5,
    retry_condition_fn=retryable,
)
def sync_stream(
    config_path: str,
    target: str | None,
    region: str,
    source: str,
    stream: str,
    run_id: str,
    start: str | None = None,
    end: str | None = None,
    limit: str | None = None,
    full_refresh: bool = False,
    group: tuple[str, ...] = (),
) -> RunEntry:
    """Sync one stream (resuming from its committed state, or from scratch replacing its
    rows with ``full_refresh``), or overwrite the backfill partition ``[start, end)`` of
    it; committed work survives a failure of this task. ``limit``: the source's global
    concurrency limit, a slot of which is held meanwhile. ``group``: the run's streams of
    the source, synced along where the source reads them in one pass."""
    with source_slot(limit):
        if start and end:
            return partitions.sync_partition(
                config_path, target, region, source, stream, start, end, run_id
            )
        return engine.sync_run_stream(
            config_path, target, region, source, stream, run_id, full_refresh, group
        )


@task(name="dbt", task_run_name="dbt [{region}]", timeout_seconds=DBT_TIMEOUT_SECONDS)
def transform(
    config_path: str,
    target: str | None,
    region: str,
    changed: dict[str, dict[str, bool]],
    run_id: str = "",
) -> TransformResult | None:
    """Build and test the dbt models downstream of the streams that changed."""
    return engine.transform_changes(config_path, target, region, changed, run_id)


@task(name="dbt-node", task_run_name="{node.resource_type} {node.name}")
def report_node(node: NodeResult) -> NodeResult:
    """One task per dbt node, so the Prefect UI shows what dbt built and tested."""
    if node.status in DBT_FAILED:
        raise TransformError(
            f"dbt {node.resource_type} {node.name} {node.status}: {node.message}",
            model=node.name,
        )
    return node


@task(name="bi", task_run_name="refresh dashboards [{region}]")
def refresh_dashboards(
    config_path: str, region: str, run_id: str, published: bool
) -> list[HookResult]:
    """Refresh the BI tools after a good publish (hooks retry and time out on their own)."""
    return engine.refresh_dashboards(config_path, region, run_id, published)


@flow(name="mdstack-pipeline", flow_run_name="{region}")
def pipeline(
    region: str | None = None,
    sources: list[str] | None = None,
    streams: list[str] | None = None,
    target: str | None = None,
    config_path: str | None = None,
    start: str | None = None,
    end: str | None = None,
    full_refresh: bool = False,
) -> RunSummary | State:
    """sources -> warehouse -> dbt for one region; returns the run summary.

    A failed stream does not stop the others; the run ends Failed (with the
    summary as its data) when any stream or dbt node failed. With ``start`` and
    ``end`` (ISO dates, end exclusive) the run is one backfill partition: each
    incremental stream's rows in that window are overwritten (``stack.run.backfill``).
    With ``full_refresh`` each stream is read from scratch and its region's rows are
    replaced in one transaction (``mdstack run --full-refresh``).
    Alerts go out at the end (``alerts:`` in stack.yml).
    A relative ``config_path`` (a deployment's ``stack.yml``) is taken in the working
    directory, the project folder the deployment's pull step entered.
    """
    path = str(default_config_path(config_path).absolute())
    config = load_config(path)
    selection = engine.select(
        config, region or config.region_names()[0], sources or (), streams or ()
    )
    summary = RunSummary(engine.new_run_id(), selection.region)
    ctx = RunContext(config.name, selection.region, summary.run_id)
    if full_refresh and start and end:
        raise ConfigError(
            "a full refresh reloads every row; a backfill partition only its window",
            key="full_refresh",
            hint="pass either full_refresh or start and end, not both",
        )
    summary.streams = _sync_all(path, target, config, selection, ctx, start, end, full_refresh)
    summary.dbt = transform(
        path, target, selection.region, changed_streams(summary.streams), summary.run_id
    )
    for node in summary.dbt.run.nodes if summary.dbt else ():
        report_node(node, return_state=True)
    summary.dashboards = refresh_dashboards(
        path, selection.region, summary.run_id, summary.published
    )
    engine.emit_lineage(path, target, summary)
    where = {"target": target, "sources": sources, "start": start, "end": end}
    notify(path, summary, where | _this_run(), return_state=True)
    create_markdown_artifact(
        run_report.run_markdown(summary, config.name),
        key=run_report.report_key(config.name, selection.region),
        description=f"mdstack run {summary.run_id}: streams, dbt, checks, dashboards",
    )
    if summary.ok:
        return summary
    return Failed(message=summary.failure(), data=summary)


def _sync_all(
    path: str,
    target: str | None,
    config: StackConfig,
    selection: engine.Selection,
    ctx: RunContext,
    start: str | None,
    end: str | None,
    full_refresh: bool,
) -> list[RunEntry]:
    """One task per stream, started within the run's bounds; entries in ``stack.yml`` order.

    Backfill partitions open the warehouse per task, so they run one at a time. Each task
    also holds a slot of its source's global limit, where the server has one
    (:mod:`flows.limits`), so a source's ``concurrency`` holds across flow runs too.
    """
    bounds = Bounds(1, {}) if start and end else Bounds.of(config)
    region = selection.region
    limits = source_limits(config.name, (job.source for job in selection.jobs(config)))

    def submit(job: StreamJob) -> PrefectFuture[RunEntry]:
        args = (path, target, region, job.source, job.stream, ctx.run_id, start, end)
        group = tuple(selection.streams_of(config, job.source))
        return sync_stream.submit(
            *args, limit=limits.get(job.source), full_refresh=full_refresh, group=group
        )

    entries: dict[StreamJob, RunEntry] = {}
    try:
        for job, future in run_bounded(selection.jobs(config), bounds, submit):
            future.wait()  # done already: this only takes its final state
            state = future.state
            entries[job] = (
                state.result()
                if state.is_completed()
                else failed_entry(ctx, job, state.result(raise_on_failure=False))
            )
    finally:
        engine.end_syncs(path, target, region, ctx.run_id)  # dbt needs the warehouse next
    return [entries[job] for job in selection.jobs(config)]


@task(name="alerts", task_run_name="alerts [{summary.region}]")
def notify(config_path: str, summary: RunSummary, where: dict[str, Any]) -> list[alerts.Delivery]:
    """Send the run's alerts (on failure, and on success where asked); never fails the run."""
    return alerts.notify_run(config_path, summary, **where)


def _this_run() -> dict[str, str | None]:
    """The flow run and deployment, for alerts to point at (``None`` outside Prefect, and
    no URL where no Prefect UI is set: an ephemeral run has none to link to)."""
    name = current_deployment.name
    return {
        "flow_run_id": current_flow_run.id,
        "flow_run_url": current_flow_run.ui_url if PREFECT_UI_URL.value() else None,
        "deployment": f"{current_flow_run.flow_name}/{name}" if name else None,
    }
