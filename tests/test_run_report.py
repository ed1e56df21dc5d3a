"""The run report (kept as a Prefect artifact by the flow): what it says and what it hides.

The flow test in ``tests/test_deploy.py`` reads a real one back from Prefect's API.
"""

from __future__ import annotations

from stack.redact import MASK, register_secret
from stack.run.pipeline import RunSummary, failed_entry
from stack.run.report import report_key, run_markdown

SECRET = "pw-7f3c9a1e5b2d"


def entry(stream: str, **fields) -> dict:
    ok = {"mode": "incremental_deduped", "status": "succeeded", "rows_read": 12, "error": None}
    return failed_entry("crm", stream, "eu", "r1", RuntimeError("x")) | ok | fields


def test_a_failed_run_says_what_failed_in_tables_and_never_shows_a_secret():
    register_secret(SECRET)
    summary = RunSummary(
        "r1",
        "eu",
        streams=[
            entry("accounts", inserted=7),
            entry("contacts", status="failed", error=f"login as bob:{SECRET} refused\nat | x"),
        ],
        dbt={
            "args": ["build", "--select", "source:crm+"],
            "success": False,
            "published": False,
            "nodes": [
                {
                    "name": "stg_accounts",
                    "resource_type": "model",
                    "status": "success",
                    "seconds": 0.5,
                    "message": "OK",
                },
                {
                    "name": "not_null_id",
                    "resource_type": "test",
                    "status": "fail",
                    "seconds": 0.1,
                    "message": "Got 3 results",
                },
            ],
            "checks": [
                {
                    "name": "fresh",
                    "table": "raw_crm.accounts",
                    "severity": "error",
                    "passed": False,
                    "observed": 9000,
                    "message": "9000 s old",
                },
            ],
        },
        dashboards=[
            {
                "name": "sales",
                "type": "metabase",
                "status": "skipped",
                "seconds": 0.0,
                "detail": "not published",
            },
        ],
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
