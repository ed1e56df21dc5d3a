"""Alerts: payloads checked against a local webhook endpoint and a local SMTP server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter
from typer.testing import CliRunner

from stack.cli import app
from stack.config import StackConfig
from stack.load import RunContext
from stack.redact import register_secret
from stack.run import alerts
from stack.run.parallel import StreamJob
from stack.run.summary import RunSummary, failed_entry
from stack.secrets import Resolver
from stack.transform import DbtRun, NodeResult
from stack.transform.result import TransformResult
from tests.servers.smtp_server import SMTPServer
from tests.servers.webhook_server import WebhookServer

SECRET = "tok-3f9a7c1e-never-in-alerts"
URL = "http://127.0.0.1:4200/runs/flow-run/0b5e"


def config(tmp_path: Path) -> StackConfig:
    return StackConfig.model_validate(
        {
            "name": "shop",
            "target": "local",
            "targets": {"local": {"type": "duckdb"}},
            "regions": {"us": {}},
            "sources": {
                "crm": {
                    "connector": "demo",
                    "config": {"region": "{{ region }}"},
                    "schema": "raw",
                    "streams": {"a": {}},
                }
            },
            "path": tmp_path / "stack.yml",
        }
    )


def summary(failed: bool = True) -> RunSummary:
    run = RunContext("shop", "us", "a1b2c3d4e5f6")
    ok = replace(failed_entry(run, StreamJob("crm", "accounts"), RuntimeError()), rows_read=10)
    ok = replace(ok, status="succeeded", error=None)
    bad = failed_entry(
        run,
        StreamJob("crm", "contacts"),
        RuntimeError(f"HTTP 503 from https://api.example.com?token={SECRET} (source 'crm')"),
    )
    node = NodeResult(
        "model.shop.fct_orders", "fct_orders", "model", "error", 0.0, None, "boom", None
    )
    dbt = DbtRun(("build",), not failed, (node,) if failed else ())
    return RunSummary(run.run_id, run.region, [ok, bad] if failed else [ok], TransformResult(dbt))


def report(tmp_path: Path, failed: bool = True) -> alerts.RunReport:
    register_secret(SECRET)
    return alerts.report_for(
        config(tmp_path),
        summary(failed),
        flow_run_id="0b5e",
        flow_run_url=URL,
        deployment="mdstack-pipeline/shop-pipeline-us",
    )


def test_the_report_says_what_failed_where_and_how_to_rerun(tmp_path):
    r = report(tmp_path)
    assert not r.ok and r.outcome == "failure"
    assert [(f.kind, f.name) for f in r.failures] == [
        ("stream", "crm.contacts"),
        ("dbt", "model fct_orders"),
    ]
    assert SECRET not in r.text() and "token=***" in r.failures[0].error
    path = tmp_path / "stack.yml"
    assert r.rerun == (
        f"mdstack run --config {path} --region us --source crm --stream contacts",
        f"mdstack dbt --config {path} --region us build --select fct_orders+",
        f"mdstack run --config {path} --region us",
        "prefect deployment run mdstack-pipeline/shop-pipeline-us",
    )
    assert ("flow run URL", URL) in r.where() and ("run id", "a1b2c3d4e5f6") in r.where()


def test_a_backfill_partition_is_rerun_with_mdstack_backfill(tmp_path):
    r = alerts.report_for(config(tmp_path), summary(), start="2026-01-03", end="2026-01-04")
    assert r.partition == "2026-01-03..2026-01-04"
    path = tmp_path / "stack.yml"
    assert r.rerun == (
        f"mdstack backfill --start 2026-01-03 --end 2026-01-03 --config {path} --region us",
    )


def test_slack_and_webhook_payloads_reach_the_endpoint(tmp_path, monkeypatch):
    with WebhookServer() as hook:
        monkeypatch.setenv("SLACK_URL", f"{hook.url}/services/T000/B000/XXX")
        monkeypatch.setenv("HOOK_TOKEN", SECRET)
        channels = TypeAdapter(list[alerts.Alert]).validate_python(
            [
                {"type": "slack", "webhook": "${env:SLACK_URL}"},
                {
                    "type": "webhook",
                    "url": f"{hook.url}/hooks/mdstack",
                    "headers": {"Authorization": "Bearer ${env:HOOK_TOKEN}"},
                },
            ]
        )
        with Resolver() as resolver:
            sent = alerts.send_alerts(channels, report(tmp_path), resolver.resolve)
        assert [d.ok for d in sent] == [True, True]
        slack, generic = hook.requests

    assert slack.path == "/services/T000/B000/XXX"
    blocks = slack.body["blocks"]
    assert blocks[0]["text"]["text"] == "mdstack shop [us]: run failed (2 failed)"
    failed = blocks[1]["text"]["text"]
    assert "*stream crm.contacts*" in failed and "HTTP 503" in failed and SECRET not in failed
    fields = [f["text"] for f in blocks[2]["fields"]]
    assert "*region*\nus" in fields and "*run id*\na1b2c3d4e5f6" in fields
    assert f"*flow run URL*\n<{URL}|open in Prefect>" in fields
    assert "--stream contacts" in blocks[3]["text"]["text"]
    assert SECRET not in str(slack.body)

    assert generic.path == "/hooks/mdstack"
    assert generic.headers["Authorization"] == f"Bearer {SECRET}"
    body = generic.body
    assert body["event"] == "mdstack.run.failure" and body["ok"] is False
    assert (body["pipeline"], body["region"], body["run_id"]) == ("shop", "us", "a1b2c3d4e5f6")
    assert body["flow_run_url"] == URL
    assert body["failures"][0] == {
        "kind": "stream",
        "name": "crm.contacts",
        "error": "HTTP 503 from https://api.example.com?token=*** (source 'crm')",
    }
    assert body["rerun"][0].startswith("mdstack run --config")


def test_email_goes_through_smtp_with_login(tmp_path, monkeypatch):
    with SMTPServer(user="alerts", password=SECRET) as smtp:
        monkeypatch.setenv("SMTP_URL", f"smtp://alerts:{SECRET}@127.0.0.1:{smtp.port}")
        channel = TypeAdapter(alerts.Alert).validate_python(
            {
                "type": "email",
                "to": "data-team@example.com",
                "from": "mdstack@example.com",
                "smtp": "${env:SMTP_URL}",
            }
        )
        with Resolver() as resolver:
            sent = alerts.send_alerts([channel], report(tmp_path), resolver.resolve)
    assert sent == [alerts.Delivery("alerts[0] email", True)]
    (received,) = smtp.messages
    assert received.login == "alerts"
    assert received.sender == "mdstack@example.com"
    assert received.recipients == ("data-team@example.com",)
    assert received.message["Subject"] == "mdstack shop [us]: run failed (2 failed)"
    body = received.message.get_payload(decode=True).decode()
    assert "stream crm.contacts: HTTP 503" in body and SECRET not in body
    assert "How to rerun:" in body and "--source crm --stream contacts" in body
    assert f"flow run URL: {URL}" in body


def test_success_goes_only_where_asked_and_on_parses_from_yaml(tmp_path):
    document = "[{type: webhook, url: URL/a}, {type: webhook, url: URL/b, on: [failure, success]}]"
    with WebhookServer() as hook:
        raw = yaml.safe_load(document.replace("URL", hook.url))  # YAML 1.1 reads `on` as True
        channels = TypeAdapter(list[alerts.Alert]).validate_python(raw)
        assert [c.on for c in channels] == [("failure",), ("failure", "success")]
        sent = alerts.send_alerts(channels, report(tmp_path, failed=False))
        assert [d.channel for d in sent] == ["alerts[1] webhook"]
        assert [r.path for r in hook.requests] == ["/b"]
        assert hook.requests[0].body["title"] == "mdstack shop [us]: run succeeded (1 streams)"


def test_a_flaky_endpoint_is_retried_and_a_dead_one_never_fails_the_run(tmp_path):
    with WebhookServer() as hook:
        hook.statuses = [503]
        channels = [
            alerts.WebhookAlert(type="webhook", url=f"{hook.url}/flaky"),
            alerts.WebhookAlert(type="webhook", url="http://127.0.0.1:9/nobody-listens"),
            alerts.WebhookAlert(type="webhook", url=f"{hook.url}/gone", on=("failure",)),
        ]
        hook_statuses_after_first = [404]
        sent = alerts.send_alerts(channels[:1], report(tmp_path), attempts=2)
        hook.statuses = hook_statuses_after_first
        sent += alerts.send_alerts(channels[1:], report(tmp_path), attempts=1, timeout=2)
    assert [d.ok for d in sent] == [True, False, False]
    assert [r.path for r in hook.requests] == ["/flaky", "/flaky", "/gone"]
    assert "cannot reach" in sent[1].error and "HTTP 404" in sent[2].error


def test_notify_run_resolves_secrets_from_the_config(tmp_path, monkeypatch):
    path = tmp_path / "stack.yml"
    declared = config(tmp_path).model_dump(mode="json", by_alias=True)
    declared["alerts"] = [{"type": "webhook", "url": "${env:HOOK_URL}"}]
    path.write_text(yaml.safe_dump(declared))
    with WebhookServer() as hook:
        monkeypatch.setenv("HOOK_URL", f"{hook.url}/x")
        delivered = alerts.notify_run(path, summary(), flow_run_url=URL)
        assert delivered == [alerts.Delivery("alerts[0] webhook", True, None)]
        assert hook.requests[0].body["flow_run_url"] == URL


@pytest.mark.parametrize("smtp", ["http://x", "smtp://"])
def test_a_bad_smtp_url_is_reported_not_raised(tmp_path, smtp):
    channel = alerts.EmailAlert(type="email", to=("a@b.c",), smtp=smtp)
    (delivery,) = alerts.send_alerts([channel], report(tmp_path))
    assert not delivery.ok and "smtp://user:password@host" in delivery.error


def test_secrets_check_lists_the_references_of_alerts(tmp_path, monkeypatch):
    path = tmp_path / "stack.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "shop",
                "target": "local",
                "targets": {"local": {"type": "duckdb"}},
                "sources": {
                    "crm": {"connector": "demo", "config": {"region": "eu"}, "schema": "raw"}
                    | {"streams": {"orders": {}}}
                },
                "alerts": [{"type": "slack", "webhook": "${env:SLACK_HOOK_URL}"}],
            }
        )
    )
    monkeypatch.setenv("SLACK_HOOK_URL", f"https://hooks.slack.com/services/{SECRET}")
    found = CliRunner().invoke(app, ["secrets", "check", "--config", str(path)])
    assert found.exit_code == 0, found.output
    assert "alerts" in found.output and "${env:SLACK_HOOK_URL}" in found.output
    assert SECRET not in found.output

    monkeypatch.delenv("SLACK_HOOK_URL")
    missing = CliRunner().invoke(app, ["secrets", "check", "--config", str(path)])
    assert missing.exit_code == 1 and "SLACK_HOOK_URL" in missing.output
