"""BI refresh hooks against local doubles speaking each tool's wire format
(tests/servers/bi_servers.py).

The contract part runs every scenario for every tool (one :class:`Case` per
tool, as the warehouse contract suite is one fixture per adapter): a refresh
that succeeds, one that fails (reported, in the tool's words), one that never
finishes (``timed_out`` within a short timeout), one that conflicts with a
refresh already running (``wait`` and ``skip``), a wrong secret (the tool's
refusal, no secret in the message), transient 503/429 retried, retries used up.
Then what is particular to each tool, the ``published=False`` guard, isolation
between hooks, secrets in logs, and the config models.
"""

from __future__ import annotations

import logging
import pickle
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr, TypeAdapter, ValidationError

from stack.bi import (
    NOT_PUBLISHED,
    REFRESHERS,
    BiError,
    HookResult,
    RunInfo,
    refresh,
    refresh_all,
    resolve_hook,
)
from stack.bi.webhook import render_body
from stack.config.bi import BiHook
from stack.secrets import Resolver
from tests.servers.bi_servers import (
    LOOKER_CLIENT,
    LOOKER_SECRET,
    METABASE_KEY,
    POWERBI_CLIENT,
    POWERBI_SECRET,
    POWERBI_TENANT,
    POWERBI_WORKSPACE,
    SECRETS,
    SUPERSET_PASSWORD,
    SUPERSET_USER,
    TABLEAU_SECRET,
    TABLEAU_SITE,
    TABLEAU_TOKEN_NAME,
    WEBHOOK_TOKEN,
    Behavior,
    Double,
    LookerDouble,
    MetabaseDouble,
    PowerBIDouble,
    Reply,
    SupersetDouble,
    TableauDouble,
    WebhookDouble,
    json_reply,
    serve,
    text_reply,
)

HOOKS = TypeAdapter(BiHook)
FAST = {"poll_interval": 0.05, "backoff": 0.01, "request_timeout": 2.0, "timeout": 5.0}
SHORT = 0.5
"""The timeout of the timing-out scenarios."""
RUN = RunInfo(pipeline="shop", region="eu", run_id="run-42")


# ---- the doubles: one per tool for the whole run ----------------------------------------


@pytest.fixture(scope="session")
def doubles() -> Iterator[dict[str, Double]]:
    made = {
        "tableau": TableauDouble(),
        "powerbi": PowerBIDouble(),
        "metabase": MetabaseDouble(),
        "superset": SupersetDouble(),
        "looker": LookerDouble(),
        "webhook": WebhookDouble(),
    }
    with ExitStack() as stack:
        for double in made.values():
            stack.enter_context(serve(double))
        yield made


@pytest.fixture
def bi(doubles: dict[str, Double]) -> Iterator[dict[str, Double]]:
    for double in doubles.values():
        double.reset()
    yield doubles
    for double in doubles.values():
        double.reset()  # release requests still hanging


# ---- one Case per tool ----------------------------------------------------------------------


@dataclass
class Case:
    """How to set up an item on a tool's double and a hook pointing at it."""

    tool: ClassVar[str]
    method: ClassVar[str] = "POST"
    trigger: ClassVar[str]
    """Method and path regex of the request that triggers a refresh."""
    failure_words: ClassVar[str]
    """What the tool says when the refresh fails (must reach the result)."""
    refusal_words: ClassVar[str]
    """What the tool says to a wrong secret (must reach the result)."""

    def add(self, double: Any, behavior: Behavior) -> Any:
        """Make an item with ``behavior``; return what the hook names it by."""
        raise NotImplementedError

    def config(self, double: Any, item: Any) -> dict[str, Any]:
        raise NotImplementedError

    def wrong_secret(self) -> dict[str, Any]:
        raise NotImplementedError

    def hook(self, double: Any, item: Any, **overrides: Any) -> Any:
        return HOOKS.validate_python({**self.config(double, item), **FAST, **overrides})


