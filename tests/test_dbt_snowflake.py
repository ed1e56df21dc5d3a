"""The demo pipeline on Snowflake (fakesnow's server, dbt-snowflake) and on DuckDB, side by side.

Two module-scoped runs per adapter, of the same simulated days: the demo source syncs,
dbt builds staging views, marts, the incremental fct_orders and the customers snapshot,
tests them, checks source freshness, and records every node in ``_mds_dbt_results``.
The marts must hold the same numbers on both. Write-audit-publish is off on Snowflake:
fakesnow cannot run ``CREATE DATABASE ... CLONE`` or ``SWAP WITH`` (README).

The Snowflake password is a fresh random value: it must appear in no dbt log line,
artifact or captured output. Then, on DuckDB (with write-audit-publish), bad data makes
a dbt test fail and a source stale: the failing test has its row in the ledger and the
stale source blocks the publish.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from stack import transform
from stack.cli import app
from stack.config import load_config
from stack.errors import TransformError
from stack.run import pipeline
from stack.warehouse import _snowflake_time_travel as travel
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.snowflake_fixtures import fakesnow_server, open_fakesnow, stop_fakesnow_server
from tests.test_pipeline import write_config

pytestmark = pytest.mark.slow

DATABASE = "SHOP_E2E"
PASSWORD = "sf-pw-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dbt-snowflake")


@pytest.fixture(scope="module")
def config_path(folder: Path) -> Path:
    """The repository's stack.yml with a small shop, plus a Snowflake target on fakesnow."""
    path = write_config(folder)
    config = yaml.safe_load(path.read_text())
    server = fakesnow_server()
    config["targets"]["snowflake"] = {
        "type": "snowflake",
        "account": "fakesnow",
        "user": "fake",
        "password": "${env:MDSTACK_TEST_SF_PASSWORD}",
        "database": DATABASE,
        "schema": "MDSTACK",
        "warehouse": "fake_wh",
        "role": "fake_role",
        "threads": 1,
        "host": server["host"],
        "port": server["port"],
        "protocol": "http",
        "fakesnow": True,
    }
    config.pop("lineage", None)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def snowflake_config_path(config_path: Path) -> Path:
    """The same, write-audit-publish off (fakesnow has no database CLONE or SWAP WITH)."""
    config = yaml.safe_load(config_path.read_text())
    config["publish"]["audit"] = False
    path = config_path.with_name("stack-snowflake.yml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def dbt_files_and_output(folder: Path) -> Iterator[dict[str, Path]]:
    """Send dbt's logs and artifacts to ``folder``; capture stdout and stderr into a file."""
    paths = {"logs": folder / "logs", "target": folder / "target", "output": folder / "out.txt"}
    saved_env = {k: os.environ.get(k) for k in ("DBT_LOG_PATH", "DBT_TARGET_PATH")}
    os.environ["DBT_LOG_PATH"], os.environ["DBT_TARGET_PATH"] = map(
        str, (paths["logs"], paths["target"])
    )
    folder.mkdir(parents=True, exist_ok=True)
    with (
        open(paths["output"], "ab") as out,
        open(paths["output"], "a", encoding="utf-8") as text,  # what Python prints
        redirect_stdout(text),
        redirect_stderr(text),
    ):
        saved_fds = [os.dup(1), os.dup(2)]  # what C libraries and subprocesses write
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield paths
        finally:
            for fd, saved in zip((1, 2), saved_fds, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def snowflake_run(snowflake_config_path: Path, folder: Path) -> Iterator[dict[str, Any]]:
    """`mdstack run --target snowflake --region eu` twice (two simulated days) without
    Prefect, WAP off; dbt's files kept. The second run merges into the snapshot."""
    config = load_config(snowflake_config_path)
    os.environ["MDSTACK_TEST_SF_PASSWORD"] = PASSWORD
    try:
        with dbt_files_and_output(folder / "sf") as files:
            runs = [
                pipeline.run_pipeline(
                    snowflake_config_path, "snowflake", pipeline.select(config, "eu"), run_id=run
                )
                for run in ("sf-run-1", "sf-run-2")
            ]
        yield {"runs": runs, "summary": runs[-1], "files": files}
    finally:
        os.environ.pop("MDSTACK_TEST_SF_PASSWORD", None)
        stop_fakesnow_server()


@pytest.fixture(scope="module")
def duckdb_run(config_path: Path, folder: Path) -> pipeline.RunSummary:
    """The same two simulated days on the default DuckDB target (write-audit-publish on)."""
    config = load_config(config_path)
    with tempfile.TemporaryDirectory() as scratch, dbt_files_and_output(Path(scratch)):
        first = pipeline.run_pipeline(config_path, None, pipeline.select(config, "eu"))
        assert first.ok, first.failure()
        return pipeline.run_pipeline(
            config_path, None, pipeline.select(config, "eu"), run_id="duck-run-2"
        )


def sf_query(sql: str) -> pl.DataFrame:
    """Rows from the Snowflake warehouse; column names lower-cased (Snowflake stores the
    unquoted names dbt writes upper-case)."""
    with open_fakesnow(DATABASE) as wh:
        return pl.from_arrow(wh.query(sql)).rename(str.lower)


def duck_query(folder: Path, sql: str) -> pl.DataFrame:
    with DuckDBWarehouse(folder / "warehouse") as wh:
        return pl.from_arrow(wh.query(sql))


DAILY = (
    "SELECT day, orders, CAST(revenue AS DOUBLE) AS revenue, growth_pct "
    "FROM marts.daily_revenue WHERE region = 'eu' ORDER BY day"
)
ROI = (
    "SELECT channel, orders, CAST(revenue AS DOUBLE) AS revenue, CAST(spend AS DOUBLE) AS spend, "
    "roi FROM marts.marketing_roi WHERE region = 'eu' ORDER BY channel"
)


def assert_frames_close(left: pl.DataFrame, right: pl.DataFrame) -> None:
    assert left.columns == right.columns
    assert left.height == right.height > 0
    for name in left.columns:
        a, b = left[name].to_list(), right[name].to_list()
        if left[name].dtype.is_float():
            assert [x is None for x in a] == [y is None for y in b], name
            pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None]
            assert [x for x, _ in pairs] == pytest.approx([y for _, y in pairs]), name
        else:
            assert a == b, name


# -- Snowflake end to end ---------------------------------------------------------------------
def test_pipeline_runs_end_to_end_on_snowflake(snowflake_run):
    first, summary = snowflake_run["runs"]
    assert first.ok, first.failure()
    assert summary.ok, summary.failure()
    assert {s.stream for s in summary.streams if s.status == "succeeded"} == {
        "customers",
        "orders",
        "order_items",
        "products",
        "marketing_spend",
    }
    dbt = summary.dbt
    assert dbt.run.success and dbt.published and dbt.audit is None
    built = {(n.resource_type, n.name): n.status for n in dbt.run.nodes}
    for model in ("stg_orders", "stg_customers", "daily_revenue", "marketing_roi", "fct_orders"):
        assert built[("model", model)] == "success", model
    assert built[("snapshot", "customers_snapshot")] == "success"
    tests = [status for (kind, _), status in built.items() if kind == "test"]
    assert len(tests) > 20 and set(tests) == {"pass"}
    checks = {c.name: c for c in dbt.checks}
    assert checks["freshness:source:shop.orders"].passed
    assert checks["values:marts.marketing_roi.spend"].passed  # the demo's checks pass too
    # The merge staged its changes in a table named for its dbt invocation (two regions'
    # builds into one database at once never share it), dropped after the merge.
    log = (snowflake_run["files"]["logs"] / "dbt.log").read_text(errors="replace")
    uuid = "_".join(f"[0-9a-f]{{{n}}}" for n in (8, 4, 4, 4, 12))
    assert re.search(f"customers_snapshot__dbt_tmp_{uuid}\\b", log, re.IGNORECASE)
    assert "customers_snapshot__dbt_tmp " not in log.lower()
    left = sf_query(
        "SELECT table_name FROM information_schema.tables WHERE lower(table_schema) = "
        "'snapshots' AND lower(table_name) LIKE 'customers_snapshot%'"
    )
    assert left["table_name"].str.to_lowercase().to_list() == ["customers_snapshot"]


def test_snowflake_views_name_their_tables_without_the_database(snowflake_run):
    """dbt's views read their neighbours in whatever database holds them: an audit
    environment published by SWAP WITH, a kept version, a clone."""
    built = snowflake_run["files"]["target"] / "run" / "mdstack" / "models" / "staging"
    views = sorted(built.glob("*.sql"))
    assert views
    for view in views:
        _, _, query = view.read_text().partition(" as (")
        assert "raw_shop" in query.lower(), view.name  # its source, named in the query
        assert DATABASE.lower() not in query.lower(), (view.name, query)


def test_snowflake_marts_hold_the_same_numbers_as_duckdb(snowflake_run, duckdb_run, folder):
    assert duckdb_run.ok, duckdb_run.failure()
    assert_frames_close(sf_query(DAILY), duck_query(folder, DAILY))
    assert_frames_close(sf_query(ROI), duck_query(folder, ROI))
    orders = "SELECT count(*) AS n, CAST(sum(amount) AS DOUBLE) AS amount FROM marts.fct_orders"
    assert_frames_close(sf_query(orders), duck_query(folder, orders))
    history = (
        "SELECT customer_id, count(*) AS versions, count(dbt_valid_to) AS closed "
        "FROM snapshots.customers_snapshot WHERE region = 'eu' GROUP BY customer_id "
        "ORDER BY customer_id"
    )
    snapshot = sf_query(history)
    assert_frames_close(snapshot, duck_query(folder, history))
    assert snapshot["closed"].sum() > 0  # the second run closed changed customers' versions


def test_dbt_node_results_are_in_the_snowflake_ledger(snowflake_run):
    rows = sf_query(
        "SELECT command, resource_type, name, status, seconds FROM MDSTACK._mds_dbt_results "
        "WHERE run_id = 'sf-run-2' AND region = 'eu'"
    )
    build = rows.filter(pl.col("command") == "build")
    assert build.height == len(snowflake_run["summary"].dbt.run.nodes)
    assert set(build["status"].to_list()) == {"success", "pass"}
    fresh = rows.filter(pl.col("command") == "source freshness")
    assert sorted(fresh["name"].to_list()) == ["customers", "order_items", "orders", "products"]
    assert set(fresh["status"].to_list()) == {"pass"}


def test_each_snowflake_run_records_its_time_and_as_of_reads_at_it(
    snowflake_run, snowflake_config_path
):
    """A run records Snowflake's clock after its publish; `sql --as-of RUN` sends the query
    at that time (fakesnow has no time travel: it refuses the AT clause, and the error
    shows the statement). Without kept versions `diff` cannot compare two runs, so no
    summary offers it."""
    rows = sf_query("SELECT run_id, snapshot FROM MDSTACK._mds_run_snapshots ORDER BY snapshot")
    assert rows["run_id"].to_list() == ["sf-run-1", "sf-run-2"]
    assert [run.dbt.previous_run for run in snowflake_run["runs"]] == [None, None]
    stamp = travel.at(rows["snapshot"][0]).expression.sql("snowflake")
    options = ["--target", "snowflake", "-c", str(snowflake_config_path)]
    query = ["sql", "SELECT count(*) AS n FROM _mds_runs", "--as-of", "sf-run-1"]
    said = CliRunner().invoke(app, [*query, *options], env={"COLUMNS": "250"})
    assert said.exit_code != 0
    text = " ".join(said.output.split())
    assert f'FROM "_mds_runs" AT (TIMESTAMP => {stamp})' in text, text
    assert "does not support time travel" in text
    diff = CliRunner().invoke(app, ["diff", "sf-run-1", *options], env={"COLUMNS": "250"})
    assert diff.exit_code != 0 and "needs the versions kept" in diff.output
    assert "--as-of sf-run-1" in " ".join(diff.output.split())


def test_snowflake_password_is_in_no_dbt_log_artifact_or_output(snowflake_run):
    files = snowflake_run["files"]
    searched = [files["output"], *files["logs"].rglob("*"), *files["target"].rglob("*.json")]
    texts = {p.name: p.read_text(errors="replace") for p in searched if p.is_file()}
    assert {"dbt.log", "run_results.json", "manifest.json", "sources.json"} <= set(texts)
    assert "freshness of shop.orders" in texts["out.txt"]  # dbt's console output was captured
    assert [name for name, text in texts.items() if PASSWORD in text] == []
    # Positive control: the profile's password is that secret, read from the environment
    # variable alone; without it dbt cannot log in.
    output = open_fakesnow(DATABASE).dbt_output()
    assert output["password"] == "{{ env_var('DBT_ENV_SECRET_SNOWFLAKE_PASSWORD') }}"
    with pytest.raises(TransformError, match="Password is empty"):
        transform.run_dbt(
            ROOT / "dbt_project",
            output,
            ["run", "--select", "stg_orders"],
            target_path=files["target"] / "control",
            log_path=files["logs"] / "control",
        )


# -- DuckDB: a failing test and a stale source ------------------------------------------------
def test_failing_test_is_in_the_ledger_and_a_stale_source_blocks_the_publish(
    duckdb_run, config_path, folder
):
    assert duckdb_run.ok, duckdb_run.failure()
    no_checks = folder / "stack-no-checks.yml"
    config = yaml.safe_load(config_path.read_text())
    config.pop("checks")  # only dbt's source freshness can block
    no_checks.write_text(yaml.safe_dump(config, sort_keys=False))
    raw = "raw_shop.orders"
    with DuckDBWarehouse(folder / "warehouse") as wh:
        wh.execute(f"INSERT INTO {raw} SELECT * FROM {raw} WHERE _mds_region = 'eu' LIMIT 1")
        wh.execute(f"UPDATE {raw} SET _mds_loaded_at = _mds_loaded_at - INTERVAL 3 DAY")
    before = duck_query(folder, DAILY)
    with tempfile.TemporaryDirectory() as scratch, dbt_files_and_output(Path(scratch)):
        result = pipeline.transform_changes(
            no_checks, None, "eu", {"shop": {"orders": True}}, run_id="duck-bad"
        )
    assert not result.run.success and result.blocked and not result.published
    blocking = [c.name for c in result.checks if not c.passed]
    assert blocking == ["freshness:source:shop.orders"]
    assert duck_query(folder, DAILY).equals(before)  # the published marts are untouched
    rows = duck_query(
        folder,
        "SELECT command, unique_id, resource_type, status, message FROM _mds_dbt_results "
        "WHERE run_id = 'duck-bad' AND status NOT IN ('success', 'pass') ORDER BY unique_id",
    )
    failed = rows.filter((pl.col("resource_type") == "test") & (pl.col("status") == "fail"))
    duplicates = "test.mdstack.source_unique_combination_shop_orders_"
    assert any(uid.startswith(duplicates) for uid in failed["unique_id"].to_list())
    assert all("Got 1 result" in message for message in failed["message"].to_list())
    shown = CliRunner().invoke(app, ["status", "-c", str(no_checks)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "dbt, last run per region" in shown.output
    assert "duck-bad" in shown.output and "source orders" in shown.output
    assert "test source_unique_combination_shop_orders" in shown.output
    stale = rows.filter(pl.col("command") == "source freshness").to_dicts()
    assert [(r["unique_id"], r["status"]) for r in stale] == [
        ("source.mdstack.shop.orders", "error")
    ]
