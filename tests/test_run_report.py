"""The run report (kept as a Prefect artifact by the flow): what it says and what it hides.

The flow test in ``tests/test_deploy.py`` reads a real one back from Prefect's API.
"""

from __future__ import annotations

from dataclasses import replace

from stack.bi import HookResult
from stack.load import RunContext
from stack.load.ledger import RunEntry
from stack.redact import MASK, register_secret
from stack.run.parallel import StreamJob
from stack.run.report import report_key, run_markdown
from stack.run.summary import RunSummary, failed_entry
from stack.transform import DbtRun, NodeResult
from stack.transform.checks import DataCheckResult
from stack.transform.result import TransformResult

SECRET = "pw-7f3c9a1e5b2d"


def entry(stream: str, **fields) -> RunEntry:
    failed = failed_entry(
        RunContext("shop", "eu", "r1"), StreamJob("crm", stream), RuntimeError("x")
    )
    ok = {"mode": "incremental_deduped", "status": "succeeded", "rows_read": 12, "error": None}
    return replace(failed, **(ok | fields))


def node(name: str, kind: str, status: str, seconds: float, message: str) -> NodeResult:
    return NodeResult(f"{kind}.shop.{name}", name, kind, status, seconds, None, message, None)


def test_a_failed_run_says_what_failed_in_tables_and_never_shows_a_secret():
    register_secret(SECRET)
    summary = RunSummary(
        "r1",
        "eu",
        streams=[
            entry("accounts", inserted=7),
            entry("contacts", status="failed", error=f"login as bob:{SECRET} refused\nat | x"),
        ],
        dbt=TransformResult(
            DbtRun(
                ("build", "--select", "source:crm+"),
                False,
                (
                    node("stg_accounts", "model", "success", 0.5, "OK"),
                    node("not_null_id", "test", "fail", 0.1, "Got 3 results"),
                ),
            ),
            checks=(
                DataCheckResult(
                    "fresh", "raw_crm.accounts", "freshness", "error", False, 9000, "", "9000 s old"
                ),
            ),
        ),
        dashboards=[HookResult("sales", "metabase", "skipped", 0.0, "not published")],
    )
    text = run_markdown(summary, "shop")
    assert text.startswith("# shop · region eu · run r1: **failed**")
    assert SECRET not in text and MASK in text
    assert "Failed: stream crm.contacts: login as bob:" in text
    assert "dbt test not_null_id fail" in text
    assert "| crm.accounts | incremental_deduped | succeeded | 12 | 7 | 0 | 0 | 0.00 |  |" in text
    assert "refused at \\| x |" in text  # one table row: line breaks and pipes escaped
    assert "| not_null_id | test | fail | 0.10 | Got 3 results |" in text
    assert "| fresh | raw_crm.accounts | error | False | 9000 | 9000 s old |" in text
    assert "| sales | metabase | skipped | 0.00 | not published |" in text


def test_a_good_run_without_dbt_and_the_report_key():
    text = run_markdown(RunSummary("r2", "us", streams=[entry("accounts")]), "shop")
    assert text.splitlines()[0] == "# shop · region us · run r2: succeeded"
    assert "Nothing to build" in text and "Failed" not in text
    assert report_key("My_Shop", "EU west.1") == "mdstack-run-my-shop-eu-west-1"


def test_a_run_after_another_names_the_diff_of_what_it_changed():
    dbt = TransformResult(DbtRun(("build",), True, ()), published=True, previous_run="r1")
    text = run_markdown(RunSummary("r2", "eu", streams=[entry("accounts")], dbt=dbt), "shop")
    assert "What it changed: `mdstack diff r1 r2`." in text
    first = run_markdown(RunSummary("r1", "eu", dbt=replace(dbt, previous_run=None)), "shop")
    assert "mdstack diff" not in first
