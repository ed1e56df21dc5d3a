"""Local doubles of the BI tools' APIs, for ``tests/test_bi.py``. Never imported by product code.

Each double is a real HTTP server on ``127.0.0.1:0`` (a thread running
``ThreadingHTTPServer``) that speaks its tool's wire format: the paths, the
JSON or XML shapes, the status codes and error bodies the hooks rely on (see
each class's docstring and ``stack/bi/<tool>.py``). They keep state: a refresh
job that completes after N status reads, one that fails in the tool's failure
shape, one that never finishes, one blocked by a refresh already running, and
token checks that answer a wrong secret the way the tool does.

An item's :class:`Behavior` drives it, counted in requests, never in time:
``polls`` status reads before the refresh ends, ``outcome`` (``success``,
``failure``, ``never``), and ``busy``: how many requests about the item an
earlier refresh keeps running for. For synchronous APIs (Superset, webhooks)
``never`` means the request hangs until the test is over.

Every double records its requests (:meth:`Double.seen`) and can be told to
answer the next matching requests with something else first
(:meth:`Double.inject`: a 503, a 429 with ``Retry-After``...).
:func:`serve` starts one and waits until it answers; ``reset()`` between tests.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

Outcome = Literal["success", "failure", "never"]

TABLEAU_TOKEN_NAME = "mdstack-pat"
TABLEAU_SECRET = "tbl-PAT-s3cret-9f8e7d"
TABLEAU_SITE = "analytics"
POWERBI_TENANT = "7c1e0f55-0000-4000-8000-00000000aaaa"
POWERBI_CLIENT = "9b2d7c43-0000-4000-8000-00000000bbbb"
POWERBI_SECRET = "pbi~client~s3cret~Q7x"
POWERBI_WORKSPACE = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
POWERBI_SCOPE = "https://analysis.windows.net/powerbi/api/.default"
METABASE_KEY = "mb_apikey_s3cret_Zq1"
SUPERSET_USER = "mdstack"
SUPERSET_PASSWORD = "sup3rset-s3cret-pw"
LOOKER_CLIENT = "lk-client-id-42"
LOOKER_SECRET = "lk-client-s3cret-Xy9"
WEBHOOK_TOKEN = "whk-bearer-s3cret-77"

SECRETS = (
    TABLEAU_SECRET,
    POWERBI_SECRET,
    METABASE_KEY,
    SUPERSET_PASSWORD,
    LOOKER_SECRET,
    WEBHOOK_TOKEN,
)
"""Every secret the doubles accept: none may show in a result, an error or a log line."""


@dataclass
class Behavior:
    """How one refreshable item behaves (counted in requests, never in time)."""

    outcome: Outcome = "success"
    polls: int = 2
    busy: int = 0


@dataclass
class Request:
    """One request as the double saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def text_reply(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), {"Content-Type": "text/plain;charset=utf-8"})


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts_now() -> str:
    """Tableau's timestamps: whole seconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Route = tuple[str, str, str]


class Double:
    """A BI tool's API on a loopback port. Subclasses list ``routes``: (method, path regex,
    handler name); a handler gets the :class:`Request` and the regex's named groups."""

    routes: ClassVar[list[Route]] = []

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self._compiled = [(m, re.compile(p), h) for m, p, h in self.routes]
        self.requests: list[Request] = []
        self._faults: list[tuple[str, re.Pattern[str], Reply]] = []
        self._ids = itertools.count(1)
        self._reset()

    # ---- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        double = self

        class Handler(_Handler):
            pass

        Handler.double = double
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        serving = threading.Event()

        def run() -> None:
            serving.set()
            assert self._server is not None
            self._server.serve_forever(poll_interval=0.05)

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        serving.wait(5)
        with urllib.request.urlopen(f"{self.url}/__health", timeout=5) as response:
            assert response.status == 200  # the listener answers: ready

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def reset(self) -> None:
        """Forget requests, faults and items; let hanging requests go."""
        with self._lock:
            self._release.set()
            self._release = threading.Event()
            self.requests.clear()
            self._faults.clear()
            self._reset()

    def _reset(self) -> None:
        """Subclasses: clear their own state."""

    # ---- test controls ---------------------------------------------------------------

    def inject(self, method: str, pattern: str, *replies: Reply) -> None:
        """Answer the next requests matching (method, path regex) with ``replies``, in order."""
        with self._lock:
            self._faults.extend((method, re.compile(pattern), r) for r in replies)

    def seen(self, method: str | None = None, pattern: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method)
                and (pattern is None or re.search(pattern, r.path))
            ]

    def hang(self) -> Reply:
        """Hold the request until the test is over (a synchronous API that never answers)."""
        self._release.wait(30)
        return text_reply(504, "gateway timeout")

    def next_id(self) -> int:
        return next(self._ids)

    # ---- dispatch ----------------------------------------------------------------------

    def dispatch(self, request: Request) -> Reply:
        if request.path == "/__health":
            return text_reply(200, "ok")
        with self._lock:
            self.requests.append(request)
            for i, (method, pattern, reply) in enumerate(self._faults):
                if method == request.method and pattern.search(request.path):
                    del self._faults[i]
                    return reply
        for method, pattern, handler in self._compiled:
            match = pattern.fullmatch(request.path)
            if method == request.method and match:
                with self._lock:
                    reply = getattr(self, handler)(request, **match.groupdict())
                return self.hang() if reply is None else reply
        return self.not_found(request)

    def not_found(self, request: Request) -> Reply:
        return text_reply(404, "Not found.")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    double: ClassVar[Double]

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, parts.path, parse_qs(parts.query), self.headers, body)
        reply = self.double.dispatch(request)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextmanager
