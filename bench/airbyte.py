"""Scenario 4: Airbyte ``source-faker`` 7.2.1 (installed from PyPI into its own virtualenv,
as ``mdstack connector install`` does), 200 k records.

Table 1, one stream (``users``, ``count`` 200 000): the floor is the connector's own
``read`` to /dev/null; mdstack syncs it through the airbyte source and ``sync_source``
(``incremental_deduped``) into a fresh DuckLake folder, twice over: ``mdstack`` with the
connector's catalog cached by an earlier sync (every sync but the first: no ``discover``
process), and ``mdstack, cold catalog cache`` as the first sync ever (the connector's
``discover`` runs first, and is cached); PyAirbyte (in its own virtualenv, offline,
``local_executable=`` the same faker) reads it into its DuckDB cache.

Table 2, two streams (``users`` and ``purchases``, ``count`` 100 000 each): mdstack reads
each stream with a connector process of its own, where the floor reads both in one. A
second floor runs what mdstack's first sync asks of the connector (``discover``, then one
``read`` per stream; later syncs skip the ``discover``) with nothing reading the output.

Target: mdstack (cached catalog) ≤ 1.1x the floor, timed as a user runs it: the whole
process, interpreter start and imports included (*process s*).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench import _pg_tools, peers
from bench._measure import Tool, interleave
from bench._results import Row, ScenarioResult, Table, Target
from bench.scenarios import Context

TITLE = "4. Airbyte source-faker"
VERSION = "7.2.1"
LIMIT = 1.1
PYAIRBYTE = peers.Peer("pyairbyte", ("airbyte==0.71.3",))
"""PyAirbyte; it pins airbyte-cdk 7, which faker (cdk < 7) cannot share a virtualenv with."""


def run(ctx: Context) -> ScenarioResult:
    records = ctx.rows or (4_000 if ctx.quick else 200_000)
    result = ScenarioResult("airbyte", f"{TITLE}, {records:,} records")
    from connectors.airbyte.install import ensure_installed
    from connectors.errors import MdstackError

    try:
        faker = ensure_installed("airbyte-source-faker", VERSION).executable
    except MdstackError as exc:
        result.skipped = f"airbyte-source-faker {VERSION} could not be installed: {exc}"
        return result
    folder = ctx.folder("airbyte")
    pyairbyte = _pyairbyte(ctx)
    one = _table(ctx, faker, folder / "one", {"count": records}, ["users"], pyairbyte)
    result.tables.append(one)
    result.targets.append(_target(one, "one stream"))
    if not ctx.quick:
        half = {"count": records // 2}
        two = _table(ctx, faker, folder / "two", half, ["users", "purchases"], None)
        result.tables.append(two)
        result.targets.append(_target(two, "two streams"))
    return result


def _table(
    ctx: Context,
    faker: Path,
    folder: Path,
    settings: dict,
    streams: list[str],
    pyairbyte: Path | None,
) -> Table:
    folder.mkdir(parents=True)
    config = {**settings, "seed": 42}
    config_file, catalog_file = folder / "config.json", folder / "catalog.json"
    config_file.write_text(json.dumps(config))
    catalog_file.write_text(json.dumps(_catalog(faker, config_file, streams)))
    read = [str(faker), "read", "--config", str(config_file), "--catalog", str(catalog_file)]
    floor = Tool("floor: connector read", lambda: (read, {}, None), discard_stdout=True)
    tools = [floor]
    if len(streams) > 1:
        tools.append(_per_stream_floor(faker, folder, config_file, catalog_file))
    from connectors.airbyte.catalogs import CACHE_ENV

    warehouse = folder / "mdstack"
    mds_argv = [ctx.python(), ctx.worker("mdstack_airbyte.py"), json.dumps(config)]
    mds_argv += [str(warehouse), *streams]
    warm, cold = folder / "catalogs-warm", folder / "catalogs-cold"
    tools.append(
        Tool(
            "mdstack",
            lambda: (mds_argv, {CACHE_ENV: str(warm)}, None),
            before=_warm(warehouse, warm, config),
            note="catalog cached by an earlier sync",
        )
    )
    tools.append(
        Tool(
            "mdstack, cold catalog cache",
            lambda: (mds_argv, {CACHE_ENV: str(cold)}, None),
            before=_pg_tools.reset(warehouse, cold),
            note="first sync ever: discover runs",
        )
    )
    if pyairbyte is not None:
        tools.append(_pyairbyte_tool(ctx, pyairbyte, faker, folder, config, streams))
    interleave(tools, ctx.runs, ctx.log)
    count = config["count"]
    what = f"{' + '.join(streams)}, count {count:,}"
    return Table(
        what,
        [Row.of(t, loaded=_loaded(t)) for t in tools],
        floor="floor: connector read",
        subject="mdstack",
        extra_columns=("loaded",),
    )


def _warm(warehouse: Path, catalogs: Path, config: dict) -> Callable[[], None]:
    """A ``before`` hook: a fresh warehouse, and the connector's catalog in ``catalogs`` as
    an earlier sync left it (discovered here once, untimed)."""
    reset = _pg_tools.reset(warehouse)

    def before() -> None:
        reset()
        if any(catalogs.glob("*.json")):
            return
        from connectors.airbyte import AirbyteSource
        from connectors.airbyte.catalogs import CACHE_ENV

        source = {"package": "airbyte-source-faker", "version": VERSION, "config": config}
        os.environ[CACHE_ENV] = str(catalogs)
        try:
            AirbyteSource("faker", source).discover()
        finally:
            del os.environ[CACHE_ENV]

    return before


def _catalog(faker: Path, config_file: Path, streams: list[str]) -> dict:
    """The configured catalog mdstack would send: incremental, faker's cursor and key."""
    out = subprocess.run(
        [str(faker), "discover", "--config", str(config_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = next(
        json.loads(line)["catalog"]["streams"]
        for line in out.splitlines()
        if line.startswith('{"type":"CATALOG"')
    )
    return {
        "streams": [
            {
                "stream": s,
                "sync_mode": "incremental",
                "cursor_field": s["default_cursor_field"],
                "destination_sync_mode": "append_dedup",
                "primary_key": s["source_defined_primary_key"],
            }
            for s in found
            if s["name"] in streams
        ]
    }


def _per_stream_floor(faker: Path, folder: Path, config_file: Path, catalog_file: Path) -> Tool:
    """``discover`` then one ``read`` per stream, output to /dev/null: the connector work of
    mdstack's first sync (later ones skip the ``discover``)."""
    catalog = json.loads(catalog_file.read_text())
    commands = [f"{faker} discover --config {config_file}"]
    for entry in catalog["streams"]:
        one = folder / f"catalog-{entry['stream']['name']}.json"
        one.write_text(json.dumps({"streams": [entry]}))
        commands.append(f"{faker} read --config {config_file} --catalog {one}")
    script = " && ".join(commands)
    return Tool(
        "floor: discover + a read per stream",
        lambda: (["sh", "-c", script], {}, None),
        discard_stdout=True,
        note="what mdstack's first sync runs of the connector",
    )


def _pyairbyte(ctx: Context) -> Path | None:
    if not ctx.peers:
        return None
    try:
        return peers.ensure(PYAIRBYTE, ctx.log)
    except peers.PeerUnavailable as exc:
        ctx.log(f"  PyAirbyte unavailable: {exc}")
        return None


def _pyairbyte_tool(
    ctx: Context, python: Path, faker: Path, folder: Path, config: dict, streams: list[str]
) -> Tool:
    work = folder / "pyairbyte"
    db = work / "cache.duckdb"
    argv = [str(python), ctx.worker("pyairbyte_faker.py"), str(faker), json.dumps(config)]
    argv += [str(db), *streams]
    env = {
        "AIRBYTE_OFFLINE_MODE": "1",  # no registry lookup (no network for it here)
        "DO_NOT_TRACK": "1",
        "AIRBYTE_LOGGING_ROOT": str(work / "logs"),
    }

    def before() -> None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)

    return Tool("PyAirbyte (DuckDB cache)", lambda: (argv, env, work), before=before)


def _loaded(tool: Tool) -> str:
    counts = {s.report.get("table_rows") for s in tool.samples if "table_rows" in s.report}
    return ", ".join(f"{c:,}" for c in sorted(counts)) if counts else ""


def _target(table: Table, what: str) -> Target:
    """mdstack's whole process (as a user runs it) against the floor; its own timing of
    the work (imports excluded) alongside."""
    mds, floor = table.row("mdstack"), table.row("floor: connector read")
    label = f"{what}, catalog cached: ≤ {LIMIT}x the connector's own read (whole process)"
    if not (mds and floor):
        return Target(label, "not measured", None)
    x = mds.process / floor.process
    return Target(label, f"{x:.2f}x (work alone {mds.wall / floor.wall:.2f}x)", x <= LIMIT)
