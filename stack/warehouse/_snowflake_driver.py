"""What the Snowflake adapter takes from ``snowflake-connector-python``'s cursors.

* :func:`translate`: the connector's errors as the mdstack tree, at one boundary.
* :func:`fetch`: a result as Arrow, typed from its columns' Snowflake types
  (:mod:`stack.warehouse._snowflake_types`).
* :func:`rows_loaded`: the row count a ``COPY INTO`` reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from snowflake.connector import errors as sf_errors
from snowflake.connector.constants import FIELD_ID_TO_NAME

from stack.errors import WarehouseBusy, WarehouseError
from stack.redact import redact
from stack.warehouse import _snowflake_types as sftypes

__all__ = ["fetch", "rows_loaded", "translate"]


# -- results ----------------------------------------------------------------------------------
def fetch(cursor: Any) -> pa.Table:
    """The cursor's result as Arrow, typed by :func:`_snowflake_types.result_schema`."""
    schema = sftypes.result_schema(
        [
            (c.name, FIELD_ID_TO_NAME[c.type_code], c.precision, c.scale)
            for c in cursor.description or []
        ]
    )
    try:
        chunks = [sftypes.conform(chunk, schema) for chunk in cursor.fetch_arrow_batches()]
    except sf_errors.NotSupportedError:  # a JSON result (SHOW, DML counts): rows
        return sftypes.rows_table(cursor.fetchall(), schema)
    if not chunks:
        return schema.empty_table()
    return pa.concat_tables(chunks, promote_options="permissive")


def rows_loaded(cursor: Any) -> int:
    """Total ``rows_loaded`` of a COPY result (one row per file)."""
    names = [c.name.lower() for c in cursor.description or []]
    if "rows_loaded" not in names:
        return 0
    index = names.index("rows_loaded")
    return sum(int(row[index] or 0) for row in cursor.fetchall())


# -- errors -----------------------------------------------------------------------------------
_BUSY_ERRNOS = {625, 630, 390114}
"""Too many lock waiters, lock wait timeout, session token expired."""
_TRANSIENT_CLASSES = (
    sf_errors.ServiceUnavailableError,
    sf_errors.GatewayTimeoutError,
    sf_errors.BadGatewayError,
    sf_errors.TooManyRequests,
    sf_errors.OtherHTTPRetryableError,
    sf_errors.InternalServerError,
    sf_errors.RequestTimeoutError,
    sf_errors.RequestExceedMaxRetryError,
)


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Translate the connector's errors into the mdstack tree at one boundary.

    Retryable: ``WarehouseBusy`` for contention and an overloaded or restarting
    service (lock waits, transaction conflicts ``40001``, HTTP 429/5xx), and a
    retryable ``WarehouseError`` for a dropped network connection. Refused logins
    (``28000``, ``390xxx``), TLS failures and everything unknown are not retryable.
    Messages go through :func:`stack.redact.redact`.
    """
    try:
        yield
    except sf_errors.Error as exc:
        message = redact(_message(exc, what))
        if (
            isinstance(exc, _TRANSIENT_CLASSES)
            or exc.errno in _BUSY_ERRNOS
            or exc.sqlstate == "40001"
        ):
            raise WarehouseBusy(message, hint="Snowflake is busy or restarting; rerun") from exc
        refused = exc.sqlstate == "28000" or 390000 <= (exc.errno or 0) < 391000
        tls = isinstance(exc, sf_errors.RevocationCheckError | sf_errors.NonRetryableTlsError)
        network = isinstance(exc, sf_errors.OperationalError) and not tls
        if refused:
            raise WarehouseError(message, hint="check the target's user and credentials") from exc
        if "time travel data is not available" in message.lower():
            raise WarehouseError(message, hint=_PAST_RETENTION) from exc
        raise WarehouseError(message, retryable=network) from exc


_PAST_RETENTION = (
    "time travel reads a table back to when it was made (dbt replaces its table models on "
    "every run; a publish by SWAP makes every table anew) and within its retention "
    "(DATA_RETENTION_TIME_IN_DAYS, 1 day unless set): pick a later run or time, or one "
    "whose version is kept (`retention:` on the target keeps each run's as a clone)"
)


def _message(exc: sf_errors.Error, what: str) -> str:
    code = f"{exc.errno:06d}" if exc.errno >= 0 else "-"
    text = (exc.raw_msg or exc.msg or "").strip()
    state = exc.sqlstate if exc.sqlstate != "n/a" else "-"
    return f"{type(exc).__name__} {code} ({state}): {text}\n  while running: {what[:300]}"
