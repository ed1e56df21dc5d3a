"""Commands on the warehouse: what it holds (``status``, ``lineage``, ``check``), queries
and dbt against it (``sql``, ``dbt``, ``docs``), and its environments (``clone``,
``publish``, ``drop-env``)."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import webbrowser
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from stack.cli._common import (
    ConfigOpt,
    EnvArg,
    RegionOpt,
    TargetOpt,
    console,
    errors,
    out,
    warehouse,
)
from stack.cli.render import age, dbt_results_table, num, short, status, when
from stack.config import config_path, load_config
from stack.config.durations import seconds
from stack.errors import MdstackError
from stack.lineage import write_lineage_page
from stack.load import ledger, utcnow
from stack.run import pipeline
from stack.run.status import StreamStatus, stream_status
from stack.warehouse import Warehouse


def status_command(config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Per stream and region: last run, mode, rows, state and freshness (and, when a source
    reports it, the change log its server kept for the stream); then the fields loaded
    under another column name."""
    with errors():
        rows = stream_status(config_path(config), target)
    if not rows:
        console.print("No runs yet: try `mdstack run`.")
        return
    table = Table(title="mdstack status")
    columns = ["stream", "region", "mode", "last run", "status", "rows", "state", "freshness"]
    lag = any(r.replication_lag_bytes is not None for r in rows)
    for column in columns + (["replication lag"] if lag else []):
        table.add_column(column)
    now = utcnow()
    for r in rows:
        cells = [
            f"{r.source}.{r.stream}",
            r.region,
            r.mode,
            when(r.finished_at or r.started_at),
            status(r.status),
            num(r.rows),
            short(r.state),
            age(now, r.last_loaded_at),
        ]
        table.add_row(*cells, *([_mib(r.replication_lag_bytes)] if lag else []))
    out.print(table)
    _print_renames(rows)
    with warehouse(config, target) as (cfg, unopened), unopened as wh:
        nodes = ledger.last_dbt_results(wh, cfg.name).to_pylist()
    if nodes:
        out.print(dbt_results_table(nodes))


def _mib(size: int | None) -> str:
    return "" if size is None else f"{size / (1 << 20):,.1f} MiB"


def _print_renames(rows: list[StreamStatus]) -> None:
    """One line per field a stream loads under another column name (once per stream, not
    per region: the mapping belongs to the table)."""
    shown: set[str] = set()
    for r in rows:
        stream = f"{r.source}.{r.stream}"
        if stream in shown:
            continue
        shown.add(stream)
        for rename in r.renames:
            out.print(
                f"{stream}: field {rename.source!r} -> column {rename.column!r} ({rename.reason})",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )


def sql_command(
    query: Annotated[str, typer.Argument(help="SQL to run on the active target.")],
    config: ConfigOpt = None,
    target: TargetOpt = None,
    fmt: Annotated[
        Literal["table", "csv", "json"], typer.Option("--format", "-f", help="Output format.")
    ] = "table",
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="RUN_ID|TIME",
            help="Read the warehouse as run RUN_ID left it (the id in its summary's title), "
            "or as it was at TIME (ISO 8601, UTC unless it says: 2026-12-01T09:00), while it "
            "keeps that version (`retention:`; Snowflake: or its time travel).",
        ),
    ] = None,
) -> None:
    """Run a query on the active target and print the result."""
    with warehouse(config, target) as (cfg, unopened):
        if as_of is not None:
            unopened = _as_of_run(cfg.name, unopened, as_of)
        with unopened as wh:
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


def _as_of_run(pipeline: str, current: Warehouse, run_id: str) -> Warehouse:
    """The warehouse as run ``run_id`` left it (the version its ledger recorded)."""
    return current.as_of(_version_of(pipeline, current, run_id))


def _version_of(pipeline: str, current: Warehouse, run_id: str) -> int:
    """The version run ``run_id`` (or a time) left the (unopened) warehouse at."""
    with current as wh:
        return _run_snapshot(wh, pipeline, run_id)


