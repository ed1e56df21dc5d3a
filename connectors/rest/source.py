"""REST source: any JSON-over-HTTP API, declared in ``stack.yml``, read into Arrow batches.

Everything the connector needs is the source's ``config:``, including the streams; the
``streams:`` block of ``stack.yml`` only picks sync modes and deletes by stream name::

    ads:
      connector: rest
      config:
        base_url: https://ads.example.com/v2
        auth: {type: bearer, token: "${vault:kv/ads#token}"}
        pagination: {type: cursor, cursor_path: $.meta.next, param: after}
        rate_limit: {max_concurrency: 4}
        streams:
          campaigns: {path: /campaigns, records: $.data, primary_key: [id]}
          spend: {path: /spend, records: $.data, primary_key: [date, campaign_id],
                  cursor: date, cursor_param: since}
          ad_groups: {path: "/campaigns/{parent.id}/ad_groups", parent: campaigns,
                      records: $.data}
      schema: raw_ads
      streams:
        campaigns: {sync: full_refresh_overwrite, delete_detection: snapshot, deletes: soft}
        spend: {sync: incremental_append}

Config keys (``spec()`` gives the JSON Schema; :mod:`connectors.rest.config` the models):

* ``base_url`` (required); ``headers`` and ``params`` sent with every request;
* ``auth``: ``{type: bearer, token}`` | ``{type: api_key, name, value, in: header|query}`` |
  ``{type: basic, username, password}`` | ``{type: oauth2_client_credentials, token_url,
  client_id, client_secret, scopes: [...], client_auth: basic|body}`` (the token is cached
  by the source object and replaced a little before ``expires_in`` runs out, and once on a
  401);
* ``pagination`` (default ``{type: none}``; a stream may override it):
  ``{type: page_number, param: page, start: 1, size_param, size, total_pages_path,
  total_path}`` |
  ``{type: offset, offset_param: offset, limit_param: limit, limit: 100, total_path}`` |
  ``{type: cursor, cursor_path, param: cursor}`` | ``{type: link_header, rel: next}`` |
  ``{type: next_url, path}``; page_number and offset pages are fetched concurrently, the
  others one after another (see :mod:`connectors.rest.paging`);
* ``rate_limit: {max_concurrency: 4, requests_per_second}``; ``timeout: 30`` (seconds, per
  connect/read); ``retries: {max: 5, backoff: 0.5, max_wait: 60}``; ``batch_size: 25000``;
* ``streams: {name: {...}}``: ``path`` (relative to ``base_url``; ``{parent.<field>}`` is
  replaced by a parent record's field), ``records`` (JSONPath of the records, default ``$``:
  :mod:`connectors.rest.jsonpath`), ``primary_key``, ``cursor`` (the field that grows with
  every change), ``cursor_param`` (the query parameter the saved cursor is sent as),
  ``lookback`` (seconds, or an ISO 8601 duration like ``P1D``, re-read before the saved
  cursor; cursor units for numeric cursors), ``params``, ``pagination``, ``parent`` and
  ``parent_fields`` (child column -> parent field added to each child record; default
  ``_<parent>_<key>`` for each parent primary key field), ``schema`` (``{column: string |
  integer | number | boolean | date | timestamp | json}``).

Discover: a stream's schema is inferred from its first page (one request; for a child, a
parent page and then the child endpoint of the first parents until one has records), with
the declared ``schema`` types overriding; a stream whose ``schema`` declares its key, cursor
and parent columns costs no request and has the declared columns only (read still adds the
others). Key and cursor columns nothing tells the type of (an empty first page) are text.
``full_refresh_*`` always; ``incremental_*`` when the stream has a cursor.

Read: pages fetched in threads of their own, up to ``max(8, 2 * max_concurrency)`` pages
ahead. Once the first page has settled the column types, those threads read each page
straight into Arrow (:mod:`connectors.rest.decode`, C++ with the GIL released); a page that
does not fit the settled types exactly (a new column, a wider type, nested values) is parsed
with orjson and converted column-wise by the reading thread, the schema widened as pages
arrive (:mod:`connectors.rest.columns`: nested objects and lists become JSON text). Pages are
gathered into Arrow batches of about ``batch_size`` rows. Full refresh
ends with ``Checkpoint({})``. Incremental state is ``{"cursor": <the greatest cursor value
delivered>}``, as the API wrote it (text or number); the next read sends
``cursor_param=<state - lookback>`` and keeps only records whose cursor is above it (so an
API that ignores the parameter, or treats it as inclusive, does not duplicate rows; records
without a cursor value are read by the first read only). Text cursors compare as text: ISO
8601 in one format and zone orders correctly. While the records arrive in cursor order, a
checkpoint is emitted between batches wherever the cursor value changes (a crash re-reads at
most one batch); records out of order stop that (with a warning) and the state is saved
once, at the end. Parent -> child: the parent stream is read in full for every read of the
child.

Errors: see :mod:`connectors.rest.http` (429/5xx/timeouts retried, then SourceUnavailable;
other 4xx ConnectorError at once, with the stream, the URL without secrets, and the API's
message). The config is validated on construction, but a bad one only raises when the source
is used, so that :meth:`RestSource.check` can report it.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import date, datetime, timedelta
from itertools import compress
from typing import Any

import pyarrow as pa

from connectors.base import (
    FULL_REFRESH_MODES,
    INCREMENTAL_MODES,
    BaseSource,
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Message,
    State,
    StreamSpec,
)
from connectors.errors import ConnectorError
from connectors.http import mask_url
from connectors.rest.columns import Columns
from connectors.rest.config import (
    CursorPagination,
    NextUrlPagination,
    RestConfig,
    StreamDef,
    iso_duration,
)
from connectors.rest.decode import PageDecoder
from connectors.rest.http import Credentials, Session, pacer_for
from connectors.rest.paging import Page, Pager, prefetch

log = logging.getLogger("connectors.rest")


class RestSource(BaseSource[RestConfig]):
    """A JSON REST API as a :class:`~connectors.base.Source` (see the module docstring)."""

    config_model = RestConfig

    def configure(self, config: RestConfig) -> None:
        self._credentials = Credentials(config)
        self._pacer = pacer_for(config)

    def check_connection(self) -> str:
        """Fetch the first page of the first stream without a parent."""
        cfg = self.config
        name = next((n for n, s in cfg.streams.items() if s.parent is None), None)
        if name is None:  # pragma: no cover - parents form no cycle, so a root exists
            raise ConnectorError("no stream without a parent", source=self.name)
        with self._reading() as pager, closing(pager.pages(name, {}, limit=1)) as pages:
            page = next(pages)
        return (
            f"GET {mask_url(page.response.url)}: HTTP {page.response.status_code}, "
            f"{len(page.records)} records on the first page of stream {name!r}"
        )

    def discover(self) -> Catalog:
        """One stream per configured stream; schemas declared, or inferred from a first page.

        Raises:
            ConnectorError: invalid config, a refused request; SourceUnavailable when the API
                cannot be reached.
        """
        cfg = self.config
        specs = []
        with self._reading() as pager:
            for name, stream in cfg.streams.items():
                declared = stream.schema_ or {}
                columns = Columns(name, declared, self.name)
                needed = _needed_columns(cfg, stream)
                if stream.schema_ is None or not all(c in declared for c in needed):
                    page = pager.first_page(name)
                    if page is not None:
                        columns.to_batch(page.records)
                    elif any(c not in declared for c in needed):
                        log.warning(
                            "%s.%s: no records to infer the types of %s from; taking them as "
                            "text (declare them under `schema:` to choose)",
                            self.name,
                            name,
                            ", ".join(c for c in needed if c not in declared),
                        )
                specs.append(_spec(name, stream, columns.schema, needed))
        return Catalog(streams=tuple(specs))

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """Yield the stream's records as Arrow batches, then checkpoints; see the docstring.

        Raises:
            ConnectorError: bad config or state, an unknown stream, a refused request,
                records that are not JSON objects, cursor values that cannot be compared.
            SourceUnavailable: the API stayed unavailable through every retry.
        """
        cfg = self.config
        definition = cfg.streams.get(stream.name)
        if definition is None:
            raise ConnectorError(
                f"no stream named {stream.name!r}; configured: {sorted(cfg.streams)}",
                source=self.name,
                stream=stream.name,
                hint="add it under the source's `config: streams:` in stack.yml",
            )
        cursor = None
        params: dict[str, Any] = {}
        if stream.incremental:
            cursor = self._cursor(stream, definition, state)
            if definition.cursor_param and cursor.low is not None:
                params[definition.cursor_param] = cursor.low
        started, rows = time.perf_counter(), 0
        columns = Columns(stream.name, definition.schema_, self.name)
        reader = _PageReader(stream.name, columns, cursor, _decoder(cfg, definition))
        with self._reading() as pager:
            depth = max(8, 2 * cfg.rate_limit.max_concurrency)
            pages = pager.pages(stream.name, params, decoder=reader.decoder)
            with closing(prefetch(pages, depth)) as ahead:
                for message in reader.batches(pager, ahead, cfg.batch_size):
                    if isinstance(message, Batch):
                        rows += message.data.num_rows
                    yield message
        final = cursor.state() if cursor is not None else {}
        log.info(
            "read %s.%s: %d rows in %.2f s (%d of %d pages read straight into Arrow), state %s",
            self.name,
            stream.name,
            rows,
            time.perf_counter() - started,
            reader.decoded,
            reader.pages,
            final,
        )
        yield Checkpoint(stream.name, final)

    def check_state(self, stream: ConfiguredStream, state: State) -> None:
        """An incremental stream's state is ``{"cursor": <the greatest value read>}``: a
        number for a numeric cursor, ISO 8601 text for a date or time one, text otherwise;
        a full refresh ignores it."""
        definition = self.config.streams.get(stream.name)
        if not stream.incremental or definition is None:
            return
        cursor = self._cursor(stream, definition, state)
        schema = stream.spec.schema
        if cursor.saved is None or cursor.field not in schema.names:
            return
        kind = schema.field(cursor.field).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        fits = isinstance(cursor.saved, str) != numeric
        if fits and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            fits = _iso_moment(cursor.saved) is not None
        if not fits:
            raise ConnectorError(
                f"cursor {cursor.saved!r} is not a value of column {cursor.field!r} ({kind}): "
                'the state is {"cursor": <a number>} for a numeric cursor, '
                '{"cursor": "<ISO 8601 date or time>"} for a date or time one',
                source=self.name,
                stream=stream.name,
                key="cursor",
                hint="reset the stream's state to read it again from the start",
            )

    def _cursor(
        self, stream: ConfiguredStream, definition: StreamDef, state: State | None
    ) -> _Cursor:
        """The incremental cursor of a read of ``stream`` from ``state``.

        Raises:
            ConnectorError: the stream has no cursor, or the state no valid one.
        """
        field = stream.cursor or definition.cursor
        if field is None:
            raise ConnectorError(
                "incremental read needs a cursor",
                source=self.name,
                stream=stream.name,
                key="cursor",
                hint=f"set `cursor:` under `config: streams: {stream.name}:` in stack.yml",
            )
        return _Cursor(self.name, stream.name, field, state, definition.lookback)

    @contextmanager
    def _reading(self) -> Iterator[Pager]:
        """A session and a thread pool for one call; abandoned fetches are not waited for."""
        cfg = self.config
        session = Session(self.name, cfg, self._credentials, self._pacer)
        pool = ThreadPoolExecutor(cfg.rate_limit.max_concurrency, thread_name_prefix="rest")
        finished = False
        try:
            yield Pager(session, cfg, pool)
            finished = True
        finally:
            pool.shutdown(wait=finished, cancel_futures=True)
            session.close()


def _needed_columns(cfg: RestConfig, stream: StreamDef) -> list[str]:
    """Columns a stream's schema must have: its key, its cursor, the parent columns added."""
    needed = [*stream.primary_key, *([stream.cursor] if stream.cursor else [])]
    if stream.parent is not None:
        parent = cfg.streams[stream.parent]
        needed += stream.parent_fields or [
            f"_{stream.parent}_{key}" for key in parent.primary_key or stream.path_fields
        ]
    return list(dict.fromkeys(needed))


