"""``incremental_deduped_history`` against a dbt snapshot of the same changes.

A real pipeline, no mocks: a PostgreSQL table (the session's cluster,
:mod:`tests.servers.pg_server`) read by ``mdstack sync`` into DuckDB (DuckLake) twice, by
two sources of one ``stack.yml``: ``deduped`` (``incremental_deduped``, schema
``raw_deduped``) and ``hist`` (``incremental_deduped_history``, schema ``raw_hist``), both
with cursor ``updated_at`` and snapshot delete detection. After each day's sync a tiny dbt
project (written into ``tmp_path``, profile from ``Warehouse.dbt_output()`` as mdstack's
own dbt integration builds it) runs ``dbt snapshot`` of the deduped table: strategy
timestamp, ``updated_at``, unique key ``id``, ``hard_deletes: invalidate``.

What is checked, after every day: the history table's versions of each key are the
snapshot's rows (data columns, ``_mds_valid_from`` = ``dbt_valid_from``, ``_mds_valid_to`` =
``dbt_valid_to`` where an update superseded the version), and the ``_current`` view is the
deduped table. A hard delete closes the key's last version in both, at different times:
the history at its sync's load time (when delete detection ran), dbt at its own clock
(``now()`` when ``dbt snapshot`` ran, later).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from stack.transform.dbt import run_dbt
from stack.warehouse.duckdb import ALIAS, DuckDBWarehouse
from tests.cdc_stack import mdstack
from tests.servers.pg_server import schema_of_its_own

pytestmark = pytest.mark.slow

DEDUPED, HISTORY = "raw_deduped", "raw_hist"
DATA = ("id", "name", "amount", "updated_at")
DELETED = 2
"""The key deleted on day 3 (updated on day 2: one superseded version, one closed by it)."""

DAYS = [
    # day 1: the initial rows
    [
        "INSERT INTO {t} VALUES"
        " (1, 'one', 10, '2024-01-01 08:00'), (2, 'two', 20, '2024-01-01 08:00'),"
        " (3, 'three', 30, '2024-01-01 08:30'), (4, 'four', 40, '2024-01-01 09:00'),"
        " (5, 'five', 50, '2024-01-01 09:15')",
    ],
    # day 2: updates (updated_at bumped), inserts
    [
        "UPDATE {t} SET name = 'one v2', updated_at = '2024-01-02 10:00' WHERE id = 1",
        "UPDATE {t} SET amount = 21, updated_at = '2024-01-02 11:30' WHERE id = 2",
        "INSERT INTO {t} VALUES (6, 'six', 60, '2024-01-02 12:00'),"
        " (7, 'seven', 70, '2024-01-02 12:05')",
    ],
    # day 3: other updates (one key a second time, one only touched: updated_at bumped, the
    # values as they were), one hard delete
    [
        "UPDATE {t} SET name = 'three v2', amount = 31, updated_at = '2024-01-03 07:00'"
        " WHERE id = 3",
        "UPDATE {t} SET amount = 11, updated_at = '2024-01-03 08:00' WHERE id = 1",
        "UPDATE {t} SET name = 'six v2', updated_at = '2024-01-03 09:45' WHERE id = 6",
        "UPDATE {t} SET updated_at = '2024-01-03 10:00' WHERE id = 5",
        f"DELETE FROM {{t}} WHERE id = {DELETED}",
    ],
]

VERSIONS_PER_DAY = [
    {1: 1, 2: 1, 3: 1, 4: 1, 5: 1},
    {1: 2, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1},
    {1: 3, 2: 2, 3: 2, 4: 1, 5: 2, 6: 2, 7: 1},
]

DBT_PROJECT = """\
name: history_check
version: "1.0"
profile: mdstack
snapshot-paths: ["snapshots"]
"""

SNAPSHOT = """\
snapshots:
  - name: items_snapshot
    relation: source('deduped', 'items')
    config:
      unique_key: id
      strategy: timestamp
      updated_at: updated_at
      hard_deletes: invalidate
