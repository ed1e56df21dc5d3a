"""``python -m bench``: run the scenarios, print the markdown, write ``bench/results/<date>.md``.

Options: ``--scenario NAME`` (repeatable; a name or its number 1-10; default
all), ``--runs N`` (rounds, default 3), ``--rows N`` (table size of scenarios 1-2 and 10,
and the cap of scenario 7's sizes), ``--quick`` (a small smoke run for CI: one round,
small tables, no peers, nothing written unless ``--out``), ``--out PATH``,
``--no-peers``, ``--no-profile``, ``--keep`` (leave the scratch folder).

Exit status: 0 when every scenario ran or was skipped for a stated reason (a missed
target is a result, not a failure); 1 when a scenario crashed or an mdstack run failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

from bench import peers
from bench._pg import PgServer
from bench._results import ScenarioResult, memory_target, render, render_scenario, write
from bench.scenarios import QUICK, SCENARIOS, Context, resolve
from bench.scenarios import run as run_scenario


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        help=f"one of {', '.join(SCENARIOS)} or 1-{len(SCENARIOS)}; repeatable",
    )
    parser.add_argument("--runs", type=int, help="rounds per scenario (default 3; --quick: 1)")
    parser.add_argument("--rows", type=int, help="rows of scenarios 1-2 and 10; caps scenario 7")
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    parser.add_argument("--out", type=Path, help="markdown file (default bench/results/<date>.md)")
    parser.add_argument("--no-peers", action="store_true", help="skip dlt")
    parser.add_argument("--no-profile", action="store_true", help="no profile of missed targets")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser.parse_args(argv)


def _versions(ctx: Context, with_peers: bool) -> str:
    found = {"mdstack": metadata.version("mdstack")}
    for name in ("duckdb", "prefect", "pyarrow"):
        found[name] = metadata.version(name)
    if with_peers and peers.DLT.python.exists():
        done = subprocess.run(
            [
                str(peers.DLT.python),
                "-c",
                "from importlib.metadata import version as v;"
                "print(v('dlt'), v('connectorx'), v('duckdb'))",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            dlt, cx, duck = done.stdout.split()
            found["dlt"] = f"{dlt} (connectorx {cx}, duckdb {duck})"
    try:
        with ctx.pg.connect() as conn:
            found["PostgreSQL"] = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    except Exception:  # only decoration of the report
        pass
    return "Versions: " + ", ".join(f"{k} {v}" for k, v in found.items()) + "."


def _failed(result: ScenarioResult) -> list[str]:
    return [
        f"{result.key}: {row.tool}: {row.error}"
        for table in result.tables
        for row in table.rows
        if row.tool.startswith("mdstack") and not row.ok
    ]


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.list:
        for number, name in enumerate(SCENARIOS, 1):
            print(f"{number}. {name}")
        return 0
    names = [resolve(n) for n in args.scenario] if args.scenario else list(SCENARIOS)
    if args.quick and not args.scenario:
        names = list(QUICK)
    runs = args.runs or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="mdstack-bench-"))
    ctx = Context(
        runs=runs,
        rows=args.rows,
        quick=args.quick,
        work=work,
        pg=PgServer.from_env(),
        peers=not (args.no_peers or args.quick),
        profile=not (args.no_profile or args.quick),
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    results: list[ScenarioResult] = []
    problems: list[str] = []
    started = time.perf_counter()
    try:
        for name in names:
            ctx.log(f"== {name} ==")
            begun = time.perf_counter()
            try:
                result = run_scenario(name, ctx)
            except Exception as exc:  # one scenario must not hide the others
                traceback.print_exc()
                result = ScenarioResult(name, name, skipped=f"crashed: {exc!r}")
                problems.append(f"{name} crashed: {exc!r}")
            if (memory := memory_target(result)) is not None:
                result.targets.append(memory)
            problems += _failed(result)
            results.append(result)
            ctx.log(render_scenario(result))
            ctx.log(f"({name}: {time.perf_counter() - begun:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(results, runs, command.strip(), _versions(ctx, ctx.peers))
    print(text)
    if args.out or not args.quick:
        print(f"written to {write(text, args.out)}", file=sys.stderr)
    print(f"bench took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
