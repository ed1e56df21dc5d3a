"""HTTP for the BI hooks: one retry policy, one deadline, one place that maps transport errors.

- :class:`Deadline` is the hook's ``timeout``: every wait (a retry's backoff, a
  poll interval, one request's own timeout) is cut to what is left of it.
- :func:`with_retries` runs one request, retrying on 429 (honouring
  ``Retry-After``), 500/502/503/504, timeouts and connection errors with
  exponential backoff and jitter; it raises :class:`BiUnavailable` when the
  retries are used up and :class:`BiDeadline` when the deadline comes first.
- :class:`HttpClient` wraps an ``httpx.Client`` with it (Power BI, Metabase,
  Superset, Looker, webhooks); :class:`RetryingSession` does the same for a
  ``requests.Session`` (Tableau, whose client library speaks ``requests``).

Errors name the endpoint as ``METHOD /path``: no query string, no host of a
webhook URL that may hold a token.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import requests

from stack.bi.exceptions import BiDeadline, BiError, BiUnavailable

log = logging.getLogger("stack.bi")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0
_R = TypeVar("_R")


class Deadline:
    """The moment a hook must be done by; ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._end = self._start + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the deadline if that comes first."""
        self._sleep(max(0.0, min(seconds, self.remaining())))

    def request_timeout(self, seconds: float) -> float:
        """One request's timeout: ``seconds``, cut to what is left (at least 50 ms)."""
        return max(0.05, min(seconds, self.remaining()))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before retrying a transient failure."""

    retries: int = 3
    backoff: float = 1.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds before retry number ``attempt`` (0-based): ``Retry-After`` if given, else
        ``backoff * 2**attempt`` with ±20 % jitter, at most :data:`MAX_BACKOFF`."""
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return asked
        base = min(self.backoff * (2**attempt), MAX_BACKOFF)
        return base * random.uniform(0.8, 1.2)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class _Transient:
    """Why one attempt failed in a retryable way."""

    reason: str
    status: int | None = None
    retry_after: str | None = None


def with_retries(
    send: Callable[[], _R],
    *,
    classify: Callable[[_R], _Transient | None],
    transient_errors: tuple[type[BaseException], ...],
    policy: RetryPolicy,
    deadline: Deadline,
    what: str,
    hook: str,
) -> _R:
    """Run ``send`` until it gives a non-transient answer, retrying transient failures.

    Args:
        send: makes one attempt and returns its response.
        classify: a :class:`_Transient` when the response should be retried, else ``None``.
        transient_errors: exceptions of ``send`` that are worth retrying.
        policy: retries and backoff.
        deadline: the hook's deadline; no wait goes past it.
        what: the endpoint, as ``METHOD /path``, for messages.
        hook: the hook's name, for messages.

    Returns:
        The first response that is not transient.

    Raises:
        BiUnavailable: still transient after ``policy.retries`` retries.
        BiDeadline: the deadline passed first.
    """
    attempt = 0
    while True:
        if deadline.expired:
            raise BiDeadline(f"{what}: out of time before an answer", hook=hook)
        try:
            response = send()
        except transient_errors as exc:
            failure = _Transient(f"{type(exc).__name__}")
        else:
            failure = classify(response)
            if failure is None:
                return response
        delay = policy.delay(attempt, failure.retry_after)
        if deadline.expired:
            raise BiDeadline(
                f"{what}: no answer within the hook's timeout ({failure.reason})", hook=hook
            )
        if attempt >= policy.retries:
            raise BiUnavailable(
                f"{what}: {failure.reason} after {attempt + 1} attempts",
                hook=hook,
                status=failure.status,
                hint="the tool is down or throttling; the run can retry the hook later",
            )
        if delay >= deadline.remaining():
            raise BiDeadline(
                f"{what}: {failure.reason}; the next retry (in {delay:.1f} s) "
                "would pass the hook's timeout",
                hook=hook,
                status=failure.status,
            )
        log.info("BI hook %r: %s: %s, retrying in %.2f s", hook, what, failure.reason, delay)
        deadline.sleep(delay)
        attempt += 1


def _classify_status(status: int, headers: Any) -> _Transient | None:
    if status in RETRY_STATUSES:
        return _Transient(f"HTTP {status}", status, headers.get("Retry-After"))
    return None


def endpoint(method: str, url: str) -> str:
    """``METHOD /path`` of a URL: what messages show (no host, no query)."""
    return f"{method.upper()} {urlsplit(url).path or '/'}"


