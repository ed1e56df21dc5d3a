"""Commands around the pipeline: ``validate``, secret references (``secrets check``) and
Airbyte connectors (``connector install``, ``connector list``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from stack.cli._common import ConfigOpt, RegionOpt, TargetOpt, console, errors, out
from stack.config import config_path, load_config
from stack.run import pipeline
from stack.secrets import ReferenceCheck, check_references, reveal


def validate(config: ConfigOpt = None, target: TargetOpt = None) -> None:
    """Check stack.yml without running anything: every problem at once, each with its
    file:line, key and fix (exit 2), or a short account of what the file declares.

    Checked: the schema, keys written twice, schedules and time zones, every name a
    deployment, check or backfill refers to, each source's config against its connector
    (in every region), the dbt project. Secret references are not resolved here:
    `mdstack secrets check` and `mdstack doctor` do that.
    """
    with errors():
        path = config_path(config)
        cfg = load_config(path)
        cfg.active_target(target)
    streams = sum(len(source.streams) for source in cfg.sources.values())
    scheduled = [name for name, region in cfg.regions.items() if region.schedule] + [
        name for name, spec in cfg.deployments.items() if spec.schedule
    ]
    out.print(f"[green]valid:[/] {path}", highlight=False)
    out.print(
        f"  {len(cfg.sources)} source(s), {streams} stream(s), {len(cfg.region_names())} "
        f"region(s), target {target or cfg.target!r}, {len(cfg.deployments)} deployment(s)"
        f" ({len(scheduled)} schedule(s)), "
        + (f"dbt project {cfg.dbt.project_dir}" if cfg.dbt and cfg.dbt.enabled else "no dbt"),
        highlight=False,
    )


def secrets_check(config: ConfigOpt = None, region: RegionOpt = None) -> None:
    """Resolve every secret reference in stack.yml and say which resolve — never a value.

    Dynamic database credentials are really leased, then revoked at once.
    """
    with errors():
        cfg = load_config(config_path(config))
        found: dict[tuple[str, str], ReferenceCheck] = {}
        for name in region or cfg.region_names():
            rendered = {
                "targets": {t: v.model_dump(by_alias=True) for t, v in cfg.targets.items()},
                "sources": {s: cfg.source_config(s, name) for s in cfg.sources},
                "secrets": cfg.secrets.model_dump(),
                "bi": reveal([hook.model_dump() for hook in cfg.bi]),
                "alerts": reveal([alert.model_dump(by_alias=True) for alert in cfg.alerts]),
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

    with errors():
        console.print(f"installing {install.package_name(name)} {version or '(latest)'} ...")
        done = install.ensure_installed(name, version, upgrade=version is None)
    out.print(f"[bold]{done.package}[/] {done.version}: {done.executable}")


def connector_list() -> None:
    """The installed Airbyte connectors, their versions and commands."""
    from connectors.airbyte import install

    table = Table("package", "version", "command")
    for done in install.installed():
        table.add_row(done.package, done.version, str(done.executable))
    out.print(table if table.row_count else f"no connectors installed in {install.cache_dir()}")
