"""The ``mdstack`` command line (Typer + Rich).

Every command takes ``--config`` (default ``./stack.yml`` or ``$MDSTACK_CONFIG``)
and ``--target``. Errors mdstack raises on purpose print as one paragraph
(what, where, how to fix) with no traceback; the exit code is 2 for a bad
config and 1 for anything else.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import Progress, TaskID, TextColumn
from rich.table import Table

from stack.config import StackConfig, config_path, load_config
from stack.errors import ConfigError, MdstackError
from stack.lineage import write_lineage_page
from stack.load import ledger, utcnow
from stack.redact import install_redaction
from stack.run import pipeline
from stack.run.backfill import check_partitioning
from stack.secrets import ReferenceCheck, check_references, reveal
from stack.warehouse import Warehouse

app = typer.Typer(
    help="mdstack: sources -> warehouse (DuckDB or Snowflake) -> dbt -> BI, run by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Path to stack.yml (default: ./stack.yml or $MDSTACK_CONFIG)."
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", "-t", help="Target from `targets:` (default: the file's `target:`)."),
]
RegionOpt = Annotated[
    list[str] | None,
    typer.Option("--region", "-r", help="Region to run (repeatable; default: every region)."),
]
SourceOpt = Annotated[
    list[str] | None,
    typer.Option("--source", "-s", help="Source to sync (repeatable; default: every source)."),
]
StreamOpt = Annotated[
    list[str] | None,
    typer.Option("--stream", help="Only these streams (repeatable; default: every stream)."),
]


secrets_app = typer.Typer(help="Secret references in stack.yml.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
connector_app = typer.Typer(
    help="Airbyte protocol connectors from PyPI (`connector: airbyte` sources).",
    no_args_is_help=True,
)
app.add_typer(connector_app, name="connector")


@app.callback()
def _main() -> None:
    """mdstack: sources -> warehouse (DuckDB or Snowflake) -> dbt -> BI, run by Prefect."""
    install_redaction()


@contextmanager
def _errors() -> Iterator[None]:
    """Print mdstack's own errors as one paragraph; let real bugs show their traceback."""
    try:
        yield
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except MdstackError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@contextmanager
def _warehouse(config: Path | None, target: str | None) -> Iterator[tuple[StackConfig, Warehouse]]:
    """The loaded config and the (unopened) warehouse of ``--target``, secrets resolved."""
    with _errors():
        cfg = load_config(config_path(config))
        with pipeline.secrets_for(cfg) as resolver:
            yield cfg, pipeline.open_target(cfg, target, resolver)


@app.command()
def sync(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
) -> None:
    """Sync sources into the warehouse with the engine alone (no Prefect, no dbt).

    Each stream resumes from its last committed state; progress shows rows and
    rows/s per stream, and a summary table follows.
    """
    with _errors():
        path = config_path(config)
        cfg = load_config(path)
        failed = False
        for name in region or cfg.region_names():
            selection = pipeline.select(cfg, name, source or (), stream or ())
            with _progress() as progress:
                summary = pipeline.run_pipeline(
                    path, target, selection, progress=progress, transform=False
                )
            _print_summary(summary)
            if not summary.ok:
                console.print(f"[bold red]sync failed:[/] {summary.failure()}", soft_wrap=True)
                failed = True
        if failed:
            raise typer.Exit(1)


@app.command()
def run(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
) -> None:
    """Run the pipeline as a Prefect flow: sync every stream, then dbt, then a summary.

    With no PREFECT_API_URL the flow runs in Prefect's ephemeral mode (no server
    needed). One flow run per region.
    """
    with _errors():
        path = config_path(config)
        cfg = load_config(path)
        regions = region or cfg.region_names()
        for name in regions:
            pipeline.select(cfg, name, source or (), stream or ())
        _prefect_defaults()
        from flows.pipeline import pipeline as flow

        failed = False
        for name in regions:
            state = flow(
                region=name,
                sources=source,
                streams=stream,
                target=target,
                config_path=str(path),
                return_state=True,
            )
            result = state.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                raise result
            summary = pipeline.RunSummary(**result)
            _print_summary(summary)
            if not summary.ok:
                console.print(f"[bold red]run failed:[/] {summary.failure()}", soft_wrap=True)
                failed = True
        if failed:
            raise typer.Exit(1)


