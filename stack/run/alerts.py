"""Alerts at the end of a run: Slack webhook, e-mail (SMTP) and generic webhook.

No Prefect here. :func:`report_for` turns a run summary into a :class:`RunReport`
that says what failed (stream or dbt node, with its error text passed through
:func:`stack.redact.redact`), where (pipeline, region, run id, flow run and its
URL when known) and how to rerun it (the exact ``mdstack`` command).
:func:`send_alerts` delivers it to every configured channel whose ``on`` lists
the outcome (``failure`` by default; ``success`` too if asked). A channel that
cannot be reached is retried briefly, then logged: an alert never fails a run.

::

    alerts:
      - {type: slack, webhook: "${vault:kv/slack#webhook}", on: [failure]}
      - {type: email, to: data-team@example.com, smtp: "${vault:kv/smtp#url}"}
      - {type: webhook, url: https://ops.example.com/hooks/mdstack, on: [failure, success]}

Channel settings may be secret references; they are resolved when an alert is
sent, and only there.
"""

from __future__ import annotations

import json
import logging
import shlex
import smtplib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from connectors.errors import RetriesExhausted, SourceUnavailable
from connectors.http import RetryPolicy, client, raise_for_status, retry_call
from stack.config import StackConfig, load_config
from stack.config.orchestration import Alert, EmailAlert, Outcome, SlackAlert, WebhookAlert
from stack.redact import redact
from stack.run.pipeline import secrets_for
from stack.run.summary import RunSummary
from stack.secrets import reveal

