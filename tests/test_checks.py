"""Data checks on real DuckLake tables: every kind passes on good data and fails on bad,
severities, the volume history in ``_mds_checks``, reconciliation, dbt source freshness."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from stack.config.checks import Check, CheckList
from stack.errors import ConfigError
from stack.load import ledger
from stack.transform.checks import (
    CHECKS_TABLE,
    DataCheckResult,
    blocking,
    record_results,
    run_checks,
)
from stack.transform.dbt import NodeResult
from stack.transform.source_freshness import freshness_from_nodes, freshness_from_sources_json
from tests.conftest import ROOT

NOW = datetime(2026, 3, 2, 12, 0, 0)
ORDERS = """
CREATE SCHEMA IF NOT EXISTS raw_shop;
CREATE TABLE raw_shop.orders (
    id BIGINT, status VARCHAR, amount DOUBLE, updated_at TIMESTAMP,
    _mds_region VARCHAR, _mds_run_id VARCHAR, _mds_loaded_at TIMESTAMP, _mds_deleted_at TIMESTAMP
);
"""


def add_orders(wh, region: str, first: int, n: int, *, status="paid", amount=10.0, age_h=1):
    wh.execute(
        "INSERT INTO raw_shop.orders SELECT i, ?, ?, ?::TIMESTAMP - INTERVAL (i % 5) MINUTE, "
        "?, 'r1', ?::TIMESTAMP, NULL FROM range(?, ?) AS t(i)",
        [status, amount, NOW - timedelta(hours=age_h), region, NOW, first, first + n],
    )


@pytest.fixture
def shop(warehouse):
    for statement in filter(str.strip, ORDERS.split(";")):
        warehouse.execute(statement)
    add_orders(warehouse, "eu", 0, 10)
    add_orders(warehouse, "us", 0, 4, status="lost", amount=-5.0, age_h=80)
    # A soft-deleted row: invisible to volume, values and reconcile.
    warehouse.execute(
        "INSERT INTO raw_shop.orders VALUES (99, NULL, 1e9, ?, 'eu', 'r1', ?, ?)",
        [NOW - timedelta(hours=2), NOW, NOW],
    )
    return warehouse


def checks(text: str) -> list[Check]:
    return [Check.model_validate(item) for item in yaml.safe_load(text)]


GOOD = checks("""
- {table: raw_shop.orders, freshness: {column: updated_at, max_age: 26h}}
- {table: raw_shop.orders, freshness: {max_age: 10m}, name: loaded recently}
- {stream: shop.orders, volume: {min_rows: 1, max_rows: 100, max_change: 50%}}
- {table: raw_shop.orders, schema: {columns: {id: INT8, status: TEXT, amount: DOUBLE}}}
- {table: raw_shop.orders, values: {column: amount, between: [0, 100], not_null: true}}
- {table: raw_shop.orders, values: {column: status, accepted: [paid, refunded]}}
- {table: raw_shop.orders, values: {column: id, between: [0, null]}, name: ids}
- {stream: shop.orders, reconcile: {tolerance: 0%}}
""")


def source_count(counts: dict[tuple[str, str, str], int]):
    return lambda source, stream, region: counts.get((source, stream, region))


def test_every_kind_passes_on_good_data_and_is_recorded(shop):
    counted = source_count({("shop", "orders", "eu"): 10})
    results = run_checks(
        shop, GOOD, "eu", "run-1", NOW, source_count=counted, schemas={"shop": "raw_shop"}
    )
    assert [(r.kind, r.passed) for r in results] == [
        ("freshness", True),
        ("freshness", True),
        ("volume", True),
        ("schema", True),
        ("values", True),
        ("values", True),
        ("values", True),
        ("reconcile", True),
    ], [r.message for r in results if not r.passed]
    by_name = {r.name: r for r in results}
    assert by_name["volume:shop.orders"].observed == 10  # the soft-deleted row left out
    assert by_name["volume:shop.orders"].table == "raw_shop.orders"
    assert by_name["freshness:raw_shop.orders.updated_at"].observed == pytest.approx(3600, abs=300)
    assert "no earlier count" in by_name["volume:shop.orders"].message
    assert blocking(results) == []
    stored = shop.query(
        f"SELECT name, kind, passed, metric, region FROM {CHECKS_TABLE} ORDER BY name"
    ).to_pylist()
    assert len(stored) == len(GOOD)
    assert {r["region"] for r in stored} == {"eu"} and all(r["passed"] for r in stored)
    assert next(r for r in stored if r["kind"] == "volume")["metric"] == 10


def test_every_kind_fails_on_bad_data_and_says_why(shop):
    bad = checks("""
