"""Environments of a lake whose catalog is in PostgreSQL: clone, publish, drop.

* **Clone**: the catalog's tables (the lake's metadata schema, a few MB) are copied into a
  schema of the environment's own, ``<schema>__<env>``, in one ``REPEATABLE READ``
  transaction: a consistent snapshot of the lake while writers go on. The clone reads the
  same data files (their paths are relative to the shared data path); DuckLake names the
  files it writes by UUID, so neither side ever overwrites the other's. The snapshot the
  clone was taken at is kept as the schema's comment.
* **Publish** cannot swap catalogs: other processes keep committing to the published lake
  (other regions' loads). It publishes what the environment changed since its clone: the
  tables and views created, replaced or written there, read from DuckLake's own record of
  each snapshot's changes, copied into the published lake in one DuckLake transaction, so
  readers see the old relations or the new ones, never a mix. Relations in the ledger's
  schema are never copied; the ledger rows of runs the published lake has not seen yet
  (check results written during the audit) are added. It refuses when one of those
  relations was replaced in the published lake after the clone.
* **Drop** deletes the data files the environment wrote (the published lake holds copies
  of what was published, never these files), then its schema. The files are found in the
  environment's catalog (created after its clone) and handed to DuckLake's own cleanup, so
  an ``s3://`` data path is served like a folder; the published lake's files, which the
  environment only read, are never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import psycopg
from psycopg import sql

from stack.errors import WarehouseError
from stack.sql import ident, table
from stack.warehouse._ducklake_pg import lock_key
from stack.warehouse.base import Warehouse

_COMMENT = "mdstack clone at snapshot "
ADDED_LEDGER = ("_mds_checks",)
"""Ledger tables whose rows an audit writes (its check results; ``stack.transform.checks``):
added to the lake's, run by run, when it is published."""
_OWN_CATALOG = "{DUCKLAKE_CATALOG}"
"""What DuckLake stores in a view's query where it names its own lake."""
_CHANGE = re.compile(r'(\w+):((?:"(?:[^"]|"")*"\.)?"(?:[^"]|"")*"|\d+)')
_NAME = re.compile(r'"((?:[^"]|"")*)"')


CLONE_LOCK = "clone"
"""The advisory lock clones of a lake share, and ``expire`` takes alone
(:func:`stack.warehouse._ducklake_pg.lock_key`)."""


def env_schema(schema: str, name: str) -> str:
    """The PostgreSQL schema of environment ``name`` of the lake in ``schema``."""
    return f"{schema}__{re.sub(r'[^a-z0-9_]', '_', name.lower())}"[:63]


@dataclass(frozen=True)
class Change:
    """A relation the environment changed: its schema, name, what it is there now
    (``table``, ``view``, or None: gone) and, for a view, its query."""

    schema: str
    name: str
    now: str | None
    query: str | None = None