def serve(double: Double) -> Iterator[Double]:
    """Run ``double`` for the duration of the block (a run-wide fixture wraps this)."""
    double.start()
    try:
        yield double
    finally:
        double.stop()


# ======================================================================================
# Tableau Server REST API (XML), as tableauserverclient speaks it
# ======================================================================================

_TS_NS = "http://tableau.com/api"


def _ts(inner: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><tsResponse xmlns="{_TS_NS}">{inner}</tsResponse>'
    )


def ts_reply(status: int, inner: str) -> Reply:
    return Reply(status, _ts(inner).encode(), {"Content-Type": "application/xml;charset=utf-8"})


def ts_error(status: int, code: str, summary: str, detail: str) -> Reply:
    inner = (
        f'<error code="{code}"><summary>{escape(summary)}</summary>'
        f"<detail>{escape(detail)}</detail></error>"
    )
    return ts_reply(status, inner)


@dataclass
class _TableauItem:
    kind: str  # datasource | workbook
    id: str
    name: str
    project: str
    behavior: Behavior
    busy: int = 0


@dataclass
class _TableauJob:
    id: str
    item: _TableauItem
    polls: int
    outcome: Outcome
    created: str = field(default_factory=ts_now)


class TableauDouble(Double):
    """Tableau REST API: PAT sign-in, item query by name, "Update Now", jobs.

    - ``POST /api/{v}/auth/signin`` (``<credentials personalAccessTokenName=...
      personalAccessTokenSecret=...><site contentUrl=.../></credentials>``) →
      ``<credentials token><site id contentUrl/><user id/></credentials>``; a wrong
      token is ``401`` with error ``401001`` "Signin Error".
    - ``GET /api/{v}/sites/{site}/{datasources|workbooks}?filter=name:eq:<name>``.
    - ``POST .../{kind}/{id}/refresh`` → ``202`` with ``<job id mode type>``; while a
      refresh is queued: ``409`` with error ``409093``.
    - ``GET .../jobs/{id}`` → ``<job progress>``; once done ``completedAt`` and
      ``finishCode`` (0 success, 1 failure, with ``<notes>``).
    - any call without a valid ``X-Tableau-Auth``: ``401`` with error ``401002``.
    """

    routes: ClassVar[list[Route]] = [
        ("POST", r"/api/[\d.]+/auth/signin", "signin"),
        ("POST", r"/api/[\d.]+/auth/signout", "signout"),
        ("GET", r"/api/[\d.]+/sites/(?P<site>[^/]+)/(?P<kind>datasources|workbooks)", "query"),
        (
            "POST",
            r"/api/[\d.]+/sites/(?P<site>[^/]+)/(?P<kind>datasources|workbooks)/(?P<id>[^/]+)/refresh",
            "refresh",
        ),
        ("GET", r"/api/[\d.]+/sites/(?P<site>[^/]+)/jobs/(?P<job>[^/]+)", "job"),
    ]

    site_id = "6b7179ba-b82b-4f0f-91ed-812074ac5da6"

    def _reset(self) -> None:
        self.items: dict[tuple[str, str], list[_TableauItem]] = {}
        self.jobs: dict[str, _TableauJob] = {}
        self.sessions: set[str] = set()

    def add(
        self, kind: str, name: str, behavior: Behavior | None = None, project: str = "Default"
    ) -> None:
        """Publish a data source or workbook called ``name`` (twice: two projects, same name)."""
        behavior = behavior or Behavior()
        item = _TableauItem(kind, str(uuid.uuid4()), name, project, behavior, behavior.busy)
        self.items.setdefault((kind, name), []).append(item)

    def signin(self, request: Request) -> Reply:
        root = ElementTree.fromstring(request.body)
        creds = root.find("credentials")
        site = creds.find("site") if creds is not None else None
        ok = (
            creds is not None
            and creds.get("personalAccessTokenName") == TABLEAU_TOKEN_NAME
            and creds.get("personalAccessTokenSecret") == TABLEAU_SECRET
            and site is not None
            and site.get("contentUrl") == TABLEAU_SITE
        )
        if not ok:
            return ts_error(401, "401001", "Signin Error", "Error signing in to Tableau Server")
        token = uuid.uuid4().hex
        self.sessions.add(token)
        return ts_reply(
            200,
            f'<credentials token="{token}"><site id="{self.site_id}" contentUrl="{TABLEAU_SITE}"/>'
            '<user id="1a96d216-e9b8-497b-a82a-0b899a965e01"/></credentials>',
        )

    def _authorized(self, request: Request, site: str | None = None) -> Reply | None:
        if request.headers.get("X-Tableau-Auth") not in self.sessions:
            return ts_error(
                401,
                "401002",
                "Unauthorized Access",
                "Invalid authentication credentials were provided.",
            )
        if site is not None and site != self.site_id:
            return ts_error(
                403, "403069", "Forbidden", "The site in the URL is not the signed-in site."
            )
        return None

    def signout(self, request: Request) -> Reply:
        self.sessions.discard(request.headers.get("X-Tableau-Auth") or "")
        return Reply(204)

    def query(self, request: Request, site: str, kind: str) -> Reply:
        if denied := self._authorized(request, site):
            return denied
        singular = kind[:-1]
        wanted = None
        for clause in (request.arg("filter") or "").split(","):
            field_, _, rest = clause.partition(":")
            op, _, value = rest.partition(":")
            if field_ == "name" and op == "eq":
                wanted = value
        found = [i for (k, n), items in self.items.items() if k == singular for i in items]
        if wanted is not None:
            found = [i for i in found if i.name == wanted]
        rows = "".join(
            f"<{singular} id={quoteattr(i.id)} name={quoteattr(i.name)}"
            f" contentUrl={quoteattr(i.name.replace(' ', ''))}>"
            f"<project id={quoteattr(i.project + '-id')} name={quoteattr(i.project)}/>"
            f'<owner id="1a96d216-e9b8-497b-a82a-0b899a965e01"/></{singular}>'
            for i in found
        )
        pagination = f'<pagination pageNumber="1" pageSize="100" totalAvailable="{len(found)}"/>'
        return ts_reply(200, f"{pagination}<{kind}>{rows}</{kind}>")

    def refresh(self, request: Request, site: str, kind: str, id: str) -> Reply:
        if denied := self._authorized(request, site):
            return denied
        item = next((i for items in self.items.values() for i in items if i.id == id), None)
        if item is None:
            return ts_error(
                404,
                "404004" if kind == "datasources" else "404006",
                "Resource Not Found",
                f"{kind[:-1]} '{id}' could not be found.",
            )
        if item.busy > 0:
            item.busy -= 1
            return ts_error(
                409,
                "409093",
                "Resource Conflict",
                "Job for 'extract' is already queued. Not queuing a duplicate.",
            )
        job = _TableauJob(str(uuid.uuid4()), item, item.behavior.polls, item.behavior.outcome)
        self.jobs[job.id] = job
        return ts_reply(
            202,
            f'<job id="{job.id}" mode="Asynchronous" type="RefreshExtract"'
            f' createdAt="{job.created}">'
            f"<extractRefreshJob><{item.kind} id={quoteattr(item.id)} name={quoteattr(item.name)}/>"
            "</extractRefreshJob></job>",
        )

    def job(self, request: Request, site: str, job: str) -> Reply:
        if denied := self._authorized(request, site):
            return denied
        found = self.jobs.get(job)
        if found is None:
            return ts_error(404, "404036", "Resource Not Found", f"Job '{job}' could not be found.")
        found.polls -= 1
        done = found.outcome != "never" and found.polls <= 0
        item = found.item
        inner = f"<{item.kind} id={quoteattr(item.id)} name={quoteattr(item.name)}/>"
        attrs = (
            f'id="{found.id}" mode="Asynchronous" type="RefreshExtract"'
            f' createdAt="{found.created}" startedAt="{found.created}"'
        )
        if not done:
            return ts_reply(
                200,
                f'<job {attrs} progress="50"><extractRefreshJob>{inner}</extractRefreshJob></job>',
            )
        code = 0 if found.outcome == "success" else 1
        notes = (
            ""
            if code == 0
            else "<notes>com.tableausoftware.nativeapi.exceptions.DataSourceException: "
            "The database refused the connection.</notes>"
        )
        return ts_reply(
            200,
            f'<job {attrs} progress="100" completedAt="{ts_now()}" finishCode="{code}">'
            f"<extractRefreshJob>{notes}{inner}</extractRefreshJob></job>",
        )


