"""How the command line shows a run: progress, the summary tables, colours and numbers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.progress import Progress, TaskID, TextColumn
from rich.table import Table

from stack.cli._common import console, out
from stack.logs import json_logs
from stack.run.summary import RunSummary
from stack.transform.result import TransformResult

log = logging.getLogger(__name__)

_SUMMARY_COLUMNS = (
    "stream",
    "mode",
    "status",
    "read",
    "inserted",
    "updated",
    "deleted",
    "seconds",
    "rows/s",
)


PROGRESS_EVERY = 10.0
"""Seconds between two progress lines of one stream when logging as JSON."""


@contextmanager
def progress() -> Iterator[Callable[[str, int], None]]:
    """A progress callback showing rows read and rows/s per stream: a live display for
    people, a log line per stream every :data:`PROGRESS_EVERY` seconds for JSON logs."""
    if json_logs():
        yield _logged_progress()
        return
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


def _logged_progress() -> Callable[[str, int], None]:
    started: dict[str, float] = {}
    shown: dict[str, float] = {}

    def update(stream: str, rows: int) -> None:
        now = time.perf_counter()
        first = started.setdefault(stream, now)
        if now - shown.get(stream, first) >= PROGRESS_EVERY:
            shown[stream] = now
            rate = rows / max(now - first, 1e-6)
            log.info("%s: %s rows read, %s rows/s", stream, f"{rows:,}", f"{rate:,.0f}")

    return update


def print_summary(summary: RunSummary) -> None:
    """A run's streams as a table, then its dbt step and its dashboards."""
    table = Table(title=f"run {summary.run_id} · region {summary.region}")
    for column in _SUMMARY_COLUMNS:
        table.add_column(column, justify="right" if column not in ("stream", "mode") else "left")
    for s in summary.streams:
        rate = s.rows_read / s.seconds if s.seconds else 0
        table.add_row(
            f"{s.source}.{s.stream}",
            s.mode,
            status(s.status),
            num(s.rows_read),
            num(s.inserted),
            num(s.updated),
            num(s.deleted),
            f"{s.seconds:.2f}",
            f"{rate:,.0f}",
        )
    out.print(table)
    if summary.dbt is not None:
        _print_dbt(summary.dbt, summary.run_id)
    for hook in summary.dashboards:
        colour = {"succeeded": "green", "skipped": "yellow"}.get(hook.status, "red")
        out.print(f"dashboard {hook.name} ({hook.type}): [{colour}]{hook.status}[/] {hook.detail}")


def _print_dbt(dbt: TransformResult, run_id: str) -> None:
    counts: dict[str, int] = {}
    for node in dbt.run.nodes:
        counts[node.status] = counts.get(node.status, 0) + 1
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    colour = "green" if dbt.run.success else "red"
    out.print(f"dbt {' '.join(dbt.run.args)}: [{colour}]{tally or 'nothing to do'}[/]")
    for node in dbt.run.nodes:
        if node.status not in ("success", "pass", "skipped"):
            colour = "yellow" if node.status == "warn" else "red"
            out.print(f"  [{colour}]{node.status}[/] {node.unique_id}: {node.message}")
    for check in dbt.checks:
        if not check.passed:
            colour = "red" if check.severity == "error" else "yellow"
            out.print(f"  check [{colour}]{check.severity}[/] {check.name}: {check.message}")
    if dbt.published:
        out.print("[green]published[/]")
    elif dbt.audit:
        out.print(
            f"[red]not published[/]: the published warehouse is unchanged; the audit "
            f"build is kept in environment {dbt.audit!r} for debugging"
        )
    if dbt.previous_run:
        out.print(f"what it changed: mdstack diff {dbt.previous_run} {run_id}", highlight=False)


def dbt_results_table(nodes: list[dict[str, Any]]) -> Table:
    """The last dbt run per region (``_mds_dbt_results`` rows): counts by status per
    command, then every node that did not pass, with dbt's message."""
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
            table.add_row(n["region"], n["run_id"], label, n["status"], short(n["message"], 80))
    return table


def status(value: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "yellow"}.get(value, "white")
    return f"[{colour}]{value}[/]"


def num(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def short(state: str | None, width: int = 40) -> str:
    if not state:
        return ""
    return state if len(state) <= width else state[: width - 1] + "…"


def age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "never loaded"
    seconds = max((now - then).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"
