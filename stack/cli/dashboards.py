"""dashboards: the demo's dashboards in a Superset that reads the embedded warehouse's BI file."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import closing, suppress
from pathlib import Path
from typing import Annotated

import typer

from stack.bi.superset import dashboards as exports
from stack.bi.superset import local
from stack.cli._common import ConfigOpt, TargetOpt, console, errors, out
from stack.config import config_path, load_config
from stack.config.targets import DuckDBTarget, Target
from stack.errors import ConfigError, MdstackError

PASSWORD_ENV = "MDSTACK_SUPERSET_PASSWORD"


def dashboards(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    port: Annotated[int, typer.Option(help="Port of the local Superset.")] = 8088,
    host: Annotated[
        str, typer.Option(help="Address it listens on (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    export: Annotated[
        Path | None,
        typer.Option(
            help="A Superset export folder to import (default: the demo's, "
            "daily revenue and marketing ROI by channel and region)."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Import into this running Superset instead of starting one "
            f"(signs in as --username with the password in ${PASSWORD_ENV})."
        ),
    ] = None,
    username: Annotated[str, typer.Option(help="Superset user for --url.")] = "admin",
    database_uri: Annotated[
        str | None,
        typer.Option(
            help="The BI file as the Superset of --url sees it "
            "(default: duckdb:///<bi_file>?access_mode=read_only on this machine)."
        ),
    ] = None,
    serve: Annotated[
        bool, typer.Option(help="Keep the local Superset running until Ctrl-C.")
    ] = True,
) -> None:
    """Start Apache Superset on the warehouse's BI file with the dashboards imported.

    The first start installs Superset into a virtualenv of its own under ~/.cache/mdstack
    (about 700 MB, a few minutes) and initialises its metadata (about a minute); later
    starts take seconds. It prints the dashboard's address and the `superset` hook to add
    under `bi:` so every good publish refreshes it. Run `mdstack run` first: the BI file
    (`bi_file:` on a DuckDB target) is written at each publish.
    """
    with errors():
        path = config_path(config)
        cfg = load_config(path)
        chosen, bi_file = _bi_file(cfg.active_target(target), target or cfg.target, path)
        folder = export or exports.SHOP
        exports.require_export(folder)
        uri = database_uri or f"duckdb:///{bi_file}?access_mode=read_only"
        if url is not None:
            password = os.environ.get(PASSWORD_ENV)
            if not password:
                raise MdstackError(f"--url needs the password of {username!r} in ${PASSWORD_ENV}")
            with closing(exports.signed_in(url, username, password)) as api:
                _report(exports.import_dashboards(api, folder, uri))
            return
        installation = local.install(say=lambda text: console.print(f"[dim]{text}[/dim]"))
        home = cfg.resolve_path(chosen.path) / "superset"  # beside the warehouse it reads
        with (
            local.running(installation, home, port, host) as superset,
            closing(superset.client()) as api,
        ):
            _report(exports.import_dashboards(api, folder, uri), superset.url, installation)
            if serve:
                out.print(
                    f"Superset runs at {superset.url} (log: {home / 'server.log'}); Ctrl-C stops it"
                )
                _wait_for_interrupt()


def _bi_file(target: Target, name: str, path: Path) -> tuple[DuckDBTarget, Path]:
    """The DuckDB target and its BI file (which must exist: a publish writes it)."""
    if not isinstance(target, DuckDBTarget) or target.bi_file is None:
        raise ConfigError(
            f"target {name!r} has no BI file for Superset to read",
            file=str(path),
            key=f"targets.{name}.bi_file",
            hint="on a duckdb target add `bi_file: {path: warehouse/bi.duckdb}`; "
            "on Snowflake, point Superset at Snowflake itself",
        )
    bi_file = (path.parent / target.bi_file.path).resolve()  # an absolute path stays itself
    if not bi_file.exists():
        raise MdstackError(
            f"{bi_file} does not exist yet: each good publish writes it; run `mdstack run` first"
        )
    return target, bi_file


def _report(
    imported: list[exports.Imported],
    url: str | None = None,
    installation: local.Installation | None = None,
) -> None:
    """The dashboards' addresses; for a local Superset, how to sign in and the hook to add."""
    for dashboard in imported:
        out.print(
            f"dashboard {dashboard.title!r}: {dashboard.url} ({len(dashboard.charts)} charts)"
        )
    if url is None or installation is None:
        return
    password_file = installation.template / "admin_password"
    out.print(f"sign in as {local.USER!r}; the password is in {password_file}")
    out.print(
        "to refresh it after every good publish, add under `bi:` in stack.yml:\n"
        f"  - {{type: superset, url: {url}, username: {local.USER},\n"
        f'     password: "${{file:{password_file}}}",\n'
        "     datasets: [marts.daily_revenue, marts.marketing_roi]}",
        markup=False,
        highlight=False,
    )


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM (the server stops when the caller's block ends)."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with suppress(KeyboardInterrupt):
        stopped.wait()