# ======================================================================================
# Entra ID token endpoint + Power BI REST API (JSON)
# ======================================================================================


def aad_error(status: int, error: str, code: int, description: str) -> Reply:
    trace = str(uuid.uuid4())
    return json_reply(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {uuid.uuid4()}\r\nTimestamp: {now_iso()}",
            "error_codes": [code],
            "timestamp": now_iso(),
            "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
    )


def pbi_error(status: int, code: str, message: str) -> Reply:
    return json_reply(status, {"error": {"code": code, "message": message}})


@dataclass
class _PbiRefresh:
    request_id: str
    id: int
    refresh_type: str
    polls: int
    outcome: Outcome
    start: str = field(default_factory=now_iso)
    end: str | None = None
    status: str = "Unknown"

    def advance(self) -> None:
        if self.status != "Unknown" or self.outcome == "never":
            return
        self.polls -= 1
        if self.polls <= 0:
            self.status = "Completed" if self.outcome == "success" else "Failed"
            self.end = now_iso()

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "requestId": self.request_id,
            "id": self.id,
            "refreshType": self.refresh_type,
            "startTime": self.start,
            "status": self.status,
        }
        if self.end:
            entry["endTime"] = self.end
        if self.status == "Failed":
            entry["serviceExceptionJson"] = json.dumps(
                {
                    "errorCode": "ModelRefreshFailed_CredentialsNotSpecified",
                    "errorDescription": "The credentials provided for the data source are invalid.",
                }
            )
        return entry


