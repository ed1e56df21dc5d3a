"""The contenders for a PostgreSQL table -> DuckDB load, as :class:`~bench._measure.Tool`\\ s.

* ``floor``: ``COPY (SELECT * ...) TO STDOUT (FORMAT binary)`` to /dev/null (psql).
* ``mdstack``: PostgresSource + ``sync_stream`` into a fresh DuckLake warehouse folder.
* ``duckdb postgres_scan``: DuckDB's own scanner, ``CREATE TABLE AS`` into a DuckDB file.
* ``dlt <backend>``: ``sql_table`` into DuckDB, in the dlt peer's virtualenv.

Each ``before`` hook resets what the tool writes, so every run is a fresh load unless
the scenario passes its own (the incremental scenario restores a synced copy).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from bench import peers
from bench._measure import Tool
from bench._pg import floor_command
from bench.scenarios import Context

DLT_ENV = {"RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "WARNING"}


def reset(*paths: Path) -> Callable[[], None]:
    """A ``before`` hook removing files or folders."""

    def before() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    return before


def restore(backup: Path, target: Path) -> Callable[[], None]:
    """A ``before`` hook putting a saved folder back in place (same path: DuckLake keeps
    its data path absolute in the catalog, dlt keeps its state in both places)."""

    def before() -> None:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(backup, target, symlinks=True)

    return before


def floor(ctx: Context, schema: str, table: str, name: str = "floor: COPY binary") -> Tool:
    argv = floor_command(ctx.pg, schema, table)
    return Tool(name, lambda: (argv, ctx.pg.env(), None), discard_stdout=True)


def mdstack_argv(
    ctx: Context,
    schema: str,
    table: str,
    warehouse: Path,
    mode: str = "full_refresh_overwrite",
    cursor: str | None = None,
    delete_detection: str | None = None,
    profile: Path | None = None,
    readers: int | None = None,
) -> list[str]:
    config = ctx.pg.source_config(schema, table) | ({"readers": readers} if readers else {})
    argv = [ctx.python(), ctx.worker("mdstack_pg.py")]
    argv += ["--source", json.dumps(config)]
    argv += ["--table", table, "--warehouse", str(warehouse), "--mode", mode]
    argv += ["--cursor", cursor] if cursor else []
    argv += ["--delete-detection", delete_detection] if delete_detection else []
    argv += ["--profile", str(profile)] if profile else []
    return argv


def mdstack(
    ctx: Context,
    schema: str,
    table: str,
    warehouse: Path,
    name: str = "mdstack",
    before: Callable[[], None] | None = None,
    **options: str | int | None,
) -> Tool:
    argv = mdstack_argv(ctx, schema, table, warehouse, **options)
    return Tool(name, lambda: (argv, {}, None), before=before or reset(warehouse))


def duckdb_scan(ctx: Context, schema: str, table: str, folder: Path) -> Tool:
    out = folder / "scan.duckdb"
    argv = [ctx.python(), ctx.worker("duckdb_pg_scan.py"), ctx.pg.conninfo, schema, table]
    return Tool("duckdb postgres_scan", lambda: ([*argv, str(out)], {}, None), before=reset(out))


def dlt(
    ctx: Context,
    schema: str,
    table: str,
    folder: Path,
    backend: str,
    disposition: str = "replace",
    cursor: str | None = None,
    name: str | None = None,
    before: Callable[[], None] | None = None,
    strategy: str | None = None,
    merge_key: str | None = None,
    loader_file_format: str | None = None,
    env: dict[str, str] | None = None,
) -> Tool:
    """dlt's ``sql_table``; its DuckDB file and pipelines folder live in ``folder``.

    ``strategy`` (``scd2``), ``merge_key`` and ``loader_file_format`` go to the worker;
    ``env`` adds dlt settings (``NORMALIZE__...``) to :data:`DLT_ENV`."""
    python = peers.ensure(peers.DLT, ctx.log)
    url = ctx.pg.url.replace("postgresql://", "postgresql+psycopg2://")
    argv = [str(python), ctx.worker("dlt_sql.py"), "--url", url, "--schema", schema]
    argv += ["--table", table, "--backend", backend, "--disposition", disposition]
    argv += ["--destination", str(folder / "dlt.duckdb")]
    argv += ["--pipelines-dir", str(folder / "pipelines")]
    argv += ["--cursor", cursor] if cursor else []
    argv += ["--strategy", strategy] if strategy else []
    argv += ["--merge-key", merge_key] if merge_key else []
    argv += ["--loader-file-format", loader_file_format] if loader_file_format else []
    folder.mkdir(parents=True, exist_ok=True)
    settings = DLT_ENV | (env or {})
    return Tool(
        name or f"dlt {backend}",
        lambda: (argv, settings, folder),
        before=before or reset(folder / "dlt.duckdb", folder / "pipelines"),
    )


def dlt_tools(ctx: Context, schema: str, table: str, folder: Path, **options) -> list[Tool]:
    """dlt with connectorx and with pyarrow, or none when peers are off or will not install."""
    if not ctx.peers:
        return []
    try:
        return [
            dlt(ctx, schema, table, folder / backend, backend, **options)
            for backend in ("connectorx", "pyarrow")
        ]
    except peers.PeerUnavailable as exc:
        ctx.log(f"  dlt unavailable: {exc}")
        return []
