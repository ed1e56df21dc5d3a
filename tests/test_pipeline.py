"""The demo pipeline end to end: simulator -> DuckLake -> dbt, as `make demo` runs it.

Expected marts are computed here, independently, by replaying the simulator's
change sets in polars (latest version per key, deleted keys dropped).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
import yaml

from connectors.base import Batch, ConfiguredStream, Deletes
from connectors.demo import DemoSource
from stack.config import load_config
from stack.load.ledger import RunEntry
from stack.run import pipeline
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT, dbt_target

pytestmark = pytest.mark.slow

SHOP = {"seed": 11, "history_days": 4, "orders_per_day": 60}
DATA_COLUMNS = {
    "orders": ["id", "customer_id", "ordered_at", "status", "channel", "amount", "updated_at"],
    "customers": ["id", "name", "email", "segment", "signup_day", "updated_at"],
}


def write_config(folder: Path, days: int | str = "auto") -> Path:
    """The repository's stack.yml, pointed at a private warehouse and a smaller shop."""
    config = yaml.safe_load((ROOT / "stack.yml").read_text())
    config["targets"]["local"]["path"] = str(folder / "warehouse")
    config["sources"]["shop"]["config"] |= {**SHOP, "days": days}
    config["dbt"]["project_dir"] = str(ROOT / "dbt_project")
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def replay(region: str, stream: str, last_day: int) -> pl.DataFrame:
    """The stream as the source says it is after ``last_day``: latest row per key, no deletes."""
    source = DemoSource("shop", {**SHOP, "region": region, "days": last_day})
    spec = source.discover().stream(stream)
    read = ConfiguredStream(spec, "incremental_deduped", spec.cursor, spec.primary_key)
    frames, deleted = [], []
    for message in source.read(read, None):
        if isinstance(message, Batch):
            frames.append(pl.from_arrow(pa.Table.from_batches([message.data])))
        elif isinstance(message, Deletes):
            deleted.append(pl.from_arrow(pa.Table.from_batches([message.keys])))
    rows = pl.concat(frames).sort("updated_at").unique("id", keep="last")
    gone = pl.concat(deleted)["id"] if deleted else pl.Series("id", [], pl.Int64)
    return rows.filter(~pl.col("id").is_in(gone.implode()))


def query(folder: Path, sql: str, params: list | None = None) -> pl.DataFrame:
    with DuckDBWarehouse(folder / "warehouse") as wh:
        return pl.from_arrow(wh.query(sql, params))


def run(path: Path, region: str = "eu", transform: bool = True) -> pipeline.RunSummary:
    config = load_config(path)
    return pipeline.run_pipeline(path, None, pipeline.select(config, region), transform=transform)


def by_stream(summary: pipeline.RunSummary) -> dict[str, RunEntry]:
    return {entry.stream: entry for entry in summary.streams}


def test_marts_match_numbers_computed_from_the_simulator(tmp_path):
    path = write_config(tmp_path)
    run(path)
    summary = run(path)  # the second run: one more simulated day, incremental
    assert summary.ok, summary.dbt and summary.dbt.failed_nodes

    orders = replay("eu", "orders", last_day=SHOP["history_days"])
    paid = orders.filter(~pl.col("status").is_in(["cancelled", "returned"]))
    expected_daily = (
        paid.group_by(pl.col("ordered_at").dt.date().alias("day"))
        .agg(pl.len().alias("orders"), pl.col("amount").sum().alias("revenue"))
        .sort("day")
    )
    daily = query(
        tmp_path,
        "SELECT day, orders, revenue::DOUBLE AS revenue FROM "
        "marts.daily_revenue WHERE region = 'eu' AND orders > 0 ORDER BY day",
    )
    assert daily["day"].to_list() == expected_daily["day"].to_list()
    assert daily["orders"].to_list() == expected_daily["orders"].to_list()
    assert daily["revenue"].to_list() == pytest.approx(expected_daily["revenue"].to_list())

    spend = replay_spend("eu", SHOP["history_days"])
    revenue = paid.group_by("channel").agg(pl.col("amount").sum().alias("revenue"))
    expected_roi = (
        revenue.join(spend, on="channel", how="left")
        .with_columns(((pl.col("revenue") - pl.col("spend")) / pl.col("spend")).alias("roi"))
        .sort("channel")
    )
    roi = query(
        tmp_path,
        "SELECT channel, revenue::DOUBLE AS revenue, spend::DOUBLE AS spend, "
        "roi FROM marts.marketing_roi WHERE region = 'eu' ORDER BY channel",
    )
    assert roi["channel"].to_list() == expected_roi["channel"].to_list()
    assert roi["revenue"].to_list() == pytest.approx(expected_roi["revenue"].to_list())
    paid_channels = expected_roi.filter(pl.col("spend").is_not_null())
    assert roi.filter(pl.col("spend") > 0)["roi"].to_list() == pytest.approx(
        paid_channels["roi"].to_list()
    )
    assert roi.filter(pl.col("channel") == "organic")["roi"].to_list() == [None]


def replay_spend(region: str, last_day: int) -> pl.DataFrame:
    source = DemoSource("shop", {**SHOP, "region": region, "days": last_day})
    spec = source.discover().stream("marketing_spend")
    read = ConfiguredStream(spec, "incremental_append", spec.cursor, spec.primary_key)
    batches = [m.data for m in source.read(read, None) if isinstance(m, Batch)]
    spend = pl.from_arrow(pa.Table.from_batches(batches))
    return spend.group_by("channel").agg(pl.col("spend").sum())