class PowerBIDouble(Double):
    """Entra ID's v2 token endpoint and the Power BI dataset-refresh API.

    - ``POST /{tenant}/oauth2/v2.0/token`` (form, client-credentials) →
      ``{"token_type": "Bearer", "expires_in", "access_token"}``; a wrong secret is
      ``401 {"error": "invalid_client", "error_description": "AADSTS7000215: ..."}``,
      an unknown client ``400 unauthorized_client`` (AADSTS700016), an unknown
      tenant ``400 invalid_request`` (AADSTS90002).
    - ``POST /v1.0/myorg/groups/{g}/datasets/{d}/refreshes`` → ``202`` with a
      ``RequestId`` header (and ``Location`` for an enhanced refresh); ``409``
      while a refresh runs; ``404 {"error": {"code": "ItemNotFound"}}``.
    - ``GET .../refreshes?$top=n`` → ``{"value": [...]}`` newest first; ``status``
      ``Unknown`` while running, then ``Completed`` or ``Failed`` with
      ``serviceExceptionJson``. Each read is one poll of the running refreshes.
    - a missing or expired bearer token: ``401 {"error": {"code": "TokenExpired"}}``.
    """

    routes: ClassVar[list[Route]] = [
        ("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", "token"),
        (
            "POST",
            r"/v1\.0/myorg/groups/(?P<group>[^/]+)/datasets/(?P<dataset>[^/]+)/refreshes",
            "trigger",
        ),
        (
            "GET",
            r"/v1\.0/myorg/groups/(?P<group>[^/]+)/datasets/(?P<dataset>[^/]+)/refreshes",
            "history",
        ),
    ]

    def _reset(self) -> None:
        self.datasets: dict[str, Behavior] = {}
        self.refreshes: dict[str, list[_PbiRefresh]] = {}
        self.tokens: set[str] = set()
        self.bodies: list[Any] = []

    def add(self, dataset: str, behavior: Behavior | None = None) -> None:
        behavior = behavior or Behavior()
        self.datasets[dataset] = behavior
        history = self.refreshes.setdefault(dataset, [])
        if behavior.busy:
            history.insert(
                0,
                _PbiRefresh(
                    str(uuid.uuid4()), self.next_id(), "Scheduled", behavior.busy, "success"
                ),
            )

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def token(self, request: Request, tenant: str) -> Reply:
        form = request.form()
        if tenant != POWERBI_TENANT:
            return aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return aad_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if form.get("client_id") != POWERBI_CLIENT:
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found "
                "in the directory.",
            )
        if form.get("client_secret") != POWERBI_SECRET:
            return aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to "
                f"app '{POWERBI_CLIENT}'.",
            )
        if form.get("scope") != POWERBI_SCOPE:
            return aad_error(
                400, "invalid_scope", 1002012, "The provided value for scope is not valid."
            )
        token = uuid.uuid4().hex
        self.tokens.add(token)
        return json_reply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            },
        )

    def _authorized(self, request: Request, group: str, dataset: str) -> Reply | None:
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return pbi_error(
                401, "TokenExpired", "Access token has expired, resubmit with a new access token"
            )
        if group != POWERBI_WORKSPACE or dataset not in self.datasets:
            return pbi_error(
                404,
                "ItemNotFound",
                f"Dataset {dataset} is not found! please verify datasetId is correct and "
                "user have sufficient permissions.",
            )
        return None

    def trigger(self, request: Request, group: str, dataset: str) -> Reply:
        if denied := self._authorized(request, group, dataset):
            return denied
        body = request.json()
        self.bodies.append(body)
        history = self.refreshes[dataset]
        if any(r.status == "Unknown" for r in history):
            return pbi_error(409, "Conflict", "Another refresh request is already executing.")
        behavior = self.datasets[dataset]
        enhanced = isinstance(body, dict) and "notifyOption" not in body
        refresh = _PbiRefresh(
            str(uuid.uuid4()),
            self.next_id(),
            "ViaEnhancedApi" if enhanced else "ViaApi",
            behavior.polls,
            behavior.outcome,
        )
        history.insert(0, refresh)
        headers = {"RequestId": refresh.request_id}
        if enhanced:
            headers["Location"] = f"{self.url}{request.path}/{refresh.request_id}"
        return Reply(202, b"", headers)

    def history(self, request: Request, group: str, dataset: str) -> Reply:
        if denied := self._authorized(request, group, dataset):
            return denied
        history = self.refreshes[dataset]
        for refresh in history:
            refresh.advance()
        top = int(request.arg("$top") or 60)
        return json_reply(
            200,
            {
                "@odata.context": f"{self.url}/v1.0/myorg/groups/{group}/$metadata#refreshes",
                "value": [r.as_json() for r in history[:top]],
            },
        )


