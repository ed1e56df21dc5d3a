"""An Airbyte server (Cloud or self-hosted OSS) as a source: mdstack runs its connection's syncs.

Airbyte's destination loads the tables; mdstack triggers the sync job, waits for it, and
then runs dbt on what it loaded. Every stream of the connection is declared
``loaded_externally``: ``read`` yields an :class:`ExternalLoad` with the job's counts and a
checkpoint (``{"job_id": ...}``), never records. An Airbyte job syncs every stream of the
connection, so the streams of a run share one job (:class:`_SharedJobs`); a run that finds
a job already running (409) attaches to it (``on_running: wait``) or fails (``fail``).

Config (:class:`AirbyteServerConfig`): ``connection_id``; ``api_url`` (Airbyte Cloud by default; a
self-hosted server's is ``http://HOST:8000/api/public/v1``); auth by ``bearer`` token or
``client_id`` + ``client_secret`` (an Airbyte application; the token comes from
``token_url``, by default ``<api_url>/applications/token``); ``timeout`` and
``poll_interval`` in seconds; ``request_timeout`` (seconds, 30 by default): how long one API
request may take to connect, and then to answer; ``on_running``.

A request that times out is retried for up to twice ``request_timeout``, then fails the
call with a retryable :class:`SourceUnavailable` naming the server and the request. A poll
that fails so is retried at the next poll; after :data:`_POLL_TRIES` failed polls in a row
the read gives up (retryable). A job still running at ``timeout``, when the polls give up,
or when the read is interrupted, is cancelled if this source started it (a job it attached
to belongs to someone else and is left alone).
``failed`` is retryable (Airbyte's public API reports no failure reason: see the job's
logs in Airbyte); ``cancelled`` is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    StrictFloat,
    field_validator,
    model_validator,
)

from connectors.airbyte.api import (
    ENDED,
    REQUEST_TIMEOUT,
    AirbyteClient,
    AlreadyRunning,
    Auth,
    Job,
)
from connectors.base import (
    BaseSource,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    ExternalLoad,
    Message,
    State,
    StreamSpec,
    SyncMode,
)
from connectors.config import ConfigProblem, SourceConfig
from connectors.errors import ConnectorError, MdstackError, SourceUnavailable

log = logging.getLogger(__name__)

CLOUD_API = "https://api.airbyte.com/v1"

_POLL_TRIES = 3
"""Polls failing in a row (each after its own retries) before the read gives up on the job."""

_MODES: dict[str, SyncMode] = {
    "full_refresh_overwrite": "full_refresh_overwrite",
    "full_refresh_overwrite_deduped": "full_refresh_overwrite",
    "full_refresh_append": "full_refresh_append",
    "full_refresh_update": "full_refresh_append",
    "full_refresh_soft_delete": "full_refresh_append",
    "incremental_append": "incremental_append",
    "incremental_deduped_history": "incremental_deduped",
    "incremental_update": "incremental_append",
    "incremental_soft_delete": "incremental_append",
}
"""Airbyte's sync modes, by what they mean for a table: the destination's mode (stack.yml's
``sync``) must match, since a full refresh makes dbt rebuild its models in full."""


_Text = Annotated[str, Field(min_length=1)]
_Secret = Annotated[SecretStr, Field(min_length=1)]
_Seconds = Annotated[StrictFloat, Field(gt=0)]


class AirbyteServerConfig(SourceConfig):
    """The ``config:`` of a ``connector: airbyte_server`` source (see the module docstring)."""

    model_config = ConfigDict(title="Airbyte server connection")

    connection_id: _Text
    api_url: _Text = CLOUD_API
    bearer: _Secret | None = Field(None, description="access token")
    client_id: _Text | None = None
    client_secret: _Secret | None = None
    token_url: _Text | None = Field(None, description="default: <api_url>/applications/token")
    timeout: _Seconds = Field(
        21600, description="seconds the job may run; it is cancelled then (if started here)"
    )
    poll_interval: _Seconds = Field(10, description="seconds between polls of the job")
    request_timeout: _Seconds = Field(
        REQUEST_TIMEOUT, description="seconds one API request may take to connect, then to answer"
    )
    on_running: Literal["wait", "fail"] = Field(
        "wait", description="when a sync is already running: wait for it, or fail"
    )

    @field_validator("api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_auth(self) -> AirbyteServerConfig:
        client = [k for k in ("client_id", "client_secret") if getattr(self, k) is not None]
        if (self.bearer is not None) == bool(client) or len(client) == 1:
            raise ConfigProblem(
                "set either `bearer` or both `client_id` and `client_secret`",
                key="bearer",
                hint="e.g. client_secret: ${env:AIRBYTE_CLIENT_SECRET} (a secret reference)",
            )
        return self

    @property
    def auth(self) -> Auth:
        """The credentials for the API client."""
        # absolute: the SDK would join a relative token_url onto the host, dropping /v1
        token_url = self.token_url or f"{self.api_url}/applications/token"
        bearer, secret = self.bearer, self.client_secret
        return Auth(
            bearer.get_secret_value() if bearer else None,
            self.client_id,
            secret.get_secret_value() if secret else None,
            token_url,
        )


class AirbyteServerSource(BaseSource[AirbyteServerConfig]):
    """Runs the sync jobs of one Airbyte connection and reports what they loaded."""

    config_model = AirbyteServerConfig

    def check_connection(self) -> str:
        """The connection can be read with these credentials, and is active."""
        connection = self._client().connection()
        if connection.status.value != "active":
            raise ConnectorError(
                f"the Airbyte connection {connection.name!r} is {connection.status.value}"
            )
        return ""

    def discover(self) -> Catalog:
        """The connection's streams, with the sync mode, keys and cursor Airbyte uses.

        Schemas hold only the key and cursor columns (as strings): Airbyte's destination
        owns the tables' columns and types.
        """
        connection = self._client().connection()
        streams = connection.configurations.streams or []
        return Catalog(tuple(_stream_spec(s) for s in streams))

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """Run the connection's sync job, or share the one another stream ran, and report it.

        Raises:
            ConnectorError: the job failed (retryable), was cancelled, or timed out
                (cancelled then); the API refused the credentials or the connection.
        """
        cfg = self.config
        key = (cfg.api_url, cfg.connection_id)
        with _SHARED.locked(key):
            job = _SHARED.take(key, stream.name)
            if job is None:
                job = self._sync()
                _SHARED.put(key, stream.name, job)
        yield ExternalLoad(stream.name, job.rows, job.bytes, f"Airbyte job {job.id}")
        yield Checkpoint(stream.name, {"job_id": job.id})

    def _client(self) -> AirbyteClient:
        cfg = self.config
        return AirbyteClient(
            self.name, cfg.api_url, cfg.connection_id, cfg.auth, cfg.request_timeout
        )

    def _sync(self) -> Job:
        """Start (or attach to) a sync job and wait for it to succeed."""
        cfg = self.config
        client = self._client()
        try:
            job, ours = client.start_sync(), True
        except AlreadyRunning as exc:
            if cfg.on_running == "fail":
                raise ConnectorError(
                    f"a sync of the connection is already running (Airbyte: {exc})",
                    source=self.name,
                    key="on_running",
                    hint="retry later, or set `on_running: wait` to wait for that job",
                    retryable=True,
                ) from None
            job, ours = self._running(client), False
        log.info("%s: Airbyte job %s %s", self.name, job.id, "started" if ours else "attached")
        job = self._wait(client, job, ours)
        if job.status == "succeeded":
            log.info("%s: Airbyte job %s succeeded: %s rows", self.name, job.id, job.rows)
            return job
        raise ConnectorError(
            f"Airbyte sync job {job.id} {job.status}"
            + (f" after {job.duration}" if job.duration else ""),
            source=self.name,
            hint=f"see the job's logs in Airbyte (connection {cfg.connection_id})",
            retryable=job.status == "failed",
        )

    def _running(self, client: AirbyteClient) -> Job:
        job = client.running_job()
        if job is not None:
            return job
        return client.start_sync()  # it ended between the 409 and the listing

    def _wait(self, client: AirbyteClient, job: Job, ours: bool) -> Job:
        """Poll until the job ends; cancel it (if ours) on timeout, when the polls give up,
        or on interruption."""
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout
        ended = False
        failed = 0  # polls failed in a row
        try:
            while job.status not in ENDED:  # unknown statuses too: keep polling
                left = deadline - time.monotonic()
                if left <= 0:
                    ended = True  # cancelled here, so that the error can say how that went
                    raise self._timed_out(client, job, ours)
                time.sleep(min(cfg.poll_interval, left))
                try:
                    job, failed = self._poll(client, job), 0
                except SourceUnavailable as exc:
                    failed += 1
                    if failed >= _POLL_TRIES:
                        ended = True
                        raise self._unreachable(client, job, ours, exc) from None
                    log.warning(
                        "%s: polling Airbyte job %s failed, will retry: %s", self.name, job.id, exc
                    )
            ended = True
        finally:
            if not ended and ours:
                self._cancel(client, job)
        return job

    def _poll(self, client: AirbyteClient, job: Job) -> Job:
        """The job's new status.

        Raises:
            SourceUnavailable: the API did not answer (the job may run on: poll again).
        """
        polled = client.job(job.id)
        if polled.status != job.status:
            log.info("%s: Airbyte job %s is %s", self.name, job.id, polled.status)
        return polled

    def _timed_out(self, client: AirbyteClient, job: Job, ours: bool) -> ConnectorError:
        """The timeout error, once the job is cancelled if ours: it says what became of it."""
        fate, hint = self._fate(client, job, ours, "raise `timeout`, or look at the job in Airbyte")
        return ConnectorError(
            f"Airbyte job {job.id} did not finish within {self.config.timeout:g} s{fate}",
            source=self.name,
            key="timeout",
            hint=hint,
        )

    def _unreachable(
        self, client: AirbyteClient, job: Job, ours: bool, last: SourceUnavailable
    ) -> SourceUnavailable:
        """The error when the polls give up, once the job is cancelled if ours (retryable)."""
        fate, hint = self._fate(client, job, ours, last.hint or "retry later")
        return SourceUnavailable(
            f"gave up waiting for Airbyte job {job.id}: {_POLL_TRIES} polls in a row failed, "
            f"the last with: {last.message}{fate}",
            source=self.name,
            key=last.key,
            hint=hint,
        )

    def _fate(self, client: AirbyteClient, job: Job, ours: bool, hint: str) -> tuple[str, str]:
        """Cancel the job if ours: what became of it (for a message), and the hint to give."""
        if not ours:
            return "; it was started outside this run and is left running", hint
        if (refused := self._cancel(client, job)) is None:
            return "; it was cancelled", hint
        fate = f"; cancelling it failed too ({refused}), so it may still be running"
        return fate, f"cancel job {job.id} in Airbyte, then {hint}"

    def _cancel(self, client: AirbyteClient, job: Job) -> str | None:
        """Cancel a job of ours, best effort: None, or why Airbyte refused (also logged)."""
        try:
            client.cancel(job.id)
        except MdstackError as exc:
            log.error("%s: could not cancel Airbyte job %s: %s", self.name, job.id, exc)
            return str(exc)
        log.warning("%s: cancelled Airbyte job %s", self.name, job.id)
        return None


class _SharedJobs:
    """The latest succeeded job per connection, and the streams that have reported it.

    Why: the engine builds a source per stream (each Prefect task does), but an Airbyte
    job always syncs every stream of the connection. So a stream reports the latest job
    of this process if it has not reported it yet, and starts a new one otherwise: the
    streams of one run share one job, the next run starts the next job. A per-connection
    lock makes streams synced in parallel threads wait for the job instead of racing it.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._latest: dict[tuple[str, str], tuple[Job, set[str]]] = {}

    def locked(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def take(self, key: tuple[str, str], stream: str) -> Job | None:
        """The latest job if ``stream`` has not reported it yet (it reports it now)."""
        job, reported = self._latest.get(key, (None, set()))
        if job is None or stream in reported:
            return None
        reported.add(stream)
        return job

    def put(self, key: tuple[str, str], stream: str, job: Job) -> None:
        self._latest[key] = (job, {stream})


_SHARED = _SharedJobs()


def _stream_spec(stream: Any) -> StreamSpec:
    """One of the connection's streams (an SDK ``StreamConfiguration``) as a StreamSpec."""
    keys = tuple(".".join(path) for path in stream.primary_key or [])
    cursor = ".".join(stream.cursor_field) if stream.cursor_field else None
    mode = _MODES.get(stream.sync_mode.value if stream.sync_mode else "", "full_refresh_append")
    columns = dict.fromkeys([*keys, *([cursor] if cursor else [])])
    return StreamSpec(
        name=stream.name,
        schema=pa.schema([(c, pa.string()) for c in columns]),
        primary_key=keys,
        cursor=cursor,
        sync_modes=(mode,),
        loaded_externally=True,
    )
