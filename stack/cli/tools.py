"""Commands around the pipeline: secret references (``secrets check``) and Airbyte
connectors (``connector install``, ``connector list``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from stack.cli._common import ConfigOpt, RegionOpt, console, errors, out
from stack.config import config_path, load_config
from stack.run import pipeline
from stack.secrets import ReferenceCheck, check_references, reveal


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