- {table: raw_shop.orders, freshness: {column: updated_at, max_age: 26h}}
- {table: raw_shop.orders, volume: {min_rows: 6}}
- {table: raw_shop.orders, volume: {max_rows: 3}, name: too many}
- {table: raw_shop.orders, schema: {columns: {id: INTEGER, customer: BIGINT}}}
- {table: raw_shop.orders, schema: {columns: {id: BIGINT}, allow_extra: false}, name: strict}
- {table: raw_shop.orders, values: {column: amount, between: [0, 100]}}
- {table: raw_shop.orders, values: {column: status, accepted: [paid, refunded]}}
- {table: raw_shop.orders, values: {column: status, not_null: true}, name: status set}
- {table: raw_shop.orders, values: {column: nope, not_null: true}, name: no column}
- {table: raw_shop.missing, volume: {min_rows: 1}}
- {table: raw_shop.orders, reconcile: {source: shop, stream: orders}}
""")
    shop.execute(
        "INSERT INTO raw_shop.orders VALUES (7, NULL, 5, ?, 'us', 'r1', ?, NULL)",
        [NOW - timedelta(hours=90), NOW],
    )
    counted = source_count({("shop", "orders", "us"): 7})
    results = {r.name: r for r in run_checks(shop, bad, "us", "run-1", NOW, source_count=counted)}
    assert not any(r.passed for r in results.values()), [n for n, r in results.items() if r.passed]
    assert "is 3.3d old (max 26h)" in results["freshness:raw_shop.orders.updated_at"].message
    assert results["volume:raw_shop.orders"].observed == 5  # scoped to us: 4 + 1
    assert "more than 3" in results["too many"].message
    schema = results["schema:raw_shop.orders"].message
    assert "missing customer" in schema and "id is BIGINT, expected INTEGER" in schema
    assert "unexpected status, amount, updated_at" in results["strict"].message
    between = results["values:raw_shop.orders.amount"]
    assert between.observed == 4 and "(e.g. -5.0)" in between.message
    accepted = results["values:raw_shop.orders.status"]
    assert accepted.observed == 4 and "'lost'" in accepted.message  # nulls pass `accepted`
    assert results["status set"].observed == 1
    assert "no column nope" in results["no column"].message
    assert "does not exist" in results["volume:raw_shop.missing"].message
    reconcile = results["reconcile:raw_shop.orders"]
    assert (reconcile.observed, reconcile.expected) == (5, "7 rows (source shop.orders)")
    assert "(-2)" in reconcile.message


def test_warn_is_reported_and_error_blocks(shop):
    declared = checks("""
- {table: raw_shop.orders, volume: {min_rows: 1000}, severity: warn, name: warned}
- {table: raw_shop.orders, volume: {min_rows: 1000}, severity: error, name: blocked}
- {table: raw_shop.orders, volume: {min_rows: 1}, name: fine}
""")
    assert [c.severity for c in declared] == ["warn", "error", "error"]  # error by default
    results = run_checks(shop, declared, "eu", "run-1", NOW)
    assert [r.passed for r in results] == [False, False, True]
    assert [r.name for r in blocking(results)] == ["blocked"]
    assert not results[0].blocking and results[1].blocking


def test_volume_change_compares_with_the_last_run_of_the_same_region(shop):
    volume = checks("- {table: raw_shop.orders, volume: {max_change: 50%}}")
    first = run_checks(shop, volume, "eu", "run-1", NOW)[0]
    assert first.passed and first.observed == 10
    run_checks(shop, volume, "us", "run-1", NOW)  # another region keeps its own history
    shop.execute("DELETE FROM raw_shop.orders WHERE _mds_region = 'eu' AND id < 6")
    later = NOW + timedelta(hours=1)
    second = run_checks(shop, volume, "eu", "run-2", later)[0]
    assert not second.passed and second.observed == 4
    assert "changed -60.0% (from 10 to 4)" in second.message
    # Checking the same run again compares with the run before, not with itself.
    again = run_checks(shop, volume, "eu", "run-2", later + timedelta(minutes=1))[0]
    assert not again.passed and "from 10 to 4" in again.message
    add_orders(shop, "eu", 100, 2)  # the next run: 6 rows versus 4 at run-2
    third = run_checks(shop, volume, "eu", "run-3", later + timedelta(hours=1))[0]
    assert third.passed and "+50.0% vs 4 at the last run" in third.message
    us = run_checks(shop, volume, "us", "run-2", later)[0]
    assert us.passed and "+0.0% vs 4" in us.message
    stored = shop.query(
        f"SELECT run_id, metric FROM {CHECKS_TABLE} WHERE region = 'eu' ORDER BY checked_at"
    ).to_pylist()
    assert [(r["run_id"], r["metric"]) for r in stored] == [
        ("run-1", 10),
        ("run-2", 4),
        ("run-3", 6),
    ]


def test_region_column_scopes_mart_tables(warehouse):
    warehouse.execute("CREATE SCHEMA marts")
    warehouse.execute(
        "CREATE TABLE marts.marketing_roi AS SELECT * FROM (VALUES "
        "('eu', 'ads', 0.5), ('eu', 'organic', NULL), ('us', 'ads', 250.0)) "
        "AS t(region, channel, roi)"
    )
    roi = checks("""
