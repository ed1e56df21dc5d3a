"""Change data capture for :mod:`connectors.postgres`: logical replication through SQL.

Design (one replication slot and one publication per source, plugin ``pgoutput``; how the
streams of a source share the slot is :mod:`connectors.postgres.shared_slot`'s):

* **Prerequisites** are checked before anything else
  (:func:`connectors.postgres.preflight.check_prerequisites`):
  ``wal_level = logical``, the publication exists, includes the table and publishes
  inserts, updates and deletes, the table has a replica identity that carries the primary
  key, and the user may use replication. Each failure is a ConnectorError whose hint is the
  exact SQL to run.
* **First read** (no state): the source's slot is created if it is missing, and the stream
  reads changes from the WAL flush position on (:func:`start_position`) while its table is
  copied in key-ordered chunks between passes over the changes
  (:mod:`connectors.postgres.shared_slot`). Rows are full images keyed by primary key, so a
  change replayed over a chunk that already had it converges (a merge by key makes it
  harmless); :func:`settle` makes sure a chunk is never older than a change yielded before it.
* **Later reads** (:func:`usable`, :func:`advance`, :func:`read_changes`): a slot that is
  missing or was invalidated (:mod:`connectors.postgres.slot`) fails the read before
  anything is read, with the full refresh that re-snapshots as the fix: a read never
  re-snapshots by itself. States are committed together with the data, so the slot is first
  advanced to the smallest of them (``pg_replication_slot_advance``). Changes are then
  *peeked* (``pg_logical_slot_peek_binary_changes``, non-consuming) up to the WAL flush
  position at the start of the read, decoded from pgoutput's binary protocol once for every
  stream, routed by table, skipped by a stream whose LSN is past their commit, and gathered
  per stream window, the windows holding at most ``batch_size`` keys (events, for history
  streams) together. A window is compacted: the last event per key wins, upserts become a
  :class:`Batch`, deletes a :class:`Deletes` (key columns plus ``_deleted_at`` = commit
  time, naive UTC). A history stream's window
  (:attr:`~connectors.base.ConfiguredStream.history`) keeps every event instead, in WAL
  order, yielded as consecutive runs: a :class:`Batch` per run of upserts, with
  :attr:`~connectors.base.Batch.changed_at` = each row's commit time, a :class:`Deletes` per
  run of deletes (an update, a delete and a re-insert of one key: Batch, Deletes, Batch).
  A :class:`Checkpoint` with the commit's end LSN follows the first transaction boundary
  after a stream's window is yielded, so a huge transaction is yielded in bounded pieces
  and checkpointed once, at its commit. A read that fails or is not committed leaves the
  slot where it was: re-reading from the same states yields the same changes again
  (exactly-once).
* **Idle tables, busy database**: every read ends with a Checkpoint for every stream at the
  position it read up to, even when none of the changes were its own. PostgreSQL 15+ sends
  no BEGIN/COMMIT for a transaction that touched no published table, so no commit boundary
  would otherwise move the state. Checkpointing there is safe: every transaction committed
  before it was decoded, and one still running commits after it and is decoded by a later
  read (the slot's restart position keeps its start). So the WAL the slot holds back after
  every stream ran is what the server wrote since the previous run began, whatever the
  streams' own traffic; the restart position follows at the next running-transactions
  record (the background writer logs one every 15 s on a busy server).
* Values arrive as PostgreSQL's text output (the session pins ``TimeZone=UTC``,
  ``DateStyle=ISO``...) and are cast to the stream's Arrow types. An unchanged TOASTed value
  (not sent by pgoutput) is taken from the old row image (``REPLICA IDENTITY FULL``) or
  looked up by key: the value the row has at the time of the read (null once it is
  deleted). A history stream's window takes it first from the key's previous version in
  the window, when there is one; else an intermediate version without a full old image gets
  the looked-up value, the row's current one, not the one it had then: give tables whose
  history matters ``REPLICA IDENTITY FULL``. ``TRUNCATE`` cannot be expressed as deletes:
  the read fails and asks for a re-snapshot.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from connectors.base import SOURCE_DELETED_AT, Batch, Checkpoint, Deletes, Message
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.postgres import slot as slots
from connectors.postgres.fetch import Table

Connection = psycopg.Connection[Any]

SNAPSHOT_WAIT_S = 300.0
"""How long a first read waits for transactions running at the slot's start to end."""

