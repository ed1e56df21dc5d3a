"""The one HTTP policy of mdstack: every outbound HTTP request is sent through it.

Sources (REST, the Airbyte API), BI refresh hooks and alert channels make their clients
with :func:`client`: an ``httpx.Client`` whose transport is a :class:`RetryTransport`. So
every request, also one sent by a vendor SDK handed such a client, is treated alike:

* **Timeouts, always.** Connect, read, write and pool timeouts are set on every request
  (``timeout``, 30 s by default); a phase a caller left open gets it. Within a time budget,
  each attempt's timeouts are cut to what is left of it.
* **What is retried.** Refused, dropped or reset connections, timeouts, and the statuses of
  :data:`RETRY_STATUSES`: 429 (rate limited), 502/503/504 (a gateway or the server says
  "not now"), 500 (in practice an overloaded or restarting backend far more often than a
  request that can never work), 408 (the server dropped an idle request: RFC 9110 says it
  may be resent) and 425 (Too Early: RFC 8470 says to retry). Any other status is the
  caller's answer at once; :func:`raise_for_status` makes it an
  :class:`~connectors.errors.HttpStatusError` with the server's words.
* **How long to wait.** ``Retry-After`` when the server sends one (seconds or an HTTP
  date). If it asks for more than ``max_retry_after``, the request fails at once, retryable:
  waiting less than a rate limiter asks is pointless, and the run can come back later.
  Otherwise exponential backoff with full jitter, ``uniform(0, min(max_backoff,
  backoff * 2**n))``, which spreads out clients that failed together.
* **How long in all.** At most ``attempts`` tries, within ``budget`` seconds per request
  and within a caller's :class:`Deadline` shared by many requests (a BI hook's timeout); a
  wait that would pass either is not started.
* **Errors.** Giving up raises :class:`~connectors.errors.RetriesExhausted` (a retryable
  :class:`~connectors.errors.SourceUnavailable`), or its subclass
  :class:`~connectors.errors.DeadlineExceeded` when time ran out, with the last status, the
  request (``METHOD URL``) and the server's own words, trimmed.
* **No secret in an error or a log line.** The values of secret-looking headers
  (``Authorization``, ``X-Api-Key``, cookies, any name with key/token/secret/auth...), of
  secret-looking query parameters, and URL passwords are masked (``***``) in every message
  written here, the server's echoed words included; httpx's own request log lines get the
  same URL masking. A caller adds its other secrets (``secrets=``) and a ``label`` that
  stands for a URL which is a secret as a whole (a Slack webhook).
* **TLS.** Always verified, against certifi's CAs or a CA bundle file (``ca_bundle``);
  each context is built once (loading a CA store takes ~150 ms).

Why a transport: the retries sit below ``httpx.Client``, so base URLs, default headers,
cookies and redirects keep working as httpx documents them, and a client given to an SDK
follows the policy too. :func:`retry_call` is the same loop for any other call (SMTP, a
``requests`` session inside a vendor library).

What is masked lives in :mod:`connectors._http_redact`, how a failed answer is read
(its words, ``Retry-After``) in :mod:`connectors._http_answers`; both are re-exported here.

Why no tenacity or stamina: the loop is some forty lines, and the parts that need care
(judging a *response* by status and ``Retry-After``, keeping its body for the error,
cutting each attempt's timeout to a deadline the caller shares) would be callbacks around
either library. That is not worth another dependency in the bottom layer.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import ssl
import time
import urllib.request
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx

from connectors._http_answers import ERROR_TEXT_LIMIT, Answer, error_text, parse_retry_after
from connectors._http_redact import MASK, Redactor, label_url, mask_url
from connectors.errors import DeadlineExceeded, HttpStatusError, RetriesExhausted

__all__ = [
    "DEFAULT_TIMEOUT",
    "MASK",
    "RETRY_STATUSES",
    "TRANSIENT_ERRORS",
    "Answer",
    "Deadline",
    "Failure",
    "Redactor",
    "RetryPolicy",
    "RetryTransport",
    "client",
    "error_text",
    "judge",
    "mask_url",
    "parse_retry_after",
    "raise_for_status",
    "retry_call",
    "tls_context",
    "transport",
]

log = logging.getLogger("connectors.http")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses worth another attempt (the module docstring says why each)."""

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
"""httpx errors worth another attempt: timeouts, refused/reset connections, cut answers."""

