"""Dashboards on the embedded warehouse, end to end: a real Apache Superset
(``tests/servers/superset_server.py``) reads the demo's BI file, and mdstack's Superset hook
refreshes it after each good publish.

What a user sees is Superset's chart data API: day 1's totals, then, after day 2's run and
its hook, day 2's (not the cached day 1); after a failed audit, still day 2's, with the hook
skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.superset_server import PASSWORD, USER, Superset, running_superset
from tests.test_publish import failing_audit, project, rows_of, run

pytestmark = pytest.mark.slow

TOTALS = "SELECT region, sum(revenue) AS revenue FROM marts.daily_revenue GROUP BY 1 ORDER BY 1"


@pytest.fixture(scope="module")
def superset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Superset]:
    with running_superset(tmp_path_factory.mktemp("superset")) as server:
        yield server


def chart_totals(superset: Superset, dataset: int) -> tuple[list[tuple], bool]:
    """Revenue by region as a chart on ``dataset`` shows it, and whether from Superset's cache."""
    query = {
        "datasource": {"id": dataset, "type": "table"},
        "queries": [
            {
                "columns": ["region"],
                "metrics": [
                    {
                        "expressionType": "SIMPLE",
                        "column": {"column_name": "revenue"},
                        "aggregate": "SUM",
                        "label": "revenue",
                    }
                ],
                "orderby": [["region", True]],
                "row_limit": 100,
            }
        ],
        "result_format": "json",
        "result_type": "full",
    }
    with closing(superset.client()) as api:
        answer = api.post("/api/v1/chart/data", json=query)
    answer.raise_for_status()
    [result] = answer.json()["result"]
    rows = [(r["region"], round(float(r["revenue"]), 2)) for r in result["data"]]
    return rows, bool(result.get("is_cached"))


def lake_totals(folder: Path) -> list[tuple]:
    rows = rows_of(DuckDBWarehouse(folder / "warehouse"), TOTALS)
    return [(region, round(float(revenue), 2)) for region, revenue in rows]


def test_superset_shows_each_published_day_after_the_hook_and_keeps_it_after_a_failed_audit(
    tmp_path, superset
):
    path = project(tmp_path)
    assert run(path).published
    bi_file = tmp_path / "warehouse" / "bi.duckdb"
    with closing(superset.client()) as api:
        database = api.post(
            "/api/v1/database/",
            json={
                "database_name": "mdstack demo",
                "sqlalchemy_uri": f"duckdb:///{bi_file}?access_mode=read_only",
            },
        )
        assert database.status_code == 201, database.text
        dataset = api.post(
            "/api/v1/dataset/",
            json={
                "database": database.json()["id"],
                "schema": "marts",
                "table_name": "daily_revenue",
            },
        )
        assert dataset.status_code == 201, dataset.text
    pk = dataset.json()["id"]
    day_1 = lake_totals(tmp_path)
    assert chart_totals(superset, pk) == (day_1, False)
    assert chart_totals(superset, pk) == (day_1, True)  # the chart is cached now

    config = yaml.safe_load(path.read_text())
    config["bi"] = [
        {
            "type": "superset",
            "url": superset.url,
            "username": USER,
            "password": PASSWORD,
            "datasets": [pk],
            "timeout": 120,
        }
    ]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    day_2_run = run(path)
    assert day_2_run.published
    assert [hook.status for hook in day_2_run.dashboards] == ["succeeded"]
    day_2 = lake_totals(tmp_path)
    assert day_2 != day_1
    assert chart_totals(superset, pk) == (day_2, False)  # the hook dropped day 1 from the cache

    said = failing_audit(path)
    assert "not published" in said and "(superset): skipped" in said
    assert chart_totals(superset, pk)[0] == day_2  # the dashboard still shows the last good day