_PG_EPOCH = datetime(2000, 1, 1)
_UNCHANGED = object()  # pgoutput's 'u': an unchanged TOASTed value that was not sent
_FETCH = 5_000  # pgoutput messages per round trip


@dataclass(frozen=True)
class Target:
    """What CDC needs to know about one table (built by the source from the catalog)."""

    source: str
    stream: str
    schema: str
    table: str
    columns: tuple[tuple[str, pa.DataType, str], ...]  # name, Arrow type, format_type()
    primary_key: tuple[str, ...]
    replica_identity: str  # pg_class.relreplident: d(efault) n(othing) f(ull) i(ndex)
    history: bool = False
    """The stream keeps every version (:attr:`connectors.base.ConfiguredStream.history`):
    its changes are not compacted (:class:`_History`)."""

    @property
    def qualified(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(name, typ) for name, typ, _ in self.columns])

    @property
    def resnapshot(self) -> str:
        """The fix when the changes since the state cannot be read: a full refresh."""
        return slots.resnapshot(self.source, self.stream)

    def error(self, message: str, hint: str, retryable: bool = False) -> ConnectorError:
        cls = SourceUnavailable if retryable else ConnectorError
        return cls(message, source=self.source, stream=self.stream, hint=hint)

    @classmethod
    def of(
        cls,
        source: str,
        stream: str,
        table: Table,
        primary_key: tuple[str, ...],
        history: bool = False,
    ) -> Target:
        """The table as CDC sees it; ``primary_key`` is the stream's, else the table's own;
        ``history``: the stream's :attr:`~connectors.base.ConfiguredStream.history`."""
        return cls(
            source=source,
            stream=stream,
            schema=table.schema,
            table=table.name,
            columns=tuple((c.name, c.arrow, c.pg_type) for c in table.columns),
            primary_key=primary_key or table.primary_key,
            replica_identity=table.replica_identity,
            history=history,
        )


def slot_name(name: str) -> str:
    """A slot name PostgreSQL takes: folded to [a-z0-9_], at most 63 characters."""
    name = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if len(name) > 63:
        name = f"{name[:54]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def stream_slot_name(prefix: str, schema: str, table: str) -> str:
    """The slot a stream had to itself before slots were shared: ``<prefix>_<schema>_<table>``
    (:mod:`connectors.postgres.group` moves such a stream to the source's slot)."""
    return slot_name(f"{prefix}_{schema}_{table}")


def lsn_int(lsn: str) -> int:
    """``'16/B374D848'`` -> integer position."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _sql_text(conn: Connection, statement: sql.Composable) -> str:
    return statement.as_string(conn)


def _row(conn: Connection, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The one row of a query that always returns one (SHOW, a function, an aggregate)."""
    row = conn.execute(query, params).fetchone()
    if row is None:  # pragma: no cover - such queries always return a row
        raise ConnectorError(f"PostgreSQL returned no row for: {query}")
    return row


