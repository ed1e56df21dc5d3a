"""HTTP for the REST source: a pooled httpx client, auth, retries, pacing, and error translation.

:class:`Credentials` holds the configured auth and lives as long as the source object, so an
OAuth2 token is fetched once and shared by every read until shortly before it expires (or
until the API answers 401, once). :class:`Session` is one read's machinery: an
``httpx.Client`` (thread-safe, connection pooling) that page fetches share from a thread pool.

What happens to a response or a transport error is decided here and nowhere else:

* 2xx/3xx: returned;
* 408, 425, 429, and 5xx but 501/505; timeouts, refused or dropped connections: retried up to
  ``retries.max`` times, waiting ``Retry-After`` (seconds or an HTTP date) when the server
  says, else ``backoff * 2**n`` times a jitter in [0.5, 1); then
  :class:`~connectors.errors.SourceUnavailable` (retryable);
* 401 with OAuth2: the token is refreshed and the request retried, once;
* every other 4xx (400, 401, 403, 404, 422, ...): ConnectorError at once.

Messages name the stream, the method and URL, and the response's own message (its JSON
``message``/``error``/``detail`` or the first 200 characters of the body). Query parameters
named like secrets (``api_key``, ``token``, ``signature``...) are shown as ``***``, and every
secret of the config, and the current OAuth2 token, is scrubbed from any text shown. A filter
on the ``httpx`` logger masks the same query values in the request lines httpx logs.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from connectors.errors import ConnectorError, SourceUnavailable
from connectors.rest.config import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    OAuth2ClientCredentials,
    RestConfig,
)

log = logging.getLogger("connectors.rest")

_SECRET_PARAM = re.compile(
    r"key|token|secret|passw|pwd|signature|^sig$|auth|credential|session", re.IGNORECASE
)
_MESSAGE_KEYS = ("message", "error_description", "error", "detail", "errors", "title")
_TOKEN_MARGIN = 60.0  # seconds before expiry when an OAuth2 token is replaced


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs), built once: loading them takes ~150 ms."""
    return httpx.create_ssl_context()


def _now() -> float:
    """The clock tokens expire by (a function, so tests can move it)."""
    return time.monotonic()


def mask_url(url: httpx.URL | str) -> str:
    """``url`` with secret-looking query values and any password shown as ``***``."""
    url = httpx.URL(url)
    if url.password:
        url = url.copy_with(username=url.username, password="***")
    if url.query:
        params = [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in url.params.multi_items()]
        url = url.copy_with(params=params)
    return str(url).replace("%2A%2A%2A", "***")