def _spec(name: str, stream: StreamDef, schema: pa.Schema, needed: list[str]) -> StreamSpec:
    """The stream's spec; needed columns never seen are added as text."""
    for column in needed:
        if column not in schema.names:
            schema = schema.append(pa.field(column, pa.string()))
    return StreamSpec(
        name=name,
        schema=schema,
        primary_key=stream.primary_key,
        cursor=stream.cursor,
        sync_modes=FULL_REFRESH_MODES + INCREMENTAL_MODES if stream.cursor else FULL_REFRESH_MODES,
    )


def _decoder(cfg: RestConfig, stream: StreamDef) -> PageDecoder | None:
    """The stream's page decoder: none for a child stream (its records gain parent fields)."""
    if stream.parent is not None:
        return None
    paging = cfg.pagination_of(stream)
    token = None
    if isinstance(paging, CursorPagination):
        token = paging.cursor_path
    elif isinstance(paging, NextUrlPagination):
        token = paging.path
    return PageDecoder.of(stream.records, token)


class _PageReader:
    """Pages into batches of about ``batch_size`` rows, checkpointing between them where the
    cursor allows (see :class:`_Cursor`).

    A page read into Arrow by the decoder is fitted to the running schema
    (:meth:`Columns.fit`); any other page, or one that does not fit, is converted from its
    JSON objects (:meth:`Columns.to_batch`). After each page the decoder is told the types
    settled on, or turned off if a page it could not read left them as they were.
    """

    def __init__(
        self, name: str, columns: Columns, cursor: _Cursor | None, decoder: PageDecoder | None
    ) -> None:
        self.name, self.columns, self.cursor, self.decoder = name, columns, cursor, decoder
        self.pages = self.decoded = 0
        if decoder is not None:
            decoder.settle(columns.parse_types())

    def batches(self, pager: Pager, pages: Iterator[Page], batch_size: int) -> Iterator[Message]:
        pending: list[pa.RecordBatch] = []
        count = 0
        for page in pages:
            batch = self._convert(pager, page)
            if batch is not None and batch.num_rows:
                pending.append(batch)
                count += batch.num_rows
            if count >= batch_size:
                yield from self._flush(pending)
                pending, count = [], 0
        if count:
            yield from self._flush(pending)

    def _flush(self, pending: list[pa.RecordBatch]) -> Iterator[Message]:
        if self.cursor is not None:
            before = self.cursor.checkpoint_before_batch()
            if before is not None:
                yield Checkpoint(self.name, before)
        yield Batch(self.name, self.columns.conform(pending))

    def _convert(self, pager: Pager, page: Page) -> pa.RecordBatch | None:
        self.pages += 1
        if page.arrow is not None and not self._float_cursor(page.arrow):
            batch = self.columns.fit(page.arrow)
            if batch is not None:
                self.decoded += 1
                if self.cursor is not None:
                    values = _column(page.arrow, self.cursor.field)
                    keep = self.cursor.admit_values(values)
                    batch = batch if keep is None else batch.filter(keep)
                return batch
        records = pager.records_of(self.name, page)
        if self.cursor is not None:
            records = self.cursor.admit(records)
        batch = self.columns.to_batch(records) if records else None
        if self.decoder is not None:
            settled = self.columns.parse_types()
            if page.decoded_with is not None and settled == page.decoded_with:
                self.decoder.disable()
            self.decoder.settle(settled)
        return batch

    def _float_cursor(self, raw: pa.RecordBatch) -> bool:
        """Whether the cursor is read as floats, which would turn its integers (the state
        the next read sends) into floats: such pages take orjson's path."""
        if self.cursor is None or self.cursor.field not in raw.schema.names:
            return False
        return pa.types.is_floating(raw.schema.field(self.cursor.field).type)


