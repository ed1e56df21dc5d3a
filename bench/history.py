"""Scenario 10: history (SCD2 at load time) against a deduplicated table, and against dlt's scd2.

One PostgreSQL table (``bench_history.orders``, the bench's 10 mixed columns, cursor
``updated_at``) is loaded, then changed in rounds, each round followed by one incremental
sync of every contender:

* mdstack ``incremental_deduped`` and mdstack ``incremental_deduped_history``, each as a
  user runs it: ``mdstack sync`` (the CLI, a process, from a ``stack.yml`` of its own in the
  scratch folder, a DuckLake warehouse beside it);
* dlt ``sql_table`` with ``dlt.sources.incremental("updated_at")`` and
  ``write_disposition={"disposition": "merge", "strategy": "scd2"}``, merge key ``id`` (so that
  an incremental load retires only the versions of the keys it read; without one, dlt retires
  every active row a load lacks). dlt's scd2 tells versions apart by a hash of the row in
  ``_dlt_id``, which its JSON normalizer computes: with the ``sqlalchemy`` backend (rows as
  Python objects) and Parquet load files (dlt's default for DuckDB, INSERT statements, took
  eight times longer on 100 k rows). Its Arrow backends leave ``_dlt_id`` out and the load fails (a
  non-nullable column without data) unless ``normalize.parquet_normalizer.add_dlt_id`` is
  set, and then the ids are random, not a hash of the row: a row read again unchanged would
  make a new version. The workload reads only changed rows, so that variant
  (``connectorx``, its fastest) is run beside it and its counts still hold.

The workload: the first load of ``N`` rows, then :data:`ROUNDS` rounds (``--quick``:
:data:`QUICK_ROUNDS`, 20 k rows, mdstack only, one run), each updating
1/:data:`UPDATE_EVERY` of the rows (``updated_at`` past every earlier value, ``amount``
changed), then inserting 1/:data:`INSERT_EVERY` of ``N`` new rows: 7 % of the rows changed
per round. No deletes: a cursor never sees a hard delete, so no contender could. Every
measured run of a round starts from the state the round started from (restored, untimed),
so each of the ``--runs`` runs syncs the same changes; the state the last run leaves is
what the next round starts from.

Reported per tool: the first load and the mean of the rounds (each round its median), as
whole processes (*process s*, what a user waits for) and as the tool's own work (*engine
s*: mdstack's ``seconds`` in ``_mds_runs``, the stream's sync from its lock to its last
commit; dlt's worker timing ``pipeline.run``), peak RSS; ratios history / deduped and dlt
scd2 / history. After the last round, mdstack's history table must hold ``N`` + every
update + every insert versions, ``N`` + every insert current ones (its ``_current`` view
too, one per key), and the deduplicated table ``N`` + every insert rows: a mismatch is a
failed mdstack row (the bench exits 1).

Target (the project's): history costs at most 1.3x what ``incremental_deduped`` costs, first
load and incremental round alike, as ``mdstack sync`` runs. When it misses, each mode runs
once more through ``workers/mdstack_pg.py`` under cProfile with every warehouse statement
timed, from the same starting point, and the notes say where the time goes.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml
from psycopg import sql

from bench import _measure, _pg, _pg_tools, peers
from bench._cdc_source import mdstack
from bench._measure import Sample, Tool, interleave
from bench._profile import sql_lines, summary
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context
from stack.warehouse.duckdb import DuckDBWarehouse

TITLE = "10. History: incremental_deduped_history against incremental_deduped and dlt scd2"
SCHEMA = "bench_history"
TABLE = "orders"
CURSOR = "updated_at"
RAW = "raw"
ROUNDS = 3
QUICK_ROUNDS = 2  # --quick: 20 k rows, mdstack only, once
UPDATE_EVERY = 20  # 5 % of the rows updated per round
INSERT_EVERY = 50  # 2 % of N inserted per round
HISTORY_LIMIT = 1.3
DEDUPED = "mdstack incremental_deduped"
HISTORY = "mdstack incremental_deduped_history"
DLT_SCD2 = "dlt scd2 (sqlalchemy, parquet)"
DLT_SCD2_CX = "dlt scd2 (connectorx, random _dlt_id)"
MODES = ((DEDUPED, "incremental_deduped"), (HISTORY, "incremental_deduped_history"))

_UPDATE = (
    "UPDATE {} SET updated_at = TIMESTAMP '2030-01-01' + %s * INTERVAL '1 day'"
    " + id * INTERVAL '1 microsecond', amount = amount + 1 WHERE id %% {} = %s"
)
_INSERTED_AT = (
    "TIMESTAMP '2030-01-01' + %s * INTERVAL '1 day' + INTERVAL '12 hours'"
    " + g * INTERVAL '1 microsecond'"
)


@dataclass
class Contender:
    """One tool across the phases: how to make its run, what it writes (saved after each
    phase, put back before each run of the next), its run of each phase."""

    name: str
    state: Path
    make: Callable[[str, Callable[[], None]], Tool]
    reset: Callable[[], None]
    phases: list[Tool] = field(default_factory=list)
    bases: list[Path] = field(default_factory=list)
    failed: str | None = None

    def save(self, label: str) -> None:
        """Copy what the last run left aside as the start of the next phase (the two
        latest copies kept: the profile starts from the last round's)."""
        copy = self.state.with_name(f"{self.state.name}.{label}")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.state, copy, symlinks=True)
        self.bases.append(copy)
        for old in self.bases[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        self.bases = self.bases[-2:]


@dataclass(frozen=True)
class Round:
    number: int
    updated: int
    inserted: int


def run(ctx: Context) -> ScenarioResult:
    rows = ctx.rows or (20_000 if ctx.quick else 2_000_000)
    rounds = QUICK_ROUNDS if ctx.quick else ROUNDS
    result = ScenarioResult("history", f"{TITLE} ({rows:,}-row table, {rounds} rounds)")
    problem = ctx.pg.problem()
    if problem:
        result.skipped = problem
        return result
    ctx.log(f"creating {SCHEMA}.{TABLE} with {rows:,} rows ...")
    _pg.create_table(ctx.pg, SCHEMA, TABLE, rows, cursor_index=True)
    try:
        _measure_all(ctx, ctx.folder("history"), rows, rounds, result)
    finally:
        _pg.drop_schema(ctx.pg, SCHEMA)
    return result


def _measure_all(ctx: Context, folder: Path, rows: int, count: int, result: ScenarioResult) -> None:
    contenders = [
        _mdstack(ctx, folder / "deduped", "incremental_deduped", DEDUPED),
        _mdstack(ctx, folder / "history", "incremental_deduped_history", HISTORY),
        *_dlt(ctx, folder),
    ]
    ctx.log("first loads ...")
    _phase(ctx, contenders, "first", lambda c: c.reset)
    rounds: list[Round] = []
    next_id = rows + 1
    for number in range(1, count + 1):
        updated, inserted = _change(ctx.pg, number, rows, next_id)
        next_id += inserted
        rounds.append(Round(number, updated, inserted))
        ctx.log(f"round {number}: {updated:,} rows updated, {inserted:,} inserted ...")
        _phase(ctx, contenders, f"r{number}", lambda c: _pg_tools.restore(c.bases[-1], c.state))

    versions = rows + sum(r.updated + r.inserted for r in rounds)
    current = rows + sum(r.inserted for r in rounds)
    checks = _check(contenders, versions, current)
    _tables(contenders, rows, rounds, checks, result)
    ratios = _summary(contenders, rounds, checks, result)
    for phase, label in (("first", "first load"), ("round", "incremental round")):
        got = ratios.get(phase)
        if got is None:
            result.targets.append(Target(f"history {label} ≤ {HISTORY_LIMIT}x deduped", "-", None))
            continue
        process, engine = got
        result.targets.append(
            Target(
                f"history {label} ≤ {HISTORY_LIMIT}x incremental_deduped (`mdstack sync` "
                "processes; engine alone in brackets)",
                f"{process:.2f}x ({engine:.2f}x)",
                process <= HISTORY_LIMIT,
            )
        )
    history = checks.get(HISTORY)
    if history is not None:
        result.targets.append(
            Target(
                "history: versions and current rows as the workload implies",
                history[0],
                history[1],
            )
        )
    missed = {p for p, (a, b) in ratios.items() if max(a, b) > HISTORY_LIMIT}
    if missed and ctx.profile:
        result.notes += _profile(ctx, contenders, missed, folder)


def _mdstack(ctx: Context, folder: Path, mode: str, name: str) -> Contender:
    """``mdstack sync`` of one stream from a ``stack.yml`` of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    warehouse, config = folder / "warehouse", folder / "stack.yml"
    source = {
        "connector": "postgres",
        "schema": RAW,
        "config": ctx.pg.source_config(SCHEMA, TABLE),
        "streams": {TABLE: {"sync": mode, "cursor": CURSOR}},
    }
    stack = {  # pipeline "bench", source "pg": the state workers/mdstack_pg.py resumes from
        "name": "bench",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(warehouse)}},
        "sources": {"pg": source},
    }
    config.write_text(yaml.safe_dump(stack, sort_keys=False))
    argv = [mdstack(), "sync", "--config", str(config)]

    def make(label: str, before: Callable[[], None]) -> Tool:
        return Tool(
            label, lambda: (argv, {}, folder), before=before, after=partial(_ledger, warehouse)
        )

    return Contender(name, warehouse, make, _pg_tools.reset(warehouse))


def _ledger(warehouse: Path, sample: Sample) -> None:
    """Add the run's ``_mds_runs`` row to its sample: rows read, the engine's seconds."""
    with DuckDBWarehouse(warehouse, read_only=True) as wh:
        got = wh.query(
            f'SELECT rows_read, seconds, inserted, updated FROM "{wh.meta_schema}"."_mds_runs"'
            " WHERE stream = ? ORDER BY started_at DESC LIMIT 1",
            [TABLE],
        ).to_pylist()
    if got:
        run = got[0]
        sample.report.update(rows=run["rows_read"], engine_seconds=run["seconds"])
        sample.report.update(inserted=run["inserted"], updated=run["updated"])


def _dlt(ctx: Context, folder: Path) -> list[Contender]:
    """dlt's scd2 with a row hash (sqlalchemy) and with random ids (connectorx)."""
    if not ctx.peers:
        return []
    variants: tuple[tuple[str, str, dict[str, str], dict[str, str]], ...] = (
        (DLT_SCD2, "sqlalchemy", {"loader_file_format": "parquet"}, {}),
        (DLT_SCD2_CX, "connectorx", {}, {"NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_ID": "true"}),
    )
    found = []
    for name, backend, options, env in variants:
        where = folder / f"dlt-{backend}"
        make = partial(_dlt_tool, ctx, where, backend, options, env)
        try:
            make(name, lambda: None)  # installs the peer now, not inside a timed round
        except peers.PeerUnavailable as exc:
            ctx.log(f"  dlt unavailable: {exc}")
            return []
        reset = _pg_tools.reset(where / "dlt.duckdb", where / "pipelines")
        found.append(Contender(name, where, make, reset))
    return found


def _dlt_tool(
    ctx: Context,
    where: Path,
    backend: str,
    options: dict[str, str],
    env: dict[str, str],
    label: str,
    before: Callable[[], None],
) -> Tool:
    return _pg_tools.dlt(
        ctx,
        SCHEMA,
        TABLE,
        where,
        backend,
        disposition="merge",
        cursor=CURSOR,
        name=label,
        before=before,
        strategy="scd2",
        merge_key="id",
        env=env,
        **options,
    )


def _phase(
    ctx: Context,
    contenders: list[Contender],
    label: str,
    before: Callable[[Contender], Callable[[], None]],
) -> None:
    """Every live contender, ``ctx.runs`` runs in turn from the phase's start; then what the
    last run left is saved as the next phase's start."""
    live = [c for c in contenders if not c.failed]
    tools = [c.make(c.name, before(c)) for c in live]
    interleave(tools, ctx.runs, ctx.log)
    for contender, tool in zip(live, tools, strict=True):
        contender.phases.append(tool)
        if tool.error or not tool.samples:
            contender.failed = tool.error or "no run"
            continue
        contender.save(label)


def _change(pg: _pg.PgServer, number: int, rows: int, first_id: int) -> tuple[int, int]:
    """Round ``number``: update 1/UPDATE_EVERY of the rows (a different slice each round),
    then insert ``rows``/INSERT_EVERY new ones from ``first_id``; returns (updated, inserted)."""
    name = sql.Identifier(SCHEMA, TABLE)
    inserts = max(rows // INSERT_EVERY, 1)
    update = sql.SQL(_UPDATE).format(name, sql.Literal(UPDATE_EVERY))
    with pg.connect() as conn:
        updated = conn.execute(update, (number, (number * 7) % UPDATE_EVERY)).rowcount
        inserted = conn.execute(
            sql.SQL(_pg.ROWS_SQL).format(table=name, updated_at=sql.SQL(_INSERTED_AT)),
            (number, first_id, first_id + inserts - 1),
        ).rowcount
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(name))
    return updated, inserted


def _check(contenders: list[Contender], versions: int, current: int) -> dict[str, tuple[str, bool]]:
    """What each table holds after the last round against what the workload implies:
    ``{tool: (what was found, as implied)}``."""
    checks: dict[str, tuple[str, bool]] = {}
    for c in contenders:
        if c.failed or not c.phases:
            continue
        if c.name == HISTORY:
            checks[c.name] = _check_history(c.state, versions, current)
        elif c.name == DEDUPED:
            with DuckDBWarehouse(c.state, read_only=True) as wh:
                got = wh.query(
                    f'SELECT count(*) AS n FROM "{RAW}"."{TABLE}" WHERE _mds_deleted_at IS NULL'
                ).to_pylist()[0]["n"]
            checks[c.name] = (f"{got:,} rows (expected {current:,})", got == current)
        else:
            report = c.phases[-1].samples[-1].report
            found = (report.get("table_rows"), report.get("current_rows"))
            checks[c.name] = (
                f"{found[0]:,} versions, {found[1]:,} current"
                if None not in found
                else "not reported",
                found == (versions, current),
            )
    return checks


def _check_history(warehouse: Path, versions: int, current: int) -> tuple[str, bool]:
    table = f'"{RAW}"."{TABLE}"'
    with DuckDBWarehouse(warehouse, read_only=True) as wh:
        got = wh.query(
            "SELECT count(*) AS versions, count(*) FILTER (WHERE _mds_is_current) AS current,"
            " count(DISTINCT id) FILTER (WHERE _mds_is_current) AS keys,"
            " count(*) FILTER (WHERE _mds_is_current <> (_mds_valid_to IS NULL)) AS odd"
            f" FROM {table}"
        ).to_pylist()[0]
        view = wh.query(f'SELECT count(*) AS n FROM "{RAW}"."{TABLE}_current"').to_pylist()[0]
    ok = (
        got["versions"] == versions
        and got["current"] == got["keys"] == view["n"] == current
        and got["odd"] == 0
    )
    text = (
        f"{got['versions']:,} versions, {got['current']:,} current ({got['keys']:,} keys, "
        f"view {view['n']:,}); expected {versions:,} and {current:,}"
    )
    return text, ok


def _engine(sample: Sample) -> float:
    return float(sample.report.get("engine_seconds", sample.seconds))


def _median(samples: list[Sample], engine: bool = False) -> float:
    return statistics.median(_engine(s) if engine else s.process_seconds for s in samples)


def _tables(
    contenders: list[Contender],
    rows: int,
    rounds: list[Round],
    checks: dict[str, tuple[str, bool]],
    result: ScenarioResult,
) -> None:
    """The first load, and the rounds pooled (every run of every round), per tool."""
    first, pooled = [], []
    for c in contenders:
        tool = c.phases[0]
        extra = {"engine s": f"{_median(tool.samples, True):.2f}"} if tool.samples else {}
        row = Row.of(tool)
        row.extra = extra
        first.append(row)
        samples = [s for t in c.phases[1:] for s in t.samples]
        error = next((t.error for t in c.phases[1:] if t.error), None)
        if c.failed and not error and len(c.phases) == 1:
            error = f"not run: its first load failed ({c.failed[:200]})"
        reported = [s.report["rows"] for s in samples if s.report.get("rows")]
        check = checks.get(c.name)
        extra = {"engine s": f"{_median(samples, True):.2f}"} if samples else {}
        if check:
            extra |= {"after the last round": check[0], "as implied": "yes" if check[1] else "NO"}
        moved = int(statistics.median(reported)) if reported else None
        pooled.append(Row(c.name, samples, moved, error, "", extra))
        if check and not check[1] and c.name.startswith("mdstack"):
            pooled.append(Row(f"{c.name}: contents", [], error=f"wrong contents: {check[0]}"))
    result.tables.append(Table(f"First load of {rows:,} rows", first, extra_columns=("engine s",)))
    changed = sum(r.updated + r.inserted for r in rounds)
    result.tables.append(
        Table(
            f"Incremental rounds ({len(rounds)}, {changed:,} changes in all; the median "
            "over every run of every round)",
            pooled,
            extra_columns=("engine s", "after the last round", "as implied"),
        )
    )


def _summary(
    contenders: list[Contender],
    rounds: list[Round],
    checks: dict[str, tuple[str, bool]],
    result: ScenarioResult,
) -> dict[str, tuple[float, float]]:
    """Per tool: first load, the mean round (each round its median), peak RSS; then the
    ratios. Returns history / deduped per phase: ``{"first"|"round": (process, engine)}``."""
    figures: dict[str, dict[str, float]] = {}
    for c in contenders:
        if c.failed or len(c.phases) != len(rounds) + 1:
            continue
        first, *done = c.phases
        figures[c.name] = {
            "first": _median(first.samples),
            "first engine": _median(first.samples, True),
            "round": statistics.mean(_median(t.samples) for t in done),
            "round engine": statistics.mean(_median(t.samples, True) for t in done),
            "rss": max(s.rss_mb for t in c.phases for s in t.samples),
        }
    per_round = [
        "| round | updated | inserted | " + " | ".join(f"{c.name} s" for c in contenders) + " |",
        "|" + "---:|" * (3 + len(contenders)),
    ]
    for number, r in enumerate(rounds, 1):
        cells = [str(r.number), f"{r.updated:,}", f"{r.inserted:,}"]
        for c in contenders:
            tool = c.phases[number] if len(c.phases) > number else None
            cells.append(
                f"{_median(tool.samples):.2f} ({_median(tool.samples, True):.2f})"
                if tool and tool.samples
                else "-"
            )
        per_round.append("| " + " | ".join(cells) + " |")
    lines = [
        "| tool | first load process s | engine s | mean round process s | engine s "
        "| peak RSS MB | after the last round |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, f in figures.items():
        check = checks.get(name)
        lines.append(
            f"| {name} | {f['first']:.2f} | {f['first engine']:.2f} | {f['round']:.2f} "
            f"| {f['round engine']:.2f} | {f['rss']:.0f} "
            f"| {(check[0] + ('' if check[1] else ' **WRONG**')) if check else '-'} |"
        )
    ratios: dict[str, tuple[float, float]] = {}
    pairs = [(HISTORY, DEDUPED), (DLT_SCD2, HISTORY), (DLT_SCD2_CX, HISTORY)]
    ratio_lines = [
        "| ratio | first load (process) | first load (engine) | mean round (process) "
        "| mean round (engine) |",
        "|---|---:|---:|---:|---:|",
    ]
    for top, bottom in pairs:
        a, b = figures.get(top), figures.get(bottom)
        if not (a and b):
            continue
        got = {p: (a[p] / b[p], a[f"{p} engine"] / b[f"{p} engine"]) for p in ("first", "round")}
        if (top, bottom) == (HISTORY, DEDUPED):
            ratios = got
        ratio_lines.append(
            f"| {top} / {bottom} | {got['first'][0]:.2f}x | {got['first'][1]:.2f}x "
            f"| {got['round'][0]:.2f}x | {got['round'][1]:.2f}x |"
        )
    result.notes += [
        "\n".join(
            [
                "- Summary (medians of the runs; a round's figure is the mean of the rounds' "
                "medians):",
                "",
                *lines,
                "",
                *ratio_lines,
                "",
            ]
        ),
        "\n".join(["- Each round's median, process s (engine s):", "", *per_round, ""]),
        "mdstack runs as `mdstack sync`, timed as a whole process: its wall s is its "
        "process s. *process s*: the whole process, as a user waits for it (`mdstack sync`, "
        "the dlt script: interpreter start and imports included). *engine s*: mdstack's "
        "`seconds` in "
        "`_mds_runs` (the stream's sync, from taking its lock to its last commit: no process "
        "start, config, warehouse open or discover); dlt's `pipeline.run` timed in its "
        "worker (its imports and interpreter start excluded).",
        "The versions differ in what they say: mdstack's are valid from the cursor "
        "(`updated_at`), dlt's from the load's start (`_dlt_valid_from`, its boundary "
        "timestamp). The random `_dlt_id` variant keeps correct counts only because every row "
        "it reads has changed.",
    ]
    return ratios


def _profile(
    ctx: Context, contenders: list[Contender], missed: set[str], folder: Path
) -> list[str]:
    """Both mdstack modes once more through ``workers/mdstack_pg.py``, under cProfile and
    with every warehouse statement timed: the first load from nothing (the table as it is
    now: after the rounds) and/or the last round from where it started."""
    lines: list[str] = []
    by_name = {c.name: c for c in contenders}
    for phase in sorted(missed):
        for name, mode in MODES:
            c = by_name[name]
            if c.failed or len(c.bases) < 2:
                continue
            if phase == "first":
                c.reset()
                what = "a first load of the table after the rounds"
            else:
                _pg_tools.restore(c.bases[-2], c.state)()
                what = "the last round again"
            stats = folder / f"{phase}-{mode}.pstats"
            argv = _pg_tools.mdstack_argv(
                ctx, SCHEMA, TABLE, c.state, mode=mode, cursor=CURSOR, profile=stats
            )
            try:
                sample = _measure.run([*argv, "--trace-sql"])
            except _measure.ToolFailed as exc:
                lines.append(f"- profile of `{name}` ({what}) failed: {exc}")
                continue
            got = summary(stats, sample.seconds, top=8) if name == HISTORY else []
            got += sql_lines(sample.report, sample.seconds, top=8)
            if got and got[0].startswith("- cProfile"):
                got[0] = f"- `{name}`, {what}, under cProfile ({sample.seconds:.2f} s profiled):"
            else:
                got.insert(0, f"- `{name}`, {what} ({sample.seconds:.2f} s):")
            lines += got
    return lines