def _value(conn: Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of :func:`_row`."""
    return _row(conn, query, params)[0]


def start_position(conn: Connection, target: Target, slot: str) -> str:
    """The LSN (``L0``) a new snapshot of ``target`` starts from: its changes are read from
    there on.

    The source's slot is created when missing (``L0`` is where it starts) and left where it
    is otherwise: other streams still need what it holds, and the new stream skips every
    transaction that commits before its ``L0``. A slot the server invalidated is dropped and
    created again: its changes are lost to every stream of the source anyway, and each of
    them says so at its next read.
    """
    info = slots.inspect(conn, slot)
    if info is not None and info.invalidated:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        info = None
    if info is None:
        return str(
            _value(
                conn,
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                (slot,),
            )
        )
    _check_plugin(target.error, target.resnapshot, slot, info.plugin)
    return str(_value(conn, "SELECT pg_current_wal_flush_lsn()::text"))


def settle(conn: Connection, fail: Fail) -> None:
    """Wait (up to :data:`SNAPSHOT_WAIT_S`) until every transaction running now has ended.

    A transaction's commit record is in the WAL (and decoded) a moment before other
    sessions see its rows: the flush to disk, a synchronous standby's answer, come in
    between. After this wait, a snapshot sees every transaction whose commit was decoded
    before the call, so rows read then are never older than changes already yielded.
    """
    xmax = _value(conn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
    deadline, pause = time.monotonic() + SNAPSHOT_WAIT_S, 0.02
    while not _value(conn, "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= %s::xid8", (xmax,)):
        if time.monotonic() > deadline:
            raise fail(
                f"transactions older than xid {xmax} are still running after "
                f"{SNAPSHOT_WAIT_S:.0f} s; the snapshot must wait for them",
                "find them in pg_stat_activity (state 'idle in transaction'), end them, retry",
                retryable=True,
            )
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


Fail = Callable[..., ConnectorError]
"""Builds the error of a read: ``fail(message, hint, retryable=False)``."""


def _check_plugin(fail: Fail, resnapshot: str, slot: str, plugin: str | None) -> None:
    if plugin != "pgoutput":
        raise fail(
            f"replication slot {slot!r} uses plugin {plugin!r}, not pgoutput",
            f"run: SELECT pg_drop_replication_slot('{slot}'); then {resnapshot}",
        )


def usable(conn: Connection, slot: str, fail: Fail, resnapshot: str, since: str) -> int:
    """The confirmed position of ``slot``, once it can give the changes since ``since``.

    Raises:
        ConnectorError: the slot is missing, invalidated, of another plugin, or in use; the
            hint is ``resnapshot``, the command that takes a new snapshot. A read never takes
            one by itself: that replaces the stream's rows.
    """
    info = slots.inspect(conn, slot)
    if info is None:
        raise fail(
            f"replication slot {slot!r} does not exist (it was dropped, or the server failed"
            f" over to one without it): the changes since {since} cannot be read",
            resnapshot,
        )
    if info.invalidated:
        raise fail(
            f"replication slot {slot!r} was invalidated: {info.invalidated}; the changes"
            f" since {since} are lost",
            f"{resnapshot}. Then, so it does not happen again: {info.prevent}",
        )
    _check_plugin(fail, resnapshot, slot, info.plugin)
    if info.active_pid is not None:
        raise fail(
            f"replication slot {slot!r} is in use by process {info.active_pid}",
            "another read of this source is running; retry when it has finished",
            retryable=True,
        )
    return lsn_int(info.confirmed_flush_lsn or "0/0")


def check_behind(target: Target, slot: str, lsn: int, confirmed: int) -> None:
    """Raise when the stream's state is behind the slot: what lies in between is gone."""
    if lsn < confirmed:
        raise target.error(
            f"the state's LSN {lsn_text(lsn)} is behind replication slot {slot!r}"
            f" ({lsn_text(confirmed)}): the changes in between were released without"
            " being committed here",
            target.resnapshot,
        )


def advance(conn: Connection, slot: str, confirmed: int, to: int) -> None:
    """Release the WAL before ``to``: only what every stream's committed state is past."""
    if to > confirmed:
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn_text(to)))


