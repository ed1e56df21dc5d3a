"""PostgreSQL source: tables and views as Arrow batches, incremental by cursor, CDC with deletes.

Config (:class:`~connectors.postgres.config.PostgresConfig`): ``host``, ``port`` (5432),
``database``, ``user``, ``password``,
``schemas`` (``["public"]``), ``tables`` (include list: ``name`` or ``schema.name``),
``batch_size`` (16 384 rows), ``readers`` (connections reading a big table at once, 1-16;
min(4, cores) when left out), ``lookback``, ``connect_timeout`` (10 s), ``sslmode``, and
``replication: {slot, publication, plugin}`` to turn on CDC: ``slot`` (``mdstack``) names the
source's one slot, shared by all its CDC streams, so give each pipeline and region reading the
same database its own (``slot: mds_{{ region }}``), and drop it when the source stops reading
by CDC (it holds WAL); ``publication`` (``mdstack``) must exist; ``plugin`` is ``pgoutput``.

Streams: every table, view, materialized view and foreign table of the schemas (partitioned
tables as one stream, their partitions left out), named after the table, or
``<schema>_<table>`` when several schemas are read. Primary keys come from ``pg_index``;
``cursor`` is ``None`` (``stack.yml`` sets it). ``full_refresh_*`` always; ``incremental_*``
when the relation has a primary key; ``emits_deletes`` on tables when replication is set.

Types -> Arrow: int2/int4/int8 -> int16/int32/int64, float4/float8 -> float32/float64,
``numeric(p,s)`` with p <= 38 -> decimal128(p,s), any other numeric -> float64 (NaN and
infinities kept, precision beyond ~15 digits lost), bool, text/varchar/char -> string, date ->
date32, timestamp -> timestamp(us), timestamptz -> timestamp(us, UTC), time -> time64(us),
bytea -> binary; json/jsonb, uuid, enums, arrays, intervals and every other type -> string in
PostgreSQL's text form (arrays as ``{1,2}``: multi-dimensional arrays stay readable). Domains
map as their base type.

Reads:

* **full refresh**: the whole relation, then ``Checkpoint({})``; only the columns of the
  configured stream's schema when it names fewer than the relation has.
* **incremental** by ``cursor``: ``WHERE cursor > state - lookback ORDER BY cursor``; state
  ``{"cursor": "<last value as text>"}``. A checkpoint follows a batch only where the cursor
  value changes between batches (never inside a run of equal values), so a resumed read
  neither skips nor repeats rows. ``lookback`` (seconds as a number, or an ISO 8601 duration
  such as ``"PT15M"``; for numeric cursors a number in cursor units) re-reads late rows; the
  state never moves back. Rows whose cursor is NULL are read by the first read only.
* **CDC** (``replication`` set and an incremental sync mode): a snapshot, then logical
  replication changes as Batch / Deletes; see :mod:`connectors.postgres.cdc`. The engine
  reads a source's CDC streams together (:meth:`PostgresSource.read_group`), through one
  slot (:mod:`connectors.postgres.shared_slot`); ``read`` of one CDC stream alone peeks the
  same slot and never advances it (it does not know what the other streams still need).

Full refreshes and key-set reads (snapshot delete detection) of a table DuckDB reads exactly
split it into ctid ranges of 1 000 pages (8 MB), read by ``readers`` connections at once in one
exported snapshot: the rows of one moment, none missing or doubled while the table changes. A
table smaller than one range is one COPY. On a standby or Aurora, where the scanner cannot
share a snapshot, one connection reads.

Fetch path (:mod:`connectors.postgres.fetch`): DuckDB's postgres scanner, streamed as Arrow. On a
2 M-row, 10-column table (2 busy cores) a full read took 1.7-2.2 s, about what ``COPY ... TO
STDOUT`` to /dev/null takes (1.9-3.0 s text, 1.4-2.0 s binary), at 178 MB peak RSS (145 MB of
it the libraries; it grows with ``batch_size``, not with the table); an ordered incremental
read 2.1-3.0 s. Batches of 16 k rows (8 DuckDB vectors) rather than 100 k cost no speed and
keep a whole load (source, engine and the DuckLake writer) under 300 MB instead of ~350 MB.
ADBC took 2.6-4.5 s, a psycopg server-side cursor into pyarrow 11 s (294 MB).

Errors: unreachable server, timeouts, dropped connections -> SourceUnavailable (retryable);
refused credentials, permissions, bad names -> ConnectorError. No message shows the password.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql

from connectors.base import (
    FULL_REFRESH_MODES,
    SYNC_MODES,
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
from connectors.postgres import cdc, fetch, preflight, publication, shared_slot, slot
from connectors.postgres.config import PostgresConfig
from connectors.postgres.errors import translate_error

Connection = psycopg.Connection[Any]

_TABLES = ("r", "p")  # relkinds with rows of their own: replicable
_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


class PostgresSource(BaseSource[PostgresConfig]):
    """A PostgreSQL database as a :class:`~connectors.base.Source` (see the module docstring)."""

    config_model = PostgresConfig

    def check_connection(self) -> str:
        """Connect and run ``SELECT 1``; with replication, check CDC's server prerequisites."""
        cfg = self.config
        with self._translate(None), self._connect(cfg) as conn:
            conn.execute("SELECT 1").fetchone()
            repl = cfg.replication
            problems = preflight.server_problems(conn, repl.publication) if repl else []
        where = f"connected to {cfg.where}"
        if problems:
            text = "; ".join(f"{message} (fix: {hint})" for message, hint in problems)
            raise ConnectorError(f"{where}, but CDC cannot work: {text}", source=self.name)
        return where

    def discover(self) -> Catalog:
        """Tables and views of the configured schemas, with Arrow schemas and primary keys.

        Raises:
            ConnectorError: invalid config, an unknown table in ``tables``, a refused login;
                SourceUnavailable when the server cannot be reached.
        """
        cfg = self.config
        with self._translate(None), self._connect(cfg) as conn:
            tables = fetch.tables(conn, cfg.schemas, cfg.tables, self.name)
        cdc_on = cfg.replication is not None
        return Catalog(
            streams=tuple(
                StreamSpec(
                    name=t.stream,
                    schema=t.arrow_schema,
                    primary_key=t.primary_key,
                    sync_modes=SYNC_MODES if t.primary_key else FULL_REFRESH_MODES,
                    emits_deletes=cdc_on and t.kind in _TABLES,
                )
                for t in tables
            )
        )

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """Full refresh, incremental by cursor, or CDC; see the module docstring.

        Raises:
            ConnectorError: bad config or state, a missing cursor or CDC prerequisite (the
                hint says what SQL to run), a refused query.
            SourceUnavailable: the server could not be reached or dropped the connection.
        """
        cfg = self.config
        with self._translate(stream.name), self._connect(cfg) as conn:
            tables = fetch.tables(conn, cfg.schemas, cfg.tables, self.name)
            table = next((t for t in tables if t.stream == stream.name), None)
            if table is None:
                hint = "the table was dropped or left out by `tables:`; run discover"
                raise self._fail(stream, f"no table or view for stream {stream.name!r}", hint)
            if not stream.incremental:
                yield from self._scan(conn, _projected(table, stream), stream)
                yield Checkpoint(stream.name, {})
            elif cfg.replication and table.kind in _TABLES:
                # Read alone, a stream does not know what the others hold: no release.
                yield from self._read_cdc(conn, [(stream, table)], {stream.name: state}, None)
            else:
                yield from self._read_cursor(conn, table, stream, state)

    def check_state(self, stream: ConfiguredStream, state: State) -> None:
        """An incremental stream's state is ``{"cursor": <text of the cursor column's type>}``,
        or, with ``replication:``, ``{"lsn": "XXXXXXXX/XXXXXXXX"}`` (plus, while its snapshot
        is copied, ``"snapshot": {"after": [<key as text>, ...] or null}``); a full refresh
        ignores it."""
        if not stream.incremental or not state:
            return
        expected = '{"cursor": <a value of the cursor column, as text>}'
        allowed = {"cursor"}
        if self.config.replication:
            expected += ' or {"lsn": "<hex>/<hex>"}'
            allowed = {"cursor", "lsn", "snapshot"}
        hint = f"the source expects {expected}"
        if set(state) - allowed:
            raise self._fail(stream, f"state {state!r} is not {expected}", hint)
        if "lsn" in state or "snapshot" in state:
            self._check_cdc_state(stream, state)
            return
        saved = self._saved_cursor(stream, state)
        if saved is None or not stream.cursor:
            return
        arrow = stream.spec.schema.field(stream.cursor).type
        try:
            pa.array([saved]).cast(arrow)
        except pa.ArrowNotImplementedError:
            pass  # no text form in Arrow: PostgreSQL casts the text itself
        except pa.ArrowInvalid:
            message = f"cursor {saved!r} is not a {arrow} (column {stream.cursor!r})"
            raise self._fail(stream, message, hint, "cursor") from None

    def _check_cdc_state(self, stream: ConfiguredStream, state: State) -> None:
        """A CDC state: a valid LSN, and a snapshot's progress as one text per key column."""
        hint = slot.resnapshot(self.name, stream.name)
        if not isinstance(state.get("lsn"), str) or not _LSN.fullmatch(state["lsn"]):
            raise self._fail(stream, f"state {state!r} has no valid LSN (<hex>/<hex>)", hint)
        if "snapshot" not in state:
            return
        snapshot, keys = state["snapshot"], len(stream.primary_key or stream.spec.primary_key)
        after = snapshot.get("after") if isinstance(snapshot, dict) else ()
        valid = after is None or (
            isinstance(after, list)
            and len(after) == keys
            and all(isinstance(v, str) for v in after)
        )
        if set(snapshot if isinstance(snapshot, dict) else ()) != {"after"} or not valid:
            message = (
                f"state {state!r}: 'snapshot' must be {{\"after\": null or a list of"
                f" {keys} key value(s) as text}}"
            )
            raise self._fail(stream, message, hint)

    def _saved_cursor(self, stream: ConfiguredStream, state: State | None) -> str | None:
        saved = (state or {}).get("cursor")
        if saved is not None and not isinstance(saved, str):
            hint = "reset the stream's state to read it again from the start"
            raise self._fail(stream, f"state {state!r} has no valid cursor (text)", hint)
        return saved

    def _fail(
        self, stream: ConfiguredStream, message: str, hint: str, key: str | None = None
    ) -> ConnectorError:
        return ConnectorError(message, source=self.name, stream=stream.name, key=key, hint=hint)

    @contextmanager
    def _translate(self, stream: str | None) -> Iterator[None]:
        """The one place driver errors become mdstack errors (never showing the password)."""
        try:
            yield
        except (psycopg.Error, duckdb.Error) as exc:
            cfg = self.config
            error = translate_error(exc, cfg, self.name, stream)
            if cfg.secret and cfg.secret in str(exc):
                raise error from None  # the driver's text would show it in the traceback
            raise error from exc

    @staticmethod
    def _connect(cfg: PostgresConfig) -> Connection:
        return psycopg.connect(**cfg.libpq(password=True), autocommit=True)

    @contextmanager
    def _scanner(self, cfg: PostgresConfig, readers: int = 1) -> Iterator[fetch.Scanner]:
        scanner = fetch.Scanner(cfg.libpq(password=False), cfg.secret, cfg.batch_size, readers)
        try:
            yield scanner
        finally:
            scanner.close()

    def _scan(
        self, conn: Connection, table: fetch.Table, stream: ConfiguredStream
    ) -> Iterator[Message]:
        """The whole relation (or its key columns), its ctid ranges read by ``readers``
        connections in one snapshot; by one where the server cannot share a snapshot."""
        cfg = self.config
        readers = cfg.reader_count if fetch.shares_snapshot(conn) else 1
        with self._scanner(cfg, readers) as scanner:
            for batch in fetch.batches(scanner.table(table, conn), table.arrow_schema):
                yield Batch(stream.name, batch)

    def _read_cursor(
        self, conn: Connection, table: fetch.Table, stream: ConfiguredStream, state: State | None
    ) -> Iterator[Message]:
        """Rows after the saved cursor, in cursor order, checkpointed between cursor values."""
        cfg = self.config
        cursor = self._cursor(table, stream)
        saved = self._saved_cursor(stream, state)
        where = None
        if saved is not None:
            bound = sql.SQL("{}::{}").format(sql.Literal(saved), sql.SQL(cursor.pg_type))
            if cfg.lookback is not None:
                bound = sql.SQL("({} - {})").format(bound, self._lookback(cursor, stream))
            where = sql.SQL("{} > {}").format(sql.Identifier(cursor.name), bound)
        high = _state_value(saved, cursor.arrow) if saved is not None else None
        if where is not None and not fetch.has_rows_after(conn, table, cursor.name, where):
            yield Checkpoint(stream.name, {"cursor": _state_text(high)})  # nothing new
            return
        last, started = None, False
        with self._scanner(cfg) as scanner:
            reader = scanner.query(fetch.select(table, where, cursor.name), conn)
            for batch in fetch.batches(reader, table.arrow_schema):
                values = batch.column(cursor.name)
                if started and last is not None and values[0].as_py() != last:
                    high = last if high is None or last > high else high
                    yield Checkpoint(stream.name, {"cursor": _state_text(high)})
                yield Batch(stream.name, batch)
                last, started = values[-1].as_py(), True
        if last is not None and (high is None or last > high):
            high = last
        yield Checkpoint(stream.name, {} if high is None else {"cursor": _state_text(high)})

    def _cursor(self, table: fetch.Table, stream: ConfiguredStream) -> fetch.Column:
        column = table.column(stream.cursor) if stream.cursor else None
        if column is None:
            what = f"cursor {stream.cursor!r} is not a column" if stream.cursor else "no cursor"
            hint = "set `cursor:` for the stream in stack.yml"
            if not self.config.replication:
                hint += ", or configure `replication:` for CDC"
            elif table.kind not in _TABLES:
                hint += " (views cannot be replicated)"
            raise self._fail(stream, f"incremental read needs a cursor: {what}", hint, "cursor")
        arrow = column.arrow
        orderable = pa.types.is_integer(arrow) or pa.types.is_floating(arrow)
        orderable |= pa.types.is_decimal(arrow) or pa.types.is_temporal(arrow)
        if not orderable and not column.pg_type.startswith(("text", "character")):
            hint = "use a timestamp, date, number or text column that grows with every change"
            msg = f"cursor {column.name!r} ({column.pg_type}) cannot be ordered"
            raise self._fail(stream, msg, hint, "cursor")
        return column

    def _lookback(self, cursor: fetch.Column, stream: ConfiguredStream) -> sql.Composable:
        arrow, lookback = cursor.arrow, self.config.lookback
        if pa.types.is_timestamp(arrow) or pa.types.is_date(arrow):
            text = lookback if isinstance(lookback, str) else f"{lookback} seconds"
            return sql.SQL("{}::interval").format(sql.Literal(text))
        numeric = pa.types.is_integer(arrow) or pa.types.is_floating(arrow)
        if (numeric or pa.types.is_decimal(arrow)) and not isinstance(lookback, str):
            return sql.Literal(lookback)
        hint = "a duration for date/timestamp cursors, a number for numeric ones, none for text"
        msg = f"lookback {lookback!r} does not fit cursor {cursor.name!r} ({cursor.pg_type})"
        raise self._fail(stream, msg, hint, "lookback")

    def shares_read(self, stream: ConfiguredStream) -> bool:
        """CDC streams share the source's replication slot: one read serves them all."""
        repl = self._config.replication if self._config else None
        return repl is not None and stream.incremental and stream.spec.emits_deletes

    def read_group(
        self,
        streams: Sequence[ConfiguredStream],
        states: Mapping[str, State | None],
        held: Callable[[], Sequence[State]],
    ) -> Iterator[Message]:
        """CDC streams through the source's one slot (:mod:`connectors.postgres.shared_slot`),
        released only up to the smallest LSN of ``held()``."""
        cfg = self.config
        with self._translate(None), self._connect(cfg) as conn:
            tables = {t.stream: t for t in fetch.tables(conn, cfg.schemas, cfg.tables, self.name)}
            reads = []
            for stream in streams:
                table = tables.get(stream.name)
                if table is None or not self.shares_read(stream):
                    raise self._fail(stream, "not a table read by CDC", "run discover")
                reads.append((stream, table))

            yield from self._read_cdc(conn, reads, states, lambda: _lsns(held()))

    def release(self, held: Sequence[State]) -> int | None:
        """Advance the source's slot to the smallest LSN of ``held``; returns the bytes of
        WAL the server still keeps for it."""
        cfg = self.config
        assert cfg.replication is not None, "only CDC streams share a read"
        name = cdc.slot_name(cfg.replication.slot)
        with self._translate(None), self._connect(cfg) as conn:
            shared_slot.release(conn, name, _lsns(held))
            return slot.held_back(conn, name)

    def _read_cdc(
        self,
        conn: Connection,
        reads: Sequence[tuple[ConfiguredStream, fetch.Table]],
        states: Mapping[str, State | None],
        held: shared_slot.Held | None,
    ) -> Iterator[Message]:
        """Logical replication changes from each stream's state, a snapshot copied in chunks
        first on a stream's first read, every stream through the source's one slot."""
        cfg = self.config
        repl = cfg.replication
        assert repl is not None
        targets, tables = [], {}
        for stream, table in reads:
            target = cdc.Target.of(
                self.name, stream.name, table, stream.primary_key, stream.history
            )
            state = states.get(stream.name)
            self.check_state(stream, state or {})
            targets.append((target, shared_slot.Position.of(state)))
            tables[stream.name] = table
        publication.follow(conn, repl.publication, [t for t, _ in targets])
        for target, _ in targets:
            preflight.check_prerequisites(conn, target, repl.publication)
        with ExitStack() as stack:
            scanners: list[fetch.Scanner] = []

            def chunk(target: cdc.Target, after: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
                if not scanners:  # a read with no snapshot to copy never starts DuckDB
                    scanners.append(stack.enter_context(self._scanner(cfg)))
                table = tables[target.stream]
                query = fetch.chunk(table, target.primary_key, after, repl.snapshot_chunk)
                return fetch.batches(scanners[0].query(query, conn), table.arrow_schema)

            yield from shared_slot.read(conn, self.name, repl, targets, held, cfg.batch_size, chunk)


def _lsns(states: Sequence[State]) -> list[str]:
    """The valid LSNs of ``states`` (CDC states; others have none)."""
    return [lsn for s in states if isinstance(lsn := s.get("lsn"), str) and _LSN.fullmatch(lsn)]


def _projected(table: fetch.Table, stream: ConfiguredStream) -> fetch.Table:
    """The relation narrowed to the columns of the stream's schema, if it names fewer.

    Reading a key set (snapshot delete detection) then moves the keys alone, not the rows.
    """
    wanted = set(stream.spec.schema.names)
    columns = tuple(c for c in table.columns if c.name in wanted)
    if not columns or len(columns) == len(table.columns):
        return table
    return dataclasses.replace(table, columns=columns)


def _state_value(text: str, arrow: pa.DataType) -> Any:
    """A saved cursor (text) as the Python value Arrow gives for the column."""
    try:
        return pa.array([text]).cast(arrow)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return text


def _state_text(value: Any) -> str:
    """A cursor value as text that PostgreSQL casts back to the column's type."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