# ======================================================================================
# Metabase REST API (JSON, plain-text errors)
# ======================================================================================


@dataclass
class _MbTask:
    id: int
    task: str
    db_id: int
    polls: int
    outcome: Outcome
    status: str = "started"
    started_at: str = field(default_factory=now_iso)
    ended_at: str | None = None

    def advance(self) -> None:
        if self.status != "started" or self.outcome == "never":
            return
        self.polls -= 1
        if self.polls <= 0:
            self.status = "success" if self.outcome == "success" else "failed"
            self.ended_at = now_iso()

    def as_json(self) -> dict[str, Any]:
        details = None
        if self.status == "failed":
            details = {
                "status": "failed",
                "exception": "class org.postgresql.util.PSQLException",
                "message": "Connection to warehouse refused.",
            }
        return {
            "id": self.id,
            "task": self.task,
            "db_id": self.db_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": 120 if self.ended_at else None,
            "task_details": details,
            "status": self.status,
        }


class MetabaseDouble(Double):
    """Metabase: API key, manual sync / rescan, task history, cache invalidation.

    - every call needs ``x-api-key``; else ``401`` with the text ``Unauthenticated``.
    - ``GET /api/user/current`` → the key's user.
    - ``POST /api/database/:id/sync_schema`` and ``/rescan_values`` →
      ``{"status": "ok"}``; the work runs in the background as task-history rows
      (``sync-metadata``, ``update-field-values``). Unknown database: ``404 Not found.``
    - ``GET /api/task/?limit&offset`` → ``{"total", "limit", "offset", "data"}``,
      newest first, ``status`` ``started`` / ``success`` / ``failed`` (with
      ``task_details.message``). Each read is one poll of the started rows.
      ``task_access=False`` answers ``403``.
    - ``POST /api/cache/invalidate?database=:id&include=overrides`` → ``200
      {"count", "message"}``; ``paid=False`` answers ``402`` (Pro/Enterprise only).
    """

    routes: ClassVar[list[Route]] = [
        ("GET", r"/api/user/current", "current_user"),
        ("POST", r"/api/database/(?P<db>\d+)/(?P<step>sync_schema|rescan_values)", "sync"),
        ("GET", r"/api/task/?", "task_list"),
        ("POST", r"/api/cache/invalidate", "invalidate"),
    ]

    def _reset(self) -> None:
        self.databases: dict[int, Behavior] = {}
        self.tasks: list[_MbTask] = []
        self.paid = True
        self.task_access = True

    def add(self, db: int, behavior: Behavior | None = None) -> None:
        behavior = behavior or Behavior()
        self.databases[db] = behavior
        if behavior.busy:  # a scheduled sync already runs
            self.tasks.append(
                _MbTask(self.next_id(), "sync-metadata", db, behavior.busy, "success")
            )

    def dispatch(self, request: Request) -> Reply:
        if request.path != "/__health" and request.headers.get("x-api-key") != METABASE_KEY:
            with self._lock:
                self.requests.append(request)
            return text_reply(401, "Unauthenticated")
        return super().dispatch(request)

    def not_found(self, request: Request) -> Reply:
        return text_reply(404, "API endpoint does not exist.")

    def current_user(self, request: Request) -> Reply:
        return json_reply(
            200,
            {
                "id": 13,
                "email": "api-key-user-mdstack@api-key.invalid",
                "first_name": "mdstack",
                "is_superuser": True,
            },
        )

    def sync(self, request: Request, db: str, step: str) -> Reply:
        behavior = self.databases.get(int(db))
        if behavior is None:
            return text_reply(404, "Not found.")
        if step == "sync_schema":
            self.tasks.append(
                _MbTask(self.next_id(), "sync-metadata", int(db), behavior.polls, behavior.outcome)
            )
        else:
            self.tasks.append(_MbTask(self.next_id(), "update-field-values", int(db), 1, "success"))
        return json_reply(200, {"status": "ok"})

    def task_list(self, request: Request) -> Reply:
        if not self.task_access:
            return text_reply(403, "You don't have permissions to do that.")
        for task in self.tasks:
            task.advance()
        limit = int(request.arg("limit") or 50)
        offset = int(request.arg("offset") or 0)
        rows = sorted(self.tasks, key=lambda t: t.id, reverse=True)
        return json_reply(
            200,
            {
                "total": len(rows),
                "limit": limit,
                "offset": offset,
                "data": [t.as_json() for t in rows[offset : offset + limit]],
            },
        )

    def invalidate(self, request: Request) -> Reply:
        if not self.paid:
            return text_reply(
                402,
                "Granular Caching is a paid feature not currently available to your instance. "
                "Please upgrade to use it. Learn more at metabase.com/upgrade/",
            )
        dbs = request.query.get("database", [])
        if not dbs:
            return json_reply(404, {"count": -1, "message": "Nothing to invalidate."})
        return json_reply(200, {"count": 3, "message": "Invalidated 3 cache configurations."})