"""


@pytest.fixture
def source_table(pg_database: dict[str, Any]) -> Iterator[tuple[psycopg.Connection, str]]:
    """``<schema>.items (id PRIMARY KEY, name, amount, updated_at timestamp)``, empty; the
    schema is dropped at the end."""
    with schema_of_its_own(pg_database, "hist_dbt") as (conn, schema):
        conn.execute(
            f'CREATE TABLE "{schema}".items'
            " (id int PRIMARY KEY, name text, amount int, updated_at timestamp NOT NULL)"
        )
        yield conn, schema


def write_stack(folder: Path, dsn: dict[str, Any], schema: str) -> Path:
    """``stack.yml``: sources ``deduped`` and ``hist`` read the same table, into DuckDB."""

    def source(sync: str, into: str) -> dict[str, Any]:
        stream = {"sync": sync, "cursor": "updated_at", "delete_detection": "snapshot"}
        return {
            "connector": "postgres",
            "schema": into,
            "config": dsn | {"schemas": [schema]},
            "streams": {"items": stream},
        }

    config = {
        "name": "history_vs_dbt",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(folder / "wh")}},
        "sources": {
            "deduped": source("incremental_deduped", DEDUPED),
            "hist": source("incremental_deduped_history", HISTORY),
        },
    }
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_dbt_project(folder: Path) -> Path:
    """A dbt project with one snapshot of the deduped table (into the lake, schema ``main``)."""
    project = folder / "dbt"
    (project / "snapshots").mkdir(parents=True)
    (project / "models").mkdir()
    (project / "dbt_project.yml").write_text(DBT_PROJECT)
    sources = {
        "version": 2,
        "sources": [
            {
                "name": "deduped",
                "database": ALIAS,  # the lake, as Warehouse.dbt_output() attaches it
                "schema": DEDUPED,
                "tables": [{"name": "items"}],
            }
        ],
    }
    (project / "models" / "sources.yml").write_text(yaml.safe_dump(sources))
    (project / "snapshots" / "items_snapshot.yml").write_text(SNAPSHOT)
    return project


def query(folder: Path, select: str) -> list[tuple]:
    with DuckDBWarehouse(folder / "wh") as wh:
        return [tuple(row.values()) for row in wh.query(select).to_pylist()]


Versions = dict[int, list[tuple]]


def by_key(rows: list[tuple]) -> Versions:
    """Rows ``(*DATA, valid_from, valid_to)`` by key, oldest version first."""
    found: Versions = {}
    for row in sorted(rows, key=lambda r: (r[0], r[-2])):
        found.setdefault(row[0], []).append(row)
    return found


def comparable(versions: Versions) -> Versions:
    """Each key's versions, the last one's ``valid_to`` replaced by whether it is closed:
    an update's end is the next version's start in both, a deletion's is each one's clock."""
    return {
        key: [*rows[:-1], (*rows[-1][:-1], "closed" if rows[-1][-1] is not None else "open")]
        for key, rows in versions.items()
    }


def history(folder: Path) -> Versions:
    columns = ", ".join(DATA)
    return by_key(
        query(folder, f"SELECT {columns}, _mds_valid_from, _mds_valid_to FROM {HISTORY}.items")
    )


def snapshot(folder: Path) -> Versions:
    columns = ", ".join(DATA)
    return by_key(
        query(folder, f"SELECT {columns}, dbt_valid_from, dbt_valid_to FROM main.items_snapshot")
    )


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_history_versions_equal_a_dbt_snapshot_of_the_deduped_stream(
    tmp_path, pg_database, source_table
):
    conn, schema = source_table
    path = write_stack(tmp_path, pg_database, schema)
    project = write_dbt_project(tmp_path)
    output = DuckDBWarehouse(tmp_path / "wh").dbt_output()
    artifacts = {"target_path": tmp_path / "dbt-target", "log_path": tmp_path / "dbt-logs"}
    columns = ", ".join(DATA)

    for day, (statements, counts) in enumerate(zip(DAYS, VERSIONS_PER_DAY, strict=True), 1):
        with conn.transaction():
            for statement in statements:
                conn.execute(statement.format(t=f'"{schema}".items'))
        started = now()
        result = mdstack(path, "sync")
        assert result.exit_code == 0, result.output
        synced = now()
        run = run_dbt(project, output, ["snapshot"], **artifacts)
        assert run.success, [(n.name, n.message) for n in run.nodes]

        hist, snap = history(tmp_path), snapshot(tmp_path)
        assert {key: len(rows) for key, rows in hist.items()} == counts, f"day {day}"
        assert comparable(hist) == comparable(snap), f"day {day}"
        for rows in hist.values():  # an update ends a version when the next one starts
            assert [r[-1] for r in rows[:-1]] == [r[-2] for r in rows[1:]]
            assert all(r[-2] == r[3] for r in rows)  # valid from its updated_at

        current = query(tmp_path, f"SELECT {columns} FROM {HISTORY}.items_current ORDER BY id")
        deduped = query(tmp_path, f"SELECT {columns} FROM {DEDUPED}.items ORDER BY id")
        assert current == deduped, f"day {day}"
        at_source = conn.execute(f'SELECT {columns} FROM "{schema}".items ORDER BY id').fetchall()
        assert deduped == at_source, f"day {day}"

    # The deleted key: closed in both, only the time differs. The history's version ends at
    # the load time of the sync whose delete detection found the key gone; dbt's at its own
    # clock (now() of the `dbt snapshot` that ran after that sync, session time zone).
    assert DELETED not in {row[0] for row in current}
    hist_end, snap_end = hist[DELETED][-1][-1], snap[DELETED][-1][-1]
    assert started <= hist_end <= synced
    assert snap_end is not None and snap_end > snap[DELETED][-1][-2]
    flags = f"SELECT count(*) FROM {HISTORY}.items WHERE _mds_is_current <> (_mds_valid_to IS NULL)"
    assert query(tmp_path, flags) == [(0,)]  # current: the versions not ended
    gone = query(tmp_path, f"SELECT _mds_is_current FROM {HISTORY}.items WHERE id = {DELETED}")
    assert gone == [(False,), (False,)]
