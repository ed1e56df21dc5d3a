"""Scenario 7: scaling, the full load at 1 M, 4 M and 16 M rows: time and peak RSS.

The same table definition as scenario 1 (no primary key: a full load needs none) at
each size; mdstack (``full_refresh_overwrite`` into a fresh DuckLake folder) and the
``COPY`` floor, interleaved at each size. ``--rows N`` caps the sizes (the largest
then is N). Linear cost shows as a flat seconds-per-million-rows column; flat memory
as a flat peak RSS.

Target: peak RSS ≤ 300 MB at every size.
"""

from __future__ import annotations

from bench import _pg, _pg_tools
from bench._measure import interleave
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "7. Scaling: full load at growing sizes"
SCHEMA = "bench_scale"
SIZES = (1_000_000, 4_000_000, 16_000_000)
QUICK_SIZES = (10_000, 40_000)
RSS_LIMIT = 300.0


def sizes(ctx: Context) -> list[int]:
    chosen = QUICK_SIZES if ctx.quick else SIZES
    if ctx.rows:
        capped = [s for s in chosen if s <= ctx.rows]
        chosen = capped if ctx.rows in capped else [*capped, ctx.rows]
    return list(chosen)


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("scaling", TITLE)
    problem = ctx.pg.problem()
    if problem:
        result.skipped = problem
        return result
    mds_rows, floor_rows = [], []
    try:
        for size in sizes(ctx):
            table = f"orders_{size}"
            ctx.log(f"creating {SCHEMA}.{table} with {size:,} rows ...")
            _pg.create_table(ctx.pg, SCHEMA, table, size, key=False)
            folder = ctx.folder("scaling", str(size))
            floor = _pg_tools.floor(ctx, SCHEMA, table, name=f"floor, {size:,} rows")
            mds = _pg_tools.mdstack(
                ctx, SCHEMA, table, folder / "mdstack", name=f"mdstack, {size:,} rows"
            )
            interleave([floor, mds], ctx.runs, ctx.log)
            floor_rows.append(Row.of(floor, size))
            mds_rows.append(Row.of(mds, size))
            _pg.drop_schema(ctx.pg, SCHEMA)  # free the disk before the next size
    finally:
        _pg.drop_schema(ctx.pg, SCHEMA)
    for mds, floor in zip(mds_rows, floor_rows, strict=True):
        if mds.ok:
            mds.extra = {
                "s per M rows": f"{mds.wall / mds.rows * 1e6:.2f}",
                "x floor": f"{mds.wall / floor.wall:.2f}x" if floor.ok else "-",
            }
        if floor.ok:
            floor.extra = {"s per M rows": f"{floor.wall / floor.rows * 1e6:.2f}"}
    result.tables.append(
        Table(
            "mdstack full_refresh_overwrite and the COPY floor at each size",
            [row for pair in zip(floor_rows, mds_rows, strict=True) for row in pair],
            extra_columns=("s per M rows", "x floor"),
        )
    )
    done = [r for r in mds_rows if r.ok]
    if done:
        worst = max(done, key=lambda r: r.rss)
        result.targets.append(
            Target(
                f"peak RSS ≤ {RSS_LIMIT:.0f} MB at every size",
                ", ".join(f"{r.rows / 1e6:g} M: {r.rss:.0f} MB" for r in done),
                worst.rss <= RSS_LIMIT,
            )
        )
    if len(done) > 1:
        first, last = done[0], done[-1]
        growth = (last.wall / last.rows) / (first.wall / first.rows)
        result.notes.append(
            f"Seconds per row at {last.rows:,} rows are {growth:.2f}x those at {first.rows:,} "
            "(1.00x is linear; below 1 the fixed cost of a sync is being amortised)."
        )
    return result