def _run_snapshot(wh: Warehouse, pipeline: str, run_id: str) -> int:
    """The version run ``run_id`` left the warehouse at; or, given a time (ISO 8601, naive
    meaning UTC: ``2026-12-01T09:00``), the version the warehouse was at then."""
    moment = _moment(run_id)
    if moment is not None:
        return _version_at(wh, moment, run_id)
    snapshot = ledger.run_snapshot(wh, pipeline, run_id)
    if snapshot is None:
        raise MdstackError(
            f"run {run_id!r} of {pipeline!r} recorded no version of this warehouse",
            hint="take the id from a run's summary (`run <id> · region <r>`) or "
            "`mdstack sql 'SELECT * FROM _mds_run_snapshots'`; a run records one when dbt ran",
        )
    return snapshot


def _moment(text: str) -> datetime | None:
    """``text`` as a time, if it is one (run ids are hexadecimal: no ``-`` nor ``:``)."""
    if not any(mark in text for mark in "-:"):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _version_at(wh: Warehouse, moment: datetime, text: str) -> int:
    found = wh.snapshot_at(moment)
    if found is None:
        raise MdstackError(
            f"this warehouse keeps no version from {text} or before",
            hint="give a later time, or a run id; DuckDB targets keep versions back to their "
            "`retention:` (`mdstack expire`)",
        )
    return found


def expire(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Keep this much history (30d, 2w, 12h); default: the target's `retention:`.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would go; remove nothing.")] = False,
) -> None:
    """Remove the warehouse's versions older than its retention, and the files only they
    used: `--as-of` and `diff` reach back as far as what is kept. Environments (clones)
    keep working."""
    with warehouse(config, target) as (cfg, wh):
        chosen = cfg.active_target(target)
        try:
            keep = seconds(older_than) if older_than else getattr(chosen, "retention", None)
        except ValueError as exc:
            raise MdstackError(f"--older-than {older_than!r}: {exc}") from None
        if keep is None:
            raise MdstackError(
                "how much history to keep is not set",
                hint=f"add `retention: 30d` to targets.{target or cfg.target}, or pass "
                "--older-than 30d",
            )
        span = keep if isinstance(keep, timedelta) else timedelta(seconds=float(keep))
        expired = wh.expire(utcnow() - span, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    oldest = expired.oldest_kept.isoformat(" ", "seconds") if expired.oldest_kept else "-"
    out.print(
        f"{verb} {expired.snapshots} version(s) and {expired.files} file(s); "
        f"the oldest version kept is from {oldest}"
    )
    if expired.environments:
        out.print(
            f"kept for environment(s) {', '.join(expired.environments)}: the versions after "
            "their clone and the files they read (`mdstack drop-env ENV` when done with one)"
        )


def _schema_table(text: str) -> tuple[str, str]:
    schema, dot, name = text.partition(".")
    if not (schema and dot and name):
        raise MdstackError(f"--table {text!r}: name it as schema.table (e.g. raw_shop.orders)")
    return schema, name


def diff_command(
    run_a: Annotated[
        str,
        typer.Argument(metavar="RUN_A", help="The run (or ISO 8601 time) to compare from."),
    ],
    run_b: Annotated[
        str | None,
        typer.Argument(
            metavar="[RUN_B]",
            help="The run (or time) to compare to (default: the warehouse now).",
        ),
    ] = None,
    config: ConfigOpt = None,
    target: TargetOpt = None,
    tables: Annotated[
        list[str] | None,
        typer.Option("--table", help="Only this table, as schema.table (repeatable)."),
    ] = None,
    fmt: Annotated[
        Literal["table", "json"], typer.Option("--format", "-f", help="Output format.")
    ] = "table",
) -> None:
    """What changed between two runs (or since one): rows added, changed (with the columns
    that changed) and deleted, per table and region, from DuckLake's change feed (on
    Snowflake with `retention:`, between kept versions, each table compared whole)."""
    with warehouse(config, target) as (cfg, unopened), unopened as wh:
        if not wh.capabilities.diff:
            raise MdstackError(
                "mdstack diff needs the versions kept: DuckDB targets keep them, Snowflake "
                "targets with `retention:`",
                hint=f"set `retention:` on the target, or compare `mdstack sql '<query>' "
                f"--as-of {run_a}` with the same query --as-of {run_b or 'a later run'}",
            )
        before = _run_snapshot(wh, cfg.name, run_a)
        after = _run_snapshot(wh, cfg.name, run_b) if run_b else None
        found = wh.diff(before, after, [_schema_table(t) for t in tables] if tables else None)
    if fmt == "json":
        out.print_json(json.dumps([dataclasses.asdict(d) for d in found]))
        return
    columns = ("table", "region", "added", "changed", "deleted", "columns changed")
    shown = Table(*columns, title=f"{run_a} -> {run_b or 'now'}")
    for d in found:
        note = ", ".join(d.columns) or ("(rebuilt: compared whole)" if d.rebuilt else "")
        shown.add_row(d.table, d.region, num(d.added), num(d.changed), num(d.deleted), note)
    out.print(shown if found else f"no table changed from {run_a} to {run_b or 'now'}")


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
    with errors():
        run = pipeline.dbt_passthrough(config_path(config), target, list(ctx.args), region)
    if not run.success:
        raise typer.Exit(1)


def docs(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    port: Annotated[int, typer.Option(help="Port to serve the docs on.")] = 8080,
    serve: Annotated[bool, typer.Option(help="Serve after generating.")] = True,
) -> None:
    """Generate the dbt docs (models, tests, the lineage graph) and serve them."""
    with errors():
        path = config_path(config)
        run = pipeline.dbt_passthrough(path, target, ["docs", "generate"])
        if not run.success:
            raise typer.Exit(1)
        if serve:
            pipeline.dbt_passthrough(
                path, target, ["docs", "serve", "--port", str(port), "--no-browser"]
            )


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
    with errors():
        path = config_path(config)
        cfg = load_config(path)
        page = output or cfg.resolve_path(cfg.lineage.page if cfg.lineage else Path("lineage.html"))
        written = write_lineage_page(
            page, cfg, None, stream_status(path, target), cfg.bi, target=target
        )
    out.print(f"lineage page: [bold]{written}[/]")
    if open_page:
        webbrowser.open(written.resolve().as_uri())


def check(config: ConfigOpt = None, target: TargetOpt = None, region: RegionOpt = None) -> None:
    """Run stack.yml's data checks on the warehouse; exit 1 if one at severity error fails."""
    with errors():
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
            if r.passed
            else ("[red]FAIL[/]" if r.severity == "error" else "[yellow]warn[/]")
        )
        table.add_row(r.name, r.region, r.severity, mark, r.message)
    out.print(table)
    if any(r.blocking for r in results):
        raise typer.Exit(1)