class Redactor:
    """Replaces known secret values in text; new values (fresh tokens) can be added."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def add(self, secret: str) -> None:
        if len(secret) >= 4 and secret not in self._secrets:  # replaced whole: thread-safe
            self._secrets = tuple(sorted({*self._secrets, secret}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def response_message(response: httpx.Response, redact: Redactor) -> str:
    """The response's own explanation: a JSON message field, else the body's first 200 chars."""
    text = ""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        for key in _MESSAGE_KEYS:
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail") or value
            if value:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                break
    if not text:
        text = response.content[:400].decode("utf-8", "replace")
    text = " ".join(redact(text).split())
    return text[:200] + ("..." if len(text) > 200 else "") if text else "(empty body)"


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (from seconds or an HTTP date); None if absent or invalid."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


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
                f"access_token: {response_message(response, self.redact)}",
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


@dataclass
class _Failure:
    """Why an attempt failed in a way worth retrying."""

    what: str
    wait: float | None = None


class Session:
    """One read's HTTP client: thread-safe; close it (or use it as a context manager)."""

    def __init__(
        self, source: str, config: RestConfig, credentials: Credentials, pacer: _Pacer
    ) -> None:
        self.source = source
        self.config = config
        self.credentials = credentials
        self.redact = credentials.redact
        self._pacer = pacer
        size = config.rate_limit.max_concurrency
        self.client = httpx.Client(
            verify=_ssl_context(),
            timeout=config.timeout,
            headers={"Accept": "application/json", **config.headers},
            limits=httpx.Limits(max_connections=size + 1, max_keepalive_connections=size + 1),
            follow_redirects=True,
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
        """Send a request with auth and retries; return the successful response.

        ``params`` are merged into the query string already in ``url``; a response whose
        status is in ``accept`` is returned as if successful.

        Raises:
            ConnectorError: a 4xx that retrying cannot fix, an invalid URL.
            SourceUnavailable: retries exhausted, or the server asks to wait too long.
        """
        retries = self.config.retries
        refreshed = False
        attempt = 0
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
            failure = self._attempt(stream, method, request_url, data, extra_headers)
            if isinstance(failure, httpx.Response):
                response = failure
                if response.status_code < 400 or response.status_code in accept:
                    return response
                if response.status_code == 401 and token is not None and not refreshed:
                    self.credentials.invalidate(token)
                    refreshed = True
                    continue
                raise self._refused(stream, method, request_url, response)
            if attempt >= retries.max:
                raise SourceUnavailable(
                    f"{method} {mask_url(request_url)} failed after {attempt + 1} attempts; "
                    f"last: {failure.what}",
                    source=self.source,
                    stream=stream,
                    hint="the API is down, overloaded or slow; the run can be retried later "
                    "(or raise `retries.max` / `timeout`)",
                )
            delay = retries.backoff * 2**attempt * random.uniform(0.5, 1.0)
            if failure.wait is not None:
                if failure.wait > retries.max_wait:
                    raise SourceUnavailable(
                        f"{method} {mask_url(request_url)}: {failure.what}, asking to retry "
                        f"after {failure.wait:.0f} s (more than retries.max_wait)",
                        source=self.source,
                        stream=stream,
                        hint="retry the run later, or raise `retries.max_wait`",
                    )
                delay = failure.wait
            attempt += 1
            log.info(
                "%s %s: %s; retry %d/%d in %.2f s",
                method,
                mask_url(request_url),
                failure.what,
                attempt,
                retries.max,
                delay,
            )
            time.sleep(min(delay, retries.max_wait))

    def _attempt(
        self,
        stream: str | None,
        method: str,
        url: httpx.URL,
        data: Mapping[str, str] | None,
        headers: dict[str, str],
    ) -> httpx.Response | _Failure:
        """One try: the response if it is final (success or refusal), else why to retry."""
        self._pacer.wait_turn()
        try:
            with self._pacer.slots:
                response = self.client.request(method, url, data=data, headers=headers)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConnectorError(
                f"{method} {mask_url(url)}: {self.redact(str(exc))}",
                source=self.source,
                stream=stream,
                hint="check `base_url` and the stream's `path`",
            ) from None
        except httpx.TimeoutException as exc:
            return _Failure(f"{type(exc).__name__} after {self.config.timeout:g} s")
        except httpx.TransportError as exc:
            return _Failure(f"{type(exc).__name__}: {self.redact(str(exc)) or 'no detail'}")
        status = response.status_code
        if status in (408, 425, 429) or (status >= 500 and status not in (501, 505)):
            message = response_message(response, self.redact)
            return _Failure(f"HTTP {status}: {message}", retry_after(response))
        return response

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
            f"{response_message(response, self.redact)}",
            source=self.source,
            stream=stream,
            hint=hint,
        )


class _MaskUrls(logging.Filter):
    """Masks secret query values in the URLs httpx logs (``HTTP Request: GET <url> ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            record.args = tuple(mask_url(a) if isinstance(a, httpx.URL) else a for a in args)
        return True


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _MaskUrls) for f in _httpx_log.filters):
    _httpx_log.addFilter(_MaskUrls())


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pacer_for(config: RestConfig) -> _Pacer:
    """The request limiter one source object shares across its reads."""
    return _Pacer(config.rate_limit.max_concurrency, config.rate_limit.requests_per_second)