# ======================================================================================
# Superset REST API (JSON, JWT + CSRF)
# ======================================================================================


class SupersetDouble(Double):
    """Superset: JWT login, CSRF token, dataset refresh, cache-key invalidation.

    - ``POST /api/v1/security/login`` ``{"username", "password", "provider": "db"}`` →
      ``{"access_token", "refresh_token"}``; else ``401 {"message": "Not authorized"}``.
    - ``GET /api/v1/security/csrf_token/`` (Bearer) → ``{"result": token}`` and a
      ``session`` cookie; writes without both: ``400`` "The CSRF token is missing."
    - without a valid Bearer token: ``401 {"msg": "Missing Authorization Header"}``
      (flask-jwt-extended's shape).
    - ``PUT /api/v1/dataset/{pk}/refresh`` → ``200 {"message": "OK"}``; ``404
      {"message": "Not found"}``; a failing refresh ``422 {"message": ...}``;
      ``busy``: ``409`` (not Superset's: it has no such answer; the hook's generic
      handling of 409 is what this exercises); ``never``: the request hangs.
    - ``POST /api/v1/cachekey/invalidate`` ``{"datasource_uids": [...]}`` → ``201``.
    """

    routes: ClassVar[list[Route]] = [
        ("POST", r"/api/v1/security/login", "login"),
        ("GET", r"/api/v1/security/csrf_token/", "csrf"),
        ("PUT", r"/api/v1/dataset/(?P<pk>\d+)/refresh", "refresh"),
        ("POST", r"/api/v1/cachekey/invalidate", "invalidate"),
    ]

    def _reset(self) -> None:
        self.datasets: dict[int, Behavior] = {}
        self.tokens: set[str] = set()
        self.csrf_tokens: dict[str, str] = {}  # session cookie -> csrf token
        self.invalidated: list[Any] = []

    def add(self, pk: int, behavior: Behavior | None = None) -> None:
        behavior = behavior or Behavior()
        self.datasets[pk] = Behavior(behavior.outcome, behavior.polls, behavior.busy)

    def login(self, request: Request) -> Reply:
        body = request.json() or {}
        if (body.get("username"), body.get("password"), body.get("provider")) != (
            SUPERSET_USER,
            SUPERSET_PASSWORD,
            "db",
        ):
            return json_reply(401, {"message": "Not authorized"})
        token = f"eyJ.{uuid.uuid4().hex}.sig"
        self.tokens.add(token)
        return json_reply(
            200, {"access_token": token, "refresh_token": f"eyJ.{uuid.uuid4().hex}.r"}
        )

    def _bearer(self, request: Request) -> Reply | None:
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            return json_reply(401, {"msg": "Missing Authorization Header"})
        return None

    def _csrf(self, request: Request) -> Reply | None:
        cookie = request.headers.get("Cookie") or ""
        match = re.search(r"session=([^;]+)", cookie)
        expected = self.csrf_tokens.get(match.group(1)) if match else None
        if expected is None or request.headers.get("X-CSRFToken") != expected:
            return text_reply(400, "400 Bad Request: The CSRF token is missing.")
        return None

    def csrf(self, request: Request) -> Reply:
        if denied := self._bearer(request):
            return denied
        session, token = uuid.uuid4().hex, uuid.uuid4().hex
        self.csrf_tokens[session] = token
        return json_reply(
            200,
            {"result": token},
            {"Set-Cookie": f"session={session}; HttpOnly; Path=/; SameSite=Lax"},
        )

    def refresh(self, request: Request, pk: str) -> Reply | None:
        if denied := self._bearer(request) or self._csrf(request):
            return denied
        behavior = self.datasets.get(int(pk))
        if behavior is None:
            return json_reply(404, {"message": "Not found"})
        if behavior.busy > 0:
            behavior.busy -= 1
            return json_reply(409, {"message": "A refresh of this dataset is already running."})
        if behavior.outcome == "never":
            return None  # hang
        if behavior.outcome == "failure":
            return json_reply(422, {"message": "Dataset could not be updated."})
        return json_reply(200, {"message": "OK"})

    def invalidate(self, request: Request) -> Reply:
        if denied := self._bearer(request) or self._csrf(request):
            return denied
        self.invalidated.append(request.json())
        return json_reply(201, {})


