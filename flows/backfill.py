"""``mdstack backfill``: the pipeline flow once per partition of a window, resumably.

The engine (:mod:`stack.run.backfill`) says which partitions are still to run — the
warehouse's ``_mds_backfills`` ledger knows which are done — and how many may run
at once (one on a single-writer warehouse such as DuckDB). Each partition is one
run of the pipeline flow with ``start``/``end``, so it shows in Prefect like any
other run, with its streams, dbt nodes and alerts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.states import Failed, State

from flows.pipeline import pipeline
from stack.config import config_path as default_config_path
from stack.run import backfill as engine
from stack.run.summary import RunSummary


@task(name="partition", task_run_name="partition {start} [{region}]")
def run_partition(
    config_path: str,
    target: str | None,
    region: str,
    sources: list[str],
    streams: list[str],
    start: str,
    end: str,
) -> RunSummary:
    """One partition ``[start, end)``: a pipeline run; fails when any of its streams failed."""
    state = pipeline(
        region=region,
        sources=sources,
        streams=streams,
        target=target,
        config_path=config_path,
        start=start,
        end=end,
        return_state=True,
    )
    summary = state.result()  # raises when the run failed
    if not isinstance(summary, RunSummary):
        raise TypeError(f"the pipeline flow returned {type(summary).__name__}, not a summary")
    return summary


@flow(name="mdstack-backfill", flow_run_name="backfill {start}..{end}")
def backfill(
    start: str,
    end: str,
    regions: list[str] | None = None,
    sources: list[str] | None = None,
    streams: list[str] | None = None,
    target: str | None = None,
    config_path: str | None = None,
    force: bool = False,
) -> engine.BackfillOutcome | State:
    """Run every pending partition of the days ``start``..``end`` (both included).

    Partitions the warehouse records as done are skipped (``force`` runs them
    again); a failed partition does not stop the others and stays pending, so
    running the same backfill again finishes the job.
    """
    path = str(default_config_path(config_path))
    selection = engine.BackfillSelection(
        path, start, end, tuple(regions or ()), tuple(sources or ()), tuple(streams or ()), target
    )
    engine.check_partitioning(selection)
    if force:
        engine.forget_partitions(selection)
    plan = engine.pending_partitions(selection)
    outcome = engine.BackfillOutcome(skipped=[r.label for r in plan.done])
    for wave in _waves(plan.pending, plan.parallelism):
        for run, state in zip(wave, _run_wave(path, target, wave), strict=True):
            (outcome.succeeded if state.is_completed() else outcome.failed).append(run.label)
    if outcome.failed:
        return Failed(message=f"partitions failed: {', '.join(outcome.failed)}", data=outcome)
    return outcome


def _run_wave(path: str, target: str | None, wave: tuple[Any, ...]) -> list[State]:
    """One partition runs in this thread (task timeouts can interrupt it), several in threads."""
    if len(wave) == 1:
        return [run_partition(path, target, *_arguments(wave[0]), return_state=True)]
    futures = [run_partition.submit(path, target, *_arguments(run)) for run in wave]
    for future in futures:
        future.wait()
    return [future.state for future in futures]


def _arguments(run: engine.PartitionRun) -> tuple[Any, ...]:
    window = run.partition.template_vars()
    return run.region, run.sources, run.stream_names, window["start"], window["end"]


def _waves(
    runs: tuple[engine.PartitionRun, ...], size: int
) -> list[tuple[engine.PartitionRun, ...]]:
    return [runs[i : i + size] for i in range(0, len(runs), size)]