__all__ = [
    "Alert",
    "Delivery",
    "EmailAlert",
    "Failure",
    "RunReport",
    "SlackAlert",
    "WebhookAlert",
    "notify_run",
    "report_for",
    "send_alerts",
]

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 600
"""Error texts are cut to this length in alerts (the run's log has the whole text)."""


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One thing that failed: a stream (``source.stream``) or a dbt node."""

    kind: Literal["stream", "dbt"]
    name: str
    error: str


@dataclass(frozen=True)
class RunReport:
    """What an alert says about one run."""

    pipeline: str
    region: str
    run_id: str
    ok: bool
    failures: tuple[Failure, ...] = ()
    streams: int = 0
    rows_read: int = 0
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    deployment: str | None = None
    partition: str | None = None
    rerun: tuple[str, ...] = ()
    """Commands that redo what failed, most specific first."""
    seconds: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def outcome(self) -> Outcome:
        return "success" if self.ok else "failure"

    @property
    def title(self) -> str:
        where = f"{self.pipeline} [{self.region}]" + (
            f" partition {self.partition}" if self.partition else ""
        )
        if self.ok:
            return f"mdstack {where}: run succeeded ({self.streams} streams)"
        return f"mdstack {where}: run failed ({len(self.failures)} failed)"

    def where(self) -> list[tuple[str, str]]:
        rows = [("pipeline", self.pipeline), ("region", self.region), ("run id", self.run_id)]
        optional = [
            ("partition", self.partition),
            ("deployment", self.deployment),
            ("flow run", self.flow_run_id),
            ("flow run URL", self.flow_run_url),
        ]
        return rows + [(k, v) for k, v in optional if v]

    def text(self) -> str:
        """The plain-text body (e-mail, and the fallback text of the others)."""
        lines = [self.title, ""]
        if self.failures:
            lines.append("What failed:")
            lines += [f"  - {f.kind} {f.name}: {f.error}" for f in self.failures]
            lines.append("")
        lines.append("Where:")
        lines += [f"  {k}: {v}" for k, v in self.where()]
        if self.rerun and not self.ok:
            lines += ["", "How to rerun:"] + [f"  {c}" for c in self.rerun]
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome
        data["title"] = self.title
        data["event"] = f"mdstack.run.{self.outcome}"
        return data


def report_for(
    config: StackConfig,
    summary: RunSummary,
    *,
    target: str | None = None,
    sources: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    flow_run_id: str | None = None,
    flow_run_url: str | None = None,
    deployment: str | None = None,
) -> RunReport:
    """The report of one run from its summary.

    Error texts go through :func:`redact` (a resolved secret never reaches a channel)
    and are cut to :data:`MAX_ERROR_CHARS`.
    """
    streams = summary.streams
    failures = [
        Failure("stream", f"{s.source}.{s.stream}", _clip(s.error or s.status))
        for s in streams
        if s.status != "succeeded"
    ]
    failures += [
        Failure("dbt", f"{n.resource_type} {n.name}", _clip(n.message or n.status))
        for n in (summary.dbt.failed_nodes if summary.dbt else ())
    ]
    ok = not failures and (summary.dbt is None or summary.dbt.run.success)
    region = summary.region
    partition = f"{start}..{end}" if start else None
    return RunReport(
        pipeline=config.name,
        region=region,
        run_id=summary.run_id,
        ok=ok,
        failures=tuple(failures),
        streams=len(streams),
        rows_read=sum(s.rows_read for s in streams),
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
        deployment=deployment,
        partition=partition,
        rerun=tuple(
            rerun_commands(config, region, failures, target, sources, start, end, deployment)
        ),
        seconds=round(sum(s.seconds for s in streams), 3),
    )


def _clip(text: str) -> str:
    text = redact(str(text)).strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def rerun_commands(
    config: StackConfig,
    region: str,
    failures: Sequence[Failure],
    target: str | None = None,
    sources: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    deployment: str | None = None,
) -> list[str]:
    """The exact commands that redo what failed (streams resume from their committed state)."""
    common = ["--config", str(config.path), "--region", region]
    common += ["--target", target] if target else []
    if start and end:
        window = ["--start", start, "--end", _last_day(end)]
        return [shlex.join(["mdstack", "backfill", *window, *common])]
    failed_streams = [f.name.split(".", 1) for f in failures if f.kind == "stream"]
    commands = []
    if failed_streams:
        picked = ["mdstack", "run", *common]
        for source in dict.fromkeys(s for s, _ in failed_streams):
            picked += ["--source", source]
        for _, stream in failed_streams:
            picked += ["--stream", stream]
        commands.append(shlex.join(picked))
    models = [f.name.split(" ", 1)[1] for f in failures if f.kind == "dbt"]
    if models:
        select = " ".join(f"{m}+" for m in dict.fromkeys(models))
        commands.append(shlex.join(["mdstack", "dbt", *common, "build", "--select", select]))
    everything = ["mdstack", "run", *common]
    for source in sources or ():
        everything += ["--source", source]
    commands.append(shlex.join(everything))
    if deployment:
        commands.append(shlex.join(["prefect", "deployment", "run", deployment]))
    return list(dict.fromkeys(commands))


def _last_day(end: str) -> str:
    """The inclusive last day of a window whose ``end`` is exclusive (the CLI's ``--end``)."""
    return (date.fromisoformat(end) - timedelta(days=1)).isoformat()


# -- payloads -----------------------------------------------------------------------------


def slack_payload(report: RunReport) -> dict[str, Any]:
    """A Slack message: a header, what failed, where, and the rerun command."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": report.title[:150]}}
    ]
    if report.failures:
        failed = "\n".join(f"• *{f.kind} {f.name}*: `{f.error}`" for f in report.failures)
        blocks.append(_section(f"*What failed*\n{failed}"))
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{_slack_value(k, v)}"} for k, v in report.where()]
    blocks.append({"type": "section", "fields": fields[:10]})
    if report.rerun and not report.ok:
        commands = "\n".join(report.rerun)
        blocks.append(_section(f"*How to rerun*\n```{commands}```"))
    return {"text": report.text(), "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def _slack_value(key: str, value: str) -> str:
    return f"<{value}|open in Prefect>" if key == "flow run URL" else value


def email_message(report: RunReport, sender: str, to: Sequence[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = report.title
    message["From"] = sender
    message["To"] = ", ".join(to)
    message.set_content(report.text())
    return message


def webhook_payload(report: RunReport) -> dict[str, Any]:
    return report.as_json()


# -- delivery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """Whether one channel got the alert."""

    channel: str
    ok: bool
    error: str | None = None


Resolve = Callable[[Any, str], Any]


def send_alerts(
    alerts: Iterable[SlackAlert | EmailAlert | WebhookAlert],
    report: RunReport,
    resolve: Resolve | None = None,
    timeout: float = 10.0,
    attempts: int = 3,
) -> list[Delivery]:
    """Send ``report`` to each channel whose ``on`` lists its outcome; never raises.

    Args:
        alerts: the configured channels.
        report: what to say.
        resolve: resolves secret references in a channel's settings (``Resolver.resolve``).
        timeout: seconds per HTTP or SMTP attempt.
        attempts: tries per channel, by the shared HTTP policy (:mod:`connectors.http`):
            connection errors, timeouts, 429 and 5xx are retried, about 1 s apart, doubling.
    """
    sent = []
    for index, alert in enumerate(alerts):
        if report.outcome not in alert.on:
            continue
        channel = f"alerts[{index}] {alert.type}"
        try:
            settings = alert.model_dump(by_alias=True)
            if resolve is not None:
                settings = reveal(resolve(settings, f"alerts[{index}]"))
            _SENDERS[alert.type](settings, report, timeout, attempts)
            sent.append(Delivery(channel, True))
        except Exception as exc:  # an alert must never fail the run it reports on
            error = redact(f"{type(exc).__name__}: {exc}")
            log.warning("could not send %s: %s", channel, error)
            sent.append(Delivery(channel, False, error))
    return sent


def notify_run(config_path: str | Path, summary: RunSummary, **where: Any) -> list[Delivery]:
    """Report a finished run to the configured channels; the engine step the flow calls.

    Args:
        config_path: the run's ``stack.yml``.
        summary: the run's summary.
        where: keyword arguments of :func:`report_for` (target, flow run id and URL...).

    Returns:
        One delivery per channel tried.
    """
    config = load_config(config_path)
    alerts = config.alerts
    if not alerts:
        return []
    report = report_for(config, summary, **where)
    with secrets_for(config) as resolver:
        return send_alerts(alerts, report, resolver.resolve)


def _policy(attempts: int) -> RetryPolicy:
    """How a channel is retried: ``attempts`` tries, about 1 s apart, doubling."""
    return RetryPolicy(attempts=attempts, backoff=1.0)


def _post_json(
    url: str, payload: Mapping[str, Any], headers: Mapping[str, str], timeout: float, attempts: int
) -> None:
    """POST ``payload`` by the shared HTTP policy; the URL (a secret) is never shown."""
    body = json.dumps(payload, default=str).encode()
    label = "the alert endpoint"
    secrets = [str(v) for v in headers.values()]
    with client(_policy(attempts), timeout=timeout, label=label, secrets=secrets) as http:
        try:
            response = http.post(
                url, content=body, headers={"Content-Type": "application/json", **headers}
            )
        except RetriesExhausted as exc:
            if exc.status is not None:
                raise
            raise SourceUnavailable(f"cannot reach {label}: {exc.message}") from None
        raise_for_status(response, label=label, secrets=secrets)


def _send_slack(
    settings: Mapping[str, Any], report: RunReport, timeout: float, attempts: int
) -> None:
    _post_json(settings["webhook"], slack_payload(report), {}, timeout, attempts)


def _send_webhook(
    settings: Mapping[str, Any], report: RunReport, timeout: float, attempts: int
) -> None:
    headers = settings.get("headers") or {}
    _post_json(settings["url"], webhook_payload(report), headers, timeout, attempts)


def _send_email(
    settings: Mapping[str, Any], report: RunReport, timeout: float, attempts: int
) -> None:
    url = urlsplit(settings["smtp"])
    if url.scheme not in ("smtp", "smtps") or not url.hostname:
        raise ValueError("`smtp` must be a URL such as smtp://user:password@host:587")
    secure = url.scheme == "smtps"
    port = url.port or (465 if secure else 25)
    message = email_message(report, settings["from"], settings["to"])
    smtp_class = smtplib.SMTP_SSL if secure else smtplib.SMTP
    host = url.hostname

    def send(limit: float) -> None:
        with smtp_class(host, port, timeout=limit) as smtp:
            if settings.get("starttls") and not secure:
                smtp.starttls()
            if url.username:
                smtp.login(unquote(url.username), unquote(url.password or ""))
            smtp.send_message(message)

    retry_call(
        send,
        policy=_policy(attempts),
        what=f"cannot reach the SMTP server {host}:{port}",
        timeout=timeout,
        transient=(ConnectionError, TimeoutError, smtplib.SMTPServerDisconnected),
    )


_SENDERS: dict[str, Callable[[Mapping[str, Any], RunReport, float, int], None]] = {
    "slack": _send_slack,
    "email": _send_email,
    "webhook": _send_webhook,
}
