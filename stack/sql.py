"""Pure SQL generators for the sync engine, written once in DuckDB's dialect.

Every function returns statement text and touches no connection, so each is
covered by golden tests and rendered for other warehouses by the adapter
(sqlglot transpiles DuckDB to the target dialect). Identifiers always go
through :func:`ident` / :func:`table`; values are bound parameters (``?``).

Staged rows carry ``_mds_seq``, the position of their batch in the read, so
that within one commit the last event for a key wins: deletes are applied to
the rows committed before, then the staged rows are written, minus (hard) or
marked by (soft) the deletes that came after them.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

SEQ = "_mds_seq"
POS = "_mds_pos"
CHANGED_AT = "_mds_changed_at"
REGION = "_mds_region"
RUN_ID = "_mds_run_id"
LOADED_AT = "_mds_loaded_at"
DELETED_AT = "_mds_deleted_at"
META_COLUMNS = (REGION, RUN_ID, LOADED_AT, DELETED_AT)
"""Metadata columns on every loaded table."""
VALID_FROM = "_mds_valid_from"
VALID_TO = "_mds_valid_to"
IS_CURRENT = "_mds_is_current"
HISTORY_COLUMNS = (VALID_FROM, VALID_TO, IS_CURRENT)
"""Metadata columns of a history table (``incremental_deduped_history``): when each version
was valid, and whether it is the key's current one."""


def ident(name: str) -> str:
    """A quoted identifier (names with spaces, case or quotes stay intact)."""
    return exp.to_identifier(name, quoted=True).sql("duckdb")


def literal(text: str) -> str:
    """``text`` as a SQL string literal (for the statements that take no parameters:
    ``ATTACH``, ``SET``)."""
    return "'" + text.replace("'", "''") + "'"


def table(schema: str, name: str) -> str:
    """A quoted ``schema.table`` reference."""
    return f"{ident(schema)}.{ident(name)}"


