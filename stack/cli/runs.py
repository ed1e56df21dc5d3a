"""Commands that run the pipeline: ``sync`` (the engine alone), ``run`` and ``backfill``
(Prefect flows), ``deploy`` and ``sensor`` (Prefect deployments and their events).

``flows/`` is imported inside the commands that need it, so the rest of the command
line starts without Prefect.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Annotated, Protocol, TypeVar

import typer

from stack.cli._common import (
    ConfigOpt,
    RegionOpt,
    SourceOpt,
    StreamOpt,
    TargetOpt,
    console,
    errors,
    out,
    prefect_defaults,
    say_error,
    say_warning,
)
from stack.cli.render import print_summary, progress, status
from stack.config import config_path, load_config
from stack.logs import apply_log_format
from stack.run import pipeline
from stack.run.backfill import BackfillOutcome, BackfillSelection, check_partitioning
from stack.run.summary import RunSummary

_Result = TypeVar("_Result")

FullRefreshOpt = Annotated[
    bool,
    typer.Option(
        "--full-refresh",
        help="Reload the selected streams from scratch: ignore their stored state and replace "
        "each region's rows in one transaction (readers see the old rows until it commits).",
    ),
]

RefreshCatalogOpt = Annotated[
    bool,
    typer.Option(
        "--refresh-catalog",
        help="Run each Airbyte connector's `discover` again instead of using the catalog "
        "cached by an earlier run (cached per connector version and config in "
        "~/.cache/mdstack/catalogs, or $MDSTACK_CATALOGS_DIR), and cache the new one: after "
        "the source behind a connector gained streams or columns. A stream missing from the "
        "cached catalog, or a column its records have beyond it, is discovered again "
        "without it.",
    ),
]


class _FlowState(Protocol):
    """A finished flow run's state, as Prefect returns it (``return_state=True``)."""

    def result(self, raise_on_failure: bool = ...) -> object: ...


def sync(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
    full_refresh: FullRefreshOpt = False,
    refresh_catalog: RefreshCatalogOpt = False,
) -> None:
    """Sync sources into the warehouse with the engine alone (no Prefect, no dbt).

    Each stream resumes from its last committed state (from scratch with
    --full-refresh); progress shows rows and rows/s per stream, and a summary table
    follows. Airbyte connectors' catalogs come from the cache of earlier syncs
    (--refresh-catalog discovers them again).
    """
    with errors(), _catalogs_refreshed(refresh_catalog):
        path = config_path(config)
        cfg = load_config(path)
        failed = False
        for name in region or cfg.region_names():
            selection = pipeline.select(cfg, name, source or (), stream or ())
            with progress() as shown:
                summary = pipeline.run_pipeline(
                    path,
                    target,
                    selection,
                    progress=shown,
                    transform=False,
                    full_refresh=full_refresh,
                )
            failed |= not _reported(summary, "sync")
        if failed:
            raise typer.Exit(1)


def _catalogs_refreshed(refresh: bool) -> AbstractContextManager[None]:
    """Airbyte connectors discover again within it if ``refresh`` (imported only then: the
    Airbyte adapter is loaded only by projects that use it)."""
    if not refresh:
        return nullcontext()
    from connectors.airbyte.catalogs import refreshing

    return refreshing()


def run(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
    full_refresh: FullRefreshOpt = False,
    refresh_catalog: RefreshCatalogOpt = False,
) -> None:
    """Run the pipeline as a Prefect flow: sync every stream, then dbt, then a summary.

    With no PREFECT_API_URL the flow runs in Prefect's ephemeral mode (no server
    needed). One flow run per region. --refresh-catalog: Airbyte connectors run
    `discover` again.
    """
    # The flow runs in this process and its stream tasks in its threads: the refresh holds
    # for them without being a flow parameter.
    with errors(), _catalogs_refreshed(refresh_catalog):
        path = config_path(config)
        cfg = load_config(path)
        regions = region or cfg.region_names()
        for name in regions:
            pipeline.select(cfg, name, source or (), stream or ())
        prefect_defaults()
        from flows.pipeline import pipeline as flow

        apply_log_format()

        failed = False
        for name in regions:
            state = flow(
                region=name,
                sources=source,
                streams=stream,
                target=target,
                config_path=str(path),
                full_refresh=full_refresh,
                return_state=True,
            )
            failed |= not _reported(_flow_result(state, RunSummary), "run")
        if failed:
            raise typer.Exit(1)


