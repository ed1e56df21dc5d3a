"""Scenario 7: scaling, full and incremental loads at 1 M, 4 M and 16 M rows: time and RSS.

The same table definition as scenario 1 at each size, with its primary key and an index on
the cursor. At each size, interleaved: the ``COPY`` floor; mdstack's full load
(``full_refresh_overwrite`` into a fresh DuckLake folder) with one reader and with
:data:`READERS` (connections reading the table's ctid ranges at once). Then mdstack loads
the table once as ``incremental_deduped``, 1 % of the rows are updated and 0.1 % deleted,
and the incremental sync of that change is measured from a copy of the loaded warehouse.
``--rows N`` caps the sizes (the largest then is N). Linear cost shows as a flat
seconds-per-million-rows column; flat memory as a flat peak RSS.

Target: the incremental sync ≤ 10 % of the full load (and, as everywhere, ≤ 300 MB).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench import _pg, _pg_tools
from bench._measure import Tool, interleave
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "7. Scaling: full and incremental loads at growing sizes"
SCHEMA = "bench_scale"
SIZES = (1_000_000, 4_000_000, 16_000_000)
QUICK_SIZES = (10_000, 40_000)
READERS = 4
INCREMENTAL_LIMIT = 0.10
INCREMENTAL = {"mode": "incremental_deduped", "cursor": "updated_at"}


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
    rows: list[Row] = []
    try:
        for size in sizes(ctx):
            rows += _one_size(ctx, size)
            _pg.drop_schema(ctx.pg, SCHEMA)  # free the disk before the next size
    finally:
        _pg.drop_schema(ctx.pg, SCHEMA)
    result.tables.append(
        Table(
            f"full load (1 and {READERS} readers), incremental sync (1 % updated, 0.1 % "
            "deleted) and the COPY floor at each size",
            rows,
            extra_columns=("s per M rows", "x floor", "% of full load"),
        )
    )
    mds = [r for r in rows if r.ok and r.tool.startswith("mdstack")]
    full = [r for r in mds if f"{READERS} readers" in r.tool]
    shares = [
        (inc, inc.wall / load.wall)
        for inc in mds
        if "incremental" in inc.tool
        for load in full
        if load.rows == inc.rows
    ]
    if shares:
        result.targets.append(
            Target(
                f"incremental ≤ {INCREMENTAL_LIMIT:.0%} of the full load at every size",
                ", ".join(f"{inc.rows / 1e6:g} M: {share:.1%}" for inc, share in shares),
                max(share for _, share in shares) <= INCREMENTAL_LIMIT,
            )
        )
    if len(full) > 1:
        first, last = full[0], full[-1]
        growth = (last.wall / last.rows) / (first.wall / first.rows)
        result.notes.append(
            f"Seconds per row of the full load at {last.rows:,} rows are {growth:.2f}x those at "
            f"{first.rows:,} (1.00x is linear; below 1 the fixed cost of a sync is amortised)."
        )
    return result


def _one_size(ctx: Context, size: int) -> list[Row]:
    """The floor, the full loads and the incremental sync at one size, as table rows."""
    table = f"orders_{size}"
    ctx.log(f"creating {SCHEMA}.{table} with {size:,} rows ...")
    _pg.create_table(ctx.pg, SCHEMA, table, size, cursor_index=True)
    folder = ctx.folder("scaling", str(size))
    floor = _pg_tools.floor(ctx, SCHEMA, table, name=f"floor, {size:,} rows")
    loads = [
        _pg_tools.mdstack(
            ctx,
            SCHEMA,
            table,
            folder / f"full-{n}",
            name=f"mdstack full, {size:,} rows, {n} reader{'s' if n > 1 else ''}",
            readers=n,
        )
        for n in (1, READERS)
    ]
    interleave([floor, *loads], ctx.runs, ctx.log)
    incremental = _incremental(ctx, table, size, folder)
    out = [Row.of(t, size) for t in (floor, *loads, incremental)]
    floor_row, *load_rows, incremental_row = out
    for row in out:
        if row.ok:
            row.extra["s per M rows"] = f"{row.wall / size * 1e6:.2f}"
    for row in load_rows:
        if row.ok and floor_row.ok:
            row.extra["x floor"] = f"{row.wall / floor_row.wall:.2f}x"
    full = load_rows[-1]
    if incremental_row.ok and full.ok:
        incremental_row.extra["% of full load"] = f"{incremental_row.wall / full.wall:.1%}"
    return out


def _incremental(ctx: Context, table: str, size: int, folder: Path) -> Tool:
    """mdstack's incremental sync of 1 % updated, 0.1 % deleted, from the loaded table."""
    warehouse, saved = folder / "incremental", folder / "incremental.saved"
    initial = _pg_tools.mdstack(ctx, SCHEMA, table, warehouse, **INCREMENTAL)
    ctx.log(f"initial incremental_deduped load of {size:,} rows ...")
    interleave([initial], 1, ctx.log)
    shutil.copytree(warehouse, saved, symlinks=True)
    updated, deleted = _pg.apply_changes(ctx.pg, SCHEMA, table)
    ctx.log(f"changed the table: {updated:,} rows updated, {deleted:,} deleted")
    tool = _pg_tools.mdstack(
        ctx,
        SCHEMA,
        table,
        warehouse,
        name=f"mdstack incremental, {size:,} rows",
        before=_pg_tools.restore(saved, warehouse),
        **INCREMENTAL,
    )
    interleave([tool], ctx.runs, ctx.log)
    return tool
