"""The few Airbyte API calls the ``airbyte_server`` source makes, through the ``airbyte-api`` SDK.

Why a wrapper: the SDK raises its own errors (``SDKError`` with the HTTP status, a bare
``Exception`` when the token endpoint refuses the client credentials, httpx transport
errors); :func:`_translate` turns each into a ConnectorError that says what to fix, marked
retryable where waiting helps (429, 5xx, network), and never showing a secret. Job
payloads are read from the raw JSON, because SDK 1.0.1 rejects a whole response when a
job has a status its enum lacks.

With client credentials, the SDK caches the access token until shortly before it expires
and drops it on a 401; each call is then retried once, with a fresh token.

Every request, the token request included, goes through the shared HTTP policy
(:mod:`connectors.http`): the SDK is given a client from :func:`connectors.http.client`, and
its own retries are left off. Each request has a connect, read, write and pool timeout
(``request_timeout``, 30 s by default; each operation's ``timeout_ms`` too). A request that
times out, fails to connect, or is answered 429 / 5xx is retried with backoff (0.5 s
doubling, up to 10 s, full jitter) for up to twice the timeout, so one that times out is
tried about twice, not for minutes; then :class:`SourceUnavailable`, naming the server and
the request.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import airbyte_api
import httpx
from airbyte_api import api, errors, models

from connectors.errors import ConnectorError, RetriesExhausted, SourceUnavailable
from connectors.http import RetryPolicy, client

log = logging.getLogger(__name__)

T = TypeVar("T")

RUNNING = ("pending", "queued", "running", "incomplete")
"""Job statuses to keep polling (``incomplete``: an attempt failed, Airbyte retries)."""
ENDED = ("succeeded", "failed", "cancelled")

REQUEST_TIMEOUT = 30.0
"""Seconds a request may take to connect, and then between bytes of the answer (default)."""


def _policy(request_timeout: float) -> RetryPolicy:
    """Retries for up to twice the request timeout; the budget, not a count, ends them."""
    return RetryPolicy(attempts=20, backoff=0.5, max_backoff=10.0, budget=2 * request_timeout)


@dataclass(frozen=True)
class Auth:
    """Bearer token, or client id and secret (never shown in reprs)."""

    bearer: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    token_url: str = ""


@dataclass(frozen=True)
class Job:
    """A sync job as the API reports it."""

    id: int
    status: str
    rows: int | None = None
    bytes: int | None = None
    duration: str | None = None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Job:
        return cls(
            int(raw["jobId"]),
            str(raw["status"]),
            raw.get("rowsSynced"),
            raw.get("bytesSynced"),
            raw.get("duration"),
        )


class AlreadyRunning(Exception):
    """``POST /jobs`` answered 409: a job of the connection is running (Airbyte's message)."""


class AirbyteClient:
    """Airbyte API calls about one connection, errors translated."""

    def __init__(
        self,
        source: str,
        api_url: str,
        connection_id: str,
        auth: Auth,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.source = source
        self.api_url = api_url
        self.connection_id = connection_id
        self.auth = auth
        self.request_timeout = request_timeout
        if auth.bearer:
            security = models.Security(bearer_auth=auth.bearer)
        else:
            security = models.Security(
                client_credentials=models.SchemeClientCredentials(
                    client_id=auth.client_id or "",
                    client_secret=auth.client_secret or "",
                    token_url=auth.token_url,
                )
            )
        # our own client: the token request, which the SDK sends without a timeout_ms, gets
        # the client's timeout (the SDK leaves a client it was given open: closed here)
        secrets = [s for s in (auth.bearer, auth.client_secret) if s]
        http = client(
            _policy(request_timeout),
            timeout=request_timeout,
            follow_redirects=True,
            secrets=secrets,
        )
        weakref.finalize(self, http.close)
        timeout_ms = max(1, round(request_timeout * 1000))
        self.sdk = airbyte_api.AirbyteAPI(
            server_url=api_url, security=security, client=http, timeout_ms=timeout_ms
        )

    def connection(self) -> models.ConnectionResponse:
        """The connection (``GET /connections/{id}``)."""
        request = api.GetConnectionRequest(connection_id=self.connection_id)
        response = self._call(lambda: self.sdk.connections.get_connection(request=request))
        if response.connection_response is None:
            raise ConnectorError(
                f"Airbyte answered {response.status_code} without a connection",
                source=self.source,
                key="connection_id",
            )
        return response.connection_response

    def start_sync(self) -> Job:
        """Start a sync job (``POST /jobs``).

        Raises:
            AlreadyRunning: a job of this connection is running.
        """
        request = models.JobCreateRequest(
            connection_id=self.connection_id, job_type=models.JobTypeEnum.SYNC
        )
        return Job.of(self._raw(lambda: self.sdk.jobs.create_job(request=request)))

    def job(self, job_id: int) -> Job:
        """A job's status and counts (``GET /jobs/{id}``)."""
        request = api.GetJobRequest(job_id=job_id)
        return Job.of(self._raw(lambda: self.sdk.jobs.get_job(request=request)))

    def cancel(self, job_id: int) -> Job:
        """Cancel a job (``DELETE /jobs/{id}``)."""
        request = api.CancelJobRequest(job_id=job_id)
        return Job.of(self._raw(lambda: self.sdk.jobs.cancel_job(request=request)))

    def running_job(self) -> Job | None:
        """The connection's newest sync job that has not ended, if any (``GET /jobs``)."""
        request = api.ListJobsRequest(
            connection_id=self.connection_id,
            job_type=models.JobTypeEnum.SYNC,
            order_by="createdAt|DESC",
            limit=10,
        )
        listing = self._raw(lambda: self.sdk.jobs.list_jobs(request=request))
        jobs = [Job.of(raw) for raw in listing.get("data", [])]
        return next((job for job in jobs if job.status not in ENDED), None)

    def _raw(self, call: Callable[[], Any]) -> dict[str, Any]:
        """The response's JSON body, also when the SDK's models reject it."""

        def body() -> dict[str, Any]:
            try:
                return call().raw_response.json()
            except errors.ResponseValidationError as exc:
                return exc.raw_response.json()

        return self._call(body)

    def _call(self, call: Callable[[], T]) -> T:
        """Run ``call``; on a 401 with client credentials, once more with a new token."""
        with self._translate():
            try:
                return call()
            except errors.SDKError as exc:
                if exc.raw_response.status_code != 401 or self.auth.bearer:
                    raise
                log.info("Airbyte refused the access token; fetching a new one")
                return call()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except errors.ResponseValidationError as exc:
            raise ConnectorError(
                f"unexpected answer from the Airbyte API: {exc.message[:300]}", source=self.source
            ) from None
        except errors.SDKError as exc:
            raise self._http_error(exc.raw_response) from None
        except RetriesExhausted as exc:
            raise self._unavailable(exc) from None
        except (httpx.TransportError, errors.NoResponseError) as exc:
            raise SourceUnavailable(
                f"cannot reach the Airbyte API at {self.api_url}: {type(exc).__name__}",
                source=self.source,
                key="api_url",
                hint="check api_url and the network; retrying later may help",
            ) from None
        except Exception as exc:
            if "token endpoint" not in str(exc):
                raise
            raise ConnectorError(
                f"the token endpoint {self.auth.token_url} refused the client credentials ({exc})",
                source=self.source,
                key="client_secret",
                hint="check client_id / client_secret (an Airbyte application) and token_url",
            ) from None

    def _unavailable(self, exc: RetriesExhausted) -> SourceUnavailable:
        """The policy gave up: the last answer was 429/5xx, a timeout, or no connection."""
        request = f"{exc.method} {httpx.URL(exc.url).path}" if exc.method else "a request"
        if exc.status is not None:
            return SourceUnavailable(
                f"Airbyte API answered {exc.status} to {request}: {exc.detail} "
                f"({exc.attempts} attempts)",
                source=self.source,
                hint="Airbyte is busy or down; retry later",
            )
        if exc.reason.endswith("Timeout"):
            return SourceUnavailable(
                f"{request} to the Airbyte API at {self.api_url} timed out after "
                f"{self.request_timeout:g} s, retried ({exc.reason}, {exc.attempts} attempts)",
                source=self.source,
                key="request_timeout",
                hint="check that the Airbyte server is up and answering; retrying later may "
                "help; raise `request_timeout` if it is only slow",
            )
        return SourceUnavailable(
            f"cannot reach the Airbyte API at {self.api_url}: {exc.reason} "
            f"({exc.attempts} attempts)",
            source=self.source,
            key="api_url",
            hint="check api_url and the network; retrying later may help",
        )

    def _http_error(self, response: httpx.Response) -> Exception:
        status = response.status_code
        said = airbyte_message(response)
        text = f"Airbyte API answered {status} to {response.request.method} "
        text += f"{response.request.url.path}: {said}"
        if status == 409 and response.request.method == "POST":
            return AlreadyRunning(said)
        if status in (401, 403):
            return ConnectorError(
                text,
                source=self.source,
                key="client_secret" if self.auth.client_id else "bearer",
                hint="check the credentials and their access to the connection's workspace",
            )
        if status == 404:
            return ConnectorError(
                text,
                source=self.source,
                key="connection_id",
                hint="copy the id from the connection's URL",
            )
        if status == 429 or status >= 500:
            return SourceUnavailable(
                text, source=self.source, hint="Airbyte is busy or down; retry later"
            )
        return ConnectorError(text, source=self.source)


def airbyte_message(response: httpx.Response) -> str:
    """What Airbyte said in an error body (``detail``, ``message`` or ``title``), in short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "message", "title"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key][:300]
    return str(body)[:300]