def read_changes(
    conn: Connection,
    slot: str,
    publication: str,
    positions: Mapping[str, tuple[Target, int]],
    size: int,
    upto: int | None = None,
) -> Iterator[Message]:
    """Peek the changes of every stream of ``positions`` (stream -> its target and the LSN
    its state is at) and yield them as Batch / Deletes / Checkpoint windows, per stream.

    One pass serves every stream: each change goes to its table's stream, which skips a
    transaction that committed before its own LSN (PostgreSQL's own rule for a slot's
    confirmed position), so streams at different positions each get every change exactly
    once. The windows share ``size`` keys (events, in a history stream's window): past it,
    the largest is yielded, and its stream checkpoints at the next commit. Every stream ends
    with a checkpoint at ``upto`` (default: the WAL flush position at the start), changes of
    its own or not.
    """
    if upto is None:
        upto = lsn_int(_value(conn, "SELECT pg_current_wal_flush_lsn()::text"))
    pos = {stream: lsn for stream, (_, lsn) in positions.items()}
    windows = {stream: _window(target) for stream, (target, _) in positions.items()}
    decoder = _Decoder(windows, pos)
    pubs = _sql_text(conn, sql.Identifier(publication))  # pgoutput splits quoted identifiers
    with conn.transaction(), conn.cursor(name=f"mds_cdc_{slot}", binary=True) as cur:
        cur.itersize = _FETCH
        cur.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL,"
            " 'proto_version', '1', 'publication_names', %s)",
            (slot, lsn_text(upto), pubs),
        )
        pending: set[str] = set()  # streams that yielded data since their last checkpoint
        for (data,) in cur:
            end = decoder.feed(bytes(data))
            if end is not None:
                for stream in sorted(pending):
                    yield from windows[stream].flush(conn)
                    pos[stream] = max(pos[stream], end)
                    yield Checkpoint(stream, {"lsn": lsn_text(pos[stream])})
                pending.clear()
            while sum(w.size for w in windows.values()) >= size:
                stream = max(windows, key=lambda s: windows[s].size)
                yield from windows[stream].flush(conn)  # data now, its checkpoint at a commit
                pending.add(stream)
        last = max(upto, decoder.last_commit or 0)
    held = slots.held_back(conn, slot)  # until a later read advances the slot past ``last``
    for stream, window in windows.items():
        yield from window.flush(conn)
        state = {"lsn": lsn_text(max(pos[stream], last))}
        yield Checkpoint(stream, state, replication_lag_bytes=held)


class _Decoder:
    """pgoutput protocol version 1 messages -> events on each stream's :class:`_Window`."""

    def __init__(self, windows: Mapping[str, _Window], positions: Mapping[str, int]) -> None:
        self.windows = windows
        self.positions = positions
        self.tables = {(w.target.schema, w.target.table): s for s, w in windows.items()}
        self.relations: dict[int, tuple[str, str, list[str]]] = {}
        self.committed_at = _PG_EPOCH
        self.final_lsn = 0
        self.last_commit: int | None = None

    def feed(self, msg: bytes) -> int | None:
        """Apply one message; returns the end LSN when it is a commit."""
        kind = msg[:1]
        if kind == b"B":
            (self.final_lsn, ts, _) = struct.unpack_from(">QqI", msg, 1)
            self.committed_at = _PG_EPOCH + timedelta(microseconds=ts)
        elif kind == b"C":
            (_, _, end, _) = struct.unpack_from(">BQQq", msg, 1)
            self.last_commit = end
            return end
        elif kind == b"R":
            self._relation(msg)
        elif kind in (b"I", b"U", b"D"):
            (relid,) = struct.unpack_from(">I", msg, 1)
            window = self._window(relid)
            if window is not None:
                self._change(kind, msg, self.relations[relid][2], window)
        elif kind == b"T":
            (count, _) = struct.unpack_from(">IB", msg, 1)
            for relid in struct.unpack_from(f">{count}I", msg, 6):
                window = self._window(relid)
                if window is not None:
                    t = window.target
                    raise t.error(
                        f"{t.schema}.{t.table} was truncated: its rows cannot be sent as deletes",
                        t.resnapshot,
                    )
        return None  # 'Y' types, 'O' origins, 'M' messages: nothing to do

    def _relation(self, msg: bytes) -> None:
        (relid,) = struct.unpack_from(">I", msg, 1)
        pos = 5
        namespace, pos = _cstring(msg, pos)
        name, pos = _cstring(msg, pos)
        (_, ncols) = struct.unpack_from(">BH", msg, pos)
        pos += 3
        columns = []
        for _ in range(ncols):
            column, pos = _cstring(msg, pos + 1)
            columns.append(column)
            pos += 8  # type oid, typmod
        self.relations[relid] = (namespace, name, columns)

    def _window(self, relid: int) -> _Window | None:
        """The window of the stream the relation belongs to, unless that stream's state is
        already past this transaction (it committed before the stream's LSN)."""
        rel = self.relations.get(relid)
        stream = None if rel is None else self.tables.get(rel[:2])
        if stream is None or self.final_lsn < self.positions[stream]:
            return None
        return self.windows[stream]

    def _change(self, kind: bytes, msg: bytes, columns: list[str], window: _Window) -> None:
        pos, old, full = 5, None, msg[5:6] == b"O"  # 'O': the whole old row, 'K': its key
        if msg[pos : pos + 1] in (b"K", b"O"):
            old, pos = _tuple(msg, pos + 1, columns)
        if kind == b"D":
            window.delete(window.key(old or {}), self.committed_at)
            return
        new, _ = _tuple(msg, pos + 1, columns)  # skip 'N'
        key = window.key(new)
        if old is not None and window.key(old) != key:
            window.delete(window.key(old), self.committed_at)
        window.upsert(key, new, old if full else None, self.committed_at)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int, columns: list[str]) -> tuple[dict[str, Any], int]:
    (count,) = struct.unpack_from(">H", buf, pos)
    pos += 2
    values: dict[str, Any] = {}
    for i in range(count):
        kind = buf[pos : pos + 1]
        pos += 1
        if kind in (b"t", b"b"):
            (length,) = struct.unpack_from(">I", buf, pos)
            values[columns[i]] = buf[pos + 4 : pos + 4 + length].decode()
            pos += 4 + length
        else:
            values[columns[i]] = _UNCHANGED if kind == b"u" else None
    return values, pos