@app.command()
def deploy(
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would change on the server.")
    ] = False,
) -> None:
    """Create or update the Prefect deployments stack.yml declares, on PREFECT_API_URL.

    One per region (and per source where `deployments:` says so), with cron schedules
    in the region's time zone, at most one active run per deployment (later ones wait),
    and event triggers; stale ones are deleted and prefect.yaml is rewritten to match.
    """
    with _errors():
        _prefect_defaults()
        from flows.deploy import deploy as apply_deployments

        changes = apply_deployments(config_path(config), dry_run=dry_run)
    for change in changes:
        out.print(change.describe(), highlight=False, soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing was changed")


@app.command()
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
    with _errors():
        # Refused before Prefect starts: an ill-defined backfill must not touch anything.
        check_partitioning(
            config_path(config), start, end, region or (), source or (), stream or ()
        )
        _prefect_defaults()
        from flows.backfill import backfill as flow

        state = flow(
            start,
            end,
            regions=region,
            sources=source,
            streams=stream,
            target=target,
            config_path=str(config_path(config)),
            force=force,
            return_state=True,
        )
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            raise outcome
    for kind in ("skipped", "succeeded", "failed"):
        for partition in outcome.get(kind, []):
            out.print(f"{_status(kind)} {partition}")
    if outcome.get("failed"):
        raise typer.Exit(1)


@app.command()
def sensor(
    config: ConfigOpt = None,
    interval: Annotated[float, typer.Option(help="Seconds between two polls.")] = 10.0,
) -> None:
    """Watch the `on_file` folders of the deployments; emit an event per landed file."""
    with _errors():
        _prefect_defaults()
        from flows.sensors import watch

        try:
            watch(config_path(config), interval)
        except KeyboardInterrupt:
            console.print("sensor stopped")


def _prefect_defaults() -> None:
    """Route our loggers through Prefect and keep it from phoning home, unless set."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stack,connectors")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The ephemeral server's start-up (a uvicorn subprocess plus migrations) takes 10-15 s on
    # a busy laptop; Prefect's default 20 s limit turns a slow start into a failed run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@app.command()
def status(config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Per stream and region: last run, mode, rows, state and freshness."""
    with _errors():
        rows = pipeline.status(config_path(config), target)
    if not rows:
        console.print("No runs yet: try `mdstack run`.")
        return
    table = Table(title="mdstack status")
    for column in ("stream", "region", "mode", "last run", "status", "rows", "state", "freshness"):
        table.add_column(column)
    now = utcnow()
    for r in rows:
        table.add_row(
            f"{r['source']}.{r['stream']}",
            r["region"],
            r["mode"],
            _when(r["finished_at"] or r["started_at"]),
            _status(r["status"]),
            _num(r["rows"]),
            _short(r["state"]),
            _age(now, r["last_loaded_at"]),
        )
    out.print(table)
    with _warehouse(config, target) as (cfg, warehouse), warehouse as wh:
        nodes = ledger.last_dbt_results(wh, cfg.name).to_pylist()
    if nodes:
        out.print(_dbt_results_table(nodes))


def _dbt_results_table(nodes: list[dict[str, Any]]) -> Table:
    """The last dbt run per region (``_mds_dbt_results``): counts by status per command,
    then every node that did not pass, with dbt's message."""
    table = Table(title="dbt, last run per region")
    for column in ("region", "run", "command / node", "status", "message"):
        table.add_column(column)
    groups: dict[tuple[str, str, str], dict[str, int]] = {}
    for n in nodes:
        counts = groups.setdefault((n["region"], n["run_id"], n["command"]), {})
        counts[n["status"]] = counts.get(n["status"], 0) + 1
    for (region, run_id, command), counts in groups.items():
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        table.add_row(region, run_id, command, summary, "")
    for n in nodes:
        if n["status"] not in ("success", "pass"):
            label = f"{n['resource_type']} {n['name']}"
            table.add_row(n["region"], n["run_id"], label, n["status"], _short(n["message"], 80))
    return table


@app.command("sql")
def sql_command(
    query: Annotated[str, typer.Argument(help="SQL to run on the active target.")],
    config: ConfigOpt = None,
    target: TargetOpt = None,
    fmt: Annotated[
        Literal["table", "csv", "json"], typer.Option("--format", "-f", help="Output format.")
    ] = "table",
) -> None:
    """Run a query on the active target and print the result."""
    with _warehouse(config, target) as (_, warehouse), warehouse as wh:
        result = wh.query(query)
    records = result.to_pylist()
    if fmt == "json":
        out.print_json(json.dumps(records, default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.schema.names)
        writer.writerows([r.values() for r in records])
    else:
        table = Table(*result.schema.names)
        for r in records:
            table.add_row(*("" if v is None else str(v) for v in r.values()))
        out.print(table)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def dbt(
    ctx: typer.Context,
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: Annotated[
        str | None, typer.Option("--region", "-r", help="Region whose vars dbt gets.")
    ] = None,
) -> None:
    """Plain dbt against the active target: `mdstack dbt build -s stg_orders+`.

    The profile is generated from stack.yml (nothing to edit when switching target);
    credentials reach dbt only as DBT_ENV_SECRET_* variables, which dbt scrubs.
    """
    with _errors():
        run = pipeline.dbt_passthrough(config_path(config), target, list(ctx.args), region)
    if not run.success:
        raise typer.Exit(1)


@app.command()
def docs(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    port: Annotated[int, typer.Option(help="Port to serve the docs on.")] = 8080,
    serve: Annotated[bool, typer.Option(help="Serve after generating.")] = True,
) -> None:
    """Generate the dbt docs (models, tests, the lineage graph) and serve them."""
    with _errors():
        path = config_path(config)
        run = pipeline.dbt_passthrough(path, target, ["docs", "generate"])
        if not run.success:
            raise typer.Exit(1)
        if serve:
            pipeline.dbt_passthrough(
                path, target, ["docs", "serve", "--port", str(port), "--no-browser"]
            )


@app.command("lineage")
def lineage_command(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (.html, or .svg for the drawing alone); "
            "default: lineage.page, else lineage.html.",
        ),
    ] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
) -> None:
    """Draw the lineage: sources -> streams -> raw tables -> dbt models -> dashboards,
    coloured by the last run's status and freshness."""
    with _errors():
        path = config_path(config)
        cfg = load_config(path)
        page = output or cfg.resolve_path(cfg.lineage.page if cfg.lineage else Path("lineage.html"))
        written = write_lineage_page(
            page, cfg, None, pipeline.status(path, target), cfg.bi, target=target
        )
    out.print(f"lineage page: [bold]{written}[/]")
    if open_page:
        webbrowser.open(written.resolve().as_uri())


