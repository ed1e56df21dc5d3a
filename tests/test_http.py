"""The HTTP policy (connectors/http.py) against a real local server (tests/servers/http_server.py).

What is retried and what is not, ``Retry-After``, timeouts on every request, a server that
accepts and never answers, a refused connection, budgets and deadlines, the server's words
in errors, and secrets kept out of errors and logs.
"""

from __future__ import annotations

import logging
import pickle
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from connectors.errors import (
    DeadlineExceeded,
    HttpStatusError,
    RetriesExhausted,
    SourceUnavailable,
)
from connectors.http import (
    Deadline,
    RetryPolicy,
    client,
    error_text,
    mask_url,
    parse_retry_after,
    raise_for_status,
    retry_call,
)
from tests.servers.http_server import Reply, ScriptedServer

TOKEN = "tok-5f3a9c1e77d2"
FAST = RetryPolicy(attempts=3, backoff=0.01)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def _echo(seen: object) -> bytes:
    """A body that repeats the request back, secrets included (as some servers do)."""
    return repr(seen).encode()


def test_503_with_retry_after_is_retried_after_the_wait(server: ScriptedServer) -> None:
    server.queue(Reply(503, b"busy", {"Retry-After": "1"}))
    with client(FAST, base_url=server.url) as http:
        started = time.monotonic()
        response = http.get("/data")
    assert response.status_code == 200 and response.text == "ok"
    assert time.monotonic() - started >= 0.95
    assert [s.path for s in server.seen] == ["/data", "/data"]


def test_a_400_is_not_retried_and_its_error_shows_the_body(server: ScriptedServer) -> None:
    server.queue(Reply(400, b'{"message": "  unknown field\\n `colour` "}'))
    with client(FAST, base_url=server.url) as http:
        response = http.post("/items", json={"colour": "red"})
        with pytest.raises(HttpStatusError) as err:
            raise_for_status(response)
    assert len(server.seen) == 1
    assert err.value.status == 400 and not err.value.retryable
    assert f"POST {server.url}/items: HTTP 400: unknown field `colour`" in str(err.value)


def test_a_server_that_never_answers_times_out_is_retried_then_fails(
    server: ScriptedServer,
) -> None:
    server.queue(*[Reply(delay=30)] * 2)
    started = time.monotonic()
    policy = RetryPolicy(attempts=2, backoff=0.01)
    with client(policy, timeout=0.3) as http, pytest.raises(RetriesExhausted) as err:
        http.get(f"{server.url}/slow")
    took = time.monotonic() - started
    assert len(server.seen) == 2 and 0.6 <= took < 3, took
    assert err.value.retryable and err.value.status is None and err.value.attempts == 2
    text = str(err.value)
    assert f"GET {server.url}/slow: ReadTimeout after 2 attempts" in text
    assert "no answer within 0.3 s" in text


def test_a_listener_that_never_accepts_is_a_timeout_too() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=4) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x"
        policy = RetryPolicy(attempts=2, backoff=0)
        expected = pytest.raises(RetriesExhausted, match="ReadTimeout after 2 attempts")
        with client(policy, timeout=0.2) as http, expected:
            http.get(url)


def test_a_refused_connection_is_retried_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logs = caplog.at_level(logging.INFO, "connectors.http")
    with logs, client(FAST) as http, pytest.raises(RetriesExhausted) as err:
        http.get(f"http://127.0.0.1:{port}/")
    assert "ConnectError after 3 attempts" in str(err.value) and err.value.retryable
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "ConnectError; retry 1/2" in retries[0]


def test_retried_statuses_exhausted_name_the_last_status_and_words(server: ScriptedServer) -> None:
    server.queue(Reply(502, b"bad gateway"), Reply(500, b"oops"), Reply(503, b"down for now"))
    with client(FAST, base_url=server.url) as http, pytest.raises(RetriesExhausted) as err:
        http.put("/x", content=b"body")
    assert [s.body for s in server.seen] == [b"body"] * 3  # the body is sent again each time
    assert err.value.status == 503 and err.value.reason == "HTTP 503"
    assert "HTTP 503 after 3 attempts: down for now" in str(err.value)
    assert isinstance(err.value, SourceUnavailable)


