"""``--log-format json``: every log line of a run is one JSON object a log shipper can
read, naming the run, pipeline, region and stream it belongs to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT

SMALL = "orders_per_day: 1000"


def test_a_sync_logs_one_json_object_per_line_naming_its_run_and_stream(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    demo = (ROOT / "stack.yml").read_text().replace(SMALL, "orders_per_day: 20")
    path.write_text(demo.replace("dbt_project", str(ROOT / "dbt_project")))
    command = [sys.executable, "-c", "from stack.cli import app; app()"]
    args = ["--log-format", "json", "sync", "--config", str(path), "--region", "eu"]

    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )

    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    logged = [json.loads(line) for line in lines]  # every line is JSON, nothing else
    assert {"time", "level", "logger", "message", "run_id", "region", "stream"} <= set(logged[0])
    by_stream = {line["stream"]: line for line in logged if line["stream"]}
    assert set(by_stream) == {
        "shop.customers",
        "shop.orders",
        "shop.order_items",
        "shop.products",
        "shop.marketing_spend",
    }
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        runs = wh.query(f"SELECT DISTINCT run_id FROM {wh.meta_schema}._mds_runs")
    run_ids = set(runs.column("run_id").to_pylist())
    assert {line["run_id"] for line in by_stream.values()} == run_ids
    assert {line["region"] for line in by_stream.values()} == {"eu"}
    assert {line["pipeline"] for line in by_stream.values()} == {"shop"}


def test_an_error_is_a_json_line_too(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text((ROOT / "stack.yml").read_text().replace("seed: 7", "seed: twelve"))
    command = [sys.executable, "-c", "from stack.cli import app; app()", "validate"]

    done = subprocess.run(
        [*command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MDSTACK_LOG_FORMAT": "json"},
    )

    assert done.returncode == 2
    errors = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert [e["level"] for e in errors] == ["ERROR", "ERROR"]  # the seed, the dbt project
    assert all(e["logger"] == "stack.cli" for e in errors)
    assert "sources.shop.config.seed" in errors[0]["message"]
