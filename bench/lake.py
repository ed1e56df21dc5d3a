"""Scenario 9: three regions loading one lake, its DuckLake catalog in PostgreSQL.

The demo project (:mod:`bench._lake_project`: ``mdstack init --source demo``, regions
``eu``, ``us`` and ``apac``, a few marts), every run a real ``mdstack run`` process, two
days (the first run loads the shop's history, the second one more day: updates and
deletes merged into the same raw tables), three ways, each round from a fresh warehouse:

* (a) the DuckDB-file catalog (the default), ``mdstack run`` with no ``--region``: one
  process runs every region's flow in turn (the serial way a user runs it);
* (b) the same, the catalog in PostgreSQL (a fresh schema per round);
* (c) the PostgreSQL catalog, ``mdstack run --region eu|us|apac`` started at once: wall
  time until the last ends; all must exit 0. Each log is searched for task retries
  (``Retry``) and for dbt builds that waited their turn.

After the second day the lakes of (b) and (c) are compared with (a)'s: every marts table's
rows, and per raw table and region the rows, the live rows and a hash of their contents,
without the columns of loading (``_mds_run_id``, ``_mds_loaded_at``).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from bench import _lake_project as project
from bench import _measure
from bench._cdc_source import mdstack
from bench._measure import Sample, ToolFailed
from bench._results import Row, ScenarioResult, Table
from bench.scenarios import Context

TITLE = "9. Many writers: three regions into one lake, the catalog in PostgreSQL"
DAYS = ("day 1: first run (history)", "day 2: the next day")
SCHEMA_PREFIX = "bench_lake_"
RETRY = "Retry"
DBT_WAIT = "waiting for another region's dbt build"
_RETRIED = re.compile(r"Task run failed with exception: (\w+)\('(.*?)'\) - Retry")
LOG_FORMAT = {"MDSTACK_LOG_FORMAT": "json"}
"""JSON logs: mdstack's own INFO lines (a dbt build waiting its turn) reach the log only so;
human logs show Prefect's and dbt's lines and mdstack's warnings."""


@dataclass(frozen=True)
class Sizes:
    history_days: int
    orders_per_day: int


FULL = Sizes(30, 1000)  # the demo's own
QUICK = Sizes(3, 200)


@dataclass
class Way:
    """One way of running the three regions, and what it measured, day by day."""

    key: str
    name: str
    postgres: bool
    parallel: bool
    samples: list[list[Sample]] = field(default_factory=lambda: [[] for _ in DAYS])
    rss: list[dict[str, float]] = field(default_factory=lambda: [{} for _ in DAYS])
    retries: list[Counter[str]] = field(default_factory=lambda: [Counter() for _ in DAYS])
    retried: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)

    def schema(self, round_: int) -> str | None:
        return f"{SCHEMA_PREFIX}{self.key}{round_}" if self.postgres else None


WAYS = (
    ("a", "mdstack run (a): file catalog, regions in turn", False, False),
    ("b", "mdstack run (b): PostgreSQL catalog, regions in turn", True, False),
    ("c", "mdstack run --region (c): PostgreSQL catalog, 3 processes at once", True, True),
)


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("lake", TITLE)
    if problem := ctx.pg.problem():
        result.skipped = problem
        return result
    sizes = QUICK if ctx.quick else FULL
    template = ctx.work / "lake" / "template"
    ctx.folder("lake")
    stack = project.make_template(template, sizes.history_days, sizes.orders_per_day)
    ways = [Way(*w) for w in WAYS]
    env = {"PREFECT_HOME": str(ctx.work / "prefect-home")} | LOG_FORMAT
    if ctx.pg.password:
        env[project.PASSWORD_ENV] = ctx.pg.password
    try:
        for round_ in range(1, ctx.runs + 1):
            prints: dict[str, dict[str, Any]] = {}
            for way in ways:
                found = _round(ctx, way, round_, template, stack, env)
                if found is not None:
                    prints[way.key] = found
            for way in ways[1:]:
                if "a" in prints and way.key in prints:
                    diff = project.differences(prints["a"], prints[way.key])
                    way.matches.append("; ".join(diff) if diff else "yes")
            _drop_schemas(ctx, round_)
    finally:
        _drop_schemas(ctx)
    _report(ctx, sizes, ways, result)
    return result


