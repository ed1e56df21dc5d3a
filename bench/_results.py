"""Results: what a scenario measured, rendered as markdown and written to ``bench/results/``.

A :class:`ScenarioResult` holds tables (one row per tool, medians of its samples),
the targets with met/missed, and notes. :func:`render` turns a whole bench run
into one markdown document; :func:`write` stores it as ``bench/results/<date>.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from bench._measure import Sample, Tool

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One tool's line in a table: the median of its samples."""

    tool: str
    samples: list[Sample]
    rows: int | None = None
    error: str | None = None
    note: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, tool: Tool, rows: int | None = None, **extra: str) -> Row:
        reported = [s.report.get("rows") for s in tool.samples if s.report.get("rows")]
        moved = rows
        if moved is None and reported:
            moved = int(statistics.median(reported))
        return cls(tool.name, list(tool.samples), moved, tool.error, tool.note, dict(extra))

    @property
    def ok(self) -> bool:
        return bool(self.samples)

    @property
    def wall(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def process(self) -> float:
        return statistics.median(s.process_seconds for s in self.samples)

    @property
    def rss(self) -> float:
        """Peak RSS: the largest of the runs."""
        return max(s.rss_mb for s in self.samples)

    @property
    def spread(self) -> str:
        values = sorted(s.seconds for s in self.samples)
        return f"{values[0]:.2f}-{values[-1]:.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    def report(self, key: str) -> object:
        """A value the worker reported, from its last run."""
        return self.samples[-1].report.get(key) if self.samples else None


@dataclass
class Target:
    """One target, as measured here; ``met`` None when it could not be measured."""

    goal: str
    measured: str
    met: bool | None


@dataclass
class Table:
    """Tools side by side; ratios against the floor and against mdstack."""

    title: str
    rows: list[Row]
    floor: str | None = None
    subject: str | None = None
    extra_columns: Sequence[str] = ()

    def row(self, tool: str) -> Row | None:
        return next((r for r in self.rows if r.tool == tool and r.ok), None)


@dataclass
class ScenarioResult:
    """What one scenario produced (or why it was skipped)."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


RSS_LIMIT_MB = 300.0
"""Peak RSS every mdstack run of every scenario must stay under."""


def memory_target(result: ScenarioResult) -> Target | None:
    """``peak RSS ≤ 300 MB`` over every mdstack row of the scenario: the worst one named."""
    runs = [
        (row.rss, row.tool, table.title)
        for table in result.tables
        for row in table.rows
        if row.ok and row.tool.startswith("mdstack")
    ]
    if not runs:
        return None
    rss, tool, title = max(runs)
    goal = f"every mdstack run: peak RSS ≤ {RSS_LIMIT_MB:.0f} MB"
    return Target(goal, f"worst {rss:.0f} MB ({tool}, {title})", rss <= RSS_LIMIT_MB)


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def _table_markdown(table: Table) -> list[str]:
    floor, subject = table.row(table.floor or ""), table.row(table.subject or "")
    head = ["tool", "wall s (median)", "range s", "process s", "rows/s", "peak RSS MB"]
    head += ["x floor"] if table.floor else []
    head += ["x mdstack"] if table.subject else []
    head += list(table.extra_columns)
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for row in table.rows:
        tool = row.tool + (f" ({row.note})" if row.note else "")
        if not row.ok:
            cells = [tool, f"failed: {(row.error or 'no run').replace('|', '/')[:300]}"]
            cells += [""] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        rate = f"{row.rows / row.wall:,.0f}" if row.rows and row.wall > 0 else "-"
        cells = [
            tool,
            f"{row.wall:.2f}",
            row.spread,
            f"{row.process:.2f}",
            rate,
            f"{row.rss:.0f}",
        ]
        if table.floor:
            cells.append(ratio(row.wall, floor.wall if floor else None))
        if table.subject:
            cells.append(ratio(row.wall, subject.wall if subject else None))
        cells += [row.extra.get(c, "") for c in table.extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_scenario(result: ScenarioResult) -> str:
    lines = [f"## {result.title}", ""]
    if result.skipped:
        return "\n".join([*lines, f"Skipped: {result.skipped}", ""])
    for table in result.tables:
        lines += _table_markdown(table)
    if result.targets:
        lines += ["| target | measured | |", "|---|---|---|"]
        for t in result.targets:
            verdict = "not measured" if t.met is None else ("met" if t.met else "**missed**")
            lines.append(f"| {t.goal} | {t.measured} | {verdict} |")
        lines.append("")
    lines += [note if note.startswith(("- ", "  ", "|")) else f"- {note}" for note in result.notes]
    return "\n".join([*lines, ""])


def machine() -> str:
    """One line about where this ran: cores, memory, load, versions."""
    import duckdb

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {mem:.0f} GiB, load average at the end {load}; "
        f"Python {platform.python_version()}, DuckDB {duckdb.__version__}"
    )


def render(results: Sequence[ScenarioResult], runs: int, command: str, versions: str) -> str:
    """The whole bench run as markdown."""
    head = [
        f"# mdstack benchmarks, {date.today().isoformat()}",
        "",
        f"`{command}` on {machine()}. {versions}",
        "",
        f"Method: every tool runs in its own subprocess; the tools of a scenario run in turn "
        f"(A B C … A B C …), {runs} round(s), and each cell is the median "
        "(the range is min-max). *wall s* is the work as timed inside the process "
        "(interpreter start and imports excluded; the floor is timed as a whole process); "
        "*process s* is the whole process. *Peak RSS* is `ru_maxrss` of the tool's process "
        "(from `wait4` in a small shim, the largest of the runs; a child process it started, "
        "such as Prefect's server, counts on its own, not added). The machine is shared with other "
        "engineers' test runs: expect noise, and trust ratios within one table more than "
        "absolute seconds.",
        "",
    ]
    return "\n".join(head + [render_scenario(r) for r in results])


def write(text: str, path: Path | None = None) -> Path:
    """Write the document (default ``bench/results/<today>.md``); returns the path."""
    path = path or RESULTS_DIR / f"{date.today().isoformat()}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
