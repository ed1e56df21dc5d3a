"""Scenario 3: a paginated REST API, 500 k records, 1 000 per page, from a local server.

The bench starts ``bench/workers/rest_server.py`` on 127.0.0.1 (pages rendered once, in
memory; not measured) and runs against it: the floor (fetch and parse every page with
httpx + orjson, 4 at a time), mdstack (``RestSource`` with page_number pagination,
``full_refresh_overwrite`` into a fresh DuckLake folder), and dlt's ``rest_api_source``
into DuckDB with its default load files and with Parquet load files.

Needs ``connectors/rest/source.py`` (``RestSource``); skipped until it exists.
Target: REST ≤ 1.5x the floor, peak RSS ≤ 300 MB.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from bench import _pg_tools, peers
from bench._measure import Tool, interleave
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "3. REST API, 1,000 records per page"
PAGE = 1000
LIMIT = 1.5


def run(ctx: Context) -> ScenarioResult:
    records = ctx.rows or (20_000 if ctx.quick else 500_000)
    result = ScenarioResult("rest", f"{TITLE}, {records:,} records")
    if importlib.util.find_spec("connectors.rest.source") is None:
        result.skipped = "not available yet: connectors/rest/source.py with a RestSource is missing"
        return result
    ctx.log(f"starting the local API with {records:,} records ...")
    server = subprocess.Popen(
        [sys.executable, ctx.worker("rest_server.py"), str(records), str(PAGE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())  # the server prints it once its pages are ready
        base = f"http://127.0.0.1:{port}"
        _measure(ctx, base, records, result)
    finally:
        server.kill()
        server.wait()
    return result


def _measure(ctx: Context, base: str, records: int, result: ScenarioResult) -> None:
    folder = ctx.folder("rest")
    warehouse = folder / "mdstack"
    floor_argv = [ctx.python(), ctx.worker("rest_floor.py"), base, str(PAGE)]
    mds_argv = [ctx.python(), ctx.worker("mdstack_rest.py"), base, str(PAGE), str(warehouse)]
    tools = [
        Tool("floor: fetch + parse", lambda: (floor_argv, {}, None)),
        Tool("mdstack", lambda: (mds_argv, {}, None), before=_pg_tools.reset(warehouse)),
        *_dlt_tools(ctx, base, folder),
    ]
    interleave(tools, ctx.runs, ctx.log)
    table = Table(
        f"{records:,} records, {PAGE:,} per page, local HTTP/1.1 server",
        [Row.of(t) for t in tools],
        floor="floor: fetch + parse",
        subject="mdstack",
    )
    result.tables.append(table)
    mds, floor = table.row("mdstack"), table.row("floor: fetch + parse")
    if mds and floor:
        x = mds.wall / floor.wall
        result.targets.append(Target(f"REST ≤ {LIMIT}x floor", f"{x:.2f}x", x <= LIMIT))
        result.targets.append(Target("peak RSS ≤ 300 MB", f"{mds.rss:.0f} MB", mds.rss <= 300))


def _dlt_tools(ctx: Context, base: str, folder: Path) -> list[Tool]:
    if not ctx.peers:
        return []
    try:
        python = str(peers.ensure(peers.DLT, ctx.log))
    except peers.PeerUnavailable as exc:
        ctx.log(f"  dlt unavailable: {exc}")
        return []
    tools = []
    for name, extra in (("dlt rest_api", []), ("dlt rest_api, parquet files", ["--parquet"])):
        sub = folder / ("dlt-parquet" if extra else "dlt")
        sub.mkdir(parents=True, exist_ok=True)
        out, pipes = sub / "dlt.duckdb", sub / "pipelines"
        argv = [python, ctx.worker("dlt_rest.py"), base, str(PAGE), str(out), str(pipes), *extra]
        tools.append(
            Tool(
                name,
                lambda argv=argv, sub=sub: (argv, _pg_tools.DLT_ENV, sub),
                before=_pg_tools.reset(out, pipes),
            )
        )
    return tools
