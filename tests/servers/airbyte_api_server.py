"""A local Airbyte public API (``/v1``) for the ``airbyte_server`` source's tests: real HTTP.

Speaks the wire format the ``airbyte-api`` SDK 1.0.1 uses (``research/airbyte-vault.md``,
section 2): camelCase JSON, integer ``jobId``, the job status strings, form-encoded
client-credentials token requests, ``Authorization: Bearer``. Endpoints:

* ``POST /v1/applications/token`` (``grant_type=client_credentials``): a token that
  expires in ``token_ttl`` seconds and, if ``token_uses`` is set, after that many calls;
* ``GET /v1/connections/{id}``: a ConnectionResponse, 404 for an unknown id;
* ``POST /v1/jobs``: starts a sync job, 409 ``A sync is already running for: <id>`` (the
  body Airbyte sends) while one of the connection's jobs has not ended;
* ``GET /v1/jobs/{id}``: the job, one step further along its script at every call;
* ``GET /v1/jobs?connectionId=&jobType=&orderBy=createdAt|DESC&limit=``: ``{"data": [...]}``;
* ``DELETE /v1/jobs/{id}``: cancels the job (or refuses, 403, with ``refuse_cancel``).

A job's script is the list of statuses it reports, one per ``GET``, staying on the last.
Every request is logged (method, path, whether it was authorised) in ``calls``. With
``silent_polls``, a ``GET /v1/jobs/{id}`` is read and logged but never answered: its handler
holds the connection until the server stops (a server that hangs).

Each connection is served by its own daemon thread, so a handler that hangs never holds up
another request.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ENDED = ("succeeded", "failed", "cancelled")
STARTED = "2026-11-22T07:00:00Z"
CONFLICT = "io.airbyte.commons.server.errors.ValueConflictKnownException"


def connection(connection_id: str, streams: list[dict[str, Any]], status: str = "active"):
    """A ConnectionResponse as Airbyte sends it."""
    return {
        "connectionId": connection_id,
        "name": "shop to warehouse",
        "sourceId": "0d6b6c8a-0000-4000-8000-000000000001",
        "destinationId": "0d6b6c8a-0000-4000-8000-000000000002",
        "workspaceId": "0d6b6c8a-0000-4000-8000-000000000003",
        "status": status,
        "schedule": {"scheduleType": "manual"},
        "configurations": {"streams": streams},
        "tags": [],
        "createdAt": 1795300000,
        "namespaceDefinition": "destination",
    }


@dataclass
class Job:
    id: int
    connection_id: str
    script: list[str]
    rows: int
    bytes: int
    step: int = 0
    cancelled: bool = False

    @property
    def status(self) -> str:
        return "cancelled" if self.cancelled else self.script[min(self.step, len(self.script) - 1)]

    def body(self) -> dict[str, Any]:
        body = {
            "jobId": self.id,
            "status": self.status,
            "jobType": "sync",
            "startTime": STARTED,
            "connectionId": self.connection_id,
            "lastUpdatedAt": STARTED,
        }
        if self.status in ENDED:
            body |= {"duration": "PT1M2S", "rowsSynced": self.rows, "bytesSynced": self.bytes}
        return body


@dataclass
class AirbyteApi:
    """The server's state: connections, jobs, credentials, and the requests it saw."""

    bearer: set[str] = field(default_factory=set)
    clients: dict[str, str] = field(default_factory=dict)
    token_ttl: int = 180
    token_uses: int | None = None
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    script: list[str] = field(default_factory=lambda: ["running", "succeeded"])
    refuse_cancel: bool = False
    silent_polls: bool = False
    rows: int = 1234
    bytes: int = 56789
    calls: list[tuple[str, str, bool]] = field(default_factory=list)
    tokens_issued: int = 0
    _uses: dict[str, int] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(4242))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_job(self, connection_id: str, script: list[str]) -> Job:
        """A job started by someone else (a schedule, the UI)."""
        job = Job(next(self._ids), connection_id, script, self.rows, self.bytes)
        self.jobs[job.id] = job
        return job

    def requests(self, method: str) -> list[str]:
        return [path for m, path, _ in self.calls if m == method]

    # -- request handling (under the lock) ----------------------------------------------------
    def handle(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, Any] | None:
        """The status and JSON body to answer, or None to leave the request unanswered."""
        with self._lock:
            parts = urlsplit(url)
            if method == "POST" and parts.path == "/v1/applications/token":
                self.calls.append((method, parts.path, True))
                return self._token(body)
            authorised = self._authorised(headers.get("Authorization", ""))
            self.calls.append((method, parts.path, authorised))
            if not authorised:
                return 401, {"message": "Unauthorized", "status": 401}
            if self.silent_polls and method == "GET" and parts.path.startswith("/v1/jobs/"):
                return None
            return self._route(method, parts.path, parse_qs(parts.query), body)

    def _token(self, body: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"message": "unsupported grant_type"}
        if self.clients.get(form.get("client_id", "")) != form.get("client_secret"):
            return 401, {"message": "Invalid client credentials"}
        token = f"tok-{secrets.token_hex(8)}"
        self._uses[token] = 0
        self.tokens_issued += 1
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}

    def _authorised(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer":
            return False
        if token in self.bearer:
            return True
        if token not in self._uses:
            return False
        self._uses[token] += 1
        if self.token_uses is not None and self._uses[token] > self.token_uses:
            del self._uses[token]
            return False
        return True

    def _route(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "GET" and parts[:2] == ["v1", "connections"] and len(parts) == 3:
            found = self.connections.get(parts[2])
            if found is None:
                return 404, _problem(404, "resource-not-found", f"Could not find {parts[2]}")
            return 200, found
        if parts[:2] != ["v1", "jobs"]:
            return 404, _problem(404, "not-found", path)
        if len(parts) == 2 and method == "POST":
            return self._create(json.loads(body))
        if len(parts) == 2 and method == "GET":
            wanted = query.get("connectionId", [None])[0]
            jobs = sorted(self.jobs.values(), key=lambda j: -j.id)
            limit = int(query.get("limit", ["20"])[0])
            return 200, {"data": [j.body() for j in jobs if j.connection_id == wanted][:limit]}
        job = self.jobs.get(int(parts[2]))
        if job is None:
            return 404, _problem(404, "resource-not-found", f"Could not find job {parts[2]}")
        if method == "DELETE":
            if self.refuse_cancel:
                return 403, _problem(403, "forbidden", f"Not allowed to cancel job {job.id}")
            job.cancelled = True
        elif method == "GET":
            job.step += 1
        return 200, job.body()

    def _create(self, request: dict[str, Any]) -> tuple[int, Any]:
        connection_id = request.get("connectionId")
        if request.get("jobType") != "sync" or connection_id not in self.connections:
            return 400, _problem(400, "bad-request", "unknown connection or job type")
        if any(j.connection_id == connection_id and j.status not in ENDED
               for j in self.jobs.values()):  # fmt: skip
            return 409, {
                "message": f"A sync is already running for: {connection_id}",
                "exceptionClassName": CONFLICT,
            }
        job = self.add_job(connection_id, list(self.script))
        return 200, job.body()


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    """Airbyte's problem+json error body."""
    return {
        "type": "https://reference.airbyte.com/reference/errors",
        "title": title,
        "status": status,
        "detail": detail,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.server.api.handle(self.command, self.path, self.headers, body)
        if answer is None:  # hang: hold the connection, unanswered, until the server stops
            self.server.stopping.wait()
            self.close_connection = True
            return
        status, payload = answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: AirbyteApi) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api
        self.stopping = threading.Event()


@contextmanager
def serving(api: AirbyteApi) -> Iterator[str]:
    """Serve ``api`` on a free loopback port; yields the API root (``http://.../v1``).

    The socket listens before the thread starts, so the first request never races it.
    """
    server = _Server(api)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