def _window(target: Target) -> _Window:
    """An empty window for ``target``'s changes: every one kept for a history stream."""
    return _History(target) if target.history else _Window(target)


class _Window:
    """The changes since the last checkpoint, compacted: the last event per key wins."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.deleted: dict[tuple, datetime] = {}

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.deleted)

    def key(self, values: dict[str, Any]) -> tuple:
        key = tuple(values.get(k) for k in self.target.primary_key)
        if any(v is None or v is _UNCHANGED for v in key):
            t = self.target
            fix = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL;").format(t.qualified)
            raise t.error(
                f"a change to {t.schema}.{t.table} lacks key columns {list(t.primary_key)}",
                f"run: {fix.as_string()}",
            )
        return key

    def upsert(
        self, key: tuple, new: dict[str, Any], old: dict[str, Any] | None, at: datetime
    ) -> None:
        """``new`` values of ``key``, committed ``at``; ``old``: the full old image, if sent."""
        for name, value in new.items():
            if value is _UNCHANGED and old is not None:
                new[name] = old.get(name, _UNCHANGED)
        self.deleted.pop(key, None)
        self.rows[key] = new

    def delete(self, key: tuple, at: datetime) -> None:
        self.rows.pop(key, None)
        self.deleted[key] = at

    def flush(self, conn: Connection) -> Iterator[Message]:
        if self.deleted:
            yield self._deletes(list(self.deleted), list(self.deleted.values()))
        if self.rows:
            self._fill_unchanged(conn, self.rows.items())
            yield self._batch(list(self.rows.values()))
        self.rows, self.deleted = {}, {}

    def _deletes(self, keys: list[tuple], at: list[datetime]) -> Deletes:
        t = self.target
        arrays = [
            to_arrow([k[i] for k in keys], typ, name, t)
            for i, (name, typ) in enumerate(self._key_types())
        ]
        arrays.append(pa.array(at, pa.timestamp("us")))
        names = [*t.primary_key, SOURCE_DELETED_AT]
        return Deletes(t.stream, pa.RecordBatch.from_arrays(arrays, names=names))

    def _batch(self, rows: list[dict[str, Any]], at: list[datetime] | None = None) -> Batch:
        t = self.target
        arrays = [to_arrow([r.get(n) for r in rows], typ, n, t) for n, typ, _ in t.columns]
        data = pa.RecordBatch.from_arrays(arrays, schema=t.arrow_schema)
        changed_at = None if at is None else pa.array(at, pa.timestamp("us"))
        return Batch(t.stream, data, changed_at)

    def _key_types(self) -> list[tuple[str, pa.DataType]]:
        types = {name: typ for name, typ, _ in self.target.columns}
        return [(k, types[k]) for k in self.target.primary_key]

    def _fill_unchanged(
        self, conn: Connection, rows: Iterable[tuple[tuple, dict[str, Any]]]
    ) -> None:
        """Look up TOASTed values pgoutput did not send, once per key: the row's values now,
        for every row of the key (a history window's versions too); a row deleted since
        stays null."""
        t = self.target
        pg_types = {name: pg for name, _, pg in t.columns}
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s::{}").format(sql.Identifier(k), sql.SQL(pg_types[k]))
            for k in t.primary_key
        )
        lacking: dict[tuple, list[dict[str, Any]]] = {}
        for key, row in rows:
            if any(value is _UNCHANGED for value in row.values()):
                lacking.setdefault(key, []).append(row)
        for key, versions in lacking.items():
            names = {n: None for row in versions for n, v in row.items() if v is _UNCHANGED}
            missing = list(names)
            cols = sql.SQL(", ").join(
                sql.SQL("{}::text").format(sql.Identifier(n)) for n in missing
            )
            query = sql.SQL("SELECT {} FROM {} WHERE {}").format(cols, t.qualified, where)
            found = conn.execute(query, key).fetchone()
            values = dict(zip(missing, found or [None] * len(missing), strict=True))
            for row in versions:
                row.update({n: values[n] for n, v in row.items() if v is _UNCHANGED})


class _History(_Window):
    """The changes since the last checkpoint of a history stream, every one in WAL order:
    yielded as runs, a :class:`Batch` per run of upserts (with each row's commit time as
    ``changed_at``), a :class:`Deletes` per run of deletes. Its size counts events."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.events: list[tuple[tuple, dict[str, Any] | None, datetime]] = []
        """(key, values or None for a delete, commit time), in WAL order."""
        self.last: dict[tuple, dict[str, Any]] = {}
        """Each key's latest values in the window, while it is live."""

    @property
    def size(self) -> int:
        return len(self.events)

    def upsert(
        self, key: tuple, new: dict[str, Any], old: dict[str, Any] | None, at: datetime
    ) -> None:
        """An unchanged TOASTed value is the old image's, else the key's previous version's
        in this window (the row's looked up at the flush when neither has it)."""
        before = old if old is not None else self.last.get(key)
        for name, value in new.items():
            if value is _UNCHANGED and before is not None:
                new[name] = before.get(name, _UNCHANGED)
        self.last[key] = new
        self.events.append((key, new, at))

    def delete(self, key: tuple, at: datetime) -> None:
        self.last.pop(key, None)
        self.events.append((key, None, at))

    def flush(self, conn: Connection) -> Iterator[Message]:
        events, self.events, self.last = self.events, [], {}
        self._fill_unchanged(conn, ((k, row) for k, row, _ in events if row is not None))
        for deleted, group in itertools.groupby(events, key=lambda event: event[1] is None):
            run = list(group)
            times = [at for _, _, at in run]
            if deleted:
                yield self._deletes([key for key, _, _ in run], times)
            else:
                yield self._batch([row for _, row, _ in run if row is not None], times)


def to_arrow(values: list[str | None], typ: pa.DataType, column: str, target: Target) -> pa.Array:
    """PostgreSQL text output (session in UTC, ISO dates) -> an Arrow array of ``typ``."""
    pg_type = next(pg for name, _, pg in target.columns if name == column)
    if pg_type in ("character", "bpchar") or pg_type.startswith("character("):
        values = [v if v is None else v.rstrip(" ") for v in values]  # as ::text does
    raw = pa.array(values, pa.string())
    try:
        if typ == pa.string():
            return raw
        if typ == pa.bool_():
            return pc.equal(raw, "t")
        if typ == pa.binary():
            return pa.array([None if v is None else bytes.fromhex(v[2:]) for v in values], typ)
        if pa.types.is_time(typ):
            stamps = pc.binary_join_element_wise("1970-01-01 ", raw, "")
            return pc.cast(pc.cast(stamps, pa.timestamp("us")), typ)
        return pc.cast(raw, typ)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise target.error(
            f"column {column!r}: cannot read a changed value as {typ}: {exc}",
            "values such as 'infinity' or BC dates have no Arrow equivalent; fix the row",
        ) from exc
