"""A local JSON API for the REST source's tests and benchmark: real HTTP on loopback, no mocks.

:class:`RestServer` is a ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive) bound to
``127.0.0.1:0``; :func:`start` waits until ``/health`` answers, never sleeping; :func:`serving`
wraps start and stop for the tests' session-wide ``rest_server`` fixture. Tests mount any number of
:class:`Api` objects on it, each at ``/<mount>`` with its own pagination style, envelope,
auth, injected faults and call log, so tests never see each other's traffic.

Resources of every mount (deterministic data, see :func:`campaign` and friends):

* ``GET /campaigns``, ``GET /campaigns/{id}/ad_groups`` (0-3 per campaign; 404 for an unknown
  campaign), ``GET /spend?since=YYYY-MM-DD`` (days >= since, in date order),
  ``GET /events`` (types that change across pages), ``GET /bench`` (``bench_records``
  flat records), ``POST /oauth/token`` (client credentials grant), ``GET /health``.

Pagination (``Api.pagination``): ``page_number`` (``page`` from 1, ``per_page``),
``offset`` (``offset``, ``limit``), ``cursor`` (``after``=``meta.next``, ``limit``),
``link_header`` (``page``, ``per_page``, ``Link: <...>; rel="next"``), ``next_url``
(``page``, ``per_page``, body ``next``: a relative URL), ``none``. Envelope
(``Api.envelope``): ``data`` (``{"data": [...], "meta": {...}}``), ``list`` (a top-level
list), ``nested`` (``{"result": {"items": [...]}, ...}``).

Faults (``Api.fault_rate``): a request's first two attempts each fail with that
probability, decided by a hash of the request and the attempt number (so a run is
reproducible): 429 with ``Retry-After: 0`` or an HTTP date, 500, 503, a dropped connection
(no response), a reset mid-body, or a response delayed by ``slow_seconds``.

``python -m tests.servers.rest_server bench`` measures the REST source against raw fetch + parse.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import functools
import itertools
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

FAULTS = ("429", "429-date", "500", "503", "drop", "reset", "slow")
"""Injected at random (``fault_rate``); ``429-wait`` (``Retry-After: 1``) only by script."""
START = date(2026, 1, 1)


# --- the data ---------------------------------------------------------------------------


def campaign(i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": i,
        "name": f"Campaign {i}",
        "status": ("active", "paused", "archived")[i % 3],
        "budget": round(i * 10.25, 2),
        "created_at": f"2026-01-{i % 28 + 1:02d}T{i % 24:02d}:00:00Z",
        "settings": {"bid": i % 7, "geo": ["DE", "FR"][: i % 3]},
        "tags": [f"t{i % 5}"] if i % 2 else [],
    }
    if i > 100:
        record["label"] = f"L{i % 9}"  # a field that appears only on later pages
    return record


@functools.cache
def _campaigns(n: int) -> list[dict[str, Any]]:
    return [campaign(i) for i in range(1, n + 1)]


def ad_groups(campaign_id: int) -> list[dict[str, Any]]:
    return [
        {"id": campaign_id * 10 + k, "name": f"Group {campaign_id}.{k}", "bid": k + 0.5}
        for k in range(campaign_id % 4)
    ]


def spend(days: int, campaigns: int = 5) -> list[dict[str, Any]]:
    return [
        {
            "date": (START + timedelta(days=d)).isoformat(),
            "campaign_id": c,
            "amount": round((d * 7 + c * 13) % 100 + 0.5, 2),
            "clicks": (d * 31 + c * 17) % 500,
        }
        for d in range(days)
        for c in range(1, campaigns + 1)
    ]


def event(i: int) -> dict[str, Any]:
    """Types that change across pages: value int -> float, code int -> text, extra appears."""
    record: dict[str, Any] = {
        "id": i,
        "value": i * 2 if i <= 40 else i * 2 + 0.5,
        "code": i if i <= 60 else f"A{i}",
        "flag": i % 2 == 0,
    }
    if i > 60:
        record["extra"] = {"n": i, "tags": ["x"] * (i % 3)}
    return record


def bench_record(i: int) -> dict[str, Any]:
    """A flat record of 10 fields, like an ads reporting row."""
    return {
        "id": i,
        "campaign_id": i % 97,
        "date": (START + timedelta(days=i % 365)).isoformat(),
        "name": f"row {i}",
        "status": ("active", "paused")[i % 2],
        "amount": round((i * 7919 % 10_000) / 100, 2),
        "impressions": i * 31 % 1_000_000,
        "clicks": i * 17 % 1000,
        "active": i % 3 == 0,
        "updated_at": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
    }


# --- one mounted API --------------------------------------------------------------------


@dataclass
class Call:
    """One request as the server saw it, and what it did about it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    outcome: str  # "200", "401", ... or a fault name


