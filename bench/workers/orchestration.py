"""Many tiny streams through the engine alone, through per-stream steps, or the Prefect flow.

Modes (all on the same generated ``stack.yml``, a fresh warehouse each process):

* ``engine``: :func:`stack.run.pipeline.run_pipeline` without dbt (what ``mdstack sync`` runs):
  one warehouse connection per run, streams within the bounds of ``stack.yml``.
* ``steps``: :func:`stack.run.pipeline.sync_run_stream` once per stream, the very call each
  Prefect task makes (the run's shared scope: config, secrets, warehouse, discovered
  source), without Prefect, then :func:`stack.run.pipeline.end_syncs`.
* ``flow``: :func:`flows.pipeline.pipeline`, the Prefect flow ``mdstack run`` starts
  (ephemeral Prefect unless ``PREFECT_API_URL`` is set).

Each process first runs one stream (cold: creates the catalog and ledger, starts
Prefect's server for the flow), then all streams, timed on its own.

Usage: ``python orchestration.py MODE STACK_YML [--trace-sql]`` (``--trace-sql`` adds the
warehouse statements of the timed part, by total time, to the report).
"""

from __future__ import annotations

import os
import sys
import time

import yaml
from _report import emit

import connectors

connectors.REGISTRY.setdefault("bench_tiny", "tiny_source:TinySource")

SOURCE = "tiny"


def _prefect_env() -> None:
    """What ``mdstack run`` sets before it starts the flow (stack.cli._common.prefect_defaults)."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stack,connectors")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    trace = "--trace-sql" in sys.argv[3:]
    with open(path) as fh:
        streams = list(yaml.safe_load(fh)["sources"][SOURCE]["streams"])
    from stack.config import load_config
    from stack.run import pipeline as engine

    config = load_config(path)
    region = config.region_names()[0]

    if mode == "flow":
        _prefect_env()
        from flows.pipeline import pipeline as flow

        def sync(names: list[str]) -> int:
            summary = flow(region=region, streams=names, config_path=path)
            return len(summary.streams)

    elif mode == "steps":

        def sync(names: list[str]) -> int:
            run_id = engine.new_run_id()
            try:
                entries = [
                    engine.sync_run_stream(path, None, region, SOURCE, n, run_id) for n in names
                ]
            finally:
                engine.end_syncs(path, None, region, run_id)
            return len(entries)

    else:

        def sync(names: list[str]) -> int:
            selection = engine.select(config, region, [SOURCE], names)
            summary = engine.run_pipeline(path, None, selection, transform=False)
            return len(summary.streams)

    started = time.perf_counter()
    sync(streams[:1])
    cold = time.perf_counter() - started
    if trace:
        import _sqltrace

        _sqltrace.install()
    started = time.perf_counter()
    done = sync(streams)
    seconds = time.perf_counter() - started
    if done != len(streams):
        raise SystemExit(f"{done} of {len(streams)} streams synced")
    extra = {"sql": _sqltrace.top(), "sql_seconds": _sqltrace.total()} if trace else {}
    emit(seconds, done, cold=cold, streams=done, **extra)


if __name__ == "__main__":
    main()
