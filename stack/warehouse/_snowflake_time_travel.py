"""Snowflake's time travel for mdstack's runs: the warehouse as a run left it.

A version of a Snowflake warehouse is a time: Snowflake's clock right after a run's last
commit, in milliseconds since the epoch (time travel's resolution), which the run
ledger records as that run's version. Two commands read it:

* ``mdstack sql --as-of``: every table and view the query reads gets
  ``AT(TIMESTAMP => ...)`` (a view reads its tables as they were; its definition and
  a table's columns are today's, as time travel has them).
* ``mdstack clone --as-of``: ``CREATE DATABASE ... CLONE ... AT(TIMESTAMP => ...)``.

Time travel reads a table back to when that table was made, within its retention
(``DATA_RETENTION_TIME_IN_DAYS``: one day unless set; dbt's transient tables: one day at
most); further back Snowflake answers "Time travel data is not available" (its hint in
:func:`stack.warehouse._snowflake_driver.translate`). A run's version kept as a clone
(:mod:`stack.warehouse._snowflake_versions`) is read there instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from stack.errors import WarehouseError
from stack.warehouse import _snowflake_sql as sfsql

NOW_SQL = "SELECT DATE_PART(EPOCH_MILLISECOND, CURRENT_TIMESTAMP()) + 1 AS ms"
"""Snowflake's clock, as the version a run left the warehouse at: read after the run's
last commit, and a millisecond on, so that cutting it to milliseconds never puts it
before that commit."""


def millis(when: datetime) -> int:
    """``when`` (naive meaning UTC) in milliseconds since the epoch."""
    moment = when if when.tzinfo else when.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def at(version: int) -> exp.HistoricalData:
    """``AT(TIMESTAMP => '<UTC time>'::TIMESTAMP_TZ)``: the offset written out, so the
    session's time zone cannot move it."""
    moment = datetime.fromtimestamp(version / 1000, UTC).isoformat(timespec="milliseconds")
    stamp = exp.cast(exp.Literal.string(moment), exp.DataType.build("TIMESTAMPTZ"))
    return exp.HistoricalData(this="AT", kind="TIMESTAMP", expression=stamp)


def as_of_query(tree: exp.Expr, version: int) -> str:
    """The query ``tree`` reading every table and view as it was at ``version``
    (milliseconds since the epoch); the information schema is read as it is.

    Raises:
        WarehouseError: ``tree`` is not a query.
    """
    _only_a_query(tree)
    for scope in traverse_scope(tree):
        for t in scope.tables:
            source = scope.sources.get(t.alias_or_name)
            if isinstance(source, Scope) or not isinstance(t.this, exp.Identifier):
                continue  # the query's own CTE; a table function
            if t.db.upper() == "INFORMATION_SCHEMA" or t.catalog.upper() == "SNOWFLAKE":
                continue  # the catalog and the account's usage views, which have no past
            if t.args.get("when"):
                continue  # the query's own AT or BEFORE
            if source is not t:
                raise WarehouseError(
                    f"cannot tell what {t.sql('snowflake')} reads, to read it as it was",
                    hint="name tables directly (schema.table) in an --as-of query",
                )
            t.set("when", at(version))
    return sfsql.sf(tree)


def in_database(tree: exp.Expr, database: str, kept: str) -> str:
    """The query ``tree`` reading database ``kept`` where it names ``database`` (a name
    without its database already reads the session's: the kept one).

    Raises:
        WarehouseError: ``tree`` is not a query.
    """
    _only_a_query(tree)
    for t in tree.find_all(exp.Table):
        if t.catalog == database:
            t.set("catalog", exp.to_identifier(kept, quoted=True))
    return sfsql.sf(tree)


def at_sql(version: int) -> str:
    """``AT(TIMESTAMP => ...)`` of ``version``, as text."""
    return at(version).sql("snowflake")


def _only_a_query(tree: exp.Expr) -> None:
    if not isinstance(tree, exp.Query):
        raise WarehouseError(
            "--as-of reads the warehouse as it was: only a query (SELECT) can run there",
            hint="to change an old version, `mdstack clone ENV --as-of ...` and write to ENV",
        )


def clone_sql(source: str, clone: str, version: int) -> str:
    """A zero-copy clone of database ``source`` as it was at ``version``, replacing ``clone``."""
    return f"{sfsql.clone_database_sql(source, clone)} {at_sql(version)}"