def _round(
    ctx: Context, way: Way, round_: int, template: Path, stack: dict[str, Any], env: dict[str, str]
) -> dict[str, Any] | None:
    """One round of ``way`` from a fresh warehouse: both days; the lake's fingerprint after
    them, or None when a run failed."""
    folder = ctx.work / "lake" / way.key
    schema = way.schema(round_)
    catalog = project.catalog_config(ctx.pg, schema) if schema else None
    config = project.copy(template, stack, folder, catalog)
    total = 0.0
    for day, label in enumerate(DAYS):
        argv = [mdstack(), "run", "--config", str(config)]
        try:
            if way.parallel:
                sample = _at_once(argv, env, folder, day)
            else:
                sample = _measure.run(argv, env=env, cwd=folder, log_to=folder / f"day{day}.log")
        except ToolFailed as exc:
            way.errors.append(f"round {round_}, {label}: {exc}")
            ctx.log(f"  [{round_}/{ctx.runs}] {way.name}, {label}: FAILED {exc}")
            _count_retries(way, day, folder)
            return None
        way.samples[day].append(sample)
        for who, mb in sample.report.get("rss", {"1 process": sample.rss_mb}).items():
            way.rss[day][who] = max(way.rss[day].get(who, 0.0), mb)
        seen = _count_retries(way, day, folder)
        total += sample.seconds
        ctx.log(
            f"  [{round_}/{ctx.runs}] {way.name}, {label}: {sample.seconds:.2f} s, "
            f"peak {sample.rss_mb:.0f} MB, {seen[RETRY]} task retries, "
            f"{seen[DBT_WAIT]} dbt waits"
        )
    way.totals.append(total)
    with project.open_lake(folder / "warehouse", ctx.pg, schema) as wh:
        return project.fingerprint(wh)


def _at_once(argv: list[str], env: dict[str, str], folder: Path, day: int) -> Sample:
    """``argv --region R`` for every region, started together; wall time until the last
    ends, peak RSS the largest (each region's in the report). Raises ToolFailed naming every
    region that failed, with its error."""
    regions = list(project.REGIONS)

    def one(region: str) -> Sample:
        log = folder / f"day{day}-{region}.log"
        return _measure.run([*argv, "--region", region], env=env, cwd=folder, log_to=log)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(regions)) as pool:
        futures = {r: pool.submit(one, r) for r in regions}
        done: dict[str, Sample] = {}
        failed: list[str] = []
        for region, future in futures.items():
            try:
                done[region] = future.result()
            except ToolFailed as exc:
                failed.append(f"--region {region}: {exc}")
    wall = time.perf_counter() - started
    if failed:
        raise ToolFailed("; ".join(failed))
    rss = {r: s.rss_mb for r, s in done.items()}
    return Sample(wall, wall, max(rss.values()), {"rss": rss})