class TableauCase(Case):
    tool = "tableau"
    trigger = r"/datasources/[^/]+/refresh$"
    failure_words = "DataSourceException: The database refused the connection"
    refusal_words = "401001 Signin Error"
    counter = 0

    def add(self, double: TableauDouble, behavior: Behavior) -> str:
        TableauCase.counter += 1
        name = f"Sales {TableauCase.counter}"
        double.add("datasource", name, behavior)
        return name

    def config(self, double: TableauDouble, item: str) -> dict[str, Any]:
        return {
            "type": "tableau",
            "server": double.url,
            "site": TABLEAU_SITE,
            "token_name": TABLEAU_TOKEN_NAME,
            "token_secret": SecretStr(TABLEAU_SECRET),
            "datasources": [item],
        }

    def wrong_secret(self) -> dict[str, Any]:
        return {"token_secret": "tbl-PAT-wrong-000000"}


class PowerBICase(Case):
    tool = "powerbi"
    trigger = r"/datasets/[^/]+/refreshes$"
    failure_words = "ModelRefreshFailed_CredentialsNotSpecified"
    refusal_words = "invalid_client: AADSTS7000215"

    def add(self, double: PowerBIDouble, behavior: Behavior) -> str:
        dataset = f"cfafbeb1-8037-4d0c-896e-{double.next_id():012d}"
        double.add(dataset, behavior)
        return dataset

    def config(self, double: PowerBIDouble, item: str) -> dict[str, Any]:
        return {
            "type": "powerbi",
            "tenant_id": POWERBI_TENANT,
            "client_id": POWERBI_CLIENT,
            "client_secret": POWERBI_SECRET,
            "workspace_id": POWERBI_WORKSPACE,
            "datasets": [item],
            "authority_url": double.url,
            "api_url": double.url,
        }

    def wrong_secret(self) -> dict[str, Any]:
        return {"client_secret": "pbi~wrong~secret~000"}


class MetabaseCase(Case):
    tool = "metabase"
    trigger = r"/sync_schema$"
    failure_words = "Connection to warehouse refused"
    refusal_words = "HTTP 401 Unauthenticated"

    def add(self, double: MetabaseDouble, behavior: Behavior) -> int:
        db = double.next_id()
        double.add(db, behavior)
        return db

    def config(self, double: MetabaseDouble, item: int) -> dict[str, Any]:
        return {"type": "metabase", "url": double.url, "api_key": METABASE_KEY, "database_id": item}

    def wrong_secret(self) -> dict[str, Any]:
        return {"api_key": "mb_apikey_wrong_0000"}


class SupersetCase(Case):
    tool = "superset"
    method = "PUT"
    trigger = r"/api/v1/dataset/\d+/refresh$"
    failure_words = "Dataset could not be updated"
    refusal_words = "HTTP 401 Not authorized"

    def add(self, double: SupersetDouble, behavior: Behavior) -> int:
        pk = double.next_id()
        double.add(pk, behavior)
        return pk

    def config(self, double: SupersetDouble, item: int) -> dict[str, Any]:
        return {
            "type": "superset",
            "url": double.url,
            "username": SUPERSET_USER,
            "password": SUPERSET_PASSWORD,
            "datasets": [item],
        }

    def wrong_secret(self) -> dict[str, Any]:
        return {"password": "wrong-password-0000"}


class LookerCase(Case):
    tool = "looker"
    method = "GET"
    trigger = r"/derived_table/[^/]+/[^/]+/start$"
    failure_words = 'SQL Error: relation "analytics.'
    refusal_words = "HTTP 404 Not found"

    def add(self, double: LookerDouble, behavior: Behavior) -> str:
        view = f"orders_pdt_{double.next_id()}"
        double.add_pdt("ecommerce", view, behavior)
        return view

    def config(self, double: LookerDouble, item: str) -> dict[str, Any]:
        return {
            "type": "looker",
            "base_url": double.url,
            "client_id": LOOKER_CLIENT,
            "client_secret": LOOKER_SECRET,
            "pdts": [{"model": "ecommerce", "view": item}],
        }

    def wrong_secret(self) -> dict[str, Any]:
        return {"client_secret": "lk-wrong-secret-000"}