DEFAULT_TIMEOUT = 30.0
"""Seconds to connect, and then between bytes of the answer, unless a caller says."""

_MIN_TIMEOUT = 0.05
_R = TypeVar("_R")


# -- the policy -----------------------------------------------------------------------------


class Deadline:
    """A moment to be done by, shared by many requests and waits (a BI hook's timeout).

    ``clock`` and ``sleep`` are injectable so a caller's tests can run it without waiting.
    """

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
        return max(_MIN_TIMEOUT, min(seconds, self.remaining()))


@dataclass(frozen=True)
class RetryPolicy:
    """How often, how long apart and for how long a failing request is tried.

    Args:
        attempts: tries in all (1: no retry).
        backoff: the first retry waits up to this long; each later one up to twice the last.
        max_backoff: the most one backoff wait may be.
        max_retry_after: the longest ``Retry-After`` honoured; a longer one fails at once.
        budget: seconds for one request, all attempts and waits included (None: no limit
            but ``attempts``).
        statuses: the statuses retried.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 60.0
    budget: float | None = None
    statuses: frozenset[int] = RETRY_STATUSES

    def wait(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number ``retry`` (0-based): ``Retry-After`` when given, else
        full jitter, ``uniform(0, min(max_backoff, backoff * 2**retry))``."""
        if retry_after is not None:
            return retry_after
        return random.uniform(0.0, min(self.max_backoff, self.backoff * 2.0 ** min(retry, 60)))


@dataclass(frozen=True)
class Failure:
    """Why one attempt failed in a way worth retrying.

    ``reason`` is short (``HTTP 503``, ``ReadTimeout``), ``detail`` the server's words or the
    error's text, ``retry_after`` what the server asked for.
    """

    reason: str
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None


def judge(
    response: Answer, policy: RetryPolicy, redact: Callable[[str], str] = str
) -> Failure | None:
    """A :class:`Failure` when ``response`` has a retried status, else None (it is final)."""
    status = response.status_code
    if status not in policy.statuses:
        return None
    wait = parse_retry_after(response.headers.get("retry-after"))
    return Failure(f"HTTP {status}", status, error_text(response, redact), wait)


def retry_call(
    attempt: Callable[[float], _R],
    *,
    policy: RetryPolicy,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: Deadline | None = None,
    transient: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
    check: Callable[[_R], Failure | None] = lambda _: None,
    redact: Callable[[str], str] = str,
    request: tuple[str, str] = ("", ""),
) -> _R:
    """Call ``attempt`` until it gives a final answer, retrying transient failures.

    Args:
        attempt: makes one try, given the seconds it may take (``timeout`` cut to the time
            left); returns the answer or raises.
        policy: how often and how long apart.
        what: the call in messages (``POST https://host/path``), secrets already masked.
        timeout: seconds one try may take.
        deadline: a deadline shared with the caller's other calls and waits.
        transient: exceptions of ``attempt`` worth another try.
        check: a :class:`Failure` when an answer is worth another try, else None.
        redact: masks secrets in the texts of errors and log lines.
        request: the HTTP method and (masked) URL, for the error's fields.

    Returns:
        The first final answer.

    Raises:
        RetriesExhausted: every try failed, or the server asked to wait too long.
        DeadlineExceeded: the budget or ``deadline`` ran out first.
    """
    clocks = [d for d in (deadline, _budget(policy)) if d is not None]
    sleep = deadline.sleep if deadline is not None else time.sleep
    tries = 0
    failure = Failure("no time left")
    while True:
        left = min((d.remaining() for d in clocks), default=math.inf)
        if left <= 0:
            note = "; out of time" if tries else " for a first attempt"
            raise _gave_up(DeadlineExceeded, what, failure, tries, request, note)
        tries += 1
        limit = max(_MIN_TIMEOUT, min(timeout, left))
        try:
            answer = attempt(limit)
        except transient as exc:
            failure = Failure(type(exc).__name__, detail=_describe(exc, limit, redact))
        else:
            found = check(answer)
            if found is None:
                return answer
            failure = found
        if tries >= policy.attempts:
            raise _gave_up(RetriesExhausted, what, failure, tries, request)
        asked = failure.retry_after
        if asked is not None and asked > policy.max_retry_after:
            cap = policy.max_retry_after
            note = f"; the server asks to retry in {asked:.0f} s, more than {cap:g} s"
            raise _gave_up(RetriesExhausted, what, failure, tries, request, note)
        wait = policy.wait(tries - 1, asked)
        left = min((d.remaining() for d in clocks), default=math.inf)
        if wait >= left:
            note = f"; out of time (the next try would start in {wait:.1f} s)"
            raise _gave_up(DeadlineExceeded, what, failure, tries, request, note)
        log.info(
            "%s: %s; retry %d/%d in %.2f s", what, failure.reason, tries, policy.attempts - 1, wait
        )
        sleep(wait)