def _count_retries(way: Way, day: int, folder: Path) -> Counter[str]:
    """Lines of this day's logs with a task retry or a dbt build waiting its turn."""
    seen: Counter[str] = Counter()
    for log in sorted(folder.glob(f"day{day}*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if RETRY in line:
                seen[RETRY] += 1
                if found := _RETRIED.search(line):
                    error, message = found.groups()
                    why = message.replace("\\\\n", " / ")[:300]
                    way.retried[f"{_task(line)}: {error}: {why}"] += 1
            if DBT_WAIT in line:
                seen[DBT_WAIT] += 1
    way.retries[day] += seen
    return seen


def _task(line: str) -> str:
    """The task run a JSON log line names (``?`` when the line is not JSON)."""
    try:
        return str(json.loads(line).get("task_run_name", "?"))
    except ValueError:
        return "?"


def _drop_schemas(ctx: Context, round_: int | None = None) -> None:
    """The catalogs of one round (every round's when None), and what clones left."""
    pattern = f"{SCHEMA_PREFIX}%{round_ if round_ is not None else ''}"
    with ctx.pg.connect() as conn:
        found = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s OR nspname LIKE %s",
            (pattern, pattern + "\\_\\_%"),
        ).fetchall()
        for (schema,) in found:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _report(ctx: Context, sizes: Sizes, ways: list[Way], result: ScenarioResult) -> None:
    base = {w.key: w for w in ways}
    for day, label in enumerate(DAYS):
        rows = []
        for way in ways:
            row = Row(way.name, way.samples[day], error="; ".join(way.errors) or None)
            if row.ok:
                row.extra = {
                    "x (a)": _ratio(way, base["a"], day),
                    "x (b)": _ratio(way, base["b"], day) if way.key == "c" else "",
                    "peak RSS per process MB": ", ".join(
                        f"{who} {mb:.0f}" for who, mb in way.rss[day].items()
                    ),
                    "task retries / dbt waits": (
                        f"{way.retries[day][RETRY]} / {way.retries[day][DBT_WAIT]}"
                    ),
                }
                if day == len(DAYS) - 1 and way.key != "a":
                    row.extra["lake = (a)'s"] = " / ".join(way.matches) or "not compared"
            rows.append(row)
        columns = ["x (a)", "x (b)", "peak RSS per process MB", "task retries / dbt waits"]
        if day == len(DAYS) - 1:
            columns.append("lake = (a)'s")
        result.tables.append(Table(label, rows, extra_columns=columns))
    result.notes += _summary(ways, base)
    result.notes.append(
        f"The project: `mdstack init --source demo`, regions eu, us, apac, the shop at "
        f"`history_days: {sizes.history_days}`, `orders_per_day: {sizes.orders_per_day}` "
        "(day 1 loads the history, day 2 one more day of orders, updates and deletes), "
        "its staging views and four mart tables (orders per day, sales per product, customers "
        "per segment, spend per channel; the template has no marts, so the bench adds them). "
        "Every cell is a whole `mdstack run` process (Prefect's ephemeral server, the syncs, "
        "dbt): *wall s* is its process s. (a) and (b) are one `mdstack run` without "
        "`--region`: one process runs the regions' flows in turn. (c) is three `mdstack run "
        "--region R` at once, all sharing one `PREFECT_HOME` as on one machine; its wall s "
        "is until the last ends, its peak RSS the largest of the three (each in its column)."
    )
    result.notes.append(
        "Compared after day 2 with (a)'s lake: every `marts` table's rows (floats to 6 "
        "decimals), and per `raw_shop` table and region the rows, the live rows (no "
        "`_mds_deleted_at`) and a sum of the rows' hashes, without `_mds_run_id` and "
        "`_mds_loaded_at`."
    )
    for text, count in _retries(ways):
        result.notes.append(f"{text} ({count}x)")
    for way in ways:
        for error in way.errors:
            result.notes.append(f"**Failed**: {way.name}: {error}")
    ctx.log(f"  lake: {sum(len(w.errors) for w in ways)} failed run(s)")


def _retries(ways: list[Way]) -> list[tuple[str, int]]:
    """The retried tasks of every way: what failed and why, and how often."""
    return [
        (f"Retried in {way.key}: {what}", count)
        for way in ways
        for what, count in sorted(way.retried.items())
    ]


def _ratio(way: Way, base: Way, day: int) -> str:
    if not way.samples[day] or not base.samples[day]:
        return "-"
    mine = statistics.median(s.seconds for s in way.samples[day])
    theirs = statistics.median(s.seconds for s in base.samples[day])
    return f"{mine / theirs:.2f}x"


def _summary(ways: list[Way], base: dict[str, Way]) -> list[str]:
    """The ratios per day and over both days, as a table of its own."""
    a, b, c = base["a"], base["b"], base["c"]
    lines = [
        "- Ratios of the medians (wall s), per day and over both days:",
        "",
        "| | (a) file, in turn s | (b) PostgreSQL, in turn s | (c) PostgreSQL, at once s "
        "| (c) / (a) | (c) / (b) | (b) / (a) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for day, label in enumerate(DAYS):
        lines.append(_ratio_line(label, [[s.seconds for s in w.samples[day]] for w in (a, b, c)]))
    lines.append(_ratio_line("both days", [w.totals for w in (a, b, c)]))
    return ["\n".join([*lines, ""])]


def _ratio_line(label: str, walls: list[list[float]]) -> str:
    med = [statistics.median(w) if w else None for w in walls]

    def div(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}x" if x and y else "-"

    cells = [label, *(f"{m:.2f}" if m else "-" for m in med)]
    cells += [div(med[2], med[0]), div(med[2], med[1]), div(med[1], med[0])]
    return "| " + " | ".join(cells) + " |"
