"""Scenario 1: a PostgreSQL table (2 M rows, 10 mixed columns) -> DuckDB, full load.

Contenders: the ``COPY ... TO STDOUT (FORMAT binary)`` floor, mdstack
(``full_refresh_overwrite``, the direct load path, into a fresh DuckLake folder),
DuckDB's own postgres scanner, and dlt ``sql_table`` with its connectorx and pyarrow
backends. A second mdstack row loads the same table definition with no rows: the
fixed cost of a sync (discover, warehouse open, ledger, commit) and the memory the
libraries take before any data moves.

Targets: full load ≤ 1.0x the single-stream floor (parallel reads), ≥ 3x faster than
dlt's best, peak RSS ≤ 300 MB.

Then the source's ``readers`` (connections reading the table's ctid ranges at once): mdstack
with 1, 2 and 4 readers against the floor, on the same table (``--quick``: 300 k rows, enough
for several ranges). Its *model* column is N x the one-reader rate: what N readers could reach
with N free cores on both the server and the client and a writer that keeps up; a model, not
a measurement. Its rows count in the bench's peak RSS target, like every mdstack run.
"""

from __future__ import annotations

from bench import _measure, _pg, _pg_tools
from bench._measure import interleave
from bench._profile import sql_lines, summary
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "1. PostgreSQL → DuckDB full load"
SCHEMA = "bench_full"
TABLE = "orders"
EMPTY = "orders_empty"
FLOOR_LIMIT, DLT_FACTOR, RSS_LIMIT = 1.0, 3.0, 300.0
READERS = (1, 2, 4)
READERS_TABLE, READERS_MIN_ROWS = "orders_readers", 300_000


def run(ctx: Context) -> ScenarioResult:
    rows = ctx.rows or (20_000 if ctx.quick else 2_000_000)
    result = ScenarioResult("full_load", f"{TITLE}, {rows:,} rows")
    problem = ctx.pg.problem()
    if problem:
        result.skipped = problem
        return result
    ctx.log(f"creating {SCHEMA}.{TABLE} with {rows:,} rows ...")
    _pg.create_table(ctx.pg, SCHEMA, TABLE, rows)
    _pg.create_table(ctx.pg, SCHEMA, EMPTY, 0)
    size = _pg.table_bytes(ctx.pg, SCHEMA, TABLE)
    try:
        folder = ctx.folder("full_load")
        empty = _pg_tools.mdstack(
            ctx, SCHEMA, EMPTY, folder / "mdstack-empty", name="mdstack, empty table"
        )
        empty.note = "fixed cost"
        tools = [
            _pg_tools.floor(ctx, SCHEMA, TABLE),
            _pg_tools.mdstack(ctx, SCHEMA, TABLE, folder / "mdstack"),
            *(() if ctx.quick else (empty, _pg_tools.duckdb_scan(ctx, SCHEMA, TABLE, folder))),
            *_pg_tools.dlt_tools(ctx, SCHEMA, TABLE, folder),
        ]
        interleave(tools, ctx.runs, ctx.log)
        table = Table(
            f"{rows:,} rows, {size / 2**20:,.0f} MB in PostgreSQL",
            [
                Row.of(t, rows if t.name.startswith("floor") else None, loaded=_loaded(t))
                for t in tools
            ],
            floor="floor: COPY binary",
            subject="mdstack",
            extra_columns=("loaded",),
        )
        result.tables.append(table)
        result.targets += targets(table)
        if ctx.profile and any(t.met is False for t in result.targets):
            result.notes += profile(ctx, folder)
        readers(ctx, result, rows)
    finally:
        _pg.drop_schema(ctx.pg, SCHEMA)
    return result


def readers(ctx: Context, result: ScenarioResult, rows: int) -> None:
    """mdstack with 1, 2 and 4 readers and the floor, on a table of several ctid ranges."""
    table = TABLE
    if rows < READERS_MIN_ROWS:
        rows, table = READERS_MIN_ROWS, READERS_TABLE
        ctx.log(f"creating {SCHEMA}.{table} with {rows:,} rows ...")
        _pg.create_table(ctx.pg, SCHEMA, table, rows, key=False)
    folder = ctx.folder("full_load", "readers")
    tools = [_pg_tools.floor(ctx, SCHEMA, table)]
    tools += [
        _pg_tools.mdstack(
            ctx, SCHEMA, table, folder / str(n), name=f"mdstack, readers: {n}", readers=n
        )
        for n in READERS
    ]
    interleave(tools, ctx.runs, ctx.log)
    measured = [Row.of(tools[0], rows), *(Row.of(t, rows) for t in tools[1:])]
    one = measured[1]
    for n, row in zip(READERS, measured[1:], strict=True):
        if row.ok and one.ok:
            row.extra = {"model rows/s": f"{n * rows / one.wall:,.0f}"}
    result.tables.append(
        Table(
            f"readers: the same load by 1, 2 and 4 connections, {rows:,} rows",
            measured,
            floor="floor: COPY binary",
            extra_columns=("model rows/s",),
        )
    )


def _loaded(tool) -> str:
    counts = {s.report.get("table_rows") for s in tool.samples if "table_rows" in s.report}
    return ", ".join(f"{c:,}" for c in sorted(counts)) if counts else ""


def targets(table: Table) -> list[Target]:
    """The full-load targets, from a table with floor, mdstack and dlt rows."""
    mds, floor = table.row("mdstack"), table.row(table.floor or "")
    dlts = [r for r in table.rows if r.tool.startswith("dlt") and r.ok]
    best = min(dlts, key=lambda r: r.wall) if dlts else None
    out = []
    if mds and floor:
        x = mds.wall / floor.wall
        out.append(Target(f"full load ≤ {FLOOR_LIMIT}x floor", f"{x:.2f}x", x <= FLOOR_LIMIT))
    if mds and best:
        x = best.wall / mds.wall
        out.append(
            Target(
                f"≥ {DLT_FACTOR:.0f}x faster than dlt's best",
                f"{x:.2f}x ({best.tool} {best.wall:.2f} s)",
                x >= DLT_FACTOR,
            )
        )
    else:
        out.append(Target(f"≥ {DLT_FACTOR:.0f}x faster than dlt's best", "dlt not run", None))
    if mds:
        out.append(
            Target(f"peak RSS ≤ {RSS_LIMIT:.0f} MB", f"{mds.rss:.0f} MB", mds.rss <= RSS_LIMIT)
        )
    return out


def profile(ctx: Context, folder, schema: str = SCHEMA, table: str = TABLE) -> list[str]:
    """One more mdstack run under cProfile; the summary as notes."""
    stats = folder / "mdstack.pstats"
    warehouse = folder / "mdstack-profile"
    _pg_tools.reset(warehouse)()
    argv = _pg_tools.mdstack_argv(ctx, schema, table, warehouse, profile=stats)
    sample = _measure.run([*argv, "--trace-sql"])
    return summary(stats, sample.seconds) + sql_lines(sample.report, sample.seconds)