def clone(conninfo: str, schema: str, env: str) -> int:
    """Copy the catalog in ``schema`` into ``env`` (replacing it); returns its snapshot.

    Not while ``mdstack expire`` decides which files environments still read
    (:func:`stack.warehouse._ducklake_pg_expire.clones_paused`): a copy of the catalog
    from before an expire, made after that decision, would name files it then deletes.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (lock_key(schema, CLONE_LOCK),))
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s "
                    "AND tablename LIKE 'ducklake\\_%%' ORDER BY 1",
                    (schema,),
                ).fetchall()
            ]
            if "ducklake_snapshot" not in tables:
                raise WarehouseError(
                    f"nothing to clone: schema {schema!r} holds no DuckLake catalog",
                    hint="run a sync first, or check the target's catalog schema",
                )
            row = conn.execute(
                sql.SQL("SELECT max(snapshot_id) FROM {}").format(
                    sql.Identifier(schema, "ducklake_snapshot")
                )
            ).fetchone()
            base = int(row[0]) if row and row[0] is not None else 0
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(env)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(env)))
            for name in tables:
                source, target = sql.Identifier(schema, name), sql.Identifier(env, name)
                conn.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(target, source)
                )
                conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(target, source))
            conn.execute(
                sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(env), sql.Literal(f"{_COMMENT}{base}")
                )
            )
    return base


def environments(conn: psycopg.Connection, schema: str) -> list[str]:
    """The schemas of the environments cloned from the lake in ``schema``."""
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) "
        "AND starts_with(obj_description(oid, 'pg_namespace'), %s) ORDER BY 1",
        (env_schema(schema, ""), _COMMENT),
    ).fetchall()
    return [row[0] for row in rows]


def is_environment(conn: psycopg.Connection, schema: str) -> bool:
    """Whether the catalog in ``schema`` is an environment's (a clone's)."""
    try:
        base_snapshot(conn, schema)
    except WarehouseError:
        return False
    return True


def base_snapshot(conn: psycopg.Connection, env: str) -> int:
    """The snapshot of the published lake the environment was cloned at."""
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
        (env,),
    ).fetchone()
    comment = row[0] if row else None
    if not comment or not comment.startswith(_COMMENT):
        raise WarehouseError(
            f"no environment {env!r} cloned by mdstack in the lake's catalog database",
            hint="clone it first (mdstack clone ENV)",
        )
    return int(comment.removeprefix(_COMMENT))


def changes(conn: psycopg.Connection, env: str, base: int) -> list[Change]:
    """The relations the environment created, replaced, wrote or dropped after ``base``."""
    ident = sql.Identifier
    rows = conn.execute(
        sql.SQL("SELECT changes_made FROM {} WHERE snapshot_id > %s ORDER BY snapshot_id").format(
            ident(env, "ducklake_snapshot_changes")
        ),
        (base,),
    ).fetchall()
    names = _relation_names(conn, env)
    touched: dict[tuple[str, str], None] = {}
    for (made,) in rows:
        for kind, what in _CHANGE.findall(made or ""):
            if what.isdigit():
                found = names.get((kind.endswith("view"), int(what)))
                if found is not None:
                    touched[found] = None
            elif kind.startswith("created_") and kind != "created_schema":
                parts = [p.replace('""', '"') for p in _NAME.findall(what)]
                if len(parts) == 2:
                    touched[(parts[0], parts[1])] = None
    alive = _alive(conn, env)
    gone: tuple[str | None, str | None] = (None, None)
    return [Change(s, n, *alive.get((s, n), gone)) for s, n in touched]


def keeps_changes_after(conn: psycopg.Connection, schema: str, base: int) -> bool:
    """Whether the lake in ``schema`` still records every snapshot after ``base``: an
    expire of one of them deletes its record of what it changed, which a publish reads."""
    row = conn.execute(
        sql.SQL("SELECT count(*), max(snapshot_id) FROM {} WHERE snapshot_id > %s").format(
            sql.Identifier(schema, "ducklake_snapshot")
        ),
        (base,),
    ).fetchone()
    count, latest = row if row else (0, None)
    return latest is None or count == latest - base


def changed_after(
    conn: psycopg.Connection, schema: str, base: int, relations: list[Change], meta_schema: str
) -> list[str]:
    """``schema.name`` of each of ``relations`` (the ledger's schema aside: its rows are
    added, never replaced) that the lake in ``schema`` changed after ``base``."""
    wanted = {(c.schema, c.name) for c in relations if c.schema != meta_schema}
    return sorted(
        f"{c.schema}.{c.name}" for c in changes(conn, schema, base) if (c.schema, c.name) in wanted
    )


def schedule_own_files(conninfo: str, env: str) -> int:
    """Schedule for deletion, in ``env``'s catalog, exactly the files it wrote itself: the
    data and delete files created after its clone. What the schedule held before (rows the
    clone copied from the published lake: files of *its* expired snapshots, which readers of
    the published lake may still scan) is emptied first. Returns how many were scheduled;
    0 for an environment that does not exist (nothing to clean).
    """
    with psycopg.connect(conninfo) as conn, conn.transaction():
        try:
            base = base_snapshot(conn, env)
        except WarehouseError:
            return 0
        scheduled = sql.Identifier(env, "ducklake_files_scheduled_for_deletion")
        conn.execute(sql.SQL("DELETE FROM {}").format(scheduled))
        cursor = conn.execute(
            sql.SQL(
                "INSERT INTO {} (data_file_id, path, path_is_relative, schedule_start)"
                " SELECT DISTINCT id, path, false, now() - interval '1 day' FROM ({}) AS f"
            ).format(scheduled, files_sql(env, after=base))
        )
        return cursor.rowcount


def files_sql(catalog: str, after: int | None = None) -> sql.Composed:
    """``(id, path)`` of every data and delete file the catalog in schema ``catalog``
    names (only those written after snapshot ``after``, if given), each path whole:
    DuckLake stores it relative to its table's, its schema's and the data path."""
    ref = partial(sql.Identifier, catalog)
    since: sql.Composable = sql.SQL("")
    if after is not None:
        since = sql.SQL(" WHERE begin_snapshot > {}").format(sql.Literal(after))
    return sql.SQL(
        "SELECT f.id, CASE"
        "  WHEN NOT f.path_is_relative THEN f.path"
        "  WHEN NOT t.path_is_relative THEN t.path || f.path"
        "  WHEN NOT s.path_is_relative THEN s.path || t.path || f.path"
        "  ELSE m.value || s.path || t.path || f.path END AS path"
        " FROM (SELECT data_file_id AS id, table_id, path, path_is_relative FROM {data}{since}"
        "  UNION ALL SELECT delete_file_id, table_id, path, path_is_relative FROM {deletes}{since}"
        " ) AS f JOIN {tables} AS t USING (table_id) JOIN {schemas} AS s USING (schema_id)"
        " JOIN {meta} AS m ON m.key = 'data_path' AND m.scope IS NULL"
    ).format(
        data=ref("ducklake_data_file"),
        deletes=ref("ducklake_delete_file"),
        tables=ref("ducklake_table"),
        schemas=ref("ducklake_schema"),
        meta=ref("ducklake_metadata"),
        since=since,
    )


def drop(conninfo: str, env: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(env)))


def _relation_names(conn: psycopg.Connection, env: str) -> dict[tuple[bool, int], tuple[str, str]]:
    """(is a view, id) -> (schema, name), every version (a dropped one's last name)."""
    names: dict[tuple[bool, int], tuple[str, str]] = {}
    for view, relations, column in (
        (False, "ducklake_table", "table"),
        (True, "ducklake_view", "view"),
    ):
        query = sql.SQL(
            "SELECT r.{id}, s.schema_name, r.{name} FROM {r} r JOIN {s} s USING (schema_id)"
            " ORDER BY r.begin_snapshot"
        ).format(
            id=sql.Identifier(f"{column}_id"),
            name=sql.Identifier(f"{column}_name"),
            r=sql.Identifier(env, relations),
            s=sql.Identifier(env, "ducklake_schema"),
        )
        for rid, schema, name in conn.execute(query).fetchall():
            names[(view, rid)] = (schema, name)
    return names


def _alive(conn: psycopg.Connection, env: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(schema, name) -> (``table`` or ``view``, a view's query), for live relations."""
    live: dict[tuple[str, str], tuple[str, str | None]] = {}
    for kind, relations, column in (
        ("table", "ducklake_table", "table"),
        ("view", "ducklake_view", "view"),
    ):
        query = sql.SQL(
            "SELECT s.schema_name, r.{name}, {body} FROM {r} r JOIN {s} s USING (schema_id)"
            " WHERE r.end_snapshot IS NULL AND s.end_snapshot IS NULL"
        ).format(
            name=sql.Identifier(f"{column}_name"),
            body=sql.SQL("r.sql" if kind == "view" else "NULL::text"),
            r=sql.Identifier(env, relations),
            s=sql.Identifier(env, "ducklake_schema"),
        )
        for schema, name, body in conn.execute(query).fetchall():
            live[(schema, name)] = (kind, body)
    return live


def apply(wh: Warehouse, relations: list[Change], lake: str, env: str, meta_schema: str) -> None:
    """Make the published lake (attached to ``wh`` as ``lake``, in ``wh``'s open
    transaction) hold the version of each changed relation the environment (attached as
    ``env``) has; add the ledger rows of runs it has not seen."""
    ledger = sorted(c.name for c in relations if c.schema == meta_schema)
    if unpublishable := [name for name in ledger if name not in ADDED_LEDGER]:
        raise WarehouseError(
            f"the environment wrote the ledger tables {unpublishable} (it ran syncs): a lake"
            " several processes write publishes what dbt builds, not loads",
            hint="sync into the lake itself; use an environment for dbt builds and checks",
        )
    ordered = sorted(relations, key=lambda c: {"table": 0, "view": 1}.get(c.now or "", 2))
    for c in ordered:
        if c.schema == meta_schema:
            if c.now == "table":
                _add_new_runs(wh, lake, env, c)
            continue
        target, source = _in(lake, c), _in(env, c)
        if c.now == "table":
            wh.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(lake)}.{ident(c.schema)}")
            wh.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {source}")
        elif c.now == "view":
            wh.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(lake)}.{ident(c.schema)}")
            query = (c.query or "").replace(_OWN_CATALOG, ident(lake))
            wh.execute(f"CREATE OR REPLACE VIEW {target} AS {query}")
        else:
            kind = _kind(wh, lake, c)
            if kind is not None:
                wh.execute(f"DROP {kind} {target}")


def _in(catalog: str, c: Change) -> str:
    return f"{ident(catalog)}.{table(c.schema, c.name)}"


def _add_new_runs(wh: Warehouse, lake: str, env: str, c: Change) -> None:
    target, source = _in(lake, c), _in(env, c)
    if wh.columns(c.schema, c.name) is None:  # the lake's first audit made the table
        wh.execute(f"CREATE TABLE {target} AS SELECT * FROM {source}")
        return
    wh.execute(
        f"INSERT INTO {target} BY NAME SELECT * FROM {source} e WHERE NOT EXISTS"
        f" (SELECT 1 FROM {target} p WHERE p.run_id IS NOT DISTINCT FROM e.run_id)"
    )


def _kind(wh: Warehouse, lake: str, c: Change) -> str | None:
    rows = wh.query(
        "SELECT table_type FROM information_schema.tables"
        " WHERE table_catalog = ? AND table_schema = ? AND table_name = ?",
        [lake, c.schema, c.name],
    ).to_pylist()
    if not rows:
        return None
    return "VIEW" if rows[0]["table_type"] == "VIEW" else "TABLE"