# ======================================================================================
# Looker API 4.0 (JSON)
# ======================================================================================

_LOOKER_DOCS = "https://cloud.google.com/looker/docs/r/api/support"


def looker_error(status: int, message: str, **extra: Any) -> Reply:
    return json_reply(status, {"message": message, **extra, "documentation_url": _LOOKER_DOCS})


@dataclass
class _LookerBuild:
    id: str
    view: str
    polls: int
    outcome: Outcome

    def status(self) -> dict[str, Any]:
        if self.outcome != "never":
            self.polls -= 1
        if self.outcome == "never" or self.polls > 0:
            state = "running" if self.polls <= 1 or self.outcome == "never" else "pending"
            return {
                "status": state,
                "runtime": None,
                "message": f"Materialize {self.view}, ",
                "task_slug": self.id,
            }
        if self.outcome == "success":
            return {
                "status": "complete",
                "runtime": 12.3,
                "message": f"Materialize {self.view}, ",
                "task_slug": self.id,
            }
        return {
            "status": "error",
            "runtime": 0.4,
            "message": f'SQL Error: relation "analytics.{self.view}" does not exist',
            "task_slug": self.id,
        }


class LookerDouble(Double):
    """Looker API 4.0: login, datagroup trigger, PDT build start and status.

    - ``POST /api/4.0/login`` (form ``client_id``, ``client_secret``) →
      ``{"access_token", "token_type", "expires_in"}``; unknown credentials:
      ``404 {"message": "Not found", "documentation_url"}``. ``DELETE /api/4.0/logout``.
    - without ``Authorization: token <t>``: ``401 {"message": "Requires authentication."}``.
    - ``PATCH /api/4.0/datagroups/{id}`` ``{"stale_before", "triggered_at"}`` → ``200``
      the datagroup; a time in the future: ``422 Validation Failed``; unknown: ``404``.
    - ``GET /api/4.0/derived_table/{model}/{view}/start`` → ``{"materialization_id",
      "resp_text": null}``; ``GET /api/4.0/derived_table/{id}/status`` →
      ``{"materialization_id", "resp_text": "{\\"status\\": ...}"}`` with ``pending``,
      ``running``, then ``complete`` or ``error``.
    - ``busy``: ``409`` on the trigger (not a documented Looker answer; exercises the
      hook's generic 409 handling).
    """

    routes: ClassVar[list[Route]] = [
        ("POST", r"/api/4\.0/login", "login"),
        ("DELETE", r"/api/4\.0/logout", "logout"),
        ("PATCH", r"/api/4\.0/datagroups/(?P<id>[^/]+)", "datagroup"),
        ("GET", r"/api/4\.0/derived_table/(?P<model>[^/]+)/(?P<view>[^/]+)/start", "start_pdt"),
        ("GET", r"/api/4\.0/derived_table/(?P<mid>[^/]+)/status", "status"),
    ]

    def _reset(self) -> None:
        self.datagroups: dict[str, Behavior] = {}
        self.pdts: dict[tuple[str, str], Behavior] = {}
        self.builds: dict[str, _LookerBuild] = {}
        self.tokens: set[str] = set()
        self.patches: list[Any] = []
        self.starts: list[dict[str, list[str]]] = []

    def add_datagroup(self, id: str, behavior: Behavior | None = None) -> None:
        self.datagroups[id] = behavior or Behavior()

    def add_pdt(self, model: str, view: str, behavior: Behavior | None = None) -> None:
        self.pdts[(model, view)] = behavior or Behavior()

    def login(self, request: Request) -> Reply:
        form = request.form()
        if (form.get("client_id"), form.get("client_secret")) != (LOOKER_CLIENT, LOOKER_SECRET):
            return looker_error(404, "Not found")
        token = uuid.uuid4().hex
        self.tokens.add(token)
        return json_reply(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": None,
            },
        )

    def _authorized(self, request: Request) -> Reply | None:
        header = request.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or token not in self.tokens:
            return looker_error(401, "Requires authentication.")
        return None

    def logout(self, request: Request) -> Reply:
        if denied := self._authorized(request):
            return denied
        self.tokens.discard(request.headers.get("Authorization", "").partition(" ")[2])
        return Reply(204)

    def datagroup(self, request: Request, id: str) -> Reply:
        if denied := self._authorized(request):
            return denied
        behavior = self.datagroups.get(id)
        if behavior is None:
            return looker_error(404, "Not found")
        body = request.json() or {}
        self.patches.append(body)
        now = datetime.now(UTC).timestamp()
        for key in ("stale_before", "triggered_at"):
            if body.get(key) is not None and body[key] > now + 1:
                return looker_error(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "field": key,
                            "code": "invalid",
                            "message": "must not be in the future",
                            "documentation_url": _LOOKER_DOCS,
                        }
                    ],
                )
        if behavior.busy > 0:
            behavior.busy -= 1
            return looker_error(409, "A trigger of this datagroup is already in progress.")
        if behavior.outcome == "failure":
            return looker_error(
                422,
                "Validation Failed",
                errors=[{"field": "datagroup", "code": "invalid", "message": "trigger failed"}],
            )
        return json_reply(
            200,
            {
                "id": id,
                "model_name": "ecommerce",
                "name": f"{id}_datagroup",
                "stale_before": body.get("stale_before"),
                "triggered_at": body.get("triggered_at"),
                "trigger_check_at": int(now),
                "trigger_error": None,
                "trigger_value": "2024-01-01",
                "created_at": int(now) - 86400,
                "can": {"update": True},
            },
        )

    def start_pdt(self, request: Request, model: str, view: str) -> Reply:
        if denied := self._authorized(request):
            return denied
        behavior = self.pdts.get((model, view))
        if behavior is None:
            return looker_error(404, "Not found")
        self.starts.append(dict(request.query))
        if behavior.busy > 0:
            behavior.busy -= 1
            return looker_error(409, f"A build of {view} is already in progress.")
        build = _LookerBuild(str(self.next_id() + 365), view, behavior.polls, behavior.outcome)
        self.builds[build.id] = build
        return json_reply(200, {"materialization_id": build.id, "resp_text": None})

    def status(self, request: Request, mid: str) -> Reply:
        if denied := self._authorized(request):
            return denied
        build = self.builds.get(mid)
        if build is None:
            return looker_error(404, "Not found")
        return json_reply(200, {"materialization_id": mid, "resp_text": json.dumps(build.status())})