def clone(
    env: EnvArg,
    config: ConfigOpt = None,
    target: TargetOpt = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="RUN_ID|TIME",
            help="Clone the warehouse as run RUN_ID left it (the id in its summary's title), "
            "or as it was at TIME (ISO 8601, UTC unless it says), "
            "still zero-copy and writable, while the warehouse keeps that version: DuckDB "
            "targets whose catalog is a DuckDB file, and Snowflake (a kept version, else "
            "time travel).",
        ),
    ] = None,
) -> None:
    """Zero-copy clone of the whole warehouse as environment ENV (replacing it).

    Use it with `--target <target>@ENV` on any command; writes to the clone never
    show in the original, and the other way round. With --as-of RUN_ID the clone holds
    the warehouse as that run left it (tables made later absent, tables dropped later
    back): to inspect or repair it, then `mdstack publish ENV` to restore it.
    """
    with warehouse(config, target) as (cfg, unopened):
        version = _version_of(cfg.name, unopened, as_of) if as_of is not None else None
        made = unopened.clone_into(env, as_of=version)
    # A DuckDB clone is a folder worth showing; a Snowflake clone is a database, no path.
    folder = getattr(made, "path", None)
    what = ""
    if as_of is not None:
        when = f"as it was at {as_of}" if _moment(as_of) else f"as run {as_of} left it"
        what = f" {when} (version {version})"
    out.print(
        f"cloned into environment [bold]{env}[/]{what}{f' ({folder})' if folder else ''}; use "
        f"--target {(target or cfg.target).partition('@')[0]}@{env}"
    )


def publish(env: EnvArg, config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Atomically replace the warehouse's content with environment ENV's."""
    with warehouse(config, target) as (_, unopened):
        unopened.publish(env)
        written = unopened.refresh_bi_file()
    out.print(f"published environment [bold]{env}[/]")
    if written is not None:
        out.print(f"BI file {written.path}: {written.tables} tables, {written.rows} rows")


def drop_env(env: EnvArg, config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Remove environment ENV (the warehouse it was cloned from is never touched)."""
    with warehouse(config, target) as (_, unopened):
        unopened.drop_environment(env)
    out.print(f"dropped environment [bold]{env}[/]")
