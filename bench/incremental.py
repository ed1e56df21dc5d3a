"""Scenario 2: incremental sync after 1 % of the rows were updated and 0.1 % deleted.

Each tool first syncs the whole table once (its initial load, reported), the synced
destination is saved, then the changes are made in PostgreSQL (``updated_at`` bumped on
1 % of the rows, 0.1 % deleted). Every measured run starts from the saved copy, so each
round syncs the same change set.

Contenders: mdstack ``incremental_deduped`` by cursor ``updated_at``; the same with
``delete_detection: snapshot`` (it also reads every key to find the deletes: a cursor
never sees a deleted row); dlt ``sql_table`` with ``dlt.sources.incremental("updated_at")``
and ``write_disposition="merge"`` (connectorx and pyarrow backends); for the percentages,
each tool's full load of the same table, and the ``COPY`` floor. Beside them, mdstack's
first ``incremental_deduped`` load of the table into an empty warehouse, against its full
refresh of the same table.

Targets: incremental 1 % ≤ 10 % of a full load; with snapshot delete detection ≤ 30 %; a
first deduped load within 1.2x of a full refresh; every mdstack run ≤ 300 MB.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench import _measure, _pg, _pg_tools
from bench._measure import Tool, interleave
from bench._profile import sql_lines, summary
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "2. Incremental: 1 % of rows updated, 0.1 % deleted"
SCHEMA = "bench_incr"
TABLE = "orders"
CURSOR = "updated_at"
INCREMENTAL_LIMIT, SNAPSHOT_LIMIT, FIRST_LOAD_LIMIT, RSS_LIMIT = 0.10, 0.30, 1.2, 300.0


def run(ctx: Context) -> ScenarioResult:
    rows = ctx.rows or (20_000 if ctx.quick else 2_000_000)
    result = ScenarioResult("incremental", f"{TITLE} ({rows:,}-row table)")
    problem = ctx.pg.problem()
    if problem:
        result.skipped = problem
        return result
    ctx.log(f"creating {SCHEMA}.{TABLE} with {rows:,} rows ...")
    _pg.create_table(ctx.pg, SCHEMA, TABLE, rows, cursor_index=True)
    try:
        folder = ctx.folder("incremental")
        _measure_all(ctx, folder, rows, result)
    finally:
        _pg.drop_schema(ctx.pg, SCHEMA)
    return result


def _measure_all(ctx: Context, folder: Path, rows: int, result: ScenarioResult) -> None:
    warehouse = folder / "mdstack"
    incremental = {"mode": "incremental_deduped", "cursor": CURSOR}
    merges = _pg_tools.dlt_tools(
        ctx, SCHEMA, TABLE, folder / "dlt-merge", disposition="merge", cursor=CURSOR
    )
    initial = [_pg_tools.mdstack(ctx, SCHEMA, TABLE, warehouse, **incremental), *merges]
    ctx.log("initial loads (one run each) ...")
    interleave(initial, 1, ctx.log)
    first = Table(
        "Initial load of each incremental pipeline (one run each, before the changes)",
        [Row.of(t) for t in initial],
    )
    for tool in merges:
        tool.samples = []
    saved = {warehouse: folder / "mdstack.saved"}
    saved |= {(f := _dlt_folder(t)): f.with_name(f.name + ".saved") for t in merges}
    for live, copy in saved.items():
        shutil.copytree(live, copy, symlinks=True)
    updated, deleted = _pg.apply_changes(ctx.pg, SCHEMA, TABLE)
    ctx.log(f"changed the table: {updated:,} rows updated, {deleted:,} deleted")

    restore = _pg_tools.restore(saved[warehouse], warehouse)
    mds = _pg_tools.mdstack(
        ctx, SCHEMA, TABLE, warehouse, name="mdstack incremental", before=restore, **incremental
    )
    mds_snap = _pg_tools.mdstack(
        ctx,
        SCHEMA,
        TABLE,
        warehouse,
        name="mdstack incremental + snapshot deletes",
        before=restore,
        delete_detection="snapshot",
        **incremental,
    )
    full = _pg_tools.mdstack(ctx, SCHEMA, TABLE, folder / "mdstack-full", name="mdstack full load")
    first_load = _pg_tools.mdstack(
        ctx,
        SCHEMA,
        TABLE,
        folder / "mdstack-first",
        name="mdstack first deduped load",
        **incremental,
    )
    dlt_merge = [
        _retarget(t, f"{t.name} merge", _pg_tools.restore(saved[_dlt_folder(t)], _dlt_folder(t)))
        for t in merges
    ]
    dlt_full = _pg_tools.dlt_tools(ctx, SCHEMA, TABLE, folder / "dlt-full")[:1]
    for t in dlt_full:
        t.name += " full load"
    tools = [
        _pg_tools.floor(ctx, SCHEMA, TABLE),
        full,
        first_load,
        mds,
        mds_snap,
        *dlt_full,
        *dlt_merge,
    ]
    if ctx.quick:  # a smoke run: the incremental sync only
        tools = [mds]
    interleave(tools, ctx.runs, ctx.log)

    expected = rows - deleted
    mds_full = Row.of(full).wall if full.samples else None
    dlt_base = Row.of(dlt_full[0]).wall if dlt_full and dlt_full[0].samples else None
    table_rows = []
    for tool in tools:
        base = mds_full if tool.name.startswith("mdstack") else dlt_base
        extra = {}
        if tool.samples and tool not in (full, first_load, *dlt_full) and not _is_floor(tool):
            after = tool.samples[-1].report.get("table_rows")
            extra = {
                "% of full load": f"{Row.of(tool).wall / base:.1%}" if base else "-",
                "rows after": f"{after:,}" if isinstance(after, int) else "",
                "deletes applied": "yes" if after == expected else "no",
            }
        table_rows.append(Row.of(tool, rows if _is_floor(tool) else None, **extra))
    result.tables.append(
        Table(
            f"{updated:,} rows updated, {deleted:,} deleted; {expected:,} rows remain",
            table_rows,
            floor="floor: COPY binary",
            subject="mdstack incremental",
            extra_columns=("% of full load", "rows after", "deletes applied"),
        )
    )
    result.tables.append(first)
    if dlt_full:
        result.notes.append(
            "The dlt merges' percentages are against dlt connectorx's full load (its best)."
        )
    for tool, limit in ((mds, INCREMENTAL_LIMIT), (mds_snap, SNAPSHOT_LIMIT)):
        if not tool.samples or mds_full is None:
            continue
        share = Row.of(tool).wall / mds_full
        result.targets.append(
            Target(f"{tool.name}: ≤ {limit:.0%} of a full load", f"{share:.1%}", share <= limit)
        )
        if share > limit and ctx.profile:
            result.notes += _profile(ctx, tool, folder / f"{len(result.notes)}.pstats")
    if first_load.samples and mds_full is not None:
        row = Row.of(first_load)
        x = row.wall / mds_full
        result.targets.append(
            Target(
                f"first deduped load ≤ {FIRST_LOAD_LIMIT}x a full refresh, ≤ {RSS_LIMIT:.0f} MB",
                f"{x:.2f}x, {row.rss:.0f} MB",
                x <= FIRST_LOAD_LIMIT and row.rss <= RSS_LIMIT,
            )
        )


def _dlt_folder(tool: Tool) -> Path:
    argv, _, cwd = tool.command()
    return Path(cwd) if cwd else Path(argv[argv.index("--destination") + 1]).parent


def _retarget(tool: Tool, name: str, before) -> Tool:
    tool.name, tool.before = name, before
    return tool


def _is_floor(tool: Tool) -> bool:
    return tool.name.startswith("floor")


def _profile(ctx: Context, tool: Tool, stats: Path) -> list[str]:
    if tool.before:
        tool.before()
    argv, env, cwd = tool.command()
    sample = _measure.run([*argv, "--profile", str(stats), "--trace-sql"], env=env, cwd=cwd)
    lines = summary(stats, sample.seconds) + sql_lines(sample.report, sample.seconds)
    lines[0] = lines[0].replace("mdstack run", f"`{tool.name}` run")
    return lines
