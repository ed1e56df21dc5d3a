"""Pages of a REST stream, in order, fetched concurrently where the pagination allows it.

A :class:`Pager` yields :class:`Page` objects (the records of one response, already parsed
with orjson and picked by the stream's record selector) strictly in the API's order, while a
thread pool of ``rate_limit.max_concurrency`` workers fetches ahead:

* ``page_number`` and ``offset``: after the first page, the next ``max_concurrency`` pages
  are requested at once (up to the total, when ``total_pages_path`` / ``total_path`` give it).
  The stream ends at the first page with fewer records than the page size, with none, or
  answered 404 (past the end, as Django REST framework says); pages fetched past it are
  dropped unread, at most ``max_concurrency - 1`` wasted requests. A page repeating the one
  before it is an error (the API ignores the page parameter: it would loop forever).
* ``cursor``, ``link_header``, ``next_url``: each page names the next, so they are
  sequential, but the next request is sent as soon as a page is parsed. An empty page, or
  one naming no next page, ends the stream; a next page equal to the current one is an
  error (the API would loop forever).
* parent -> child streams: the parent's records are read as above, and the child endpoint
  of up to ``max_concurrency`` parents is read at once (each parent's pages in sequence).

The engine is synchronous: the pool is private to one read and shut down when the read ends
or is abandoned. Workers only fetch; waiting for results happens in one thread only (see
:func:`prefetch`: the pages are gathered in a thread of their own, up to a few pages ahead of
the caller converting them), so nested parent/child pools cannot deadlock.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pyarrow as pa

from connectors._json_arrow import loads
from connectors.errors import ConnectorError
from connectors.http import error_text, mask_url
from connectors.rest.config import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PageNumberPagination,
    RestConfig,
    StreamDef,
)
from connectors.rest.decode import PageDecoder
from connectors.rest.http import Session
from connectors.rest.jsonpath import JsonPath

_PATH_FIELD = "{parent.%s}"


@dataclass(frozen=True)
class Request:
    """A GET to send: ``params`` are merged into the query string ``url`` may already have."""

    url: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Page:
    """One response: its records, document and response, for the paginator.

    The records are JSON objects (``records``), or, where the stream's
    :class:`~connectors.rest.decode.PageDecoder` could read the page, Arrow columns
    (``arrow``; ``records`` is then empty and ``doc`` holds only the page token).
    ``decoded_with``: the column types a decoder tried the page against, if it did.
    """

    request: Request
    records: list[dict[str, Any]]
    doc: Any
    response: httpx.Response
    arrow: pa.RecordBatch | None = None
    decoded_with: Mapping[str, pa.DataType] | None = None

    @property
    def count(self) -> int:
        return self.arrow.num_rows if self.arrow is not None else len(self.records)

    def ends(self) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """The record count, first and last records without null fields (comparable across
        forms): equal for a page that repeats the page before it."""
        if self.arrow is not None:
            edges = self.arrow.take([0, self.count - 1]).to_pylist()
        else:
            edges = [self.records[0], self.records[-1]]
        first, last = ({k: v for k, v in r.items() if v is not None} for r in edges)
        return self.count, first, last


class Pager:
    """Reads the pages of streams of one source through one :class:`Session`."""

    def __init__(self, session: Session, config: RestConfig, pool: ThreadPoolExecutor) -> None:
        self.session = session
        self.config = config
        self.pool = pool
        self.window = config.rate_limit.max_concurrency

    def pages(
        self,
        name: str,
        params: dict[str, Any],
        limit: int | None = None,
        decoder: PageDecoder | None = None,
    ) -> Generator[Page]:
        """Every page of stream ``name`` (``params`` added to its first request), in order.

        ``limit`` stops after that many pages (and, for a child, that many parents);
        ``decoder`` reads pages straight into Arrow where it can (not for a child stream).
        """
        stream = self.config.streams[name]
        if stream.parent is None:
            first = Request(self._url(stream.path), self._params(stream, params))
            yield from self._endpoint(name, stream, first, limit, self.pool, self.window, decoder)
            return
        yield from self._children(name, stream, params, limit)

    def first_page(self, name: str) -> Page | None:
        """The first page of ``name`` with records (for a child: of one of the first parents)."""
        for page in self.pages(name, {}, limit=5 if self.config.streams[name].parent else 1):
            if page.records:
                return page
        return None

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.config.base_url}/{path.lstrip('/')}"

    def _params(self, stream: StreamDef, extra: dict[str, Any]) -> dict[str, Any]:
        return {**self.config.params, **stream.params, **extra}

    def fetch(
        self,
        name: str,
        stream: StreamDef,
        request: Request,
        beyond: bool = False,
        decoder: PageDecoder | None = None,
    ) -> Page:
        """GET ``request``, parse the body, pick the records (runs in the pool's workers).

        ``beyond``: a numbered page after the first, which may be past the end; a 404 for it
        (as Django REST framework answers) is an empty page. ``decoder``: try it first.
        """
        accept = frozenset({404}) if beyond else frozenset()
        response = self.session.send(name, "GET", request.url, params=request.params, accept=accept)
        if response.status_code == 404:
            return Page(request, [], None, response)
        decoded = decoder.decode(response.content) if decoder is not None else None
        if decoded is not None and decoded.batch is not None:
            return Page(request, [], decoded.doc, response, decoded.batch, decoded.types)
        records, doc = self.parse(name, stream, response)
        types = decoded.types if decoded is not None else None
        return Page(request, records, doc, response, None, types)

    def records_of(self, name: str, page: Page) -> list[dict[str, Any]]:
        """A page's records as JSON objects, parsed again if it was read into Arrow."""
        if page.arrow is None:
            return page.records
        return self.parse(name, self.config.streams[name], page.response)[0]

    def parse(
        self, name: str, stream: StreamDef, response: httpx.Response
    ) -> tuple[list[dict[str, Any]], Any]:
        """The records (JSON objects, picked by the stream's selector) and the document."""
        try:
            doc = loads(response.content)
        except ValueError:
            raise ConnectorError(
                f"GET {mask_url(response.url)} did not return JSON "
                f"({response.headers.get('content-type', 'no content type')}): "
                f"{error_text(response, self.session.redact)}",
                source=self.session.source,
                stream=name,
                hint="check `base_url` and the stream's `path`",
            ) from None
        records = stream.records.records(doc)
        if not all(type(r) is dict for r in records):
            raise ConnectorError(
                f"the records at {stream.records.text} of GET {mask_url(response.url)} are not "
                "all JSON objects",
                source=self.session.source,
                stream=name,
                key=f"streams.{name}.records",
                hint="point `records:` at the list of objects, e.g. $.data",
            )
        return records, doc

    def _endpoint(
        self,
        name: str,
        stream: StreamDef,
        first: Request,
        limit: int | None,
        executor: ThreadPoolExecutor | _Inline,
        window: int,
        decoder: PageDecoder | None = None,
    ) -> Iterator[Page]:
        paging = self.config.pagination_of(stream)
        if isinstance(paging, PageNumberPagination | OffsetPagination):
            yield from self._numbered(name, stream, first, paging, limit, executor, window, decoder)
        else:
            yield from self._sequential(name, stream, first, paging, limit, executor, decoder)

    def _numbered(
        self,
        name: str,
        stream: StreamDef,
        first: Request,
        paging: PageNumberPagination | OffsetPagination,
        limit: int | None,
        executor: ThreadPoolExecutor | _Inline,
        window: int,
        decoder: PageDecoder | None,
    ) -> Iterator[Page]:
        def request(k: int) -> Request:
            if isinstance(paging, PageNumberPagination):
                extra = {paging.param: paging.start + k}
                if paging.size_param and paging.size:
                    extra[paging.size_param] = paging.size
            else:
                extra = {paging.offset_param: k * paging.limit, paging.limit_param: paging.limit}
            return Request(first.url, {**first.params, **extra})

        size = paging.size if isinstance(paging, PageNumberPagination) else paging.limit
        page = self.fetch(name, stream, request(0))
        yield page
        total = _total_pages(paging, page.doc)
        if limit is not None:
            total = min(total or limit, limit)
        if not page.count or (size and page.count < size):
            return
        pending: deque[Future[Page]] = deque()
        k = 1
        try:
            while True:
                while len(pending) < window and (total is None or k < total):
                    pending.append(
                        executor.submit(self.fetch, name, stream, request(k), True, decoder)
                    )
                    k += 1
                if not pending:
                    return
                previous, page = page, pending.popleft().result()
                if page.count and page.ends() == previous.ends():
                    raise ConnectorError(
                        f"pagination does not advance: GET {mask_url(page.response.url)} "
                        "returned the records of the page before it",
                        source=self.session.source,
                        stream=name,
                        hint="check the pagination's parameter names (`param`, `offset_param`)",
                    )
                if not page.count or (size and page.count < size):
                    yield page
                    return
                if len(pending) < window and (total is None or k < total):  # keep one ahead
                    pending.append(
                        executor.submit(self.fetch, name, stream, request(k), True, decoder)
                    )
                    k += 1
                yield page
        finally:
            for future in pending:
                future.cancel()

    def _sequential(
        self,
        name: str,
        stream: StreamDef,
        first: Request,
        paging: Any,
        limit: int | None,
        executor: ThreadPoolExecutor | _Inline,
        decoder: PageDecoder | None,
    ) -> Iterator[Page]:
        fetch = partial(self.fetch, name, stream, beyond=False, decoder=decoder)
        future: Future[Page] | None = executor.submit(fetch, first)
        count = 0
        try:
            while future is not None:
                page = future.result()
                count += 1
                following = None
                if page.count and (limit is None or count < limit):
                    following = _next_request(paging, page)
                if following is not None and following == page.request:
                    raise ConnectorError(
                        f"pagination does not advance: GET {mask_url(page.response.url)} "
                        "names itself as the next page",
                        source=self.session.source,
                        stream=name,
                        hint="check the pagination settings (`cursor_path`, `path`, `rel`)",
                    )
                future = None
                if following is not None:
                    future = executor.submit(fetch, following)
                yield page
        finally:
            if future is not None:
                future.cancel()

    def _children(
        self, name: str, stream: StreamDef, params: dict[str, Any], limit: int | None
    ) -> Iterator[Page]:
        """Pages of a child stream: its endpoint read for each parent record, in parent order."""
        assert stream.parent is not None
        parent = self.config.streams[stream.parent]
        added = stream.parent_fields or {
            f"_{stream.parent}_{key}": key for key in parent.primary_key or stream.path_fields
        }
        parents = (r for page in self.pages(stream.parent, {}, limit) for r in page.records)

        def read_all(record: dict[str, Any]) -> list[Page]:
            """Every page of one parent's child endpoint, fetched in this worker thread."""
            values = {column: _field(record, key) for column, key in added.items()}
            url = self._url(_substitute(stream, record, name, self.session.source))
            request = Request(url, self._params(stream, params))
            pages = list(self._endpoint(name, stream, request, limit, _Inline(), 1))
            for page in pages:
                for child in page.records:
                    child.update(values)
            return pages

        pending: deque[Future[list[Page]]] = deque()
        done = False
        try:
            while True:
                while not done and len(pending) < self.window:
                    record = next(parents, None)
                    if record is None:
                        done = True
                    else:
                        pending.append(self.pool.submit(read_all, record))
                if not pending:
                    return
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            parents.close()


def _next_request(paging: Any, page: Page) -> Request | None:
    """The request for the page after ``page`` (cursor, Link header, next URL), or None."""
    if isinstance(paging, NoPagination):
        return None
    if isinstance(paging, CursorPagination):
        token = paging.cursor_path.first(page.doc)
        if token is None or token == "" or token is False:
            return None
        return Request(page.request.url, {**page.request.params, paging.param: token})
    if isinstance(paging, LinkHeaderPagination):
        link = page.response.links.get(paging.rel, {}).get("url")
    elif isinstance(paging, NextUrlPagination):
        link = paging.path.first(page.doc)
    else:  # pragma: no cover - the config admits no other type
        raise TypeError(paging)
    if not link or not isinstance(link, str):
        return None
    return Request(str(page.response.url.join(link)))


def _total_pages(paging: PageNumberPagination | OffsetPagination, doc: Any) -> int | None:
    """Pages in all, from the first page's body: a page count, or a record count."""
    size = paging.size if isinstance(paging, PageNumberPagination) else paging.limit
    if isinstance(paging, PageNumberPagination) and paging.total_pages_path:
        return _count(paging.total_pages_path, doc)
    records = _count(paging.total_path, doc) if paging.total_path else None
    return None if records is None or not size else -(-records // size)


def _count(path: JsonPath, doc: Any) -> int | None:
    value = path.first(doc)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return int(value) if str(value).isdigit() or isinstance(value, int | float) else None


def _field(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _substitute(stream: StreamDef, record: dict[str, Any], name: str, source: str) -> str:
    """``/campaigns/{parent.id}/ad_groups`` with the parent's (URL-quoted) field values."""
    path = out = stream.path
    for dotted in stream.path_fields:
        value = _field(record, dotted)
        if value is None or isinstance(value, dict | list):
            raise ConnectorError(
                f"a parent record has no usable field {dotted!r} for the path {path!r}",
                source=source,
                stream=name,
                key=f"streams.{name}.path",
                hint="use a field every parent record has, e.g. {parent.id}",
            )
        text = orjson.dumps(value).decode() if not isinstance(value, str) else value
        out = out.replace(_PATH_FIELD % dotted, quote(text, safe=""))
    return out


def prefetch(pages: Iterator[Page], depth: int) -> Generator[Page]:
    """``pages``, iterated in a thread of their own up to ``depth`` pages ahead of the caller.

    The caller converts pages to Arrow in large batches; meanwhile this thread keeps the
    requests going (a sequential pagination would otherwise wait for every conversion).
    An error in the thread is raised in the caller; closing the iterator stops the thread.
    """
    handoff: queue.Queue[Page | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Page | _End) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        end = _End(None)
        try:
            for page in pages:
                if not put(page):
                    return
        except Exception as exc:  # handed to the caller, raised there
            end = _End(exc)
        finally:
            pages.close()  # type: ignore[attr-defined]
        put(end)

    thread = threading.Thread(target=pump, name="rest-pages", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()


@dataclass(frozen=True)
class _End:
    """The end of a prefetched page stream, and the error that ended it, if any."""

    error: Exception | None


class _Inline:
    """An executor running each task at once in the calling thread: a worker reading a
    child endpoint must never wait on the pool it runs in."""

    def submit(self, fn: Callable[..., Page], *args: Any) -> Future[Page]:
        future: Future[Page] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future
