"""The pipeline flow: one task per stream, then dbt on what changed, then a summary.

Thin by design: each task calls one engine function from :mod:`stack.pipeline`
and passes ids and paths, never live connections. Streams of a DuckDB target
run one after another (a DuckDB-file catalog has a single writer).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.states import Failed, State

from stack import pipeline as engine
from stack.config import config_path as default_config_path
from stack.config import load_config
from stack.errors import TransformError


@task(name="sync", task_run_name="sync {source}.{stream} [{region}]")
def sync_stream(
    config_path: str, target: str | None, region: str, source: str, stream: str, run_id: str
) -> dict[str, Any]:
    """Sync one stream; committed checkpoints survive a failure of this task."""
    return engine.sync_streams(config_path, target, region, source, [stream], run_id)[0]


@task(name="dbt", task_run_name="dbt [{region}]")
def transform(
    config_path: str, target: str | None, region: str, changed: dict[str, dict[str, bool]]
) -> dict[str, Any] | None:
    """Build and test the dbt models downstream of the streams that changed."""
    return engine.transform_changes(config_path, target, region, changed)


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
) -> dict[str, Any] | State:
    """sources -> warehouse -> dbt for one region; returns the run summary.

    A failed stream does not stop the others; the run ends Failed (with the
    summary as its data) when any stream or dbt node failed.
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
                path, target, selection.region, source, stream, summary.run_id, return_state=True
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
    summary.dbt = transform(path, target, selection.region, engine.changed_streams(summary.streams))
    for node in (summary.dbt or {}).get("nodes", []):
        report_node(node, return_state=True)
    published = bool(summary.dbt and summary.dbt["published"])
    summary.dashboards = refresh_dashboards(path, selection.region, summary.run_id, published)
    if summary.ok:
        return summary.__dict__
    return Failed(message=summary.failure(), data=summary.__dict__)