def _cols(names: Sequence[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{ident(n)}" for n in names)


def _key_match(keys: Sequence[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{ident(k)} = {right}.{ident(k)}" for k in (*keys, REGION))


def _latest(source: str, keys: Sequence[str], order: Sequence[str]) -> str:
    """Rows of ``source`` keeping the last one per key (ordered by ``order``, descending)."""
    by = ", ".join(f"{ident(c)} DESC NULLS LAST" for c in order)
    return (
        f"SELECT * FROM {source} "
        f"QUALIFY row_number() OVER (PARTITION BY {_cols(keys)} ORDER BY {by}) = 1"
    )


def has_duplicate_keys(target: str, keys: Sequence[str]) -> str:
    """Whether the region holds two rows of one key (a query: a row, or none).
    Parameters: region."""
    return (
        f"SELECT 1 FROM {target} WHERE {ident(REGION)} = ? GROUP BY {_cols(keys)} "
        "HAVING count(*) > 1 LIMIT 1"
    )


def delete_superseded(target: str, keys: Sequence[str], cursor: str) -> str:
    """DELETE every row of the region but the latest per key: the highest cursor (a NULL
    cursor loses, as in :func:`prepare_rows`). Of rows with the same key and cursor one is
    kept, the last written where ``rowid`` follows write order (DuckDB's parallel writes do
    not promise it: like rows of one batch in :func:`prepare_rows`, such ties have no
    defined order). The rows deleted are the region's by their own column too, not only by
    ``rowid``. Parameters: region, region."""
    by = f"{ident(cursor)} DESC NULLS LAST, rowid DESC"
    return (
        f"DELETE FROM {target} WHERE {ident(REGION)} = ? AND rowid IN (SELECT rowid "
        f"FROM {target} WHERE {ident(REGION)} = ? "
        f"QUALIFY row_number() OVER (PARTITION BY {_cols(keys)} ORDER BY {by}) > 1)"
    )


_META_PARAMS = (
    f"?::VARCHAR AS {ident(REGION)}, ?::VARCHAR AS {ident(RUN_ID)}, "
    f"?::TIMESTAMP AS {ident(LOADED_AT)}"
)


def prepare_rows(
    stage: str,
    deletes: str | None,
    keys: Sequence[str],
    cursor: str | None,
    columns: Sequence[str],
    *,
    deleted_at: str,
    dedupe: bool,
    soft: bool,
) -> str:
    """SELECT of the staged rows to write, with metadata columns.

    ``deletes`` is the staged tombstones, their time in column ``deleted_at``.
    ``dedupe`` keeps one row per key, the last by (batch, cursor). A row followed
    by a delete of its key in the same commit is dropped (hard) or written as
    deleted (soft), so the last event per key always wins.
    Parameters: region, run id, loaded-at.
    """
    rows = (
        _latest(stage, keys, [SEQ, cursor] if cursor else [SEQ])
        if dedupe
        else (f"SELECT * FROM {stage}")
    )
    if deletes is None or not keys:
        return (
            f"SELECT {_cols(columns, 'u.')}, {_META_PARAMS}, NULL::TIMESTAMP AS "
            f"{ident(DELETED_AT)} FROM ({rows}) AS u"
        )
    after = (
        f"FROM {deletes} AS d WHERE "
        + " AND ".join(f"d.{ident(k)} = u.{ident(k)}" for k in keys)
        + f" AND d.{ident(SEQ)} > u.{ident(SEQ)}"
    )
    if soft:  # marked with the first tombstone that followed the row
        marked = f"(SELECT arg_min(d.{ident(deleted_at)}, d.{ident(SEQ)}) {after})"
        return (
            f"SELECT {_cols(columns, 'u.')}, {_META_PARAMS}, {marked} AS {ident(DELETED_AT)} "
            f"FROM ({rows}) AS u"
        )
    return (
        f"SELECT {_cols(columns, 'u.')}, {_META_PARAMS}, NULL::TIMESTAMP AS {ident(DELETED_AT)} "
        f"FROM ({rows}) AS u WHERE NOT EXISTS (SELECT 1 {after})"
    )


def prepare_deletes(deletes: str, keys: Sequence[str], deleted_at: str) -> str:
    """SELECT of the first tombstone per key: the one that deleted the rows committed before.

    Parameters: region.
    """
    first = (
        f"SELECT * FROM {deletes} QUALIFY row_number() OVER "
        f"(PARTITION BY {_cols(keys)} ORDER BY {ident(SEQ)}) = 1"
    )
    return (
        f"SELECT {_cols(keys)}, {ident(SEQ)}, {ident(deleted_at)} AS {ident(DELETED_AT)}, "
        f"?::VARCHAR AS {ident(REGION)} FROM ({first})"
    )


def count_matches(target: str, prepared: str, keys: Sequence[str]) -> str:
    """How many prepared rows already exist in the target (updates, not inserts)."""
    return (
        f"SELECT count(*) FROM {prepared} AS s "
        f"WHERE EXISTS (SELECT 1 FROM {target} AS t WHERE {_key_match(keys, 't', 's')})"
    )


def merge_sql(
    target: str, prepared: str, keys: Sequence[str], cursor: str | None, columns: Sequence[str]
) -> str:
    """MERGE prepared rows into the target by (region, key); a newer cursor wins.

    ``_mds_deleted_at`` comes from the prepared row: a key that reappears is undeleted.
    """
    names = [*columns, *META_COLUMNS]
    newer = (
        f" AND (t.{ident(cursor)} IS NULL OR s.{ident(cursor)} >= t.{ident(cursor)})"
        if cursor
        else ""
    )
    updates = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in names if c != REGION)
    return (
        f"MERGE INTO {target} AS t USING (SELECT * FROM {prepared}) AS s "
        f"ON {_key_match(keys, 't', 's')} "
        f"WHEN MATCHED{newer} THEN UPDATE SET {updates} "
        f"WHEN NOT MATCHED THEN INSERT ({_cols(names)}) VALUES ({_cols(names, 's.')})"
    )


def insert_sql(target: str, prepared: str, columns: Sequence[str]) -> str:
    """Append every prepared row."""
    names = [*columns, *META_COLUMNS]
    return f"INSERT INTO {target} ({_cols(names)}) SELECT {_cols(names)} FROM {prepared}"


def clear_region_sql(target: str) -> str:
    """Delete the region's rows (before a full refresh overwrite). Parameters: region."""
    return f"DELETE FROM {target} WHERE {ident(REGION)} = ?"


def count_deletes(target: str, prepared: str, keys: Sequence[str], soft: bool) -> str:
    """How many target rows the prepared deletes will remove (or mark)."""
    live = f" AND t.{ident(DELETED_AT)} IS NULL" if soft else ""
    return f"SELECT count(*) FROM {_keyed_rows(target, prepared, keys)}{live}"


def hard_delete_sql(target: str, prepared: str, keys: Sequence[str]) -> str:
    """Remove the rows whose keys were deleted at the source."""
    return f"DELETE FROM {_keyed_rows(target, prepared, keys)}"


def _keyed_rows(target: str, prepared: str, keys: Sequence[str]) -> str:
    """``target AS t WHERE ...``: the target's rows whose key a prepared row (``s``) has."""
    return (
        f"{target} AS t WHERE EXISTS "
        f"(SELECT 1 FROM {prepared} AS s WHERE {_key_match(keys, 't', 's')})"
    )


def soft_delete_sql(target: str, prepared: str, keys: Sequence[str]) -> str:
    """Mark deleted rows with the deletion time, keeping them."""
    return (
        f"UPDATE {target} AS t SET {ident(DELETED_AT)} = s.{ident(DELETED_AT)} "
        f"FROM {prepared} AS s WHERE {_key_match(keys, 't', 's')} "
        f"AND t.{ident(DELETED_AT)} IS NULL"
    )


def stale_rows(
    target: str, prepared: str, keys: Sequence[str], cursor: str, replaced: str | None = None
) -> str:
    """WHERE clause (on alias ``s``) of prepared rows older than the row already loaded.

    ``replaced``: a condition (on alias ``t``, with its own parameters) of loaded rows
    the same commit deletes first; they do not count.
    """
    spared = f" AND NOT ({replaced})" if replaced else ""
    return (
        f"EXISTS (SELECT 1 FROM {target} AS t WHERE {_key_match(keys, 't', 's')} "
        f"AND t.{ident(cursor)} > s.{ident(cursor)}{spared})"
    )


def in_window(column: str, alias: str = "t") -> str:
    """Condition (on ``alias``) that ``column`` lies in ``[?, ?)``: parameters low, high."""
    return f"{alias}.{ident(column)} >= ? AND {alias}.{ident(column)} < ?"


def missing_keys(target: str, present: str, keys: Sequence[str], cursor: str | None = None) -> str:
    """WHERE clause (on alias ``t``) of the region's rows whose key is not in ``present``.

    Parameters: region, then (with ``cursor``) the start of the window on the cursor.
    """
    window = f" AND t.{ident(cursor)} >= ?" if cursor else ""
    match = " AND ".join(f"k.{ident(k)} = t.{ident(k)}" for k in keys)
    return (
        f"t.{ident(REGION)} = ?{window} AND NOT EXISTS (SELECT 1 FROM {present} AS k WHERE {match})"
    )