def test_second_run_reads_only_the_new_day_and_running_a_day_again_changes_nothing(tmp_path):
    path = write_config(tmp_path)
    first = by_stream(run(path, transform=False))
    second = by_stream(run(path, transform=False))
    one_day = replay_changes("eu", "orders", day=SHOP["history_days"])
    assert second["orders"].rows_read == one_day
    assert second["orders"].rows_read < first["orders"].rows_read
    assert (second["orders"].inserted, second["orders"].updated) != (0, 0)

    before = snapshot(tmp_path)
    pinned = write_config(tmp_path, days=SHOP["history_days"])  # the same day again
    again = by_stream(run(pinned, transform=False))
    assert all(again[s].rows_read == 0 for s in ("customers", "orders", "order_items"))
    assert snapshot(tmp_path) == before
    assert query(tmp_path, "SELECT DISTINCT state FROM _mds_state WHERE region = 'eu'")[
        "state"
    ].to_list() == ['{"day": 4}']


def replay_changes(region: str, stream: str, day: int) -> int:
    """Rows the source yields for exactly one simulated day."""
    source = DemoSource("shop", {**SHOP, "region": region, "days": day})
    spec = source.discover().stream(stream)
    read = ConfiguredStream(spec, "incremental_deduped", spec.cursor, spec.primary_key)
    return sum(m.data.num_rows for m in source.read(read, {"day": day - 1}) if isinstance(m, Batch))


def snapshot(folder: Path, region: str = "eu") -> dict[str, list]:
    """Every data column of every table of a region (metadata columns left out)."""
    found = {}
    for table in ("customers", "orders", "order_items", "products", "marketing_spend"):
        frame = query(
            folder,
            f"SELECT * EXCLUDE (_mds_run_id, _mds_loaded_at) FROM raw_shop.{table}"
            " WHERE _mds_region = ?",
            [region],
        )
        found[table] = sorted(frame.rows())
    return found


def test_regions_keep_separate_state_and_never_touch_each_others_rows(tmp_path):
    path = write_config(tmp_path)
    run(path, "eu", transform=False)
    eu = snapshot(tmp_path, "eu")
    run(path, "us", transform=False)
    run(path, "us", transform=False)
    assert snapshot(tmp_path, "eu") == eu
    assert snapshot(tmp_path, "us") != eu
    states = query(
        tmp_path, "SELECT region, state FROM _mds_state WHERE stream = 'orders' ORDER BY region"
    )
    assert states.rows() == [("eu", '{"day": 3}'), ("us", '{"day": 4}')]


def test_make_demo_twice_through_the_prefect_flow(tmp_path):
    """`mdstack run` is what `make demo` calls: the Prefect flow in ephemeral mode."""
    path = write_config(tmp_path)
    command = [
        sys.executable,
        "-c",
        "from stack.cli import app; app()",
        "run",
        "--config",
        str(path),
        "--region",
        "eu",
    ]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        said = done.stdout + done.stderr  # a good run says nothing alarming, shutdown included
        assert "Traceback" not in said and "| ERROR" not in said, said[-3000:]
    assert "region eu" in done.stdout and "dbt build --select" in done.stdout
    runs = query(
        tmp_path,
        "SELECT run_id, stream, rows_read, status FROM _mds_runs "
        "WHERE stream = 'orders' ORDER BY started_at",
    )
    assert runs["status"].to_list() == ["succeeded", "succeeded"]
    assert runs["rows_read"][1] == replay_changes("eu", "orders", day=SHOP["history_days"])
    marts = query(tmp_path, "SELECT count(*) AS n FROM marts.daily_revenue WHERE region = 'eu'")
    assert marts["n"][0] > 0


def test_only_models_downstream_of_the_changed_stream_run_and_facts_stay_exact(tmp_path):
    path = write_config(tmp_path)
    run(path)
    config = load_config(path)
    summary = pipeline.run_pipeline(path, None, pipeline.select(config, "eu", streams=["orders"]))
    assert summary.ok
    ran = {n.name for n in summary.dbt.run.nodes if n.resource_type == "model"}
    assert ran == {"stg_orders", "fct_orders", "daily_revenue", "marketing_roi"}
    assert "--full-refresh" not in summary.dbt.run.args
    facts = query(
        tmp_path,
        "SELECT count(*) AS n, sum(amount)::DOUBLE AS amount FROM "
        "marts.fct_orders WHERE region = 'eu'",
    )
    live = replay("eu", "orders", last_day=SHOP["history_days"])
    assert facts["n"][0] == live.height  # merged incrementally, deletes removed
    assert facts["amount"][0] == pytest.approx(live["amount"].sum())
    # `mdstack docs` generates the dbt docs (manifest with the lineage graph, catalog).
    from typer.testing import CliRunner

    from stack.cli import app

    result = CliRunner().invoke(app, ["docs", "--no-serve", "-c", str(path)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((dbt_target(ROOT / "dbt_project") / "manifest.json").read_text())
    assert "model.mdstack.stg_orders" in manifest["parent_map"]["model.mdstack.fct_orders"]
    catalog = json.loads((dbt_target(ROOT / "dbt_project") / "catalog.json").read_text())
    assert "model.mdstack.fct_orders" in catalog["nodes"]