- {table: marts.marketing_roi, region_column: region, values: {column: roi, between: [-1, 100]}}
- {table: marts.marketing_roi, values: {column: roi, between: [-1, 100]}, name: all regions}
- {table: marts.marketing_roi, region_column: zone, volume: {min_rows: 1}, name: bad scope}
""")
    eu = run_checks(warehouse, roi, "eu", "run-1", NOW)
    assert [r.passed for r in eu] == [True, False, False]
    assert "1 rows not between -1 and 100 (e.g. 250.0)" in eu[1].message
    assert "no column zone" in eu[2].message
    assert not run_checks(warehouse, roi[:1], "us", "run-1", NOW)[0].passed


def test_reconcile_with_counts_from_the_run_ledger(shop):
    ledger.ensure_tables(shop)
    runs = [  # (run, mode, status, inserted, deleted)
        ("a", "incremental_deduped", "succeeded", 8, 0),
        ("b", "incremental_deduped", "failed", 3, 1),  # committed checkpoints still count
        ("c", "incremental_deduped", "succeeded", 0, 0),
    ]
    for i, (run, mode, status, inserted, deleted) in enumerate(runs):
        ledger.record(
            shop,
            ledger.RunEntry(
                run, "shop", "shop", "orders", "eu", mode, status,
                NOW + timedelta(hours=i), inserted=inserted, deleted=deleted,
            ),
        )  # fmt: skip
    for i, (run, status, inserted) in enumerate([("a", "succeeded", 5), ("b", "failed", 9)]):
        ledger.record(
            shop,
            ledger.RunEntry(
                run, "shop", "shop", "products", "eu", "full_refresh_overwrite", status,
                NOW + timedelta(hours=i), inserted=inserted,
            ),
        )  # fmt: skip
    counted = ledger.ledger_source_count(shop, "shop")
    assert counted("shop", "orders", "eu") == 10
    assert counted("shop", "products", "eu") == 5  # the failed overwrite was never swapped in
    assert counted("shop", "orders", "us") is None
    reconcile = checks("- {stream: shop.orders, reconcile: {}}")
    eu = run_checks(
        shop, reconcile, "eu", "r", NOW, source_count=counted, schemas={"shop": "raw_shop"}
    )
    assert eu[0].passed and eu[0].expected == "10 rows (source shop.orders)"
    us = run_checks(
        shop, reconcile, "us", "r", NOW, source_count=counted, schemas={"shop": "raw_shop"}
    )
    assert us[0].passed and us[0].skipped and "skipped" in us[0].message
    none = run_checks(shop, reconcile, "eu", "r", NOW, schemas={"shop": "raw_shop"})
    assert none[0].skipped


def test_results_can_be_recorded_in_another_warehouse(shop, tmp_path):
    """After a blocked publish the pipeline records the audit's results in the published lake."""
    from stack.warehouse.duckdb import DuckDBWarehouse

    results = run_checks(shop, GOOD[:3], "eu", "run-1", NOW, schemas={"shop": "raw_shop"})
    with DuckDBWarehouse(tmp_path / "published") as published:
        record_results(published, results, "run-1", NOW)
        record_results(published, results, "run-1", NOW)  # idempotent
        stored = published.query(f"SELECT name, passed FROM {CHECKS_TABLE}").to_pylist()
    assert sorted(r["name"] for r in stored) == sorted(r.name for r in results)


