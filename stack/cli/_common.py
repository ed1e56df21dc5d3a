"""What every command shares: the consoles, the common options, how errors print.

Errors mdstack raises on purpose print as one paragraph (what, where, how to fix)
with no traceback; the exit code is 2 for a bad config and 1 for anything else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stack.config import StackConfig, config_path, load_config
from stack.errors import ConfigError, ConfigProblems, MdstackError
from stack.logs import LogFormat, json_logs
from stack.run import pipeline
from stack.warehouse import Warehouse

log = logging.getLogger("stack.cli")
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
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="human: lines for people (default); json: one JSON object per line on stderr "
        "(time, level, logger, run_id, pipeline, region, stream, message) for log shippers.",
        envvar="MDSTACK_LOG_FORMAT",
    ),
]
EnvArg = Annotated[str, typer.Argument(help="Environment name (letters, digits, - and _).")]


@contextmanager
def errors() -> Iterator[None]:
    """Print mdstack's own errors as one paragraph; let real bugs show their traceback."""
    try:
        yield
    except ConfigError as exc:
        several = exc.problems if isinstance(exc, ConfigProblems) else (exc,)
        for problem in several:
            say_error("config error", str(problem))
        if len(several) > 1 and not json_logs():
            console.print(f"{len(several)} problems in {exc.file}", highlight=False)
        raise typer.Exit(2) from None
    except MdstackError as exc:
        say_error("error", str(exc))
        raise typer.Exit(1) from None


def say_error(label: str, text: str) -> None:
    """An error for the user: a red line on the console, or an ERROR record when logging
    as JSON (a log shipper reads stderr as JSON lines only)."""
    if json_logs():
        log.error("%s: %s", label, text)
    else:
        console.print(f"[bold red]{label}:[/] {text}", highlight=False, soft_wrap=True)


def say_warning(text: str) -> None:
    """A warning for the user: a yellow line on the console, or a WARNING record when
    logging as JSON."""
    if json_logs():
        log.warning("%s", text)
    else:
        console.print(f"[bold yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


@contextmanager
def warehouse(config: Path | None, target: str | None) -> Iterator[tuple[StackConfig, Warehouse]]:
    """The loaded config and the (unopened) warehouse of ``--target``, secrets resolved."""
    with errors():
        cfg = load_config(config_path(config))
        with pipeline.secrets_for(cfg) as resolver:
            yield cfg, pipeline.open_target(cfg, target, resolver)


def prefect_defaults() -> None:
    """Route our loggers through Prefect and keep it from phoning home, unless set."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stack,connectors")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The ephemeral server's start-up (a uvicorn subprocess plus migrations) takes 10-15 s on
    # a busy laptop; Prefect's default 20 s limit turns a slow start into a failed run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not os.environ.get("PREFECT_API_URL"):
        # The temporary server is stopped with events still in flight: Prefect 3.8 then logs
        # "Error flushing ... events" with four tracebacks after every good run. Its records
        # go with it, and its real failures reach the client as failed API calls.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
