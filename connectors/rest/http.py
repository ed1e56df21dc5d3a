"""HTTP for the REST source: auth, pacing and error translation on the shared HTTP policy.

:class:`Credentials` holds the configured auth and lives as long as the source object, so an
OAuth2 token is fetched once and shared by every read until shortly before it expires (or
until the API answers 401, once). :class:`Session` is one read's machinery: an
``httpx.Client`` from :func:`connectors.http.client` (thread-safe, connection pooling) that
page fetches share from a thread pool; each attempt waits its turn in the source's pacer.

Retries are the policy's (:mod:`connectors.http`): timeouts, refused or dropped connections,
408, 425, 429, 500, 502, 503 and 504 are retried up to ``retries.max`` times, waiting
``Retry-After`` when the server says (a wait over ``retries.max_wait`` fails at once), else
backoff from ``retries.backoff`` with full jitter. What this module decides:

* 2xx/3xx (and statuses a caller accepts): returned;
* retries used up: :class:`~connectors.errors.SourceUnavailable` (retryable), naming the
  stream, the request and the last failure;
* 401 with OAuth2: the token is refreshed and the request sent again, once;
* every other 4xx (400, 401, 403, 404, 422, ...): ConnectorError at once, with a hint.

Messages name the stream, the method and URL, and the response's own message. Query
parameters named like secrets (``api_key``, ``token``, ``signature``...) are shown as
``***``, and every secret of the config, and the current OAuth2 token, is scrubbed from any
text shown (the policy masks the same in its log lines, and in httpx's).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from connectors.errors import ConnectorError, RetriesExhausted, SourceUnavailable
from connectors.http import Redactor, RetryPolicy, client, error_text, mask_url
from connectors.rest.config import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    OAuth2ClientCredentials,
    RestConfig,
)

log = logging.getLogger("connectors.rest")

_TOKEN_MARGIN = 60.0  # seconds before expiry when an OAuth2 token is replaced


def _now() -> float:
    """The clock tokens expire by (a function, so tests can move it)."""
    return time.monotonic()


class Credentials:
    """The configured auth, applied to each request; OAuth2 tokens cached and refreshed."""

    def __init__(self, config: RestConfig) -> None:
        self.auth = config.auth
        self.redact = Redactor(config.secrets())
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    @property
    def refreshable(self) -> bool:
        return isinstance(self.auth, OAuth2ClientCredentials)

    def apply(self, session: Session) -> tuple[dict[str, str], dict[str, str], str | None]:
        """Headers and query parameters to add, and the token used (to invalidate on 401)."""
        auth = self.auth
        if isinstance(auth, BearerAuth):
            return {"Authorization": f"Bearer {auth.token.get_secret_value()}"}, {}, None
        if isinstance(auth, ApiKeyAuth):
            pair = {auth.name: auth.value.get_secret_value()}
            return (pair, {}, None) if auth.in_ == "header" else ({}, pair, None)
        if isinstance(auth, BasicAuth):
            raw = f"{auth.username}:{auth.password.get_secret_value()}".encode()
            return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}, {}, None
        if isinstance(auth, OAuth2ClientCredentials):
            token = self._current_token(session, auth)
            return {"Authorization": f"Bearer {token}"}, {}, token
        return {}, {}, None

    def invalidate(self, token: str | None) -> None:
        """Forget ``token`` (refused with 401), unless another thread replaced it already."""
        with self._lock:
            if token is not None and self._token == token:
                self._token = None

    def _current_token(self, session: Session, auth: OAuth2ClientCredentials) -> str:
        with self._lock:  # one fetch at a time; the others wait for its token
            if self._token is None or _now() >= self._expires:
                self._token, self._expires = self._fetch_token(session, auth)
            return self._token

    def _fetch_token(self, session: Session, auth: OAuth2ClientCredentials) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        headers = {"Accept": "application/json"}
        secret = auth.client_secret.get_secret_value()
        if auth.client_auth == "basic":
            raw = f"{auth.client_id}:{secret}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(raw).decode()}"
        else:
            form |= {"client_id": auth.client_id, "client_secret": secret}
        started = _now()
        response = session.send(
            None, "POST", auth.token_url, data=form, headers=headers, authenticate=False
        )
        try:
            body = orjson.loads(response.content)
            token = body["access_token"]
            expires_in = float(body.get("expires_in") or 0)
            if not isinstance(token, str) or not token:
                raise TypeError(token)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ConnectorError(
                f"OAuth2 token endpoint {mask_url(auth.token_url)} answered without an "
                f"access_token: {error_text(response, self.redact)}",
                source=session.source,
                key="auth.token_url",
                hint="check `token_url`: it must answer a client_credentials grant with JSON",
            ) from None
        self.redact.add(token)
        if expires_in <= 0:
            return token, float("inf")
        return token, started + expires_in - min(_TOKEN_MARGIN, expires_in / 10)


class _Pacer:
    """Bounds concurrent requests and, optionally, requests per second, for one source."""

    def __init__(self, max_concurrency: int, per_second: float | None) -> None:
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self._interval = 1.0 / per_second if per_second else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait_turn(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class _PacedTransport(httpx.BaseTransport):
    """Each attempt the policy makes waits its turn in the source's pacer and holds a slot
    while it is sent and its answer read."""

    def __init__(self, inner: httpx.BaseTransport, pacer: _Pacer) -> None:
        self._inner = inner
        self._pacer = pacer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._pacer.wait_turn()
        with self._pacer.slots:
            response = self._inner.handle_request(request)
            try:
                response.read()
            except BaseException:
                response.close()
                raise
            return response

    def close(self) -> None:
        self._inner.close()


class Session:
    """One read's HTTP client: thread-safe; close it (or use it as a context manager)."""

    def __init__(
        self, source: str, config: RestConfig, credentials: Credentials, pacer: _Pacer
    ) -> None:
        self.source = source
        self.config = config
        self.credentials = credentials
        self.redact = credentials.redact
        retries = config.retries
        policy = RetryPolicy(
            attempts=retries.max + 1,
            backoff=retries.backoff,
            max_backoff=retries.max_wait,
            max_retry_after=retries.max_wait,
        )
        self.client = client(
            policy,
            timeout=config.timeout,
            headers={"Accept": "application/json", **config.headers},
            secrets=config.secrets(),
            follow_redirects=True,
            max_connections=config.rate_limit.max_concurrency + 1,
            wrap=lambda network: _PacedTransport(network, pacer),
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def send(
        self,
        stream: str | None,
        method: str,
        url: str | httpx.URL,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Send a request with auth, by the retry policy; return the successful response.

        ``params`` are merged into the query string already in ``url``; a response whose
        status is in ``accept`` is returned as if successful.

        Raises:
            ConnectorError: a 4xx that retrying cannot fix, an invalid URL.
            SourceUnavailable: retries exhausted, or the server asks to wait too long.
        """
        refreshed = False
        while True:
            token = None
            extra_headers: dict[str, str] = dict(headers or {})
            query: dict[str, Any] = dict(params or {})
            if authenticate:
                auth_headers, auth_params, token = self.credentials.apply(self)
                extra_headers |= auth_headers
                query |= auth_params
            request_url = httpx.URL(url)
            if query:
                request_url = request_url.copy_merge_params(
                    {k: _param(v) for k, v in query.items()}
                )
            response = self._attempt(stream, method, request_url, data, extra_headers)
            if response.status_code < 400 or response.status_code in accept:
                return response
            if response.status_code == 401 and token is not None and not refreshed:
                self.credentials.invalidate(token)
                refreshed = True
                continue
            raise self._refused(stream, method, request_url, response)

    def _attempt(
        self,
        stream: str | None,
        method: str,
        url: httpx.URL,
        data: Mapping[str, str] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        """The final response (success or refusal) after the policy's retries."""
        try:
            return self.client.request(method, url, data=data, headers=headers)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConnectorError(
                f"{method} {mask_url(url)}: {self.redact(str(exc))}",
                source=self.source,
                stream=stream,
                hint="check `base_url` and the stream's `path`",
            ) from None
        except RetriesExhausted as exc:
            last = f"{exc.reason}: {self.redact(exc.detail)}" if exc.detail else exc.reason
            raise SourceUnavailable(
                f"{method} {mask_url(url)} failed after {exc.attempts} attempts; last: {last}",
                source=self.source,
                stream=stream,
                hint="the API is down, overloaded or slow, or asks to wait longer than "
                "`retries.max_wait`; the run can be retried later (or raise `retries.max`, "
                "`retries.max_wait` or `timeout`)",
            ) from None

    def _refused(
        self, stream: str | None, method: str, url: httpx.URL, response: httpx.Response
    ) -> ConnectorError:
        status = response.status_code
        hints = {
            401: "check the credentials in `auth:` (expired or revoked?)",
            403: "the credentials lack permission for this endpoint",
            404: "check `base_url` and the stream's `path`",
            405: "the endpoint does not accept GET: check the stream's `path`",
        }
        hint = hints.get(status, "check the stream's `params`, `path` and pagination settings")
        return ConnectorError(
            f"{method} {mask_url(url)} failed with HTTP {status}: "
            f"{error_text(response, self.redact)}",
            source=self.source,
            stream=stream,
            hint=hint,
        )


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pacer_for(config: RestConfig) -> _Pacer:
    """The request limiter one source object shares across its reads."""
    return _Pacer(config.rate_limit.max_concurrency, config.rate_limit.requests_per_second)
