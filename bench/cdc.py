"""Scenario 8: PostgreSQL CDC through one replication slot per source.

CDC needs ``wal_level = logical``: the bench's server is used when it has it, otherwise a
throwaway cluster is started and stopped (:mod:`bench._pg_cluster`). For 1, 5 and 20 keyed
tables (100 k rows in all, split evenly) in one publication, ``mdstack sync`` (the CLI, as a
process, from a ``stack.yml`` in the scratch folder, DuckLake warehouse) takes the base
snapshot and creates the source's slot; the slot is then copied (one template, one slot per
table: what a slot per stream had). Then:

* a sync with nothing to read (the fixed cost of a process), before the workload;
* the workload: 200 k inserts, updates and deletes spread over the tables, 500 rows per
  transaction, tables in turn;
* contenders on that WAL, each round from the same starting point (the warehouse restored
  to its snapshot, the slots peeked, never advanced): ``pg_recvlogical`` streaming it to
  /dev/null from a fresh copy of the template (the floor: the replication protocol), the
  SQL peek of the one slot (``workers/pg_peek.py``, the decode a slot per source costs), the
  same peek of every per-table slot in turn (what a slot per stream cost), ``mdstack sync``.
  The synced tables are compared with PostgreSQL (rows and a checksum).

Then one table of 1 M rows: a sync after a small transaction, and after one transaction
updating every row (peak RSS: bounded by ``batch_size``, not by the transaction); and WAL
retention: 500 MB written to a table outside the publication, then syncs, with what the
slot holds back after each (``pg_current_wal_lsn()`` minus ``confirmed_flush_lsn`` and
minus ``restart_lsn``).

Then a big snapshot under writes, and a snapshot killed and resumed
(:mod:`bench._cdc_snapshot`). ``BENCH_CDC_ONLY`` (:data:`ONLY`) runs only the parts it names.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from psycopg import sql

from bench import _cdc_snapshot, _measure, _pg_cluster
from bench._cdc_source import ROWS, Source
from bench._measure import Sample, Tool, interleave
from bench._pg import PgServer
from bench._results import Row, ScenarioResult, Table
from bench.scenarios import Context

TITLE = "8. PostgreSQL CDC: one replication slot per source"
TXN_ROWS = 500  # rows per workload statement, each its own transaction
SMALL_CHANGE = 1_000
SYNC = "mdstack sync"
FLOOR = "floor: pg_recvlogical"
PARTS = ("slots", "big", "snapshot")
ONLY = "BENCH_CDC_ONLY"
"""Environment variable: the parts to run, comma-separated (default all): ``slots`` (1, 5
and 20 tables), ``big`` (one big transaction, WAL retention), ``snapshot`` (big snapshot)."""


@dataclass(frozen=True)
class Sizes:
    counts: tuple[int, ...]  # CDC tables per source
    rows: int  # base rows, all tables together
    changes: int  # workload changes, all tables together
    big: int  # rows of the one-transaction table
    filler_mb: int  # WAL written outside the publication
    snapshot: int  # rows of the big-snapshot table
    snapshot_chunk: int | None  # rows per snapshot chunk (None: the connector's default)


FULL = Sizes((1, 5, 20), 100_000, 200_000, 1_000_000, 500, 5_000_000, None)
QUICK = Sizes((1, 5), 2_000, 4_000, 20_000, 20, 50_000, 5_000)


def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    parts = _parts()
    result = ScenarioResult("cdc", TITLE)
    recvlogical = _pg_cluster.program("pg_recvlogical")
    try:
        with _pg_cluster.logical_server(ctx.pg) as (pg, where):
            with pg.connect() as conn:
                version = conn.execute("SHOW server_version").fetchone()[0].split()[0]  # type: ignore[index]
            result.notes.append(f"Server: PostgreSQL {version}, {where}.")
            if "slots" in parts:
                summary = [_slots(ctx, pg, n, sizes, recvlogical, result) for n in sizes.counts]
                result.notes += _summary(summary)
            if "big" in parts:
                _big_and_idle(ctx, pg, sizes, version, result)
            if "snapshot" in parts:
                _cdc_snapshot.run(ctx, pg, sizes.snapshot, sizes.snapshot_chunk, result)
    except RuntimeError as exc:
        result.skipped = str(exc)
    return result


def _parts() -> set[str]:
    """The parts :data:`ONLY` names, every part when it is unset."""
    named = {p.strip() for p in os.environ.get(ONLY, "").split(",") if p.strip()}
    unknown = named - set(PARTS)
    if unknown:
        raise SystemExit(
            f"{ONLY}: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}"
        )
    return named or set(PARTS)


def _snapshot(ctx: Context, source: Source) -> Sample:
    ctx.log(f"  base snapshot of {len(source.tables)} table(s) ...")
    return _measure.run(source.sync_argv(), cwd=source.folder)


def _workload(pg: PgServer, schema: str, tables: list[str], changes: int) -> int:
    """Inserts (1/2), updates (3/10) and deletes (1/5) of each table, ``TXN_ROWS`` rows per
    transaction, the tables in turn; returns the changes made. Updated and deleted ids are
    disjoint and below ``changes / len(tables) / 2`` (the rows each table starts with)."""
    each = changes // len(tables)
    inserts, updates, deletes = each // 2, each * 3 // 10, each // 5
    base = each // 2
    per_table = []
    for table in tables:
        name = sql.Identifier(schema, table)
        steps = [(sql.SQL(ROWS).format(name), (base + a, base + b)) for a, b in _spans(inserts)]
        steps += [
            (
                sql.SQL(
                    "UPDATE {} SET n = n + 1, amount = amount + 1, updated_at = now()"
                    " WHERE id BETWEEN %s AND %s"
                ).format(name),
                (a, b),
            )
            for a, b in _spans(updates)
        ]
        steps += [
            (
                sql.SQL("DELETE FROM {} WHERE id BETWEEN %s AND %s").format(name),
                (updates + a, updates + b),
            )
            for a, b in _spans(deletes)
        ]
        per_table.append(steps)
    with pg.connect() as conn:
        for step in itertools.chain.from_iterable(itertools.zip_longest(*per_table)):
            if step is not None:
                conn.execute(*step)
    return (inserts + updates + deletes) * len(tables)


def _spans(rows: int) -> list[tuple[int, int]]:
    return [(a, min(a + TXN_ROWS - 1, rows)) for a in range(1, rows + 1, TXN_ROWS)]


def _slots(
    ctx: Context,
    pg: PgServer,
    count: int,
    sizes: Sizes,
    recvlogical: str | None,
    result: ScenarioResult,
) -> dict[str, object]:
    """(a)-(c) for ``count`` tables: one table of results, one line of the summary."""
    ctx.log(f"-- {count} CDC table(s) --")
    name = f"bench_cdc{count}"
    source = Source(pg, name, [f"t{i:02d}" for i in range(1, count + 1)], ctx.folder("cdc", name))
    each = sizes.changes // count
    source.create(each // 2)
    try:
        _snapshot(ctx, source)
        snapped = source.save("snapshot")
        template = source.copy_slot(f"{name}_template")
        per_stream = [source.copy_slot(f"{name}_{t}", template) for t in source.tables]
        idle = source.sync_tool(f"{SYNC}, nothing to read", snapped)
        ctx.log("  sync with nothing to read ...")
        interleave([idle], ctx.runs, ctx.log)
        ctx.log(f"  workload of {sizes.changes:,} changes ...")
        changes = _workload(pg, name, source.tables, sizes.changes)
        end = source.lsn()
        peek = [ctx.python(), ctx.worker("pg_peek.py"), pg.conninfo, end, name]
        tools = [
            Tool("SQL peek, one slot (slot per source)", lambda: ([*peek, template], {}, None)),
            Tool(
                f"SQL peek, {count} slot(s) (slot per stream)",
                lambda: ([*peek, *per_stream], {}, None),
            ),
            source.sync_tool(SYNC, snapped),
        ]
        if recvlogical:
            receiving = f"{name}_recv"
            argv = [
                recvlogical,
                *("-h", pg.host, "-p", str(pg.port), "-U", pg.user, "-d", pg.database),
                *("--slot", receiving, "--start", "--no-loop", "-E", end),
                *("-o", "proto_version=1", "-o", f"publication_names={name}", "-P", "pgoutput"),
                *("-f", "/dev/null"),
            ]

            def fresh_copy() -> None:  # streaming confirms what it received: a new copy each run
                source.copy_slot(receiving, template)

            tools.insert(0, Tool(FLOOR, lambda: (argv, pg.env(), None), before=fresh_copy))
        interleave(tools, ctx.runs, ctx.log)
        expected, landed = source.checksum(), source.landed()
        rows = [Row.of(idle, rows=0)] + [Row.of(t, rows=changes) for t in tools]
        rows[-1].extra = {
            "matches source": "yes" if landed == expected else f"no: {landed} vs {expected}"
        }
        result.tables.append(
            Table(
                f"{count} CDC table(s), {changes:,} changes in {changes // TXN_ROWS:,} transactions"
                f" ({sizes.rows:,} rows before)",
                rows,
                floor=FLOOR if recvlogical else None,
                subject=SYNC,
                extra_columns=("matches source",),
            )
        )
        found = {r.tool: r for r in rows if r.ok}
        return {"count": count, "changes": changes, "rows": found}
    finally:
        source.drop()


def _summary(lines: list[dict[str, object]]) -> list[str]:
    """The summary table across table counts, as notes (a table of its own columns)."""
    out = [
        "- Summary (medians): mdstack's end-to-end rate; the server's decode of the same WAL "
        "through one slot against one slot per table; the SQL peek against streaming.",
        "",
        "| CDC tables | changes | mdstack sync process s | changes/s | peek, one slot s "
        "| peek, slot per table s | per-table / one | pg_recvlogical s | peek / stream |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for line in lines:
        rows: dict[str, Row] = line["rows"]  # type: ignore[assignment]
        count, changes = line["count"], int(line["changes"])  # type: ignore[call-overload]
        sync = rows.get(SYNC)
        one = next((r for n, r in rows.items() if "slot per source" in n), None)
        many = next((r for n, r in rows.items() if "slot per stream" in n), None)
        floor = rows.get(FLOOR)
        cells = [
            str(count),
            f"{changes:,}",
            f"{sync.process:.2f}" if sync else "-",
            f"{changes / sync.process:,.0f}" if sync else "-",
            f"{one.wall:.2f}" if one else "-",
            f"{many.wall:.2f}" if many else "-",
            f"{many.wall / one.wall:.2f}x" if one and many else "-",
            f"{floor.wall:.2f}" if floor else "-",
            f"{one.wall / floor.wall:.2f}x" if one and floor else "-",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return [
        "\n".join([*out, ""]),
        "`mdstack sync` is timed as a whole process (start, config, warehouse, read, merge, "
        "commit): its wall s is its process s, and changes/s divides the changes by it. The "
        "peeks are timed inside their worker (the statements alone); `pg_recvlogical` as a "
        "process. Every per-table slot is peeked with the source's publication, as a slot per "
        "stream was. The peek counts the messages in the server (none crosses the socket), "
        "`pg_recvlogical` receives every one and writes it: peek / stream compares the decode "
        "alone with decode plus delivery. A sync with nothing to read is the fixed cost of a "
        "process (start, config, warehouse, one commit per stream).",
    ]


def _big_and_idle(
    ctx: Context, pg: PgServer, sizes: Sizes, version: str, result: ScenarioResult
) -> None:
    """(d) one big transaction against a small one; (e) WAL retention of idle CDC tables."""
    name = "bench_cdc_big"
    ctx.log(f"-- one table of {sizes.big:,} rows --")
    source = Source(pg, name, ["t01"], ctx.folder("cdc", name))
    source.create(sizes.big)
    table = sql.Identifier(name, "t01")
    update = "UPDATE {} SET n = n + 1, updated_at = now()"
    try:
        _snapshot(ctx, source)
        snapped = source.save("snapshot")
        with pg.connect() as conn:
            conn.execute(sql.SQL(update + " WHERE id <= %s").format(table), (SMALL_CHANGE,))
        small = source.sync_tool(f"{SYNC}, one transaction of {SMALL_CHANGE:,} updates", snapped)
        interleave([small], ctx.runs, ctx.log)
        ctx.log(f"  one transaction updating {sizes.big:,} rows ...")
        with pg.connect() as conn:
            conn.execute(sql.SQL(update).format(table))
        big = source.sync_tool(f"{SYNC}, then one transaction of {sizes.big:,} updates", snapped)
        interleave([big], ctx.runs, ctx.log)
        matches = "yes" if source.landed() == source.checksum() else "no"
        rows = [Row.of(small, rows=SMALL_CHANGE), Row.of(big, rows=SMALL_CHANGE + sizes.big)]
        if rows[0].ok and rows[1].ok:
            rows[1].extra = {
                "RSS x small": f"{rows[1].rss / rows[0].rss:.2f}x",
                "matches source": matches,
            }
        result.tables.append(
            Table(
                f"One table of {sizes.big:,} rows: a sync after a small transaction, and after "
                f"one transaction updating every row (batch_size 16,384, the default)",
                rows,
                subject=rows[0].tool,
                extra_columns=("RSS x small", "matches source"),
            )
        )
        result.notes.append(
            "The decoder yields a big transaction in windows of `batch_size` keys, but its "
            "state is checkpointed once, at its commit: until then the engine stages the rows "
            "(an Arrow buffer of up to 200 k rows, then staging tables in DuckDB, within its "
            "memory limit) and merges them at the commit. So the peak RSS of the big "
            "transaction's sync is bounded by those, not by `batch_size` alone."
        )
        _retention(ctx, source, sizes, version, result)
    finally:
        source.drop()


def _retention(
    ctx: Context, source: Source, sizes: Sizes, version: str, result: ScenarioResult
) -> None:
    filler = sql.Identifier(source.name, "filler")
    ctx.log(f"  {sizes.filler_mb} MB of writes outside the publication ...")
    with source.pg.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint, pad text)").format(filler))
        start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        written = 0.0
        while written < sizes.filler_mb:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, repeat(md5(g::text), 32)"
                    " FROM generate_series(1, 10000) g"
                ).format(filler)
            )
            got = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)
            ).fetchone()
            written = float(got[0]) / 2**20  # type: ignore[index]
    before = source.lag()
    rows = []
    steps: list[tuple[str, str | None]] = [
        ("first sync after the writes", None),
        ("second sync", None),
        ("CHECKPOINT, then a third sync", "CHECKPOINT"),
    ]
    for label, statement in steps:
        if statement:
            with source.pg.connect() as conn:
                conn.execute(statement)
        sample = _measure.run(source.sync_argv(), cwd=source.folder)
        confirmed, restart = source.lag()
        ctx.log(
            f"  {label}: {sample.process_seconds:.2f} s,"
            f" retained {confirmed:.1f} MB / {restart:.1f} MB"
        )
        rows.append(
            Row(
                f"{SYNC}: {label}",
                [sample],
                extra={
                    "retained by confirmed_flush_lsn MB": f"{confirmed:,.2f}",
                    "retained by restart_lsn MB": f"{restart:,.2f}",
                },
            )
        )
    result.tables.append(
        Table(
            f"WAL retention: the CDC table idle, {written:,.0f} MB of WAL written to a table "
            f"outside the publication (slot holding back {before[0]:,.0f} MB by "
            f"confirmed_flush_lsn, {before[1]:,.0f} MB by restart_lsn before the first sync)",
            rows,
            extra_columns=("retained by confirmed_flush_lsn MB", "retained by restart_lsn MB"),
        )
    )
    result.notes.append(
        "Retention is measured after each sync, from `pg_current_wal_lsn()`. Once a sync "
        "has committed its states (each checkpointed where its read ended, past the writes), "
        "it advances the slot to the smallest position every stream has committed. "
        "`restart_lsn` moves once the slot has decoded a running-transactions record "
        "past it; "
        + (
            "PostgreSQL 16+ could log one on demand (`pg_log_standby_snapshot()`); "
            if int(version.split(".")[0]) >= 16
            else f"PostgreSQL {version} has no `pg_log_standby_snapshot()` (16+), "
        )
        + "a CHECKPOINT logs one, and so does the background writer every 15 s on a busy server."
    )