@app.command()
def check(config: ConfigOpt = None, target: TargetOpt = None, region: RegionOpt = None) -> None:
    """Run stack.yml's data checks on the warehouse; exit 1 if one at severity error fails."""
    with _errors():
        path = config_path(config)
        cfg = load_config(path)
        run_id = pipeline.new_run_id()
        results = [
            r
            for name in (region or cfg.region_names())
            for r in pipeline.check_tables(path, target, cfg.check_region(name), run_id)
        ]
    table = Table(title="mdstack checks")
    for column in ("check", "region", "severity", "result", "message"):
        table.add_column(column)
    for r in results:
        mark = (
            "[green]pass[/]"
            if r["passed"]
            else ("[red]FAIL[/]" if r["severity"] == "error" else "[yellow]warn[/]")
        )
        table.add_row(r["name"], r["region"], r["severity"], mark, r["message"])
    out.print(table)
    if any(not r["passed"] and r["severity"] == "error" for r in results):
        raise typer.Exit(1)


EnvArg = Annotated[str, typer.Argument(help="Environment name (letters, digits, - and _).")]


@app.command()
def clone(env: EnvArg, config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Zero-copy clone of the whole warehouse as environment ENV (replacing it).

    Use it with `--target <target>@ENV` on any command; writes to the clone never
    show in the original, and the other way round.
    """
    with _warehouse(config, target) as (cfg, warehouse):
        made = warehouse.clone_into(env)
    out.print(
        f"cloned into environment [bold]{env}[/] ({made.path}); use "
        f"--target {(target or cfg.target).partition('@')[0]}@{env}"
    )


@app.command()
def publish(env: EnvArg, config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Atomically replace the warehouse's content with environment ENV's."""
    with _warehouse(config, target) as (_, warehouse):
        warehouse.publish(env)
    out.print(f"published environment [bold]{env}[/]")


@app.command("drop-env")
def drop_env(env: EnvArg, config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Remove environment ENV (the warehouse it was cloned from is never touched)."""
    with _warehouse(config, target) as (_, warehouse):
        warehouse.drop_environment(env)
    out.print(f"dropped environment [bold]{env}[/]")


@secrets_app.command("check")
def secrets_check(config: ConfigOpt = None, region: RegionOpt = None) -> None:
    """Resolve every secret reference in stack.yml and say which resolve — never a value.

    Dynamic database credentials are really leased, then revoked at once.
    """
    with _errors():
        cfg = load_config(config_path(config))
        found: dict[tuple[str, str], ReferenceCheck] = {}
        for name in region or cfg.region_names():
            rendered = {
                "targets": {t: v.model_dump(by_alias=True) for t, v in cfg.targets.items()},
                "sources": {s: cfg.source_config(s, name) for s in cfg.sources},
                "secrets": cfg.secrets.model_dump(),
                "bi": reveal([hook.model_dump() for hook in cfg.bi]),
            }
            for check in check_references(rendered, lambda: pipeline.secrets_for(cfg)):
                found.setdefault((check.location, check.reference), check)
    if not found:
        out.print("No secret references in stack.yml.")
        return
    table = Table("where", "reference", "resolves")
    for check in found.values():
        verdict = "[green]yes[/]" if check.ok else f"[red]no[/]: {check.error}"
        table.add_row(check.location, check.reference, verdict)
    out.print(table)
    if not all(c.ok for c in found.values()):
        raise typer.Exit(1)


@connector_app.command("install")
def connector_install(
    name: Annotated[
        str, typer.Argument(help="source-faker, or the PyPI name airbyte-source-faker")
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="Exact version (default: the latest).")
    ] = None,
) -> None:
    """Install an Airbyte connector into a virtualenv of its own (once per version).

    The folder is $MDSTACK_CONNECTORS_DIR/<package>-<version> (default
    ~/.cache/mdstack/connectors); an install that was interrupted is rebuilt.
    """
    from connectors.airbyte import install

    with _errors():
        console.print(f"installing {install.package_name(name)} {version or '(latest)'} ...")
        done = install.ensure_installed(name, version, upgrade=version is None)
    out.print(f"[bold]{done.package}[/] {done.version}: {done.executable}")


@connector_app.command("list")
def connector_list() -> None:
    """The installed Airbyte connectors, their versions and commands."""
    from connectors.airbyte import install

    table = Table("package", "version", "command")
    for done in install.installed():
        table.add_row(done.package, done.version, str(done.executable))
    out.print(table if table.row_count else f"no connectors installed in {install.cache_dir()}")


# -- rendering ------------------------------------------------------------------------------


@contextmanager
def _progress() -> Iterator[Callable[[str, int], None]]:
    """A progress callback showing rows read and rows/s per stream."""
    tasks: dict[str, tuple[TaskID, float]] = {}
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[rows]}"),
        console=console,
        transient=True,
    ) as bar:

        def update(stream: str, rows: int) -> None:
            if stream not in tasks:
                tasks[stream] = (bar.add_task(stream, rows=""), time.perf_counter())
            task, started = tasks[stream]
            rate = rows / max(time.perf_counter() - started, 1e-6)
            bar.update(task, rows=f"{rows:,} rows  {rate:,.0f} rows/s")

        yield update


def _print_summary(summary: pipeline.RunSummary) -> None:
    table = Table(title=f"run {summary.run_id} · region {summary.region}")
    for column in (
        "stream",
        "mode",
        "status",
        "read",
        "inserted",
        "updated",
        "deleted",
        "seconds",
        "rows/s",
    ):
        table.add_column(column, justify="right" if column not in ("stream", "mode") else "left")
    for s in summary.streams:
        rate = s["rows_read"] / s["seconds"] if s["seconds"] else 0
        table.add_row(
            f"{s['source']}.{s['stream']}",
            s["mode"],
            _status(s["status"]),
            _num(s["rows_read"]),
            _num(s["inserted"]),
            _num(s["updated"]),
            _num(s["deleted"]),
            f"{s['seconds']:.2f}",
            f"{rate:,.0f}",
        )
    out.print(table)
    if summary.dbt is not None:
        _print_dbt(summary.dbt)
    for hook in summary.dashboards:
        colour = {"succeeded": "green", "skipped": "yellow"}.get(hook["status"], "red")
        out.print(
            f"dashboard {hook['name']} ({hook['type']}): [{colour}]{hook['status']}[/] "
            f"{hook['detail']}"
        )


def _print_dbt(dbt: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    for node in dbt["nodes"]:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    colour = "green" if dbt["success"] else "red"
    out.print(f"dbt {' '.join(dbt['args'])}: [{colour}]{tally or 'nothing to do'}[/]")
    for node in dbt["nodes"]:
        if node["status"] not in ("success", "pass", "skipped"):
            colour = "yellow" if node["status"] == "warn" else "red"
            out.print(f"  [{colour}]{node['status']}[/] {node['unique_id']}: {node['message']}")
    for check in dbt.get("checks", []):
        if not check["passed"]:
            colour = "red" if check["severity"] == "error" else "yellow"
            out.print(
                f"  check [{colour}]{check['severity']}[/] {check['name']}: {check['message']}"
            )
    if dbt.get("published"):
        out.print("[green]published[/]")
    elif dbt.get("audit"):
        out.print(
            f"[red]not published[/]: the published warehouse is unchanged; the audit "
            f"build is kept in environment {dbt['audit']!r} for debugging"
        )


def _status(value: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "yellow"}.get(value, "white")
    return f"[{colour}]{value}[/]"


def _num(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _short(state: str | None, width: int = 40) -> str:
    if not state:
        return ""
    return state if len(state) <= width else state[: width - 1] + "…"


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "never loaded"
    seconds = max((now - then).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"
