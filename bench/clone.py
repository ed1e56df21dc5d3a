"""Scenario 5: clone of a 2 GB warehouse: seconds and new disk.

The bench builds a DuckLake warehouse of about 2 GB (one table of random doubles, which
do not compress, plus 20 small tables) with mdstack's :class:`DuckDBWarehouse`, then
measures, each in its own process (``bench/workers/clone.py``): mdstack's zero-copy
``clone_into`` (catalog copy + hard-linked data files) and, for contrast, a plain copy of
the folder. New disk counts the bytes of files that are not hard links of the source's.

Target: clone < 0.5 s and < 10 MB.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench._measure import Tool, interleave
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context
from stack.warehouse.duckdb import DuckDBWarehouse

TITLE = "5. Clone of a 2 GB warehouse"
BYTES_PER_ROW = 72  # id + 8 random doubles, stored as Parquet (incompressible)
SECONDS_LIMIT, MB_LIMIT = 0.5, 10.0


def build(path: Path, gigabytes: float) -> int:
    """A lake of about ``gigabytes`` GB; returns its data bytes."""
    rows = int(gigabytes * 2**30 / BYTES_PER_ROW)
    doubles = ", ".join(f"random() AS c{i}" for i in range(8))
    with DuckDBWarehouse(path) as wh:
        wh.execute('CREATE SCHEMA IF NOT EXISTS "raw"')
        wh.execute(f'CREATE TABLE "raw"."big" AS SELECT i AS id, {doubles} FROM range({rows}) t(i)')
        for n in range(20):
            wh.execute(f'CREATE TABLE "raw"."small_{n}" AS SELECT i AS id FROM range(10000) t(i)')
    return sum(p.stat().st_size for p in (path / "data").rglob("*") if p.is_file())


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("clone", TITLE)
    if not hasattr(DuckDBWarehouse, "clone_into"):
        result.skipped = "not available yet: DuckDBWarehouse has no clone_into()"
        return result
    gigabytes = 0.02 if ctx.quick else 2.0
    folder = ctx.folder("clone")
    warehouse = folder / "warehouse"
    ctx.log(f"building a {gigabytes:g} GB warehouse ...")
    size = build(warehouse, gigabytes)
    target = DuckDBWarehouse(warehouse).environment("bench").path

    def fresh() -> None:
        shutil.rmtree(target, ignore_errors=True)

    def tool(name: str, mode: str) -> Tool:
        argv = [ctx.python(), ctx.worker("clone.py"), mode, str(warehouse), "bench"]
        return Tool(name, lambda: (argv, {}, None), before=fresh)

    tools = [tool("mdstack clone_into", "clone"), tool("plain copy (cp -r)", "copy")]
    interleave(tools, ctx.runs, ctx.log)
    fresh()
    rows = [Row.of(t, rows=0) for t in tools]
    for row in rows:
        if row.ok:
            added = max(s.report.get("new_bytes", 0) for s in row.samples)
            row.extra = {"new disk MB": f"{added / 2**20:,.1f}"}
    result.tables.append(
        Table(
            f"warehouse of {size / 2**30:.2f} GiB of Parquet data",
            rows,
            subject="mdstack clone_into",
            extra_columns=("new disk MB",),
        )
    )
    clone = rows[0]
    if clone.ok:
        added = max(s.report.get("new_bytes", 0) for s in clone.samples) / 2**20
        result.targets += [
            Target(f"clone < {SECONDS_LIMIT} s", f"{clone.wall:.3f} s", clone.wall < SECONDS_LIMIT),
            Target(f"clone < {MB_LIMIT:.0f} MB new disk", f"{added:.1f} MB", added < MB_LIMIT),
        ]
    shutil.rmtree(folder, ignore_errors=True)
    return result
