"""Snowflake warehouses for tests: fakesnow's server, a recording connection, real Snowflake.

* :func:`fakesnow_server` starts fakesnow's HTTP server once per process (a
  thread on a free loopback port; fakesnow waits for it to be ready). The real
  ``snowflake-connector-python`` talks to it, so logins, qmark binding, PUT,
  Arrow results and error classes are the connector's own.
* :func:`open_fakesnow` opens a :class:`SnowflakeWarehouse` on it, in a fresh
  database (a test sees no other test's tables). :func:`open_for_contract` is the
  same for the contract suite's ``ADAPTERS`` (it takes a location).
* :class:`RecordingConnection` wraps a connection and records every statement and
  its parameters, for golden tests of the exact SQL sent.
* :func:`real_target` builds a target from ``MDSTACK_SNOWFLAKE_*`` variables, or
  says why it cannot; :func:`real_snowflake` opens it in a fresh meta schema.

fakesnow 0.11.18's server encodes a NULL timestamp as 1970-01-01 (its Arrow
struct has no validity bitmap, ``fakesnow/arrow.py``); :func:`fakesnow_server`
patches that one function so NULL stays NULL. Nothing else of fakesnow is changed.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import fakesnow
import pyarrow as pa

from stack import sql
from stack.config import SnowflakeTarget
from stack.errors import WarehouseError
from stack.warehouse.snowflake import SnowflakeWarehouse

META_SCHEMA = "MDSTACK"
_START_SERVER = fakesnow.server
"""Taken at import: once a server has started, ``fakesnow.server`` names fakesnow's
``server`` submodule instead of this function, so a second start would fail."""
_server: dict[str, Any] | None = None
_server_lock = threading.Lock()
_stack = ExitStack()


def fakesnow_server() -> dict[str, Any]:
    """Connect arguments of this process's fakesnow server (started on first use)."""
    global _server
    with _server_lock:
        if _server is None:
            _fix_null_timestamps()
            _transform_in_place()
            for name in ("uvicorn.access", "uvicorn.error", "fakesnow.server"):
                logging.getLogger(name).setLevel(logging.WARNING)  # a line per request
            _server = _stack.enter_context(_START_SERVER())
        return dict(_server)


def stop_fakesnow_server() -> None:
    """Stop the server (the next :func:`fakesnow_server` starts a new, empty one)."""
    global _server
    with _server_lock:
        _stack.close()
        _server = None


atexit.register(stop_fakesnow_server)


_rewriting = threading.local()
"""Set while fakesnow rewrites a statement (in the server thread that runs it)."""


def _transform_in_place() -> None:
    """fakesnow rewrites every statement with some 80 sqlglot transforms, each of which
    deep-copies the whole tree first: about 30 ms a statement, most of a Snowflake test's
    time. The tree is fresh from the parser, so it is copied once and each transform works
    on it in place (sqlglot's ``copy=False``): the same rewrites, without the copies."""
    from fakesnow.cursor import FakeSnowflakeCursor
    from sqlglot.expressions import Expression

    rewrite = FakeSnowflakeCursor._transform
    if getattr(rewrite, "in_place", False):
        return
    transform = Expression.transform

    def rewrite_in_place(self: Any, expression: Any, params: Any) -> Any:
        _rewriting.active = True
        try:
            return rewrite(self, expression.copy(), params)
        finally:
            _rewriting.active = False

    def transform_unless_rewriting(
        self: Any, fun: Any, *args: Any, copy: bool = True, **kwargs: Any
    ) -> Any:
        in_place = getattr(_rewriting, "active", False)
        return transform(self, fun, *args, copy=copy and not in_place, **kwargs)

    rewrite_in_place.in_place = True  # type: ignore[attr-defined]
    FakeSnowflakeCursor._transform = rewrite_in_place  # type: ignore[method-assign]
    Expression.transform = transform_unless_rewriting  # type: ignore[method-assign]


