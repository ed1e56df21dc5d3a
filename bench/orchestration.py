"""Scenario 6: orchestration overhead, 100 tiny streams through the Prefect flow vs the engine.

A generated ``stack.yml`` (in the scratch folder) declares one source of 100 streams of
10 rows each (``bench/workers/tiny_source.py``), into a fresh DuckDB warehouse. Three
ways to run it, each in its own process (``bench/workers/orchestration.py``):

* engine: ``run_pipeline`` without dbt, as ``mdstack sync`` does;
* per-stream steps: ``sync_run_stream`` once per stream, the body of each Prefect task
  (sharing the run's config, warehouse and discovered source, as the tasks do);
* Prefect flow: the flow ``mdstack run`` starts, ephemeral Prefect, one task per stream
  (then the dbt task, which has nothing to do: the config has no dbt section).

Each process syncs one stream first (cold start: catalog, ledger, Prefect's server) and
then all 100, timed alone. Overhead per stream = (flow - engine) / streams, split into
the cost of isolating steps (steps - engine) and Prefect's own (flow - steps).

Target: ≤ 50 ms orchestration overhead per stream.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench import _measure
from bench._measure import Tool, interleave
from bench._profile import sql_lines
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "6. Orchestration overhead"
LIMIT_MS = 50.0
MODES = {
    "engine": "engine alone (run_pipeline)",
    "steps": "engine, one step per stream",
    "flow": "Prefect flow",
}


def stack_yml(streams: int, rows: int = 10) -> dict:
    names = [f"s{i:03d}" for i in range(streams)]
    return {
        "name": "bench",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": "warehouse"}},
        "sources": {
            "tiny": {
                "connector": "bench_tiny",
                "config": {"streams": streams, "rows": rows},
                "schema": "raw_tiny",
                "streams": {n: {"sync": "full_refresh_overwrite"} for n in names},
            }
        },
    }


def _tool(ctx: Context, mode: str, folder: Path, streams: int) -> Tool:
    config = folder / "stack.yml"

    def before() -> None:
        ctx.folder(*folder.relative_to(ctx.work).parts)
        config.write_text(yaml.safe_dump(stack_yml(streams), sort_keys=False))

    env = {"PREFECT_HOME": str(ctx.work / "prefect-home")}
    argv = [ctx.python(), ctx.worker("orchestration.py"), mode, str(config)]
    return Tool(MODES[mode], lambda: (argv, env, folder), before=before)


def run(ctx: Context) -> ScenarioResult:
    streams = 5 if ctx.quick else 100
    result = ScenarioResult("orchestration", f"{TITLE}: {streams} tiny streams")
    modes = [m for m in MODES if not (ctx.quick and m != "engine")]
    tools = [_tool(ctx, mode, ctx.work / "orchestration" / mode, streams) for mode in modes]
    interleave(tools, ctx.runs, ctx.log)
    rows = {t.name: Row.of(t, rows=0) for t in tools}
    if ctx.quick:
        result.notes.append(
            "--quick runs the engine alone: Prefect's ephemeral server takes 10-75 s to start."
        )
    engine = rows[MODES["engine"]]
    for row in rows.values():
        if row.ok:
            cold = sorted(s.report.get("cold", 0.0) for s in row.samples)[len(row.samples) // 2]
            row.extra = {
                "ms per stream": f"{row.wall / streams * 1000:.0f}",
                "overhead ms per stream": (
                    f"{(row.wall - engine.wall) / streams * 1000:+.0f}" if engine.ok else "-"
                ),
                "first stream (cold) s": f"{cold:.2f}",
            }
    result.tables.append(
        Table(
            f"{streams} streams x 10 rows, full_refresh_overwrite, fresh DuckDB warehouse",
            list(rows.values()),
            extra_columns=("ms per stream", "overhead ms per stream", "first stream (cold) s"),
        )
    )
    steps, flow = rows.get(MODES["steps"]), rows.get(MODES["flow"])
    if engine.ok and flow and flow.ok:
        per = (flow.wall - engine.wall) / streams * 1000
        result.targets.append(
            Target(
                f"≤ {LIMIT_MS:.0f} ms orchestration overhead per stream",
                f"{per:.0f} ms",
                per <= LIMIT_MS,
            )
        )
        if steps and steps.ok:
            isolation = (steps.wall - engine.wall) / streams * 1000
            prefect = (flow.wall - steps.wall) / streams * 1000
            own = (
                f"{prefect:.0f} ms Prefect's own (task runs, states, events to its server)"
                if prefect > 0
                else "Prefect's own cost is below the noise here (the flow ran faster than "
                "the same steps without Prefect)"
            )
            result.notes.append(
                f"Of the {per:.0f} ms per stream, {isolation:.0f} ms are the engine's own step "
                "isolation (one call per stream, on a warehouse handle of its own, within the "
                f"run's shared scope), and {own}."
            )
        if ctx.profile:
            result.notes += _trace(ctx, tools[0], streams)
    result.notes.append(
        "Not counted above: the cold start of a process (first stream, including Prefect's "
        "ephemeral server for the flow), shown in its own column."
    )
    return result


def _trace(ctx: Context, engine: Tool, streams: int) -> list[str]:
    """The engine once more with every warehouse statement timed: where a stream's time goes."""
    if engine.before:
        engine.before()
    argv, env, cwd = engine.command()
    sample = _measure.run([*argv, "--trace-sql"], env=env, cwd=cwd)
    head = (
        f"- Where the engine's {sample.seconds / streams * 1000:.0f} ms per tiny stream go "
        f"(one more engine run, {sample.seconds:.2f} s):"
    )
    return [head, *sql_lines(sample.report, sample.seconds, top=10)]