def _budget(policy: RetryPolicy) -> Deadline | None:
    return Deadline(policy.budget) if policy.budget is not None else None


def _describe(exc: BaseException, limit: float, redact: Callable[[str], str]) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"no answer within {limit:g} s"
    return " ".join(redact(str(exc)).split())[:ERROR_TEXT_LIMIT]


def _gave_up(
    kind: type[RetriesExhausted],
    what: str,
    failure: Failure,
    tries: int,
    request: tuple[str, str],
    note: str = "",
) -> RetriesExhausted:
    plural = "s" if tries != 1 else ""
    tried = f" after {tries} attempt{plural}" if tries else ""
    text = f"{what}: {failure.reason}{tried}{note}"
    if failure.detail:
        text += f": {failure.detail}"
    return kind(
        text,
        reason=failure.reason,
        attempts=tries,
        status=failure.status,
        detail=failure.detail,
        method=request[0],
        url=request[1],
        hint="the server is down, overloaded or slow; retrying later may help",
    )


# -- httpx -------------------------------------------------------------------------------


@functools.cache
def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context: certifi's CAs (``SSL_CERT_FILE`` honoured), or ``ca_bundle``."""
    if ca_bundle is None:
        return httpx.create_ssl_context()
    return ssl.create_default_context(cafile=ca_bundle)


def transport(
    ca_bundle: str | None = None, max_connections: int = 10, proxy: str | None = None
) -> httpx.HTTPTransport:
    """The network transport under :class:`RetryTransport` (pooled, TLS verified)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.HTTPTransport(verify=tls_context(ca_bundle), limits=limits, proxy=proxy)


def _environment_proxies() -> dict[str, str]:
    """The proxies httpx would mount from the environment (``HTTPS_PROXY``...), by URL pattern.

    httpx sends a request to such a proxy through a transport of its own, past the one a
    client is given; :func:`client` mounts its own retrying transports on the same patterns.
    Hosts in ``NO_PROXY`` are left to httpx, which sends them through the client's transport.
    """
    found = urllib.request.getproxies()
    if "*" in (host.strip() for host in found.get("no", "").split(",")):
        return {}
    proxies = {}
    for scheme in ("http", "https", "all"):
        if proxy := found.get(scheme):
            proxies[f"{scheme}://"] = proxy if "://" in proxy else f"http://{proxy}"
    return proxies


class RetryTransport(httpx.BaseTransport):
    """An httpx transport that sends each request by the policy (see the module docstring).

    A final answer (2xx, 3xx, a 4xx...) is returned as is; retried statuses and transport
    errors that do not go away raise :class:`RetriesExhausted`/:class:`DeadlineExceeded`.

    Args:
        policy: retries and budget.
        timeout: seconds per phase of one attempt, for phases a request leaves open.
        deadline: shared with the caller's other requests and waits.
        secrets: values to mask in messages besides those the request carries.
        label: shown instead of the URL, for URLs that are secret as a whole.
        inner: the transport that does the sending (default: :func:`transport`).
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: Deadline | None = None,
        secrets: Iterable[str] = (),
        label: str | None = None,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.deadline = deadline
        self.redact = Redactor(secrets)
        self.label = label
        self._inner = inner or transport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        redact = self.redact.for_request(request)
        if self.label:
            label_url(request.url, self.label)
        shown = self.label or mask_url(request.url)
        what = f"{request.method} {shown}"
        asked = {k: v for k, v in (request.extensions.get("timeout") or {}).items() if v}
        timeout = max(asked.values(), default=self.timeout)

        def attempt(limit: float) -> httpx.Response:
            request.extensions["timeout"] = {
                phase: min(asked.get(phase, self.timeout), limit)
                for phase in ("connect", "read", "write", "pool")
            }
            response = self._inner.handle_request(request)
            if response.status_code in self.policy.statuses:
                try:  # keep the body for the error, give the connection back
                    response.read()
                finally:
                    response.close()
            return response

        return retry_call(
            attempt,
            policy=self.policy,
            what=what,
            timeout=timeout,
            deadline=self.deadline,
            check=lambda r: judge(r, self.policy, redact),
            redact=redact,
            request=(request.method, shown),
        )

    def close(self) -> None:
        self._inner.close()