def _fix_null_timestamps() -> None:
    import fakesnow.arrow

    original = fakesnow.arrow.timestamp_to_sf_struct
    if getattr(original, "keeps_nulls", False):
        return

    def keeps_nulls(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        struct = original(ts)
        if not ts.null_count:
            return struct
        fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
        children = [struct.field(i) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=ts.is_null())

    keeps_nulls.keeps_nulls = True  # type: ignore[attr-defined]
    fakesnow.arrow.timestamp_to_sf_struct = keeps_nulls


def fakesnow_target(database: str, schema: str = META_SCHEMA, **fields: Any) -> SnowflakeTarget:
    values = {
        "type": "snowflake",
        "account": "fakesnow",
        "user": "fake",
        "password": "snow",
        "database": database,
        "schema": schema,
        "warehouse": "fake_wh",
        "role": "fake_role",
        **fields,
    }
    return SnowflakeTarget.model_validate(values)


def open_fakesnow(
    database: str | None = None, target: dict[str, Any] | None = None, **options: Any
) -> SnowflakeWarehouse:
    """An unopened warehouse on the fakesnow server, in ``database`` (default: a new one).

    ``target`` overrides fields of the target (credentials...); ``options`` go to the
    warehouse (``lock_ttl``...).
    """
    server = fakesnow_server()
    extra = {k: server[k] for k in ("host", "port", "protocol", "session_parameters")}
    # fakesnow answers unsupported statements with HTTP 500, which the connector retries
    # until network_timeout: keep it short so such a statement fails in about a second.
    extra["network_timeout"] = 1
    extra["login_timeout"] = 5
    name = database or f"T_{uuid.uuid4().hex[:12].upper()}"
    return SnowflakeWarehouse(
        fakesnow_target(name, **(target or {})), connect_args=extra, fakesnow=True, **options
    )


def open_for_contract(location: Path) -> SnowflakeWarehouse:
    """The contract suite's ``Adapter.open``: one database per location."""
    digest = hashlib.sha1(str(location).encode()).hexdigest()[:12].upper()
    return open_fakesnow(f"C_{digest}")


@contextmanager
def fakesnow_warehouse(**options: Any) -> Iterator[SnowflakeWarehouse]:
    with open_fakesnow(**options) as wh:
        yield wh


# -- recording --------------------------------------------------------------------------------
class RecordingCursor:
    """A cursor that records what it executes, then lets the real cursor run it."""

    def __init__(self, cursor: Any, log: list[tuple[str, list | None]]) -> None:
        self._cursor = cursor
        self._log = log

    def execute(self, sql: str, params: list | None = None) -> RecordingCursor:
        self._log.append((sql, params))
        self._cursor.execute(sql, params)
        return self

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int | None:
        return self._cursor.rowcount

    def fetchall(self) -> list:
        return self._cursor.fetchall()

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetch_arrow_batches(self) -> Iterator[pa.Table]:
        return self._cursor.fetch_arrow_batches()


class RecordingConnection:
    """Wraps an open connection; :attr:`statements` lists ``(sql, params)`` sent since."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.statements: list[tuple[str, list | None]] = []

    def cursor(self) -> RecordingCursor:
        return RecordingCursor(self.connection.cursor(), self.statements)

    def close(self) -> None:
        self.connection.close()

    def sql(self) -> list[str]:
        return [s for s, _ in self.statements]


@contextmanager
def recording(wh: SnowflakeWarehouse) -> Iterator[RecordingConnection]:
    """Record the statements ``wh`` sends inside the block."""
    real = wh._con
    recorder = RecordingConnection(real)
    wh._con = recorder
    try:
        yield recorder
    finally:
        wh._con = real


# -- real Snowflake ---------------------------------------------------------------------------
ENV_PREFIX = "MDSTACK_SNOWFLAKE_"
_REQUIRED = ("ACCOUNT", "USER", "DATABASE", "WAREHOUSE", "ROLE")


def _env() -> dict[str, str]:
    return {k[len(ENV_PREFIX) :]: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def real_unavailable() -> str:
    """Why real Snowflake cannot be used: the variables missing ("" when none is)."""
    env = _env()
    missing = [f"{ENV_PREFIX}{k}" for k in _REQUIRED if not env.get(k)]
    if not (env.get("PASSWORD") or env.get("PRIVATE_KEY")):
        missing.append(f"{ENV_PREFIX}PASSWORD (or _PRIVATE_KEY)")
    return f"real Snowflake not configured: set {', '.join(missing)}" if missing else ""


def real_target(schema: str) -> tuple[SnowflakeTarget | None, str]:
    """A target for real Snowflake from the environment, or ``None`` and the reason."""
    reason = real_unavailable()
    if reason:
        return None, reason
    env = _env()
    fields = {
        "type": "snowflake",
        "account": env["ACCOUNT"],
        "user": env["USER"],
        "database": env["DATABASE"],
        "warehouse": env["WAREHOUSE"],
        "role": env["ROLE"],
        "schema": schema,
        "password": env.get("PASSWORD"),
        "private_key": env.get("PRIVATE_KEY"),
        "private_key_passphrase": env.get("PRIVATE_KEY_PASSPHRASE"),
    }
    return SnowflakeTarget.model_validate(fields), ""


@contextmanager
def real_snowflake() -> Iterator[SnowflakeWarehouse]:
    """An open warehouse on real Snowflake in a fresh meta schema, dropped afterwards.

    ``MDSTACK_SNOWFLAKE_DATABASE`` must be a scratch database: the engine's scenarios
    write ``"raw"."items"`` there, and it is dropped before and after.

    Raises:
        RuntimeError: real Snowflake is not configured (see :func:`real_unavailable`).
    """
    schema = f"MDSTACK_TEST_{uuid.uuid4().hex[:8].upper()}"
    target, reason = real_target(schema)
    if target is None:
        raise RuntimeError(reason)
    with SnowflakeWarehouse(target, query_tag={"run_id": "pytest"}) as wh:
        _drop_items(wh)
        try:
            yield wh
        finally:
            _drop_items(wh)
            wh.execute(f"DROP SCHEMA IF EXISTS {sql.ident(schema)}")


def _drop_items(wh: SnowflakeWarehouse) -> None:
    with suppress(WarehouseError):  # no schema "raw" yet
        wh.execute('DROP TABLE IF EXISTS "raw"."items"')


# -- a stub server, for the SQL sent to real Snowflake ----------------------------------------
class _Column:
    def __init__(self, name: str) -> None:
        self.name, self.type_code, self.precision, self.scale = name, 2, None, None


class StubCursor:
    """Records statements; answers each with the rows ``answer(sql, params)`` returns."""

    def __init__(self, connection: StubConnection) -> None:
        self._connection = connection
        self._rows: list[dict[str, Any]] = []
        self.rowcount = 1

    def execute(self, sql: str, params: list | None = None) -> StubCursor:
        self._connection.statements.append((sql, params))
        self._rows = self._connection.answer(sql, params) or []
        return self

    @property
    def description(self) -> list[_Column]:
        return [_Column(name) for name in (self._rows[0] if self._rows else {})]

    def fetchall(self) -> list[tuple]:
        return [tuple(row.values()) for row in self._rows]

    def fetchone(self) -> tuple | None:
        return tuple(self._rows[0].values()) if self._rows else None

    def fetch_arrow_batches(self) -> Iterator[pa.Table]:
        return iter([pa.Table.from_pylist(self._rows)] if self._rows else [])


class StubConnection:
    """Stands in for a Snowflake session: what a statement would return comes from ``answer``.

    For golden tests of the statements the adapter sends to *real* Snowflake, where
    fakesnow would need a workaround (MERGE inside a transaction, COPY ... FILES=).
    """

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer or (lambda sql, params: [])
        self.statements: list[tuple[str, list | None]] = []

    def cursor(self) -> StubCursor:
        return StubCursor(self)

    def close(self) -> None:
        pass

    def sql(self) -> list[str]:
        return [s for s, _ in self.statements]


def stub_warehouse(answer: Any = None, **fields: Any) -> tuple[SnowflakeWarehouse, StubConnection]:
    """A warehouse for real Snowflake (no fakesnow workarounds) on a :class:`StubConnection`."""
    wh = SnowflakeWarehouse(fakesnow_target("DB", **fields))
    stub = StubConnection(answer)
    wh._con = stub
    return wh, stub