@pytest.mark.parametrize("status", [401, 404, 409, 422, 501])
def test_final_statuses_come_back_at_once(server: ScriptedServer, status: int) -> None:
    server.queue(Reply(status, b"no"))
    with client(FAST, base_url=server.url) as http:
        assert http.get("/").status_code == status
    assert len(server.seen) == 1


def test_a_retry_after_beyond_the_cap_fails_at_once(server: ScriptedServer) -> None:
    server.queue(Reply(429, b"slow down", {"Retry-After": "3600"}))
    policy = RetryPolicy(attempts=5, max_retry_after=60)
    with client(policy, base_url=server.url) as http, pytest.raises(RetriesExhausted) as err:
        http.get("/")
    assert len(server.seen) == 1 and err.value.retryable
    assert "asks to retry in 3600 s, more than 60 s" in str(err.value)


def test_the_budget_cuts_attempts_and_their_timeouts(server: ScriptedServer) -> None:
    server.queue(*[Reply(delay=30)] * 5)
    policy = RetryPolicy(attempts=10, backoff=0.01, budget=0.5)
    started = time.monotonic()
    with client(policy, timeout=0.3) as http, pytest.raises(DeadlineExceeded) as err:
        http.get(f"{server.url}/")
    assert time.monotonic() - started < 1.5
    assert 2 <= len(server.seen) <= 3 and "ReadTimeout" in str(err.value)


def test_a_shared_deadline_stops_waits_that_would_pass_it(server: ScriptedServer) -> None:
    server.queue(Reply(503, b"busy", {"Retry-After": "5"}))
    deadline = Deadline(2)
    expected = pytest.raises(DeadlineExceeded, match=r"the next try would start in 5\.0 s")
    with client(FAST, deadline=deadline, base_url=server.url) as http, expected:
        http.get("/")
    assert len(server.seen) == 1 and deadline.elapsed() < 1


def test_a_deadline_already_passed_sends_nothing(server: ScriptedServer) -> None:
    deadline = Deadline(0)
    expected = pytest.raises(DeadlineExceeded, match=r"GET .*/: no time left for a first attempt")
    with client(FAST, deadline=deadline) as http, expected:
        http.get(f"{server.url}/")
    assert server.seen == []