def _flow_result(state: _FlowState, kind: type[_Result]) -> _Result:
    """What a flow run returned: a failed flow carries its result too (its summary says
    what failed), and an exception it raised is raised here."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, kind):
        raise TypeError(f"the flow returned {type(result).__name__}, not a {kind.__name__}")
    return result


def _reported(summary: RunSummary, verb: str) -> bool:
    """Print the summary (and what failed); True when the run succeeded."""
    print_summary(summary)
    if not summary.ok:
        say_error(f"{verb} failed", summary.failure())
    return summary.ok


def deploy(
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would change on the server.")
    ] = False,
    project_dir: Annotated[
        str | None,
        typer.Option(
            "--project-dir",
            help="The folder of stack.yml as the workers see it (e.g. /mdstack), for "
            "deployments that set no `project_dir:`; default: each worker's "
            "MDSTACK_PROJECT_DIR.",
        ),
    ] = None,
) -> None:
    """Create or update the Prefect deployments stack.yml declares, on PREFECT_API_URL.

    One per region (and per source where `deployments:` says so), with cron schedules
    in the region's time zone, at most one active run per deployment (later ones wait),
    and event triggers; stale ones are deleted and prefect.yaml is rewritten to match.
    Warns where stack.yml names localhost for deployments whose workers run elsewhere.
    """
    with errors():
        prefect_defaults()
        from flows.deploy import api_url
        from flows.deploy import deploy as apply_deployments
        from stack.run.deployments import localhost_warnings, plan_deployments

        apply_log_format()

        path = config_path(config)
        cfg = load_config(path)
        plan = plan_deployments(cfg, project_dir=project_dir)
        for warning in localhost_warnings(cfg, plan, api_url()):
            say_warning(warning)
        changes = apply_deployments(path, dry_run=dry_run, project_dir=project_dir)
    for change in changes:
        out.print(change.describe(), highlight=False, soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing was changed")


def backfill(
    start: Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last day, included, YYYY-MM-DD.")],
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run partitions already done again.")
    ] = False,
) -> None:
    """Reload history one partition (a day, or `backfill.grain`) at a time.

    Each partition overwrites exactly its rows; partitions already done are skipped,
    so running the same backfill again resumes it.
    """
    with errors():
        path = config_path(config)
        selection = BackfillSelection(
            path, start, end, tuple(region or ()), tuple(source or ()), tuple(stream or ()), target
        )
        # Refused before Prefect starts: an ill-defined backfill must not touch anything.
        check_partitioning(selection)
        prefect_defaults()
        from flows.backfill import backfill as flow

        apply_log_format()

        state = flow(
            start,
            end,
            regions=region,
            sources=source,
            streams=stream,
            target=target,
            config_path=str(path),
            force=force,
            return_state=True,
        )
        outcome = _flow_result(state, BackfillOutcome)
    for kind, labels in (
        ("skipped", outcome.skipped),
        ("succeeded", outcome.succeeded),
        ("failed", outcome.failed),
    ):
        for label in labels:
            out.print(f"{status(kind)} {label}")
    if outcome.failed:
        raise typer.Exit(1)


def sensor(
    config: ConfigOpt = None,
    interval: Annotated[float, typer.Option(help="Seconds between two polls.")] = 10.0,
) -> None:
    """Watch the `on_file` folders of the deployments; emit an event per landed file."""
    with errors():
        prefect_defaults()
        from flows.sensors import watch

        apply_log_format()

        try:
            watch(config_path(config), interval)
        except KeyboardInterrupt:
            console.print("sensor stopped")
