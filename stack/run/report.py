"""A run's summary as Markdown: streams, dbt nodes, checks and dashboards, in tables.

The orchestrator stores it where people look after a run (a Prefect artifact);
the engine only writes the text. Every value passes through
:func:`stack.redact.redact`, so a secret that slipped into an error message
never reaches the report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from stack.bi import HookResult
from stack.redact import redact
from stack.run.summary import RunSummary
from stack.transform.result import TransformResult

_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")
_STREAM_COLUMNS = ("stream", "mode", "status", "read", "inserted", "updated", "deleted", "seconds")


def report_key(pipeline: str, region: str) -> str:
    """The report's key: ``mdstack-run-<pipeline>-<region>``, in the characters keys allow
    (lowercase letters, digits, dashes), so each region's latest run is one key."""
    return _KEY_UNSAFE.sub("-", f"mdstack-run-{pipeline}-{region}".lower()).strip("-")


def run_markdown(summary: RunSummary, pipeline: str) -> str:
    """The whole report: a headline saying what failed, then one table per part."""
    outcome = "succeeded" if summary.ok else "**failed**"
    lines = [f"# {pipeline} · region {summary.region} · run {summary.run_id}: {outcome}", ""]
    if not summary.ok:
        lines += [f"Failed: {summary.failure()}", ""]
    lines += ["## Streams", ""]
    lines += _table(
        [*_STREAM_COLUMNS, "error"],
        (
            [
                f"{s.source}.{s.stream}",
                s.mode,
                s.status,
                s.rows_read,
                s.inserted,
                s.updated,
                s.deleted,
                f"{s.seconds:.2f}",
                s.error or "",
            ]
            for s in summary.streams
        ),
    )
    lines += _dbt(summary.dbt, summary.run_id)
    lines += _dashboards(summary.dashboards)
    return redact("\n".join(lines) + "\n")


def _dbt(dbt: TransformResult | None, run_id: str) -> list[str]:
    if dbt is None:
        return ["", "## dbt", "", "Nothing to build: no stream changed (or dbt is off)."]
    published = "published" if dbt.published else "not published"
    verdict = "succeeded" if dbt.run.success else "failed"
    lines = ["", "## dbt", "", f"`dbt {' '.join(dbt.run.args)}`: {verdict}, {published}.", ""]
    lines += _table(
        ["node", "type", "status", "seconds", "message"],
        (
            [n.name, n.resource_type, n.status, f"{n.seconds:.2f}", n.message or ""]
            for n in dbt.run.nodes
        ),
    )
    if dbt.previous_run:
        lines += ["", f"What it changed: `mdstack diff {dbt.previous_run} {run_id}`."]
    if dbt.checks:
        lines += ["", "## Checks", ""]
        lines += _table(
            ["check", "table", "severity", "passed", "observed", "message"],
            ([c.name, c.table, c.severity, c.passed, c.observed, c.message] for c in dbt.checks),
        )
    return lines


def _dashboards(hooks: Sequence[HookResult]) -> list[str]:
    if not hooks:
        return []
    lines = ["", "## Dashboards", ""]
    return lines + _table(
        ["hook", "type", "status", "seconds", "detail"],
        ([h.name, h.type, h.status, f"{h.seconds:.2f}", h.detail] for h in hooks),
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _cell(value: Any) -> str:
    """One table cell: no line breaks or pipes, which would break the table."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")[:500]