class HttpClient:
    """An ``httpx.Client`` for one hook: base URL, retries, the hook's deadline.

    ``label`` replaces the URL in messages (for URLs that hold a token).
    Use as a context manager. Responses come back whatever their status (4xx
    included); only transient failures are retried, and those raise
    :class:`BiUnavailable` / :class:`BiDeadline` when they do not go away.
    """

    def __init__(
        self,
        base_url: str,
        *,
        hook: str,
        policy: RetryPolicy,
        deadline: Deadline,
        request_timeout: float,
        headers: dict[str, str] | None = None,
        label: str | None = None,
    ) -> None:
        self.hook = hook
        self.label = label
        self.policy = policy
        self.deadline = deadline
        self.request_timeout = request_timeout
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),  # "": requests take absolute URLs
            headers=headers or {},
            follow_redirects=False,
            verify=_tls_context(),
        )

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @property
    def headers(self) -> httpx.Headers:
        return self._client.headers

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request with retries; ``url`` is relative to the base URL (or absolute)."""
        what = self._what(method, url)

        def send() -> httpx.Response:
            timeout = self.deadline.request_timeout(self.request_timeout)
            return self._client.request(method, url, timeout=timeout, **kwargs)

        return with_retries(
            send,
            classify=lambda r: _classify_status(r.status_code, r.headers),
            transient_errors=(
                httpx.TimeoutException,
                httpx.NetworkError,
                httpx.RemoteProtocolError,
            ),
            policy=self.policy,
            deadline=self.deadline,
            what=what,
            hook=self.hook,
        )

    def _what(self, method: str, url: str) -> str:
        """The endpoint for messages: ``METHOD /path``, or ``METHOD <label>`` when the URL
        itself may be secret (a webhook's)."""
        if self.label:
            return f"{method.upper()} {self.label}"
        return endpoint(method, str(self._client.build_request(method, url).url))

    def expect(
        self, method: str, url: str, ok: Iterable[int] = (200,), **kwargs: Any
    ) -> httpx.Response:
        """Like :meth:`request`, raising :class:`BiError` unless the status is in ``ok``."""
        response = self.request(method, url, **kwargs)
        if response.status_code not in set(ok):
            raise BiError(
                f"{self._what(method, url)}: HTTP {response.status_code} {error_text(response)}",
                hook=self.hook,
                status=response.status_code,
            )
        return response


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context (system/certifi roots, ``SSL_CERT_FILE`` honoured) for every client:
    building one costs ~0.2 s, and a hook makes a client per API it talks to."""
    return httpx.create_ssl_context()


def error_text(response: httpx.Response, limit: int = 300) -> str:
    """The tool's own words for a failed response: the usual JSON error fields, else the text."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:limit]
    return json_error_text(data)[:limit]


def json_error_text(data: Any) -> str:
    """Pick the message out of the JSON error shapes the BI tools use."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # Power BI: {"error": {"code", "message"}}
            parts = [str(error.get("code") or ""), str(error.get("message") or "")]
            return ": ".join(p for p in parts if p)
        if isinstance(error, str):  # OAuth2: {"error", "error_description"}
            desc = data.get("error_description")
            return f"{error}: {desc.splitlines()[0]}" if isinstance(desc, str) else error
        for key in ("message", "msg", "errors"):
            if key in data:
                return str(data[key])
    return str(data)


class RetryingSession(requests.Session):
    """A ``requests.Session`` whose every request goes through :func:`with_retries`.

    For client libraries built on ``requests`` (``tableauserverclient``): pass a
    factory making one as their session factory. A request that stays transient
    raises :class:`BiUnavailable` through the library.
    """

    def __init__(
        self, *, hook: str, policy: RetryPolicy, deadline: Deadline, request_timeout: float
    ) -> None:
        super().__init__()
        self.hook = hook
        self.policy = policy
        self.deadline = deadline
        self.request_timeout = request_timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any):  # type: ignore[override]
        method_text = method.decode() if isinstance(method, bytes) else method
        url_text = url.decode() if isinstance(url, bytes) else url

        def send() -> requests.Response:
            kwargs["timeout"] = self.deadline.request_timeout(self.request_timeout)
            return super(RetryingSession, self).request(method, url, *args, **kwargs)

        return with_retries(
            send,
            classify=lambda r: _classify_status(r.status_code, r.headers),
            transient_errors=(requests.ConnectionError, requests.Timeout),
            policy=self.policy,
            deadline=self.deadline,
            what=endpoint(method_text, url_text),
            hook=self.hook,
        )