def client(
    policy: RetryPolicy | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    base_url: str = "",
    headers: Mapping[str, str] | None = None,
    deadline: Deadline | None = None,
    secrets: Iterable[str] = (),
    label: str | None = None,
    ca_bundle: str | None = None,
    follow_redirects: bool = False,
    max_connections: int = 10,
    wrap: Callable[[httpx.BaseTransport], httpx.BaseTransport] | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` that sends every request by the policy; close it after use.

    Proxies from the environment are honoured, as by httpx, and their requests follow the
    policy too.

    Args:
        policy: retries and budget (default :class:`RetryPolicy`).
        timeout: seconds to connect, and then between bytes of the answer.
        base_url: prefix of relative URLs.
        headers: sent with every request.
        deadline: shared with the caller's other requests and waits.
        secrets: values to mask in messages besides those the requests carry.
        label: shown instead of URLs in messages and logs (a webhook's URL is a secret).
        ca_bundle: a CA file to verify TLS against, instead of certifi's.
        follow_redirects: as httpx's.
        max_connections: the size of the connection pool.
        wrap: wraps each network transport, under the retries: what it adds (pacing, a
            test double) applies to every attempt.
    """

    secrets = tuple(secrets)  # read once per transport

    def retrying(proxy: str | None) -> RetryTransport:
        network: httpx.BaseTransport = transport(ca_bundle, max_connections, proxy)
        return RetryTransport(
            policy,
            timeout=timeout,
            deadline=deadline,
            secrets=secrets,
            label=label,
            inner=wrap(network) if wrap else network,
        )

    return httpx.Client(
        base_url=base_url,
        headers=dict(headers or {}),
        timeout=timeout,
        follow_redirects=follow_redirects,
        transport=retrying(None),
        mounts={pattern: retrying(proxy) for pattern, proxy in _environment_proxies().items()},
        verify=tls_context(ca_bundle),
    )


def raise_for_status(
    response: httpx.Response,
    *,
    ok: Container[int] | None = None,
    label: str | None = None,
    secrets: Iterable[str] = (),
) -> httpx.Response:
    """``response`` if its status is ``ok`` (default: any 2xx), else raise.

    Raises:
        HttpStatusError: naming the request (``label`` for a secret URL) and the server's
            own words, secrets masked.
    """
    status = response.status_code
    if (status in ok) if ok is not None else 200 <= status < 300:
        return response
    response.read()
    request = response.request
    redact = Redactor(secrets).for_request(request)
    what = f"{request.method} {label or mask_url(request.url)}"
    raise HttpStatusError(f"{what}: HTTP {status}: {error_text(response, redact)}", status=status)