@dataclass
class Api:
    """One API mounted at ``/<mount>``; see the module docstring."""

    mount: str
    pagination: str = "cursor"
    envelope: str = "data"
    auth: dict[str, Any] | None = None
    fault_rate: float = 0.0
    slow_seconds: float = 0.6
    first_faults: list[str] = field(default_factory=list)
    campaigns: int = 230
    spend_days: int = 40
    events: int = 120
    bench_records: int = 0
    default_page_size: int = 50
    max_page_size: int = 200
    token_ttl: float = 3600.0
    cache_pages: bool = False
    out_of_range_404: bool = False  # as Django REST framework answers a page past the end

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.attempts: Counter[str] = Counter()
        self.tokens: dict[str, float] = {}  # issued token -> expiry (monotonic)
        self.in_flight = self.max_in_flight = 0
        self._cache: dict[str, tuple[int, bytes, dict[str, str]]] = {}

    # what the tests compare with
    def expected(self, resource: str, **kw: Any) -> list[dict[str, Any]]:
        """Every record the API holds for ``resource``, in its order."""
        if resource == "campaigns":
            return _campaigns(self.campaigns)
        if resource == "ad_groups":
            return [
                {**g, "_campaigns_id": c}
                for c in range(1, self.campaigns + 1)
                for g in ad_groups(c)
            ]
        if resource == "spend":
            rows = spend(self.spend_days)
            return [r for r in rows if r["date"] >= kw.get("since", "")]
        if resource == "events":
            return [event(i) for i in range(1, self.events + 1)]
        if resource == "bench":
            return [bench_record(i) for i in range(self.bench_records)]
        raise KeyError(resource)

    @property
    def faults(self) -> int:
        return sum(1 for c in self.calls if c.outcome in (*FAULTS, "429-wait"))

    def data_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.path.endswith("/oauth/token")]

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # serving
    def handle(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._handle(h, method, path, query)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _handle(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict) -> None:
        length = int(h.headers.get("Content-Length", 0))
        h.body = h.rfile.read(length) if length else b""  # read before any fault: keep-alive
        key = f"{method} {h.path}"
        with self.lock:
            attempt = self.attempts[key]
            self.attempts[key] += 1
            scripted = self.first_faults.pop(0) if self.first_faults else None
        fault = scripted or self._fault(key, attempt)
        headers = {k.lower(): v for k, v in h.headers.items()}
        call = Call(method, path, query, headers, fault or "")
        with self.lock:
            self.calls.append(call)
        if fault:
            _fault(h, fault, self.slow_seconds)
            if fault != "slow":
                return
        status, body, extra = self._respond(h, method, path, query)
        call.outcome = call.outcome or str(status)
        _send(h, status, body, extra)

    def _fault(self, key: str, attempt: int) -> str | None:
        if attempt >= 2 or not self.fault_rate:
            return None
        h = zlib.crc32(f"{key}#{attempt}".encode())
        if h % 1000 >= self.fault_rate * 1000:
            return None
        return FAULTS[(h // 1000) % len(FAULTS)]

    def _respond(
        self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        if path == "/oauth/token" and method == "POST":
            return self._token(h)
        if method != "GET":
            return _error(405, "method not allowed")
        refusal = self._authenticate(h, query)
        if refusal:
            return refusal
        cache_key = f"{path}?{sorted(query.items())}"
        if self.cache_pages and cache_key in self._cache:
            return self._cache[cache_key]
        parts = path.strip("/").split("/")
        if parts == ["campaigns"]:
            items = self.expected("campaigns")
        elif len(parts) == 3 and parts[0] == "campaigns" and parts[2] == "ad_groups":
            if not parts[1].isdigit() or not 1 <= int(parts[1]) <= self.campaigns:
                return _error(404, f"campaign {parts[1]} not found")
            items = ad_groups(int(parts[1]))
        elif parts == ["spend"]:
            since = query.get("since", "")
            try:
                since and date.fromisoformat(since)
            except ValueError:
                return _error(422, f"since must be a date, not {since!r}")
            items = self.expected("spend", since=since)
        elif parts == ["events"]:
            items = self.expected("events")
        elif parts == ["bench"]:
            items = _Lazy(self.bench_records, bench_record)
        else:
            return _error(404, f"no such resource: {path}")
        result = self._page(h, path, query, items)
        if self.cache_pages:
            self._cache[cache_key] = result
        return result

    def _page(
        self, h: BaseHTTPRequestHandler, path: str, query: dict[str, str], items: Any
    ) -> tuple[int, bytes, dict[str, str]]:
        style, total = self.pagination, len(items)
        size_name = {"offset": "limit", "cursor": "limit"}.get(style, "per_page")
        try:
            size = int(query.get(size_name, self.default_page_size))
            if style == "offset":
                start = int(query.get("offset", 0))
            elif style == "cursor":
                after = query.get("after", "c0")
                start = int(after[1:]) if after.startswith("c") else -1
            else:
                start = (int(query.get("page", 1)) - 1) * size
        except ValueError:
            return _error(400, "page, per_page, offset, limit must be integers")
        if style == "none":
            start, size = 0, max(total, 1)
        elif start < 0 or not 1 <= size <= self.max_page_size:
            return _error(400, f"invalid page request {query}")
        if self.out_of_range_404 and start >= total > 0:
            return 404, orjson.dumps({"detail": "Invalid page."}), {}
        records = items[start : start + size]
        end = start + size >= total
        meta: dict[str, Any] = {}
        headers: dict[str, str] = {}
        following = dict(query) | {"page": str(start // size + 2), "per_page": str(size)}
        next_url = f"/{self.mount}{path}?{urlencode(following)}"
        if style == "page_number":
            meta = {"page": start // size + 1, "per_page": size, "total_pages": -(-total // size)}
        elif style == "offset":
            meta = {"offset": start, "limit": size, "total": total}
        elif style == "cursor":
            meta = {"next": None if end else f"c{start + size}"}
        elif style == "link_header" and not end:
            host = h.headers.get("host", "127.0.0.1")
            headers["Link"] = f'<http://{host}{next_url}>; rel="next", <http://{host}/x>; rel="x"'
        if self.envelope == "list":
            body: Any = records
        else:
            body = {"data": records} if self.envelope == "data" else {"result": {"items": records}}
            body["meta"] = meta
            if style == "next_url":
                body["next"] = None if end else next_url
        return 200, orjson.dumps(body), headers

    def _authenticate(
        self, h: BaseHTTPRequestHandler, query: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]] | None:
        auth = self.auth
        if auth is None:
            return None
        kind = auth["type"]
        given = h.headers.get("Authorization", "")
        if kind == "bearer" and given == f"Bearer {auth['token']}":
            return None
        if kind == "api_key":
            value = (
                h.headers.get(auth["name"]) if auth["in"] == "header" else query.get(auth["name"])
            )
            if value == auth["value"]:
                return None
            given = value or ""
        if kind == "basic":
            raw = f"{auth['username']}:{auth['password']}".encode()
            if given == f"Basic {base64.b64encode(raw).decode()}":
                return None
        if kind == "oauth2" and given.startswith("Bearer "):
            token = given.removeprefix("Bearer ")
            with self.lock:
                expiry = self.tokens.get(token)
            if expiry is not None and time.monotonic() < expiry:
                return None
        # a careless API echoes what it got: the connector must scrub it
        return _error(401, f"invalid credentials {given!r}", error="unauthorized")

    def _token(self, h: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        auth = self.auth or {}
        form = {k: v[0] for k, v in parse_qs(h.body.decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = h.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported grant type", error="unsupported_grant_type")
        if (client_id, secret) != (auth.get("client_id"), auth.get("client_secret")):
            return _error(401, f"client {client_id} refused", error="invalid_client")
        if auth.get("scope") and form.get("scope") != auth["scope"]:
            return _error(400, "invalid scope", error="invalid_scope")
        token = f"tok-{secrets.token_hex(8)}"
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}
        return 200, orjson.dumps(body), {}


class _Lazy:
    """A sequence of generated records, built only for the slice a page asks for."""

    def __init__(self, n: int, make: Any) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> list[dict[str, Any]]:
        return [self.make(i) for i in range(*s.indices(self.n))]


def _error(status: int, message: str, error: str = "error") -> tuple[int, bytes, dict[str, str]]:
    return status, orjson.dumps({"error": error, "message": message}), {}


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    try:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)
    except OSError:  # the client gave up (a timeout): nothing to answer
        h.close_connection = True


def _fault(h: BaseHTTPRequestHandler, fault: str, slow_seconds: float) -> None:
    """Misbehave: an error status, no response, half a response, or a late one."""
    if fault in ("429", "429-date", "429-wait", "500", "503"):
        status = int(fault[:3])
        headers = {}
        if status == 429:
            when = email.utils.formatdate(time.time() - 1, usegmt=True)
            headers["Retry-After"] = {"429-date": when, "429-wait": "1"}.get(fault, "0")
        _send(h, status, orjson.dumps({"message": f"injected {fault}"}), headers)
    elif fault == "drop":
        h.close_connection = True
    elif fault == "reset":
        body = orjson.dumps({"data": [{"id": 1}] * 50})
        try:
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        h.close_connection = True
    elif fault == "slow":
        time.sleep(slow_seconds)  # the server is slow; the client's timeout is shorter


# --- the server -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stalls
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.owner.dispatch(self, "GET")

    def do_POST(self) -> None:
        self.server.owner.dispatch(self, "POST")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: RestServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or vanish are part of the tests


class RestServer:
    """The HTTP server and its mounted APIs."""

    def __init__(self) -> None:
        self.httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.apis: dict[str, Api] = {}
        self._names = itertools.count()
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def mount(self, **settings: Any) -> Api:
        """A new API with ``settings`` (see :class:`Api`) at a fresh ``/<mount>``."""
        api = Api(mount=f"api{next(self._names)}", **settings)
        self.apis[api.mount] = api
        return api

    def base_url(self, api: Api) -> str:
        return f"{self.url}/{api.mount}"

    def dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(h.path)
        if split.path == "/health":
            _send(h, 200, b'{"ok":true}', {})
            return
        mount, _, rest = split.path.lstrip("/").partition("/")
        api = self.apis.get(mount)
        if api is None:
            _send(h, *_error(404, f"no API mounted at /{mount}"))
            return
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        api.handle(h, method, f"/{rest}", query)

    def start(self, timeout: float = 10.0) -> RestServer:
        """Serve in a thread; return once ``/health`` answers."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
            # no sleep: urlopen blocks until the server answers or refuses

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def serving() -> Iterator[RestServer]:
    """A started server, stopped at the end (the tests' session fixture wraps this)."""
    server = RestServer().start()
    try:
        yield server
    finally:
        server.stop()


# --- the benchmark ----------------------------------------------------------------------


def _serve(records: int, page_size: int) -> None:
    """Serve ``/api0/bench`` (page_number) and ``/api1/bench`` (cursor) until stdin closes."""
    server = RestServer()
    for style in ("page_number", "cursor"):
        server.mount(
            pagination=style,
            bench_records=records,
            default_page_size=page_size,
            max_page_size=page_size,
            cache_pages=True,
        )
    server.start()
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


def _bench(records: int, page_size: int, rounds: int) -> None:
    """Time raw fetch + parse, then RestSource.read, against a server in another process.

    The server pre-renders every page on the warm-up pass, so what is timed is the client:
    the raw loop (sequential ``httpx.Client.get`` + ``orjson.loads``) against ``read()``
    (discover excluded) with each pagination style and concurrency. Wall and client CPU.
    """
    import httpx
    import pyarrow as pa

    from connectors.base import ConfiguredStream, StreamSpec
    from connectors.http import tls_context
    from connectors.rest import RestSource

    server = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.rest_server", "serve", str(records), str(page_size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        pages = -(-records // page_size)

        def raw() -> int:
            n = 0
            with httpx.Client(verify=tls_context()) as client:  # as read(): CAs loaded once
                for p in range(1, pages + 1):
                    params = {"page": p, "per_page": page_size}
                    response = client.get(f"{url}/api0/bench", params=params)
                    n += len(orjson.loads(response.content)["data"])
            return n

        def read(style: str, concurrency: int) -> int:
            paging: dict[str, Any] = {"type": "cursor", "cursor_path": "$.meta.next"}
            params = {"limit": page_size}
            if style == "page_number":
                paging = {"type": "page_number", "size_param": "per_page", "size": page_size}
                params = {}
            config = {
                "base_url": f"{url}/{'api0' if style == 'page_number' else 'api1'}",
                "pagination": paging | ({"param": "after"} if style == "cursor" else {}),
                "rate_limit": {"max_concurrency": concurrency},
                "streams": {"bench": {"path": "/bench", "records": "$.data", "params": params}},
            }
            stream = ConfiguredStream(StreamSpec("bench", pa.schema([])), "full_refresh_overwrite")
            n = 0
            for message in RestSource("bench", config).read(stream, None):
                n += message.data.num_rows if hasattr(message, "data") else 0
            return n

        cases = {
            "raw fetch+parse (sequential get + orjson.loads)": raw,
            "read(), page_number, max_concurrency=1": lambda: read("page_number", 1),
            "read(), page_number, max_concurrency=4": lambda: read("page_number", 4),
            "read(), cursor (sequential requests, prefetched)": lambda: read("cursor", 4),
        }
        for run in cases.values():  # warm-up: the server renders and caches every page
            assert run() == records
        wall: dict[str, list[float]] = {label: [] for label in cases}
        cpu: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(rounds):
            for label, run in cases.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                run()
                wall[label].append(time.perf_counter() - started)
                cpu[label].append(time.process_time() - started_cpu)
        print(f"{records} records, {page_size}/page; best / median of {rounds}:")
        base_wall, base_cpu = min(wall[next(iter(cases))]), min(cpu[next(iter(cases))])
        for label in cases:
            w, c = sorted(wall[label]), sorted(cpu[label])
            w_best, w_median = w[0], w[len(w) // 2]
            c_best, c_median = c[0], c[len(c) // 2]
            print(
                f"  {label:46s} wall {w_best:5.2f} / {w_median:5.2f} s ({w_best / base_wall:.2f}x)"
                f"  client cpu {c_best:5.2f} / {c_median:5.2f} s ({c_best / base_cpu:.2f}x)"
            )
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.rest_server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the bench API; print its URL")
    bench = sub.add_parser("bench", help="RestSource.read vs raw fetch + parse")
    for p in (serve, bench):
        p.add_argument("records", type=int, nargs="?", default=500_000)
        p.add_argument("page_size", type=int, nargs="?", default=1000)
    bench.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args.records, args.page_size)
    else:
        _bench(args.records, args.page_size, args.rounds)


if __name__ == "__main__":
    main()
