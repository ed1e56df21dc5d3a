"""stack.transform: dbt builds on DuckLake, marts recomputed independently, per-node results.

dbt is slow to start, so the dbt invocations are module-scoped fixtures shared by the tests:
a clean ``build``, a selected ``build`` that meets a failing test, a ``source freshness``;
two short ones check the errors (a profile that does not render, a lake held by another process).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from connectors.errors import MdstackError
from stack.errors import WarehouseBusy
from stack.transform import (
    DbtRun,
    NodeResult,
    Selection,
    TransformError,
    run_dbt,
    selection,
)
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.dbt_fixtures import (
    connect,
    create_warehouse,
    days,
    load_raw,
    raw_frame,
    read_table,
)

PROJECT = Path(__file__).resolve().parents[1] / "dbt_project"
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # _mds_loaded_at: naive UTC
T0 = datetime(2024, 3, 10, 6, 0)
NON_REVENUE = ("cancelled", "returned")
MODELS = {
    "stg_customers",
    "stg_products",
    "stg_orders",
    "stg_order_items",
    "stg_marketing_spend",
    "daily_revenue",
    "marketing_roi",
    "fct_orders",
}


def _at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute)


def _customers(renamed: bool = False) -> pl.DataFrame:
    rows = [
        ("eu", 1, "Ann", None),
        ("eu", 2, "Bob", None),
        ("eu", 3, "Cid", T0),  # soft-deleted
        ("eu", 4, "Dee", None),
        ("us", 1, "Eve", None),  # id collides with eu 1
        ("us", 2, "Fay", None),
    ]
    out = []
    for region, cid, name, deleted in rows:
        updated = T0
        if renamed and (region, cid) == ("eu", 1):
            name, updated = "Ann B.", T0 + timedelta(days=1)
        if renamed and (region, cid) == ("eu", 4):
            deleted = T0 + timedelta(days=1)
        out.append(
            dict(
                _mds_region=region,
                id=cid,
                name=name,
                email=f"{name.lower()}@example.com",
                segment="retail" if cid % 2 else "b2b",
                signup_day=date(2023, 12, cid),
                updated_at=updated,
                _mds_deleted_at=deleted,
            )
        )
    return raw_frame("customers", out)


ORDERS = [
    # region, id, customer_id, ordered_at, status, channel, amount, deleted
    ("eu", 1, 1, _at(1, 10), "delivered", "search", 100.0, None),
    ("eu", 2, 2, _at(1, 15), "shipped", "organic", 50.5, None),
    ("eu", 3, 1, _at(2, 9), "cancelled", "social", 70.0, None),
    ("eu", 4, 2, _at(2, 23, 59), "placed", "social", 30.0, None),
    ("eu", 5, 1, _at(3, 8), "returned", "email", 40.0, None),
    ("eu", 6, 2, _at(4), "delivered", "search", 20.0, T0),  # soft-deleted
    ("eu", 7, 1, _at(5), "delivered", "display", 60.0, None),
    ("eu", 8, 4, _at(8, 0), "delivered", "search", 80.25, None),
    ("eu", 9, 2, _at(9, 18), "delivered", "organic", 45.0, None),
    ("us", 1, 1, _at(1), "delivered", "search", 200.0, None),  # id collides with eu 1
    ("us", 2, 2, _at(2, 1), "delivered", "organic", 10.0, None),
    ("us", 3, 9, _at(2, 2), "shipped", "email", 5.5, None),  # unknown customer: a warning
    ("us", 4, 2, _at(3, 3), "cancelled", "display", 99.0, None),
]

SPEND = [
    # region, day, channel, spend, loaded_at, deleted
    ("eu", 1, "search", 10.0, T0, None),
    ("eu", 1, "search", 11.0, T0 + timedelta(hours=1), None),  # restated: the latest load wins
    ("eu", 2, "search", 12.0, T0, None),
    ("eu", 1, "social", 5.0, T0, None),
    ("eu", 1, "email", 0.0, T0, None),
    ("eu", 2, "display", 3.0, T0, None),
    ("us", 1, "search", 50.0, T0, None),
    ("us", 2, "social", 20.0, T0, None),
    ("us", 3, "display", 7.0, T0, T0),  # soft-deleted
]


def _orders(extra: tuple = ()) -> pl.DataFrame:
    rows = [
        dict(
            _mds_region=region,
            id=oid,
            customer_id=cid,
            ordered_at=at,
            status=status,
            channel=channel,
            amount=amount,
            updated_at=at,
            _mds_deleted_at=deleted,
        )
        for region, oid, cid, at, status, channel, amount, deleted in (*ORDERS, *extra)
    ]
    return raw_frame("orders", rows)


def _raw_tables() -> dict[str, pl.DataFrame]:
    products = raw_frame(
        "products",
        [
            dict(_mds_region=r, id=i, name=f"p{i}", category="c", price=p, updated_at=T0)
            for r, i, p in [("eu", 1, 50.0), ("eu", 2, 50.5), ("us", 1, 50.0)]
        ],
    ).with_columns(_mds_loaded_at=pl.lit(NOW - timedelta(hours=30)))  # stale: warn after 26 h
    items = raw_frame(
        "order_items",
        [
            dict(_mds_region=r, order_id=o, line_no=n, product_id=p, quantity=q, unit_price=u)
            | dict(updated_at=T0, _mds_deleted_at=d)
            for r, o, n, p, q, u, d in [
                ("eu", 1, 1, 1, 2, 50.0, None),
                ("eu", 2, 1, 2, 1, 50.5, None),
                ("eu", 6, 1, 1, 1, 20.0, T0),
                ("us", 1, 1, 1, 4, 50.0, None),
            ]
        ],
    )
    spend = raw_frame(
        "marketing_spend",
        [
            dict(_mds_region=r, day=date(2024, 3, d), channel=c, spend=s, impressions=100)
            | dict(clicks=10, _mds_loaded_at=loaded, _mds_deleted_at=deleted)
            for r, d, c, s, loaded, deleted in SPEND
        ],
    )
    return {
        "customers": _customers(),
        "products": products,
        "orders": _orders(),
        "order_items": items,
        "marketing_spend": spend,
    }


# --- independent recomputation of the marts from the raw rows -------------------------------


def _expected_daily_revenue(orders: pl.DataFrame) -> pl.DataFrame:
    live = orders.filter(pl.col("_mds_deleted_at").is_null()).with_columns(
        day=pl.col("ordered_at").dt.date(), region=pl.col("_mds_region")
    )
    rows = []
    for region in sorted(live["region"].unique()):
        mine = live.filter(pl.col("region") == region)
        paid = mine.filter(~pl.col("status").is_in(NON_REVENUE))
        by_day = {d: (len(g), g["amount"].sum()) for (d,), g in paid.group_by("day")}
        revenue: dict[date, float] = {}
        for day in days(mine["day"].min(), mine["day"].max()):
            orders_n, revenue[day] = by_day.get(day, (0, 0.0))
            prev = revenue.get(day - timedelta(days=1))
            week = revenue.get(day - timedelta(days=7))
            rows.append(
                dict(
                    region=region,
                    day=day,
                    orders=orders_n,
                    revenue=revenue[day],
                    revenue_prev_day=prev,
                    growth_pct=(revenue[day] - prev) / prev if prev else None,
                    revenue_7d_ago=week,
                    wow_growth_pct=(revenue[day] - week) / week if week else None,
                )
            )
    return pl.DataFrame(rows)


def _expected_marketing_roi(orders: pl.DataFrame, spend: pl.DataFrame) -> pl.DataFrame:
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for row in orders.filter(pl.col("_mds_deleted_at").is_null()).iter_rows(named=True):
        entry = totals.setdefault((row["_mds_region"], row["channel"]), dict(orders=0, revenue=0.0))
        if row["status"] not in NON_REVENUE:
            entry["orders"] += 1
            entry["revenue"] += row["amount"]
    latest = (
        spend.filter(pl.col("_mds_deleted_at").is_null())
        .sort("_mds_loaded_at")
        .unique(["_mds_region", "day", "channel"], keep="last")
    )
    spent: dict[tuple[str, str], float] = {}
    for row in latest.iter_rows(named=True):
        key = (row["_mds_region"], row["channel"])
        spent[key] = spent.get(key, 0.0) + row["spend"]
    rows = []
    for region, channel in sorted(totals.keys() | spent.keys()):
        entry = totals.get((region, channel), dict(orders=0, revenue=0.0))
        cost = spent.get((region, channel), 0.0)
        roi = (entry["revenue"] - cost) / cost if cost else None
        rows.append(dict(region=region, channel=channel, **entry, spend=cost, roi=roi))
    return pl.DataFrame(rows)


def _assert_frames_match(actual: pl.DataFrame, expected: pl.DataFrame, keys: list[str]) -> None:
    actual = actual.sort(keys).select(expected.columns)
    expected = expected.sort(keys)
    assert actual.columns == expected.columns
    assert actual.select(keys).to_dicts() == expected.select(keys).to_dicts()
    for column in expected.columns:
        if column in keys:
            continue
        for got, want in zip(actual[column], expected[column], strict=True):
            if want is None:
                assert got is None, (column, got)
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9), column


# --- fixtures: three dbt invocations per module ----------------------------------------------


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = create_warehouse(tmp_path_factory.mktemp("warehouse"))
    load_raw(root, _raw_tables())
    return root


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dbt")
    return {"target_path": root / "target", "log_path": root / "logs"}


@pytest.fixture(scope="module")
def clean_build(lake_dir: Path, artifacts: dict[str, Path]) -> DbtRun:
    return run_dbt(PROJECT, DuckDBWarehouse(lake_dir).dbt_output(), ["build"], **artifacts)


@pytest.fixture(scope="module")
def clean_marts(clean_build: DbtRun, lake_dir: Path) -> dict[str, pl.DataFrame]:
    # Opening the lake right after run_dbt also proves dbt let go of the catalog file.
    return {
        name: read_table(lake_dir, f"marts.{name}") for name in ("daily_revenue", "marketing_roi")
    }


@pytest.fixture(scope="module")
def failing_build(
    clean_marts: dict[str, pl.DataFrame], lake_dir: Path, artifacts: dict[str, Path]
) -> DbtRun:
    """Second load: a customer renamed, one soft-deleted, and an order with a bad status."""
    bad = ("eu", 10, 1, _at(9, 20), "lost", "search", 15.0, None)
    load_raw(lake_dir, {"customers": _customers(renamed=True), "orders": _orders((bad,))})
    picked = selection({"shop": {"orders": False, "customers": False}})
    assert picked is not None
    return run_dbt(
        PROJECT, DuckDBWarehouse(lake_dir).dbt_output(), ["build", *picked.args()], **artifacts
    )


# --- dbt build on DuckLake -------------------------------------------------------------------


def test_build_passes_on_ducklake(clean_build: DbtRun) -> None:
    assert clean_build.success, [(n.name, n.message) for n in clean_build.failures]
    assert clean_build.failures == ()
    assert clean_build.args == ("build",)
    by_type: dict[str, set[str]] = {}
    for node in clean_build.nodes:
        by_type.setdefault(node.resource_type, set()).add(node.name)
    assert by_type["model"] == MODELS
    assert by_type["snapshot"] == {"customers_snapshot"}
    assert {
        "assert_revenue_not_negative",
        "assert_revenue_reconciles",
        "assert_daily_revenue_covers_order_days",
    } <= by_type["test"]
    statuses = {(n.resource_type, n.status) for n in clean_build.nodes}
    assert statuses <= {
        ("model", "success"),
        ("snapshot", "success"),
        ("test", "pass"),
        ("test", "warn"),
    }


def test_node_results_carry_timings_and_compiled_paths(clean_build: DbtRun) -> None:
    daily = next(n for n in clean_build.nodes if n.name == "daily_revenue")
    assert isinstance(daily, NodeResult)
    assert daily.unique_id == "model.mdstack.daily_revenue"
    assert daily.seconds > 0
    assert daily.compiled_path and daily.compiled_path.endswith("marts/daily_revenue.sql")
    assert daily.message == "OK"
    assert daily.rows_affected is None  # dbt-duckdb reports no row counts


def test_dangling_customer_is_a_warning_not_a_failure(clean_build: DbtRun) -> None:
    (warning,) = clean_build.warnings
    assert warning.name.startswith("relationships_composite_stg_orders_region__customer_id")
    assert warning.status == "warn"
    assert "1 result" in (warning.message or "")


def test_daily_revenue_matches_independent_computation(
    clean_marts: dict[str, pl.DataFrame],
) -> None:
    actual = clean_marts["daily_revenue"]
    expected = _expected_daily_revenue(_orders())
    _assert_frames_match(actual, expected, ["region", "day"])
    # spot checks on the hand-made rows
    row = actual.filter(region="eu", day=date(2024, 3, 2)).row(0, named=True)
    assert (row["orders"], row["revenue"]) == (1, 30.0)  # the cancelled order does not count
    assert row["growth_pct"] == pytest.approx((30.0 - 150.5) / 150.5)
    gap = actual.filter(region="eu", day=date(2024, 3, 4)).row(0, named=True)
    assert (gap["revenue"], gap["growth_pct"]) == (0.0, None)  # soft-deleted order; prev was 0
    nine = actual.filter(region="eu", day=date(2024, 3, 9)).row(0, named=True)
    assert nine["wow_growth_pct"] == pytest.approx(0.5)  # 45 vs 30 a week before
    assert actual.filter(region="us")["revenue"].sum() == pytest.approx(215.5)


def test_marketing_roi_matches_independent_computation(
    clean_marts: dict[str, pl.DataFrame],
) -> None:
    actual = clean_marts["marketing_roi"]
    spend = _raw_tables()["marketing_spend"]
    expected = _expected_marketing_roi(_orders(), spend)
    _assert_frames_match(actual, expected, ["region", "channel"])
    organic = actual.filter(region="eu", channel="organic").row(0, named=True)
    assert (organic["spend"], organic["roi"]) == (0.0, None)
    search = actual.filter(region="eu", channel="search").row(0, named=True)
    assert search["spend"] == pytest.approx(23.0)  # 11 (restated) + 12
    us_social = actual.filter(region="us", channel="social").row(0, named=True)
    assert (us_social["orders"], us_social["roi"]) == (0, pytest.approx(-1.0))


# --- a failing test, a selected build, the snapshot ------------------------------------------


def test_failing_test_is_reported_by_name(failing_build: DbtRun) -> None:
    assert not failing_build.success
    (failure,) = failing_build.failures
    assert failure.resource_type == "test"
    assert failure.status == "fail"
    assert failure.name.startswith("accepted_values_stg_orders_status")
    assert "1 result" in (failure.message or "")
    status = {n.name: n.status for n in failing_build.nodes}
    assert status["daily_revenue"] == status["marketing_roi"] == "skipped"


def test_selected_build_touches_only_downstream_of_changed_streams(
    failing_build: DbtRun,
) -> None:
    assert failing_build.args == (
        "build",
        "--select",
        "source:shop.customers+",
        "source:shop.orders+",
    )
    models = {n.name for n in failing_build.nodes if n.resource_type == "model"}
    assert models == {"stg_customers", "stg_orders", "daily_revenue", "marketing_roi", "fct_orders"}


def test_skipped_marts_keep_the_last_good_build(
    failing_build: DbtRun, clean_marts: dict[str, pl.DataFrame], lake_dir: Path
) -> None:
    assert read_table(lake_dir, "marts.daily_revenue").equals(clean_marts["daily_revenue"])


def test_snapshot_keeps_customer_history(failing_build: DbtRun, lake_dir: Path) -> None:
    snap = read_table(lake_dir, "snapshots.customers_snapshot")
    versions = snap.filter(region="eu", customer_id=1).sort("dbt_valid_from")
    assert versions["customer_name"].to_list() == ["Ann", "Ann B."]
    assert versions["dbt_valid_to"].null_count() == 1
    gone = snap.filter(region="eu", customer_id=4)
    assert gone.height == 1 and gone["dbt_valid_to"].null_count() == 0
    assert snap.filter(region="eu", customer_id=3).is_empty()  # never live
    assert snap.filter(pl.col("dbt_valid_to").is_null()).height == 4


# --- source freshness, environment, errors ---------------------------------------------------


def test_source_freshness_and_env_are_restored(
    failing_build: DbtRun, lake_dir: Path, artifacts: dict[str, Path], monkeypatch
) -> None:
    monkeypatch.setenv("MDSTACK_TEST_EXISTING", "before")
    monkeypatch.delenv("DBT_ENV_SECRET_MDSTACK_SCHEMA", raising=False)
    # The profile only renders if the secret is set during the call.
    output = DuckDBWarehouse(lake_dir).dbt_output() | {
        "schema": "{{ env_var('DBT_ENV_SECRET_MDSTACK_SCHEMA') }}"
    }
    env = {"DBT_ENV_SECRET_MDSTACK_SCHEMA": "main", "MDSTACK_TEST_EXISTING": "during"}
    run = run_dbt(PROJECT, output, ["source", "freshness"], env=env, **artifacts)
    assert os.environ["MDSTACK_TEST_EXISTING"] == "before"
    assert "DBT_ENV_SECRET_MDSTACK_SCHEMA" not in os.environ
    status = {n.name: n.status for n in run.nodes}
    assert {n.resource_type for n in run.nodes} == {"source"}
    assert status == {
        "customers": "pass",
        "orders": "pass",
        "order_items": "pass",
        "products": "warn",  # loaded 30 h ago: warn_after 26 h
    }
    assert run.success and run.command == "source freshness"
    products = next(n for n in run.nodes if n.name == "products")
    assert re.fullmatch(r"newest row \d+s old", products.message)
    age = int(products.message.split()[2].removesuffix("s"))
    assert 30 * 3600 - 60 < age < 31 * 3600


def test_dbt_crash_raises_transform_error(
    lake_dir: Path, artifacts: dict[str, Path], monkeypatch
) -> None:
    monkeypatch.delenv("DBT_ENV_SECRET_NOT_SET", raising=False)
    output = DuckDBWarehouse(lake_dir).dbt_output() | {
        "schema": "{{ env_var('DBT_ENV_SECRET_NOT_SET') }}"
    }
    with pytest.raises(TransformError) as caught:
        run_dbt(PROJECT, output, ["build"], env={"MDSTACK_TEST_OTHER": "x"}, **artifacts)
    assert isinstance(caught.value, MdstackError)
    assert not caught.value.retryable
    assert "dbt build did not run" in str(caught.value)
    assert "MDSTACK_TEST_OTHER" not in os.environ
    # the lake is free again (execute, not sql: a live relation would keep the file locked)
    with connect(lake_dir) as con:
        count = con.execute("SELECT count(*) FROM lake.raw_shop.customers").fetchone()
    assert count == (6,)


def test_busy_warehouse_raises_retryable_warehouse_busy(
    lake_dir: Path, artifacts: dict[str, Path]
) -> None:
    holder = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from tests.dbt_fixtures import connect
        with connect(Path({str(lake_dir)!r})):
            print("ready", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(WarehouseBusy) as caught:
            run_dbt(PROJECT, DuckDBWarehouse(lake_dir).dbt_output(), ["run"], **artifacts)
        assert caught.value.retryable
    finally:
        proc.communicate(timeout=30)


# --- pure helpers ----------------------------------------------------------------------------


def test_selection_nothing_changed_skips_dbt() -> None:
    assert selection({}) is None


def test_selection_builds_everything_changed_in_one_invocation() -> None:
    picked = selection({"shop": {"products": True, "orders": False, "customers": False}})
    assert picked == Selection(
        full_refresh=("source:shop.products+",),
        incremental=("source:shop.customers+", "source:shop.orders+"),
    )
    assert picked.args() == [
        "--select",
        "source:shop.customers+",
        "source:shop.orders+",
        "source:shop.products+",
        "--full-refresh",
    ]


def test_selection_checks_freshness_of_the_changed_sources_only() -> None:
    picked = selection({"shop": {"products": True, "orders": False}})
    assert picked.freshness_args() == ["--select", "source:shop.orders", "source:shop.products"]
    assert DbtRun(("build", *picked.args()), True, ()).command == "build"


def test_selection_only_incremental_or_only_full_refresh() -> None:
    assert selection({"crm": {"orders": False}}).args() == ["--select", "source:crm.orders+"]
    assert selection({"shop": {"orders": True}}).args() == [
        "--select",
        "source:shop.orders+",
        "--full-refresh",
    ]


@pytest.mark.parametrize("bad", ["orders; drop", "a.b", "", "1x"])
def test_selection_rejects_names_that_are_not_identifiers(bad: str) -> None:
    with pytest.raises(ValueError, match="not a dbt source or table name"):
        selection({"shop": {bad: False}})


def test_transform_error_pickles() -> None:
    import pickle

    err = TransformError("dbt build did not run", hint="look at dbt.log")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is TransformError and str(again) == str(err)