class WebhookCase(Case):
    tool = "webhook"
    trigger = r"/hooks/"
    failure_words = "HTTP 422: dashboard refresh rejected"
    refusal_words = "HTTP 401"

    def add(self, double: WebhookDouble, behavior: Behavior) -> str:
        name = f"refresh-{double.next_id()}"
        double.add(name, behavior)
        return name

    def config(self, double: WebhookDouble, item: str) -> dict[str, Any]:
        return {
            "type": "webhook",
            "url": f"{double.url}/hooks/{item}",
            "headers": {"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        }

    def wrong_secret(self) -> dict[str, Any]:
        return {"headers": {"Authorization": "Bearer whk-wrong-token-00"}}


CASES = [TableauCase(), PowerBICase(), MetabaseCase(), SupersetCase(), LookerCase(), WebhookCase()]


@pytest.fixture(params=CASES, ids=lambda c: c.tool)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def double(case: Case, bi: dict[str, Double]) -> Any:
    return bi[case.tool]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# ---- the contract: every tool, every scenario ------------------------------------------------


def test_a_refresh_that_succeeds(case: Case, double: Any) -> None:
    item = case.add(double, Behavior("success", polls=2))
    result = refresh(case.hook(double, item), RUN)
    assert result.status == "succeeded", result.detail
    assert result.ok and result.type == case.tool and result.name == case.tool
    assert [t.status for t in result.targets] == ["succeeded"]
    assert len(double.seen(case.method, case.trigger)) == 1
    assert 0 <= result.seconds < 3


def test_a_refresh_that_fails_is_reported_in_the_tools_words(
    case: Case, double: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    item = case.add(double, Behavior("failure", polls=1))
    result = refresh(case.hook(double, item), RUN)
    assert result.status == "failed"
    assert not result.ok
    assert case.failure_words in result.detail
    assert_no_secret(caplog.text, repr(result))


def test_a_refresh_that_never_finishes_times_out(case: Case, double: Any) -> None:
    item = case.add(double, Behavior("never"))
    started = time.monotonic()
    result = refresh(case.hook(double, item, timeout=SHORT), RUN)
    elapsed = time.monotonic() - started
    assert result.status == "timed_out", result.detail
    assert not result.ok
    assert SHORT - 0.1 <= result.seconds <= SHORT + 1.0
    assert elapsed < SHORT + 1.5


def test_a_conflict_with_wait_waits_then_refreshes(
    case: Case, double: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    item = case.add(double, Behavior("success", polls=1, busy=2))
    result = refresh(case.hook(double, item, on_conflict="wait"), RUN)
    assert result.status == "succeeded", result.detail
    assert_no_secret(caplog.text, repr(result))
    assert double.seen(case.method, case.trigger), "ours was triggered once the other one ended"


def test_a_conflict_with_skip_is_reported_skipped(case: Case, double: Any) -> None:
    item = case.add(double, Behavior("success", polls=1, busy=2))
    result = refresh(case.hook(double, item, on_conflict="skip"), RUN)
    assert result.status == "skipped", result.detail
    assert result.ok
    assert re.search(r"already|409|running|in progress", result.detail)
    assert len(double.seen(case.method, case.trigger)) <= 1, "no retrigger when skipping"


def test_a_conflict_that_outlasts_the_timeout_times_out(case: Case, double: Any) -> None:
    item = case.add(double, Behavior("success", polls=1, busy=10_000))
    result = refresh(case.hook(double, item, on_conflict="wait", timeout=SHORT), RUN)
    assert result.status == "timed_out"
    assert "blocked" in result.detail


def test_a_wrong_secret_fails_clearly_without_the_secret(
    case: Case, double: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    item = case.add(double, Behavior())
    overrides = case.wrong_secret()
    result = refresh(case.hook(double, item, **overrides), RUN)
    assert result.status == "failed"
    assert case.refusal_words in result.detail
    assert not double.seen(case.method, case.trigger) or case.tool == "webhook"
    wrong = next(iter(overrides.values()))
    wrong_text = next(iter(wrong.values())) if isinstance(wrong, dict) else wrong
    for text in (result.detail, repr(result), caplog.text):
        assert wrong_text not in text
        assert_no_secret(text)


def test_transient_503_and_429_are_retried(case: Case, double: Any) -> None:
    item = case.add(double, Behavior("success", polls=1))
    double.inject(
        case.method,
        case.trigger,
        text_reply(503, "Service Unavailable"),
        Reply(429, b"", {"Retry-After": "0"}),
    )
    result = refresh(case.hook(double, item, retries=3), RUN)
    assert result.status == "succeeded", result.detail
    assert len(double.seen(case.method, case.trigger)) == 3, (
        "two transient answers, then the real one"
    )


def test_retries_used_up_fail_the_hook(case: Case, double: Any) -> None:
    item = case.add(double, Behavior())
    double.inject(case.method, case.trigger, *[text_reply(503, "down")] * 3)
    result = refresh(case.hook(double, item, retries=2), RUN)
    assert result.status == "failed"
    assert "HTTP 503 after 3 attempts" in result.detail


# ---- Tableau ----------------------------------------------------------------------------------


def test_tableau_refreshes_workbooks_and_data_sources_by_name(bi: dict[str, Any]) -> None:
    tableau: TableauDouble = bi["tableau"]
    tableau.add("datasource", "Marketing ROI")
    tableau.add("workbook", "Exec Dashboard")
    hook = TableauCase().hook(
        tableau, "Marketing ROI", workbooks=["Exec Dashboard"], datasources=["Marketing ROI"]
    )
    result = refresh(hook, RUN)
    assert result.status == "succeeded", result.detail
    assert [t.target for t in result.targets] == [
        "datasource:Marketing ROI",
        "workbook:Exec Dashboard",
    ]
    assert tableau.seen("POST", r"/workbooks/[^/]+/refresh$")
    assert tableau.seen("POST", r"/auth/signout$"), "signs out at the end"
    assert not tableau.sessions


def test_tableau_unknown_and_ambiguous_names_fail_with_a_hint(bi: dict[str, Any]) -> None:
    tableau: TableauDouble = bi["tableau"]
    tableau.add("datasource", "Twice", project="Finance")
    tableau.add("datasource", "Twice", project="Sales")
    tableau.add("datasource", "Fine")
    hook = TableauCase().hook(tableau, "x", datasources=["Missing", "Twice", "Fine"])
    result = refresh(hook, RUN)
    by_target = {t.target: t for t in result.targets}
    assert result.status == "failed"
    assert "no datasource named 'Missing'" in by_target["datasource:Missing"].detail
    assert "projects: Finance, Sales" in by_target["datasource:Twice"].detail
    assert by_target["datasource:Fine"].status == "succeeded", "one bad name spoils no other"


# ---- Power BI -------------------------------------------------------------------------------


def test_powerbi_follows_its_own_refresh_by_request_id(bi: dict[str, Any]) -> None:
    powerbi: PowerBIDouble = bi["powerbi"]
    case = PowerBICase()
    dataset = case.add(powerbi, Behavior("success", polls=3))
    result = refresh(case.hook(powerbi, dataset), RUN)
    assert result.status == "succeeded"
    assert powerbi.bodies == [{"notifyOption": "NoNotification"}]
    token_request = powerbi.seen("POST", r"/oauth2/v2\.0/token$")[0].form()
    assert token_request["scope"] == "https://analysis.windows.net/powerbi/api/.default"
    assert token_request["grant_type"] == "client_credentials"
    (ours,) = [r for r in powerbi.refreshes[dataset] if r.refresh_type == "ViaApi"]
    assert ours.request_id in result.detail


def test_powerbi_sends_an_enhanced_refresh_body(bi: dict[str, Any]) -> None:
    powerbi: PowerBIDouble = bi["powerbi"]
    case = PowerBICase()
    dataset = case.add(powerbi, Behavior())
    body = {"type": "Full", "commitMode": "transactional", "retryCount": 1}
    result = refresh(case.hook(powerbi, dataset, enhanced=body), RUN)
    assert result.status == "succeeded", result.detail
    assert powerbi.bodies == [body]
    assert powerbi.refreshes[dataset][0].refresh_type == "ViaEnhancedApi"


def test_powerbi_signs_in_again_when_the_token_expires(bi: dict[str, Any]) -> None:
    powerbi: PowerBIDouble = bi["powerbi"]
    case = PowerBICase()
    dataset = case.add(powerbi, Behavior("success", polls=2))
    powerbi.inject(
        "GET", r"/refreshes$", json_reply(401, {"error": {"code": "TokenExpired", "message": "x"}})
    )
    result = refresh(case.hook(powerbi, dataset), RUN)
    assert result.status == "succeeded", result.detail
    assert len(powerbi.seen("POST", r"/oauth2/v2\.0/token$")) == 2


def test_powerbi_a_submitted_refresh_refused_with_409_is_a_conflict(bi: dict[str, Any]) -> None:
    powerbi: PowerBIDouble = bi["powerbi"]
    case = PowerBICase()
    dataset = case.add(powerbi, Behavior())
    powerbi.inject(
        "POST",
        r"/refreshes$",
        json_reply(409, {"error": {"code": "Conflict", "message": "already executing"}}),
    )
    result = refresh(case.hook(powerbi, dataset, on_conflict="skip"), RUN)
    assert result.status == "skipped"
    assert "409 Conflict" in result.detail


def test_powerbi_unknown_tenant_and_dataset(bi: dict[str, Any]) -> None:
    powerbi: PowerBIDouble = bi["powerbi"]
    case = PowerBICase()
    result = refresh(case.hook(powerbi, "no-such-dataset", tenant_id="other-tenant"), RUN)
    assert result.status == "failed" and "AADSTS90002" in result.detail
    result = refresh(case.hook(powerbi, "no-such-dataset"), RUN)
    assert result.status == "failed"
    assert "ItemNotFound" in result.detail and "check `workspace_id`" in result.detail


# ---- Metabase -------------------------------------------------------------------------------


def test_metabase_rescans_and_invalidates_the_cache(bi: dict[str, Any]) -> None:
    metabase: MetabaseDouble = bi["metabase"]
    case = MetabaseCase()
    db = case.add(metabase, Behavior("success", polls=2))
    result = refresh(case.hook(metabase, db, rescan=True, invalidate_cache=True), RUN)
    assert result.status == "succeeded", result.detail
    assert metabase.seen("POST", rf"/api/database/{db}/rescan_values$")
    (call,) = metabase.seen("POST", r"/api/cache/invalidate$")
    assert call.query == {"database": [str(db)], "include": ["overrides"]}
    assert "Invalidated 3 cache configurations" in result.detail


def test_metabase_cache_invalidation_on_the_free_edition_fails_with_a_hint(
    bi: dict[str, Any],
) -> None:
    metabase: MetabaseDouble = bi["metabase"]
    metabase.paid = False
    case = MetabaseCase()
    db = case.add(metabase, Behavior("success", polls=1))
    result = refresh(case.hook(metabase, db, invalidate_cache=True), RUN)
    assert result.status == "failed"
    assert "HTTP 402" in result.detail and "invalidate_cache: false" in result.detail
    assert [t.status for t in result.targets] == ["succeeded"], "the sync itself went through"


def test_metabase_without_wait_reads_no_task_history(bi: dict[str, Any]) -> None:
    metabase: MetabaseDouble = bi["metabase"]
    metabase.task_access = False
    case = MetabaseCase()
    db = case.add(metabase, Behavior("never"))
    result = refresh(case.hook(metabase, db, wait=False), RUN)
    assert result.status == "succeeded"
    assert "not waited for" in result.detail
    assert not metabase.seen("GET", r"/api/task")
    result = refresh(case.hook(metabase, db), RUN)
    assert result.status == "failed" and "set `wait: false`" in result.detail


# ---- Superset -------------------------------------------------------------------------------


def test_superset_sends_csrf_and_invalidates_the_refreshed_datasets(bi: dict[str, Any]) -> None:
    superset: SupersetDouble = bi["superset"]
    case = SupersetCase()
    first, second = case.add(superset, Behavior()), case.add(superset, Behavior())
    result = refresh(case.hook(superset, first, datasets=[first, second]), RUN)
    assert result.status == "succeeded", result.detail
    assert superset.invalidated == [{"datasource_uids": [f"{first}__table", f"{second}__table"]}]
    refresh_call = superset.seen("PUT")[0]
    assert refresh_call.headers["X-CSRFToken"] and "session=" in refresh_call.headers["Cookie"]


def test_superset_without_csrf_gets_the_csrf_error(bi: dict[str, Any]) -> None:
    superset: SupersetDouble = bi["superset"]
    case = SupersetCase()
    pk = case.add(superset, Behavior())
    result = refresh(case.hook(superset, pk, csrf=False), RUN)
    assert result.status == "failed"
    assert "The CSRF token is missing" in result.detail


def test_superset_unknown_dataset(bi: dict[str, Any]) -> None:
    superset: SupersetDouble = bi["superset"]
    result = refresh(SupersetCase().hook(superset, 999_999), RUN)
    assert result.status == "failed"
    assert "HTTP 404 Not found" in result.detail and "check the dataset ids" in result.detail


# ---- Looker ---------------------------------------------------------------------------------


def test_looker_triggers_datagroups_and_rebuilds_pdts(bi: dict[str, Any]) -> None:
    looker: LookerDouble = bi["looker"]
    case = LookerCase()
    looker.add_datagroup("orders_etl")
    view = case.add(looker, Behavior("success", polls=3))
    before = int(time.time())
    result = refresh(case.hook(looker, view, datagroups=["orders_etl"]), RUN)
    assert result.status == "succeeded", result.detail
    (patch,) = looker.patches
    assert before <= patch["stale_before"] <= time.time()
    assert patch["triggered_at"] == patch["stale_before"]
    (start,) = looker.starts
    assert start["force_rebuild"] == ["true"] and start["source"] == ["mdstack run run-42"]
    assert looker.seen("DELETE", r"/logout$") and not looker.tokens, "logs out"


def test_looker_unknown_datagroup(bi: dict[str, Any]) -> None:
    looker: LookerDouble = bi["looker"]
    case = LookerCase()
    result = refresh(case.hook(looker, "x", pdts=[], datagroups=["nope"]), RUN)
    assert result.status == "failed"
    assert "HTTP 404 Not found" in result.detail and "datagroup ids" in result.detail


# ---- webhook --------------------------------------------------------------------------------


def test_webhook_sends_the_run_and_a_templated_body(bi: dict[str, Any]) -> None:
    webhook: WebhookDouble = bi["webhook"]
    case = WebhookCase()
    name = case.add(webhook, Behavior())
    assert refresh(case.hook(webhook, name), RUN).status == "succeeded"
    body = {"text": "{{ pipeline }}/{{ region }} published by {{run_id}}", "n": 1}
    assert refresh(case.hook(webhook, name, body=body, method="PUT"), RUN).status == "succeeded"
    first, second = webhook.received
    assert first.json() == {
        "pipeline": "shop",
        "region": "eu",
        "run_id": "run-42",
        "published_at": "",
    }
    assert second.method == "PUT"
    assert second.json() == {"text": "shop/eu published by run-42", "n": 1}


def test_webhook_published_at_carries_its_time_zone(bi: dict[str, Any]) -> None:
    """The warehouse's clock is naive UTC; a receiver elsewhere must read the same instant."""
    webhook: WebhookDouble = bi["webhook"]
    case = WebhookCase()
    name = case.add(webhook, Behavior())
    published = RunInfo("shop", "eu", "run-43", datetime(2026, 12, 6, 6, 0, 0))
    assert refresh(case.hook(webhook, name), published).status == "succeeded"
    assert webhook.received[-1].json()["published_at"] == "2026-12-06T06:00:00+00:00"


def test_webhook_errors_never_show_its_url(bi: dict[str, Any]) -> None:
    webhook: WebhookDouble = bi["webhook"]
    case = WebhookCase()
    name = case.add(webhook, Behavior())
    webhook.inject("POST", "/hooks/", *[text_reply(502, "bad gateway")] * 2)
    result = refresh(case.hook(webhook, name, retries=1), RUN)
    assert result.status == "failed"
    assert "POST webhook: HTTP 502 after 2 attempts" in result.detail
    assert name not in result.detail and "127.0.0.1" not in result.detail


def test_render_body_keeps_unknown_placeholders() -> None:
    assert render_body(["{{ nope }}", {"a": "{{ run_id }}"}], {"run_id": "7"}) == [
        "{{ nope }}",
        {"a": "7"},
    ]


# ---- refresh_all: only after a good publish, one failure stops nothing ----------------------


def _one_hook_per_tool(bi: dict[str, Any]) -> list[Any]:
    hooks = []
    for case in CASES:
        item = case.add(bi[case.tool], Behavior("success", polls=1))
        hooks.append(case.hook(bi[case.tool], item))
    return hooks


def test_refresh_all_fires_nothing_when_the_publish_failed(bi: dict[str, Any]) -> None:
    hooks = _one_hook_per_tool(bi)
    results = refresh_all(hooks, published=False, run=RUN)
    assert [r.status for r in results] == ["skipped"] * len(CASES)
    assert {r.detail for r in results} == {NOT_PUBLISHED}
    assert [r.type for r in results] == [c.tool for c in CASES]
    for double in bi.values():
        assert double.seen() == [], f"{type(double).__name__} saw a request"


def test_refresh_all_runs_every_hook_after_a_good_publish(bi: dict[str, Any]) -> None:
    hooks = _one_hook_per_tool(bi)
    results = refresh_all(hooks, published=True, run=RUN)
    assert [r.status for r in results] == ["succeeded"] * len(CASES)


def test_a_failing_hook_does_not_stop_the_others(bi: dict[str, Any]) -> None:
    tableau, metabase = TableauCase(), MetabaseCase()
    bad = tableau.hook(
        bi["tableau"], tableau.add(bi["tableau"], Behavior()), **tableau.wrong_secret()
    )
    good = metabase.hook(bi["metabase"], metabase.add(bi["metabase"], Behavior()), name="mb")
    results = refresh_all([bad, good], published=True, run=RUN)
    assert [(r.name, r.status) for r in results] == [("tableau", "failed"), ("mb", "succeeded")]


def test_an_unreachable_tool_is_a_failed_result_not_an_exception() -> None:
    config = {"type": "metabase", "url": "http://127.0.0.1:9", "api_key": METABASE_KEY}
    hook = HOOKS.validate_python({**config, "database_id": 1, **FAST, "retries": 1})
    result = refresh(hook, RUN)
    assert result.status == "failed"
    assert "ConnectError after 2 attempts" in result.detail


def test_hooks_resolve_secret_references_at_run_time(
    bi: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tableau: TableauDouble = bi["tableau"]
    tableau.add("datasource", "Orders")
    written = {
        **TableauCase().config(tableau, "Orders"),
        "server": "${env:TABLEAU_URL}",
        "token_secret": "${env:TABLEAU_PAT}",
        **FAST,
    }
    hook = HOOKS.validate_python(written)  # as stack.yml loads it: references, unresolved
    assert hook.token_secret.get_secret_value() == "${env:TABLEAU_PAT}"
    environ = {"TABLEAU_URL": tableau.url, "TABLEAU_PAT": TABLEAU_SECRET}
    with Resolver(environ=environ) as resolver:
        resolved = resolve_hook(hook, resolver.resolve, "bi[0]")
    assert resolved.server == tableau.url and isinstance(resolved.server, str)
    assert resolved.token_secret.get_secret_value() == TABLEAU_SECRET
    result = refresh(resolved, RUN)
    assert result.status == "succeeded", result.detail
    assert_no_secret(caplog.text, repr(resolved), repr(result))


def test_a_missing_client_library_is_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REFRESHERS, "tableau", "no_such_bi_library:Refresher")
    hook = HOOKS.validate_python(
        {"type": "tableau", "server": "s", "token_name": "n", "token_secret": "x" * 8}
        | {"datasources": ["d"]}
    )
    result = refresh(hook, RUN)
    assert result.status == "failed"
    assert result.detail == "no_such_bi_library is not installed: pip install 'mdstack[bi]'"


def test_results_and_errors_pickle() -> None:
    result = HookResult("n", "tableau", "failed", 1.5, "why")
    assert pickle.loads(pickle.dumps(result)) == result
    error = BiError("refused", hook="h", status=401, hint="fix it")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.hook, copy.status, str(copy)) == ("h", 401, str(error))
    assert str(error).startswith("BI hook 'h': refused")


# ---- configuration --------------------------------------------------------------------------


def test_hook_configs_validate_and_hide_secrets() -> None:
    hook = HOOKS.validate_python(
        {
            "type": "tableau",
            "server": "https://tableau.example.com",
            "token_name": "n",
            "token_secret": "plain-text-secret",
            "datasources": ["Marketing ROI"],
            "timeout": "10m",
            "poll_interval": "30s",
        }
    )
    assert hook.timeout == 600 and hook.poll_interval == 30 and hook.on_conflict == "wait"
    assert "plain-text-secret" not in repr(hook)
    again = HOOKS.validate_python({**hook.model_dump(), "token_secret": SecretStr("s3cret")})
    assert again.token_secret.get_secret_value() == "s3cret"
    with pytest.raises(ValidationError):
        hook.timeout = 1  # frozen


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "tableau", "server": "s", "token_name": "n", "token_secret": "x"}, "datasources"),
        ({"type": "looker", "base_url": "u", "client_id": "i", "client_secret": "s"}, "datagroups"),
        (
            {"type": "metabase", "url": "u", "api_key": "k", "database_id": 1, "rescna": True},
            "rescna",
        ),
        (
            {"type": "superset", "url": "u", "username": "u", "password": "p", "datasets": []},
            "datasets",
        ),
        (
            {
                "type": "superset",
                "url": "u",
                "username": "u",
                "password": "p",
                "datasets": ["daily_revenue"],
            },
            "schema",  # a name is schema.table
        ),
        ({"type": "qlik", "url": "u"}, "qlik"),
        ({"type": "webhook", "url": "u", "timeout": "soon"}, "duration"),
        ({"type": "webhook", "url": "u", "on_conflict": "retry"}, "on_conflict"),
    ],
)
def test_bad_hook_configs_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HOOKS.validate_python(config)
