"""Dashboards on the embedded warehouse, end to end, with a real Apache Superset.

``mdstack dashboards`` starts Superset on the demo's BI file (installed and initialised once
per machine) with the demo's dashboard imported. The dashboard is looked at in headless
Chromium; then, with mdstack's Superset hook in ``stack.yml``, day 2's run makes the
charts answer day 2 (not the cached day 1) and a new mart column appear in the dataset,
and a failed audit leaves the dashboard on the last good day without a request to Superset.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import TypeAdapter
from typer.testing import CliRunner

from stack.bi import RunInfo, refresh
from stack.bi.superset.dashboards import signed_in
from stack.bi.superset.local import USER
from stack.cli import app
from stack.config.bi import BiHook
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.pg_server import free_port
from tests.servers.superset_server import env
from tests.test_lineage import png_pixels
from tests.test_publish import failing_audit, project, rows_of, run

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
"""Kept after the run (not in git): the dashboard's screenshot."""
TOTALS = "SELECT region, sum(revenue) AS revenue FROM marts.daily_revenue GROUP BY 1 ORDER BY 1"
PAIRS = "SELECT DISTINCT region, channel FROM marts.marketing_roi"  # the table chart's rows
DAILY = "Daily revenue by region"


@dataclass
class Dashboards:
    """The demo project after day 1, and ``mdstack dashboards`` serving it."""

    config: Path
    said: str
    url: str
    dashboard: str
    password: str

    def api(self):
        return signed_in(self.url, USER, self.password)

    def requests_seen(self) -> int:
        log = self.config.parent / "warehouse" / "superset" / "server.log"
        return sum(" HTTP/1.1" in line for line in log.read_text().splitlines())


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboards]:
    folder = tmp_path_factory.mktemp("dashboards")
    path = project(folder)
    assert run(path).published
    command = ["dashboards", "-c", str(path), "--port", str(free_port())]
    process = subprocess.Popen(
        [sys.executable, "-c", "from stack.cli import app; app()", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(COLUMNS="200"),
        start_new_session=True,
    )
    assert process.stdout is not None
    said = []
    for line in process.stdout:  # what a user sees, up to "Superset runs at ..."
        said.append(line)
        if line.startswith("Superset runs at"):
            break
    text = "".join(said)
    try:
        assert process.poll() is None, text
        dashboard = re.search(r"dashboard 'Shop: revenue and marketing ROI': (\S+)", text)
        secret = re.search(r"the password is in (\S+)", text)
        assert dashboard and secret, text
        url = re.search(r"Superset runs at (http://\S+)", text)
        assert url, text
        yield Dashboards(path, text, url[1], dashboard[1], Path(secret[1]).read_text().strip())
    finally:
        process.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        process.wait(timeout=30)
    assert process.returncode == 0
    with pytest.raises(httpx.TransportError):  # Superset went with it
        httpx.get(f"{url[1]}/health", timeout=5)


def test_dashboards_prints_the_dashboard_and_the_hook_to_add(dashboards):
    assert "(3 charts)" in dashboards.said
    assert "datasets: [marts.daily_revenue, marts.marketing_roi]" in dashboards.said
    assert dashboards.password not in dashboards.said  # where it is, not what it is


def test_screenshot_of_the_imported_dashboard_shows_its_charts(dashboards, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-sync"]
    flags += ["--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        sign_in(page, dashboards)
        page.goto(dashboards.dashboard)
        charts = page.locator(".dashboard-component-chart-holder")
        page.wait_for_function(
            "document.querySelectorAll('.dashboard-component-chart-holder canvas').length >= 2"
            " && document.querySelectorAll('.dashboard-component-chart-holder tbody tr').length",
            timeout=120_000,
        )
        titles = charts.locator(".header-title").all_inner_texts()
        rows = charts.locator("tbody tr").count()
        errors = page.locator(".dashboard-component-chart-holder .alert").count()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "superset-dashboard.png"
        page.wait_for_timeout(1500)  # the charts' entry animation
        page.screenshot(path=shot)
        browser.close()
    assert sorted(titles) == sorted(
        [DAILY, "Marketing ROI by channel and region", "Spend and revenue by channel"]
    )
    assert errors == 0
    assert rows == len(rows_of(DuckDBWarehouse(dashboards.config.parent / "warehouse"), PAIRS))
    pixels = png_pixels(shot.read_bytes())
    assert pixels.shape[:2] == (1000, 1400) and pixels.astype(float).std() > 10


def sign_in(page, dashboards: Dashboards) -> None:
    """Sign in through the login form. The page's own event log, sent as it unloads, can
    race the login's answer and leave an anonymous session cookie: then sign in again."""
    from playwright.sync_api import TimeoutError as Late

    for _ in range(3):
        page.goto(f"{dashboards.url}/login/", wait_until="networkidle")
        page.fill("#username", USER)
        page.fill("#password", dashboards.password)
        page.keyboard.press("Enter")
        try:
            page.wait_for_url(lambda url: "/login" not in url, timeout=15_000)
        except Late:
            continue
        page.wait_for_load_state("networkidle")
        if page.request.get(f"{dashboards.url}/api/v1/me/").ok:  # the session is signed in
            return
    raise AssertionError(f"could not sign in to Superset at {dashboards.url}")


def chart_totals(api, chart: int) -> tuple[list[tuple], bool]:
    """Revenue by region as the dashboard's daily chart answers it, and whether cached."""
    answer = api.get(f"/api/v1/chart/{chart}/data/")
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["result"]
    totals: dict[str, float] = {}
    for row in result["data"]:
        totals[row["region"]] = totals.get(row["region"], 0) + float(row["Revenue"])
    return sorted((region, round(total, 2)) for region, total in totals.items()), bool(
        result.get("is_cached")
    )


def lake_totals(folder: Path) -> list[tuple]:
    rows = rows_of(DuckDBWarehouse(folder / "warehouse"), TOTALS)
    return [(region, round(float(revenue), 2)) for region, revenue in rows]


def test_the_hook_shows_each_published_day_and_new_columns_and_a_failed_audit_changes_nothing(
    dashboards,
):
    path, folder = dashboards.config, dashboards.config.parent
    with closing(dashboards.api()) as api:
        [daily] = [c for c in api.get("/api/v1/dashboard/shop/charts").json()["result"]
                   if c["slice_name"] == DAILY]  # fmt: skip
        chart, dataset = daily["id"], int(daily["form_data"]["datasource"].split("__")[0])
        day_1 = lake_totals(folder)
        assert chart_totals(api, chart)[0] == day_1
        assert chart_totals(api, chart) == (day_1, True)  # cached now

        model = folder / "dbt_project" / "models" / "marts" / "daily_revenue.sql"
        model.write_text(
            model.read_text().replace(
                "    revenue,\n    revenue_prev_day,",
                "    revenue,\n    revenue / nullif(orders, 0) as avg_order_value,\n"
                "    revenue_prev_day,",
            )
        )
        config = yaml.safe_load(path.read_text())
        config["bi"] = [
            {
                "type": "superset",
                "url": dashboards.url,
                "username": USER,
                "password": dashboards.password,
                "datasets": ["marts.daily_revenue", "marts.marketing_roi"],
                "timeout": 120,
            }
        ]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        day_2_run = run(path)
        assert day_2_run.published
        assert [hook.status for hook in day_2_run.dashboards] == ["succeeded"]
        day_2 = lake_totals(folder)
        assert day_2 != day_1
        assert chart_totals(api, chart) == (day_2, False)  # the hook dropped day 1's cache
        columns = api.get(f"/api/v1/dataset/{dataset}").json()["result"]["columns"]
        assert "avg_order_value" in {column["column_name"] for column in columns}

        seen = dashboards.requests_seen()
        said = failing_audit(path)
        assert "not published" in said and "(superset): skipped" in said
        assert dashboards.requests_seen() == seen  # the hook made no request
        assert chart_totals(api, chart)[0] == day_2  # still the last good day


def test_a_dataset_name_superset_does_not_have_fails_the_hook_with_the_fix(dashboards):
    hook = TypeAdapter(BiHook).validate_python(
        {
            "type": "superset",
            "url": dashboards.url,
            "username": USER,
            "password": dashboards.password,
            "datasets": ["marts.daily_revenue", "marts.no_such_mart"],
        }
    )
    result = refresh(hook, RunInfo(run_id="r1", pipeline="shop", region="eu"))
    assert result.status == "failed"
    assert "no Superset datasets are named marts.no_such_mart" in result.detail
    assert "mdstack dashboards" in result.detail and dashboards.password not in result.detail


def test_dashboards_names_what_is_missing_before_installing_anything(tmp_path):
    path = project(tmp_path)
    config = yaml.safe_load(path.read_text())
    bi_file = config["targets"]["local"].pop("bi_file")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    said = CliRunner().invoke(app, ["dashboards", "-c", str(path)])
    assert said.exit_code == 2 and "targets.local.bi_file" in said.output, said.output
    config["targets"]["local"]["bi_file"] = bi_file
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    said = CliRunner().invoke(app, ["dashboards", "-c", str(path)])
    assert said.exit_code == 1 and "run `mdstack run` first" in said.output, said.output
    (tmp_path / "warehouse" / "bi.duckdb").parent.mkdir(exist_ok=True)
    (tmp_path / "warehouse" / "bi.duckdb").touch()
    said = CliRunner().invoke(app, ["dashboards", "-c", str(path), "--export", str(tmp_path)])
    assert said.exit_code == 1 and "not a Superset export folder" in said.output, said.output