# ======================================================================================
# A webhook receiver
# ======================================================================================


class WebhookDouble(Double):
    """A receiver at ``/hooks/{name}`` that checks ``Authorization: Bearer <token>``.

    ``success`` → ``202 {"accepted": true}``; ``failure`` → ``422 {"error": ...}``;
    ``busy`` → ``409`` that many times; ``never`` → hangs; wrong token → ``401``.
    """

    routes: ClassVar[list[Route]] = [
        (m, r"/hooks/(?P<name>[^/]+)", "receive") for m in ("POST", "PUT", "PATCH", "GET")
    ]

    def _reset(self) -> None:
        self.hooks: dict[str, Behavior] = {}
        self.received: list[Request] = []

    def add(self, name: str, behavior: Behavior | None = None) -> None:
        behavior = behavior or Behavior()
        self.hooks[name] = Behavior(behavior.outcome, behavior.polls, behavior.busy)

    def receive(self, request: Request, name: str) -> Reply | None:
        if request.headers.get("Authorization") != f"Bearer {WEBHOOK_TOKEN}":
            return json_reply(401, {"error": "invalid bearer token"})
        behavior = self.hooks.get(name)
        if behavior is None:
            return json_reply(404, {"error": f"no hook {name}"})
        self.received.append(request)
        if behavior.busy > 0:
            behavior.busy -= 1
            return json_reply(409, {"error": "a refresh is already running"})
        if behavior.outcome == "never":
            return None
        if behavior.outcome == "failure":
            return json_reply(422, {"error": "dashboard refresh rejected: unknown dataset"})
        return json_reply(202, {"accepted": True})


DOUBLES: dict[str, Callable[[], Double]] = {
    "tableau": TableauDouble,
    "powerbi": PowerBIDouble,
    "metabase": MetabaseDouble,
    "superset": SupersetDouble,
    "looker": LookerDouble,
    "webhook": WebhookDouble,
}
