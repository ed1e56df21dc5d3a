"""The pipeline flow: one task per stream, then dbt on what changed, then a summary.

Thin by design: each task calls one engine function from :mod:`stack.pipeline`
and passes ids and paths, never live connections. Streams of a DuckDB target
run one after another (a DuckDB-file catalog has a single writer).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from stack import alerts
from stack import backfill as partitions
from stack import pipeline as engine
from stack.config import config_path as default_config_path
from stack.config import load_config
from stack.errors import TransformError

SYNC_RETRIES = 3
SYNC_BACKOFF_SECONDS = 10
"""Retries wait 10, 20, 40 s, each plus up to 50 % jitter."""
SYNC_TIMEOUT_SECONDS = 6 * 3600
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
    timeout_seconds=SYNC_TIMEOUT_SECONDS,
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
) -> dict[str, Any]:
    """Sync one stream (resuming from its committed state), or overwrite the backfill
    partition ``[start, end)`` of it; committed work survives a failure of this task."""
    if start and end:
        return partitions.sync_partition(
            config_path, target, region, source, stream, start, end, run_id
        )
    return engine.sync_streams(config_path, target, region, source, [stream], run_id)[0]


@task(name="dbt", task_run_name="dbt [{region}]", timeout_seconds=DBT_TIMEOUT_SECONDS)
def transform(
    config_path: str,
    target: str | None,
    region: str,
    changed: dict[str, dict[str, bool]],
    run_id: str = "",
) -> dict[str, Any] | None:
    """Build and test the dbt models downstream of the streams that changed."""
    return engine.transform_changes(config_path, target, region, changed, run_id)


@task(name="dbt-node", task_run_name="{node[resource_type]} {node[name]}")
def report_node(node: dict[str, Any]) -> dict[str, Any]:
    """One task per dbt node, so the Prefect UI shows what dbt built and tested."""
    if node["status"] in engine.DBT_FAILED:
        raise TransformError(
            f"dbt {node['resource_type']} {node['name']} {node['status']}: {node['message']}",
            model=node["name"],
        )
    return node


@task(name="bi", task_run_name="refresh dashboards [{region}]")
def refresh_dashboards(
    config_path: str, region: str, run_id: str, published: bool
) -> list[dict[str, Any]]:
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
) -> dict[str, Any] | State:
    """sources -> warehouse -> dbt for one region; returns the run summary.

    A failed stream does not stop the others; the run ends Failed (with the
    summary as its data) when any stream or dbt node failed. With ``start`` and
    ``end`` (ISO dates, end exclusive) the run is one backfill partition: each
    incremental stream's rows in that window are overwritten (``stack.backfill``).
    Alerts go out at the end (``alerts:`` in stack.yml).
    """
    path = str(default_config_path(config_path))
    config = load_config(path)
    selection = engine.select(
        config, region or config.region_names()[0], sources or (), streams or ()
    )
    summary = engine.RunSummary(engine.new_run_id(), selection.region)
    for source in selection.sources:
        for stream in selection.streams_of(config, source):
            state = sync_stream(
                path,
                target,
                selection.region,
                source,
                stream,
                summary.run_id,
                start,
                end,
                return_state=True,
            )
            summary.streams.append(
                state.result()
                if state.is_completed()
                else engine.failed_entry(
                    source,
                    stream,
                    selection.region,
                    summary.run_id,
                    state.result(raise_on_failure=False),
                )
            )
    summary.dbt = transform(
        path, target, selection.region, engine.changed_streams(summary.streams), summary.run_id
    )
    for node in (summary.dbt or {}).get("nodes", []):
        report_node(node, return_state=True)
    published = bool(summary.dbt and summary.dbt["published"])
    summary.dashboards = refresh_dashboards(path, selection.region, summary.run_id, published)
    engine.emit_lineage(path, target, summary)
    where = {"target": target, "sources": sources, "start": start, "end": end}
    notify(path, summary.__dict__, where | _this_run(), return_state=True)
    if summary.ok:
        return summary.__dict__
    return Failed(message=summary.failure(), data=summary.__dict__)


@task(name="alerts", task_run_name="alerts [{summary[region]}]")
def notify(config_path: str, summary: dict[str, Any], where: dict[str, Any]) -> list[dict]:
    """Send the run's alerts (on failure, and on success where asked); never fails the run."""
    return alerts.notify_run(config_path, summary, **where)


def _this_run() -> dict[str, str | None]:
    """The flow run and deployment, for alerts to point at (``None`` outside Prefect)."""
    name = current_deployment.name
    return {
        "flow_run_id": current_flow_run.id,
        "flow_run_url": current_flow_run.ui_url,
        "deployment": f"{current_flow_run.flow_name}/{name}" if name else None,
    }