def _column(batch: pa.RecordBatch, name: str) -> list[Any]:
    index = batch.schema.get_field_index(name)
    return batch.column(index).to_pylist() if index >= 0 else [None] * batch.num_rows


class _Cursor:
    """The incremental cursor of one read: which records are new, and what state covers them.

    ``low`` is the saved cursor minus the lookback: sent as ``cursor_param`` and used to drop
    records at or below it. ``high`` is the greatest value delivered (never below the saved
    one). While every value arrives in order, a batch whose first value is above everything
    before it may be preceded by a checkpoint of that everything.
    """

    def __init__(
        self, source: str, stream: str, field: str, state: State | None, lookback: Any
    ) -> None:
        self.source, self.stream, self.field = source, stream, field
        saved = (state or {}).get("cursor")
        if saved is not None and (
            isinstance(saved, bool) or not isinstance(saved, str | int | float)
        ):
            raise ConnectorError(
                f"state {state!r} has no valid cursor",
                source=source,
                stream=stream,
                hint="reset the stream's state to read it again from the start",
            )
        self.saved = saved
        self.low = _minus(saved, lookback, source, stream) if saved is not None else None
        self.high = saved
        self._ordered = True
        self._last: Any = None  # the last value delivered
        self._batch_first: Any = None  # the first value of the batch being gathered
        self._covered: Any = None  # high when the previous batch was flushed

    def admit(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of a page that are new; updates the high-water mark."""
        keep = self.admit_values([r.get(self.field) for r in records])
        return records if keep is None else list(compress(records, keep))

    def admit_values(self, values: list[Any]) -> list[bool] | None:
        """Which of a page's cursor values are new (None: all); updates the high-water mark."""
        field = self.field
        keep = None
        try:
            if self.low is not None:
                low = self.low
                keep = [v is not None and v > low for v in values]
                if all(keep):
                    keep = None
                else:
                    values = list(compress(values, keep))
            present = [v for v in values if v is not None]
            if not present:
                return keep
            top = max(present)
            if self._ordered:
                in_order = self._last is None or present[0] >= self._last
                if not (in_order and all(map(operator.le, present, present[1:]))):
                    self._ordered = False
                    log.warning(
                        "%s.%s: records are not in %s order; the state is saved at the end "
                        "of the read only (sort the API's results by the cursor if it can)",
                        self.source,
                        self.stream,
                        field,
                    )
            self._last = present[-1]
            if self._batch_first is None:
                self._batch_first = present[0]
            if self.high is None or top > self.high:
                self.high = top
        except TypeError:
            kinds = sorted({type(v).__name__ for v in values} | {type(self.low).__name__})
            raise ConnectorError(
                f"cursor {field!r} values cannot be compared: they mix {', '.join(kinds)}",
                source=self.source,
                stream=self.stream,
                key="cursor",
                hint="choose a cursor field with one type, or reset the stream's state",
            ) from None
        return keep

    def checkpoint_before_batch(self) -> State | None:
        """The state to commit before the batch just gathered, if it is safe; None if not."""
        first, covered = self._batch_first, self._covered
        self._batch_first, self._covered = None, self.high
        if self._ordered and covered is not None and first is not None and first > covered:
            return {"cursor": covered}
        return None

    def state(self) -> State:
        return {} if self.high is None else {"cursor": self.high}


def _minus(saved: Any, lookback: Any, source: str, stream: str) -> Any:
    """``saved`` moved back by ``lookback``: numbers by the number, ISO text by the duration."""
    if not lookback:
        return saved
    if isinstance(saved, int | float):
        if isinstance(lookback, str):
            hint = "give a number (in cursor units) as lookback for a numeric cursor"
            raise ConnectorError(
                "a duration lookback needs a date/time cursor",
                source=source,
                stream=stream,
                key="lookback",
                hint=hint,
            )
        return saved - lookback
    delta = iso_duration(lookback) if isinstance(lookback, str) else timedelta(seconds=lookback)
    assert delta is not None  # the config validated it
    moment = _iso_moment(saved)
    if moment is None:
        raise ConnectorError(
            f"lookback needs an ISO 8601 date or timestamp cursor, and the state holds {saved!r}",
            source=source,
            stream=stream,
            key="lookback",
            hint="remove `lookback`, or use a date/time cursor",
        )
    if not isinstance(moment, datetime):
        days = delta.days + (1 if delta - timedelta(days=delta.days) else 0)
        return (moment - timedelta(days=days)).isoformat()
    text = (moment - delta).isoformat()
    return text.removesuffix("+00:00") + "Z" if saved.endswith(("Z", "z")) else text


def _iso_moment(text: str) -> date | datetime | None:
    """ISO 8601 text as a date (10 characters) or a datetime (a trailing ``Z`` is UTC);
    None when it is neither."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        zulu = text.endswith(("Z", "z"))
        return datetime.fromisoformat(text[:-1] + "+00:00" if zulu else text)
    except ValueError:
        return None