def test_dbt_source_freshness_becomes_check_results():
    artifact = {
        "results": [
            {
                "unique_id": "source.mdstack.shop.orders",
                "status": "pass",
                "max_loaded_at_time_ago_in_s": 3600.0,
                "criteria": {
                    "warn_after": {"count": 26, "period": "hour"},
                    "error_after": {"count": 48, "period": "hour"},
                },
            },
            {
                "unique_id": "source.mdstack.shop.customers",
                "status": "warn",
                "max_loaded_at_time_ago_in_s": 100000.0,
                "criteria": {"warn_after": {"count": 26, "period": "hour"}},
            },
            {"unique_id": "source.mdstack.shop.products", "status": "runtime error", "error": "x"},
        ]
    }
    results = freshness_from_sources_json(artifact, region="eu")
    assert [(r.table, r.passed, r.severity) for r in results] == [
        ("shop.orders", True, "error"),
        ("shop.customers", False, "warn"),
        ("shop.products", False, "error"),
    ]
    assert results[0].expected == "warn after 26 hours, error after 48 hours"
    assert results[1].message == "newest row 27.8h old" and results[1].observed == 100000.0
    assert [r.name for r in blocking(results)] == ["freshness:source:shop.products"]

    node = NodeResult("source.mdstack.shop.orders", "orders", "source", "error", 0.1, None,
                      "stale", None)  # fmt: skip
    model = NodeResult("model.mdstack.x", "x", "model", "success", 0.1, None, None, None)
    from_nodes = freshness_from_nodes([node, model])
    assert from_nodes == [
        DataCheckResult(
            "freshness:source:shop.orders", "shop.orders", "freshness", "error", False, None,
            "dbt source freshness criteria", "stale",
        )
    ]  # fmt: skip


def test_config_shapes_and_errors():
    example = checks("""  # the `checks:` of stack.example.yml
- {table: raw_shop.orders, freshness: {column: updated_at, max_age: 26h}, severity: error}
- {table: raw_shop.orders, volume: {min_rows: 1, max_change: 50%}, severity: warn}
- {table: marts.marketing_roi, values: {column: roi, between: [-1, 100]}, severity: error}
""")
    assert [c.kind for c in example] == ["freshness", "volume", "values"]
    volume = Check.model_validate({"table": "a.b", "volume": {"max_change": "50%"}})
    assert volume.volume.max_change == 0.5
    fresh = Check.model_validate({"table": "a.b", "freshness": {"max_age": "26h"}})
    assert fresh.freshness.max_age == timedelta(hours=26) and fresh.freshness.column == (
        "_mds_loaded_at"
    )
    invalid = [
        {"table": "a.b"},  # no kind
        {"table": "a.b", "volume": {"min_rows": 1}, "values": {"column": "x", "not_null": True}},
        {"table": "orders", "volume": {"min_rows": 1}},  # not schema.table
        {"table": "a.b", "stream": "s.t", "volume": {"min_rows": 1}},
        {"table": "a.b", "volume": {}},
        {"table": "a.b", "volume": {"min_rows": 5, "max_rows": 1}},
        {"table": "a.b", "freshness": {"max_age": "soon"}},
        {"table": "a.b", "severity": "fatal", "volume": {"min_rows": 1}},
        {"table": "a.b", "reconcile": {"source": "shop"}},
        {"table": "a.b", "values": {"column": "x"}},
        {"table": "a.b", "volume": {"min_rows": 1}, "where": "1=1"},
    ]
    for item in invalid:
        with pytest.raises(ValidationError):
            Check.model_validate(item)

    class Settings(BaseModel):  # what StackConfig declares: `checks: CheckList = ()`
        checks: CheckList = ()

    assert Settings.model_validate({"checks": [fresh.model_dump(by_alias=True)]}).checks == (fresh,)
    with pytest.raises(ValidationError, match="share the names"):
        Settings.model_validate({"checks": [{"table": "a.b", "volume": {"min_rows": 1}}] * 2})
    with pytest.raises(ConfigError, match="share the names"):
        run_checks(None, [volume, volume], "eu", "r", NOW)  # type: ignore[arg-type]


def test_checks_and_lineage_import_light():
    """Checks and lineage import no warehouse driver, no pipeline, and dbt and
    openlineage-python only when they run."""
    probe = (
        "import sys, stack.transform, stack.lineage; "
        "print(sorted(m for m in sys.modules if m.startswith(('stack.warehouse', "
        "'stack.run.pipeline', 'openlineage', 'dbt'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