def test_every_request_has_connect_and_read_timeouts() -> None:
    timeouts: list[dict[str, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200)

    double = httpx.MockTransport(answer)
    with client(FAST, timeout=7, wrap=lambda _: double) as http:
        http.get("http://example.test/", timeout=None)  # no timeout asked: the policy's
        http.get("http://example.test/", timeout=httpx.Timeout(2, connect=1))
    assert timeouts[0] == {"connect": 7, "read": 7, "write": 7, "pool": 7}
    assert timeouts[1] == {"connect": 1, "read": 2, "write": 2, "pool": 2}


def test_secrets_in_headers_and_query_appear_in_no_error_or_log(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.queue(*[Reply(503, _echo)] * 3, Reply(401, _echo))
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": TOKEN + "k"}
    with caplog.at_level(logging.DEBUG), client(FAST, headers=headers) as http:
        with pytest.raises(RetriesExhausted) as unavailable:
            http.get(f"{server.url}/a", params={"api_key": TOKEN, "page": 2})
        with pytest.raises(HttpStatusError) as refused:
            raise_for_status(http.get(f"http://u:{TOKEN}@127.0.0.1:{server.url.rsplit(':')[-1]}/b"))
    assert TOKEN in repr(server.seen[0])  # the server did echo it
    for text in (str(unavailable.value), str(refused.value), repr(unavailable.value), caplog.text):
        assert TOKEN not in text
    assert "api_key=***&page=2" in str(unavailable.value)
    assert "HTTP 401" in str(refused.value) and "u:***@" in str(refused.value)


def test_a_labelled_client_never_shows_its_url(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = f"{server.url}/services/T000/B000/{TOKEN}"
    server.queue(Reply(500, b"boom"), Reply(404, b"gone"))
    policy = RetryPolicy(attempts=1)
    with caplog.at_level(logging.DEBUG), client(policy, label="slack webhook") as http:
        with pytest.raises(RetriesExhausted) as failed:
            http.post(secret_url, json={})
        with pytest.raises(HttpStatusError) as refused:
            raise_for_status(http.post(secret_url, json={}), label="slack webhook")
    texts = (str(failed.value), str(refused.value), caplog.text)
    assert "POST slack webhook: HTTP 500 after 1 attempt: boom" in texts[0]
    assert "POST slack webhook: HTTP 404: gone" in texts[1]
    assert all(TOKEN not in t and "/services/" not in t for t in texts)


def test_retry_call_retries_any_call_on_its_transient_errors() -> None:
    calls: list[float] = []

    def flaky(timeout: float) -> str:
        calls.append(timeout)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "sent"

    policy = RetryPolicy(attempts=3, backoff=0)
    assert retry_call(flaky, policy=policy, what="SMTP", transient=(OSError,), timeout=4) == "sent"
    assert calls == [4, 4, 4]
    calls.clear()
    with pytest.raises(RetriesExhausted, match="SMTP: ConnectionResetError after 2 attempts"):
        retry_call(
            flaky, policy=RetryPolicy(attempts=2, backoff=0), what="SMTP", transient=(OSError,)
        )
    with pytest.raises(ValueError):  # not transient: through at once
        retry_call(lambda t: int("x"), policy=policy, what="parse", transient=(OSError,))


def test_retry_after_parsing_and_backoff() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 28 <= (parse_retry_after(soon) or 0) <= 30
    policy = RetryPolicy(backoff=1.0, max_backoff=30)
    assert policy.wait(0, 7.0) == 7
    waits = [policy.wait(n) for n in range(12) for _ in range(20)]
    assert all(0 <= w <= 30 for w in waits) and max(waits) > 15  # full jitter, capped
    assert all(policy.wait(2) <= 4 for _ in range(50))


def test_deadline_cuts_waits_and_request_timeouts() -> None:
    now = [100.0]
    slept: list[float] = []
    deadline = Deadline(10, clock=lambda: now[0], sleep=slept.append)
    now[0] = 108.0
    deadline.sleep(5)
    assert slept == [2.0]
    assert deadline.request_timeout(30) == 2.0
    now[0] = 111.0
    assert deadline.expired and deadline.request_timeout(30) == 0.05


def test_error_text_reads_the_usual_shapes() -> None:
    def text(body: bytes) -> str:
        return error_text(httpx.Response(400, content=body))

    assert (
        text(b'{"error": {"code": "Bad", "message": "no such dataset"}}') == "Bad: no such dataset"
    )
    assert text(b'{"error": "invalid_client", "error_description": "AADS: wrong\\r\\nTrace"}') == (
        "invalid_client: AADS: wrong"
    )
    assert text(b'{"detail": "Not found", "title": "x"}') == "Not found"
    assert text(b"") == "(empty body)"
    assert text(b"x" * 1000) == "x" * 300 + "..."


def test_mask_url_and_errors_pickle() -> None:
    masked = mask_url("https://u:pw@h/p?page=2&api_key=k&access_token=t&sig=s")
    assert masked == "https://u:***@h/p?page=2&api_key=***&access_token=***&sig=***"
    error = RetriesExhausted("GET x: HTTP 503", reason="HTTP 503", attempts=3, status=503)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.status, copy.attempts, str(copy)) == (
        RetriesExhausted,
        503,
        3,
        str(error),
    )
    refused = pickle.loads(pickle.dumps(HttpStatusError("no", status=404)))
    assert refused.status == 404 and not refused.retryable


def test_requests_through_a_proxy_from_the_environment_follow_the_policy(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)  # it answers as the proxy
    monkeypatch.setenv("http_proxy", server.url)
    server.queue(Reply(503, b"busy"))
    with client(FAST, timeout=2) as http:
        response = http.get("http://api.example.test/data")
    assert response.status_code == 200
    assert [s.path for s in server.seen] == ["/data", "/data"]
    assert server.seen[0].headers["Host"] == "api.example.test"
