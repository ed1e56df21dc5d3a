"""Every path that replaces warehouse rows, columns or tables, cut at each statement.

A replacement is "destroy, then build" (DELETE then INSERT, DROP then RENAME, a
catalog swapped under a writer). For each one a run dies before its N-th
statement, for every N, and what is left must be the before or the after state,
never less; a rerun must then land the after state.

Two ways to die:

* :class:`Crash`, raised before the N-th statement is sent. It is a
  ``BaseException``, so no ``except Exception`` of the code under test handles it;
  a transaction's block still rolls back, as the warehouse does for a session that
  died. On Snowflake (fakesnow) each DDL statement commits on its own, so what
  was sent before the crash is what a killed process leaves.
* SIGKILL of a subprocess (DuckDB: the warehouse is a folder another process can
  open): the worker kills itself just before its N-th statement, so nothing of the
  code under test runs after it. ``python tests/test_atomic_replace.py SCENARIO
  WAREHOUSE N`` is that worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fakesnow.transforms import stage as fake_stage

from connectors.base import Batch, Checkpoint, Message
from stack.errors import WarehouseError
from stack.load import EVERY_CHECKPOINT, ledger
from stack.transform import NodeResult, checks
from stack.warehouse import _snowflake_sql as sfsql
from stack.warehouse.base import Warehouse
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import sync
from tests.scripted import ScriptedSource
from tests.snowflake_fixtures import (
    StubConnection,
    fakesnow_target,
    open_fakesnow,
    stop_fakesnow_server,
)

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 5, 1, 12, 0, 0)


@pytest.fixture(scope="module", autouse=True)
def _fakesnow_server():
    yield
    stop_fakesnow_server()


class Crash(BaseException):
    """The process died here (no ``except Exception`` of the code under test sees it)."""


def statement_hook(wh: Warehouse) -> str:
    """The method every statement of ``wh`` goes through (BEGIN and COMMIT included)."""
    return "execute" if isinstance(wh, DuckDBWarehouse) else "_run"


@contextmanager
def crash_before(wh: Warehouse, n: int | None, during: str | None = None) -> Iterator[list[str]]:
    """Raise :class:`Crash` before the ``n``-th statement ``wh`` sends (0 = the first).

    ``during`` names a method of ``wh``: only its statements count. Yields the list of
    statements counted so far (all of them when ``n`` is None: a probe).
    """
    hook = statement_hook(wh)
    send = getattr(wh, hook)
    sent: list[str] = []
    active = [during is None]

    def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        if active[0]:
            if len(sent) == n:
                active[0] = False  # once: the rollback after it is the warehouse's own
                raise Crash(f"died before statement {n}: {sql[:120]}")
            sent.append(sql)
        return send(sql, *args, **kwargs)

    setattr(wh, hook, counted)
    if during is not None:
        method = getattr(wh, during)

        def watched(*args: Any, **kwargs: Any) -> Any:
            active[0] = True
            try:
                return method(*args, **kwargs)
            finally:
                active[0] = False

        setattr(wh, during, watched)
    try:
        yield sent
    finally:
        vars(wh).pop(hook, None)
        if during is not None:
            vars(wh).pop(during, None)
        if n is not None and len(sent) == n:
            abandon(wh)


def abandon(wh: Warehouse) -> None:
    """What the warehouse does for a session that died: roll back its open transaction,
    drop its temporary load stage.

    (A crash before COMMIT leaves the transaction open on this test's still-living
    connection; fakesnow keeps a temporary stage's files after its session.)
    """
    try:
        if isinstance(wh, DuckDBWarehouse):
            wh.con.execute("ROLLBACK")
        else:
            wh.con.cursor().execute("ROLLBACK")
    except Exception:  # no transaction was open
        pass
    wh._in_transaction = False
    if not isinstance(wh, DuckDBWarehouse):
        stage = f"{wh.target.database}.{wh.meta_schema}.{sfsql.LOAD_STAGE}"
        shutil.rmtree(fake_stage.internal_dir(stage), ignore_errors=True)


ADAPTER_NAMES = ("duckdb", "snowflake")


def opener(kind: str, tmp_path: Path) -> Callable[[], Warehouse]:
    """Unopened warehouses of one location: each call is a new session (the next run)."""
    if kind == "duckdb":
        return lambda: DuckDBWarehouse(tmp_path / "wh", threads=1)
    database = f"A_{uuid.uuid4().hex[:12].upper()}"
    return lambda: open_fakesnow(database)


def rows(wh: Warehouse, sql: str, params: list | None = None) -> list[tuple]:
    return [tuple(r.values()) for r in wh.query(sql, params).to_pylist()]


# -- column rebuilds (schema evolution) -------------------------------------------------------
ITEMS = [(1, "a", 1, 10), (2, "b", 2, None), (3, "c", 3, -7)]
WIDER = [(4, "d", 4, "x4"), (1, "a2", 5, "1.5")]


def items_batch(records: list[tuple], qty: pa.DataType) -> Batch:
    ids, names, cursors, qtys = zip(*records, strict=True)
    return Batch(
        "items",
        pa.record_batch(
            {
                "id": pa.array(ids, pa.int64()),
                "name": pa.array(names, pa.string()),
                "updated_at": pa.array(cursors, pa.int64()),
                "qty": pa.array(qtys, qty),
            }
        ),
    )


SCRIPT: list[Message] = [
    items_batch(ITEMS, pa.int64()),
    Checkpoint("items", {}),
    items_batch(WIDER, pa.string()),  # qty: int64 -> string, a rebuild on both adapters
    Checkpoint("items", {}),
]
BEFORE = {(i, q) for i, _, _, q in ITEMS}
AFTER_REBUILD = {(i, None if q is None else str(q)) for i, q in BEFORE}
FINAL = {(2, None), (3, "-7"), (4, "x4"), (1, "1.5")}


def run_items(wh: Warehouse, run_id: str) -> None:
    sync(
        wh,
        ScriptedSource(SCRIPT),
        mode="incremental_deduped",
        deletes="hard",
        region="eu",
        run_id=run_id,
        policy=EVERY_CHECKPOINT,
    )


def qty_rows(wh: Warehouse) -> set[tuple]:
    return set(rows(wh, "SELECT id, qty FROM raw.items"))


@pytest.mark.parametrize("kind", ADAPTER_NAMES)
def test_a_sync_dying_inside_a_column_rebuild_loses_no_value_and_the_rerun_finishes_it(
    kind, tmp_path
):
    """The second batch widens ``qty`` (int -> text): die before each statement of the
    rebuild; the next run's lookup sees the column before or after, every value in it,
    and the rerun lands every row."""
    probe = opener(kind, tmp_path / "probe")
    with probe() as wh, crash_before(wh, None, during="widen_columns") as statements:
        run_items(wh, "probe")
        assert qty_rows(wh) == FINAL
    assert len(statements) >= 5, statements  # a rebuild, not an in-place change
    for n in range(len(statements)):
        fresh = opener(kind, tmp_path / f"cut{n}")
        with fresh() as wh:
            with crash_before(wh, n, during="widen_columns"), pytest.raises(Crash):
                run_items(wh, "dies")
            if kind == "snowflake":  # what the dead run left, before any lookup repairs it
                left = wh._read_columns("raw", "items")
                kept = [c for c in left if c.startswith("qty")]
                values = rows(wh, f"SELECT id, {', '.join(kept)} FROM raw.items")
                for key, *copies in values:
                    original = dict(BEFORE)[key]
                    assert any(
                        c == original or c == (None if original is None else str(original))
                        for c in copies
                    ), (n, key, copies)
        with fresh() as wh:  # the next run: its lookup completes or undoes the rebuild
            columns = wh.columns("raw", "items")
            assert [c for c in columns if "__mds_" in c] == [], (n, columns)
            assert columns["qty"] in ("BIGINT", "VARCHAR"), (n, columns)
            expected = BEFORE if columns["qty"] == "BIGINT" else AFTER_REBUILD
            assert qty_rows(wh) == expected, n
            run_items(wh, "rerun")
            assert wh.columns("raw", "items")["qty"] == "VARCHAR"
            assert qty_rows(wh) == FINAL, n


def test_every_cut_of_a_snowflake_rebuild_is_completed_or_undone_by_the_next_lookup():
    """The rebuild's statements one by one on a table, stopped after each: the lookup
    leaves one ``qty`` holding every value, of the old type or the new."""
    wanted = pa.schema([("qty", pa.float64())])
    with open_fakesnow() as wh:
        wh.create_table("raw", "t", pa.schema([("id", pa.int64()), ("qty", pa.int64())]))
        steps = sfsql.widen_sql("raw", "t", "qty", "NUMBER(38,0)", "FLOAT")
        assert len(steps) == 5
        for n in range(len(steps) + 1):
            wh.execute("DELETE FROM raw.t")
            wh.execute("INSERT INTO raw.t VALUES (1, 10), (2, NULL), (3, -7)")
            for statement in steps[:n]:
                wh._run(statement)
            assert wh.columns("raw", "t") == {
                "id": "BIGINT",
                "qty": "DOUBLE" if n >= 4 else "BIGINT",
            }
            assert sorted(rows(wh, "SELECT id, qty FROM raw.t")) == [(1, 10), (2, None), (3, -7)]
            wh.widen_columns("raw", "t", wanted)
            assert wh.columns("raw", "t") == {"id": "BIGINT", "qty": "DOUBLE"}
            assert sorted(rows(wh, "SELECT id, qty FROM raw.t")) == [(1, 10), (2, None), (3, -7)]
            wh._run('ALTER TABLE "raw"."t" DROP COLUMN "qty"')
            wh._run('ALTER TABLE "raw"."t" ADD COLUMN "qty" NUMBER(38,0)')


def test_a_rebuild_cut_by_an_earlier_version_between_drop_and_rename_is_finished():
    """Earlier versions dropped the original before renaming the spare: the spare alone
    holds the values, and the lookup gives it the column's name back."""
    with open_fakesnow() as wh:
        wh.create_table("raw", "t", pa.schema([("id", pa.int64()), ("qty", pa.int64())]))
        wh.execute("INSERT INTO raw.t VALUES (1, 10), (2, NULL)")
        wh._run('ALTER TABLE "raw"."t" ADD COLUMN "qty__mds_widen" VARCHAR')
        wh._run('UPDATE "raw"."t" SET "qty__mds_widen" = CAST("qty" AS VARCHAR)')
        wh._run('ALTER TABLE "raw"."t" DROP COLUMN "qty"')
        assert wh.columns("raw", "t") == {"id": "BIGINT", "qty": "VARCHAR"}
        assert sorted(rows(wh, "SELECT id, qty FROM raw.t")) == [(1, "10"), (2, None)]


def test_widen_repair_statements():
    t = '"raw"."t"'
    assert sfsql.widen_repair_sql("raw", "t", ["id", "qty"]) == []
    assert sfsql.widen_repair_sql("raw", "t", ["id", "qty", "qty__mds_widen"]) == [
        f'ALTER TABLE {t} DROP COLUMN "qty__mds_widen"'
    ]
    assert sfsql.widen_repair_sql("raw", "t", ["id", "qty__mds_widen", "qty__mds_narrow"]) == [
        f'ALTER TABLE {t} RENAME COLUMN "qty__mds_narrow" TO "qty"',
        f'ALTER TABLE {t} DROP COLUMN "qty__mds_widen"',
    ]
    assert sfsql.widen_repair_sql("raw", "t", ["qty", "qty__mds_narrow"]) == [
        f'ALTER TABLE {t} DROP COLUMN "qty__mds_narrow"'
    ]
    assert sfsql.widen_repair_sql("raw", "t", ["id", "qty__mds_widen"]) == [
        f'ALTER TABLE {t} RENAME COLUMN "qty__mds_widen" TO "qty"'
    ]


@pytest.mark.parametrize("n", range(8))
def test_a_duckdb_rebuild_killed_before_any_statement_is_all_or_nothing(tmp_path, n):
    """SIGKILL before each statement of a DuckLake rebuild (one transaction): the
    column is the old one or the new one, with every value; a rerun finishes it."""
    path = tmp_path / "wh"
    with DuckDBWarehouse(path, threads=1) as wh:
        wh.create_table("raw", "t", pa.schema([("id", pa.int64()), ("day", pa.date32())]))
        wh.execute("INSERT INTO raw.t VALUES (1, DATE '2026-01-02'), (2, NULL)")
    died = worker("widen", path, n)
    with DuckDBWarehouse(path, threads=1) as wh:
        kind = wh.columns("raw", "t")
        assert kind in ({"id": "BIGINT", "day": "DATE"}, {"id": "BIGINT", "day": "VARCHAR"})
        assert died or kind["day"] == "VARCHAR"
        assert sorted(rows(wh, "SELECT id, day::VARCHAR FROM raw.t")) == [
            (1, "2026-01-02"),
            (2, None),
        ]
        wh.widen_columns("raw", "t", pa.schema([("day", pa.string())]))
        assert wh.columns("raw", "t") == {"id": "BIGINT", "day": "VARCHAR"}


def region_rows(wh: Warehouse) -> set[tuple]:
    return set(rows(wh, "SELECT id, name FROM raw.items WHERE _mds_region = 'eu'"))


def test_a_snowflake_overwrite_dying_after_a_schema_change_mid_load_keeps_the_old_rows():
    database = f"A_{uuid.uuid4().hex[:12].upper()}"
    old = [(i, f"old-{i}", i, 0) for i in range(1, 5)]

    def without_qty(records: list[tuple]) -> Batch:
        return Batch("items", items_batch(records, pa.int64()).data.drop_columns(["qty"]))

    def overwrite(wh: Warehouse, script: list[Message], run_id: str) -> None:
        sync(
            wh,
            ScriptedSource(script),
            mode="full_refresh_overwrite",
            deletes="none",
            region="eu",
            run_id=run_id,
            policy=EVERY_CHECKPOINT,
        )

    with open_fakesnow(database) as wh:
        overwrite(wh, [without_qty(old), Checkpoint("items", {})], "first")
        before = region_rows(wh)
        send, added = wh._run, []

        def dies_after_a_column_is_added(sql: str, *args: Any, **kwargs: Any) -> Any:
            if added:
                raise Crash(sql)
            if "ADD COLUMN" in sql:
                added.append(sql)
            return send(sql, *args, **kwargs)

        wh._run = dies_after_a_column_is_added  # type: ignore[method-assign]
        new_column = items_batch(old[2:], pa.int64())  # qty: a new column, mid-load
        with pytest.raises(Crash):
            overwrite(wh, [without_qty(old[:2]), new_column, Checkpoint("items", {})], "second")
        del wh._run
        abandon(wh)
    with open_fakesnow(database) as wh:
        assert region_rows(wh) == before


# -- the run ledger and the state -------------------------------------------------------------
def entry(status: str, rows_read: int) -> ledger.RunEntry:
    return ledger.RunEntry(
        run_id="run-1",
        pipeline="p",
        source="src",
        stream="items",
        region="eu",
        mode="incremental_deduped",
        status=status,
        started_at=NOW,
        rows_read=rows_read,
    )


def ledger_rows(wh: Warehouse) -> list[tuple]:
    return rows(wh, f'SELECT status, rows_read FROM {wh.meta_schema}."_mds_runs"')


KEY = ledger.StreamKey("p", "src", "items", "eu")


def state_rows(wh: Warehouse) -> list[tuple]:
    return rows(wh, f'SELECT state FROM {wh.meta_schema}."_mds_state"')


@pytest.mark.parametrize("kind", ADAPTER_NAMES)
def test_a_ledger_row_or_state_rewrite_cut_anywhere_keeps_the_old_row(kind, tmp_path):
    """``record`` and ``write_state`` called on their own (a failure row, an external
    load): DELETE then INSERT, in one transaction."""
    make = opener(kind, tmp_path)
    rewrites = {
        "record": (
            lambda wh: ledger.record(wh, entry("running", 10)),
            lambda wh: ledger.record(wh, entry("failed", 20)),
            ledger_rows,
        ),
        "write_state": (
            lambda wh: ledger.write_state(wh, KEY, {"position": 1}, "run-1", NOW),
            lambda wh: ledger.write_state(wh, KEY, {"position": 2}, "run-1", NOW),
            state_rows,
        ),
    }
    with make() as wh:
        ledger.ensure_tables(wh)
    for name, (old, new, read) in rewrites.items():
        with make() as wh:
            old(wh)
            before = read(wh)
            with crash_before(wh, None) as statements:
                new(wh)
            after = read(wh)
            assert after != before and len(after) == 1
            old(wh)
        for n in range(len(statements)):
            with make() as wh, crash_before(wh, n), pytest.raises(Crash):
                new(wh)
            with make() as wh:  # the next session
                assert read(wh) == before, (name, n, statements[n])
                new(wh)  # the rerun
                assert read(wh) == after
                old(wh)


@pytest.mark.parametrize("n", range(4))
def test_a_ledger_row_rewrite_killed_before_any_statement_keeps_a_row(tmp_path, n):
    path = tmp_path / "wh"
    with DuckDBWarehouse(path, threads=1) as wh:
        ledger.ensure_tables(wh)
        ledger.record(wh, entry("running", 10))
    died = worker("record", path, n)
    with DuckDBWarehouse(path, threads=1) as wh:
        assert ledger_rows(wh) in ([("running", 10)], [("failed", 20)])
        assert died or ledger_rows(wh) == [("failed", 20)]


# -- check results and dbt node results -------------------------------------------------------
def results(passed: bool) -> list[checks.DataCheckResult]:
    return [
        checks.DataCheckResult(
            name=f"check_{i}",
            table="raw.items",
            kind="volume",
            severity="error",
            region="eu",
            passed=passed,
            observed=i,
            expected=">= 0",
            message="",
        )
        for i in range(3)
    ]


def nodes(status: str) -> list[NodeResult]:
    return [
        NodeResult(
            unique_id=f"model.shop.m{i}",
            name=f"m{i}",
            resource_type="model",
            status=status,
            seconds=0.5,
            rows_affected=None,
            message=None,
            compiled_path=None,
        )
        for i in range(3)
    ]


def check_rows(wh: Warehouse) -> list[tuple]:
    return sorted(rows(wh, f'SELECT name, passed FROM {wh.meta_schema}."_mds_checks"'))


def node_rows(wh: Warehouse) -> list[tuple]:
    return sorted(rows(wh, f'SELECT unique_id, status FROM {wh.meta_schema}."_mds_dbt_results"'))


@pytest.mark.parametrize("kind", ADAPTER_NAMES)
def test_check_and_dbt_results_rewritten_cut_anywhere_are_the_old_set_or_the_new(kind, tmp_path):
    make = opener(kind, tmp_path)
    rewrites = {
        "checks": (
            lambda wh, ok: checks.record_results(wh, results(ok), "run-1", NOW),
            check_rows,
        ),
        "dbt": (
            lambda wh, ok: ledger.record_dbt_results(
                wh, ("run-1", "p", "eu"), "build", nodes("success" if ok else "error"), NOW
            ),
            node_rows,
        ),
    }
    for name, (write, read) in rewrites.items():
        with make() as wh:
            write(wh, False)
            before = read(wh)
            with crash_before(wh, None) as statements:
                write(wh, True)
            after = read(wh)
            assert len(after) == len(before) == 3 and after != before
        for n in range(len(statements)):
            with make() as wh:
                write(wh, False)
                with crash_before(wh, n), pytest.raises(Crash):
                    write(wh, True)
            with make() as wh:  # the next session
                assert read(wh) in (before, after), (name, n, statements[n])
                write(wh, True)  # the rerun
                assert read(wh) == after, (name, n)


# -- environments: clone and publish (DuckLake) -----------------------------------------------
def lake(path: Path) -> DuckDBWarehouse:
    wh = DuckDBWarehouse(path, threads=1)
    with wh:
        wh.execute("CREATE SCHEMA s")
        wh.execute("CREATE TABLE s.t AS SELECT range AS id, 'v' AS v FROM range(100)")
    return wh


def ids(wh: DuckDBWarehouse) -> set[int]:
    with wh:
        return {r[0] for r in rows(wh, "SELECT id FROM s.t")}


def writer(path: Path, value: int, scenario: str = "insert") -> subprocess.Popen:
    """Another process writing row ``value`` into ``s.t`` (it waits while the lake is held)."""
    return subprocess.Popen(
        [sys.executable, __file__, scenario, str(path), str(value)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finished(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_a_write_during_a_publish_lands_in_the_published_lake(tmp_path, monkeypatch):
    """The catalog is replaced by a rename: a writer that committed to the old one between
    the publish's check and the rename would lose its rows. The publish holds the
    catalog, so the writer waits, then writes into what was published."""
    import stack.warehouse._ducklake_envs as envs

    published = lake(tmp_path / "wh")
    audit = published.clone_into("audit")
    with audit:
        audit.execute("INSERT INTO s.t VALUES (-1, 'audited')")
    replace, late = os.replace, []

    def replace_with_a_writer(source: Any, target: Any) -> None:
        late.append(writer(published.path, 1000))
        finished(late[0], 5)  # a writer let in would be done well within this
        replace(source, target)

    monkeypatch.setattr(envs.os, "replace", replace_with_a_writer)
    published.publish("audit")
    monkeypatch.undo()
    assert finished(late[0], 60) and late[0].returncode == 0, late[0].stderr
    assert ids(published) == set(range(100)) | {-1, 1000}


def test_a_write_during_a_clone_is_never_dropped_by_publishing_the_clone(tmp_path, monkeypatch):
    """The clone's base (the published snapshot it was taken at) must be the snapshot it
    copied: a write between the copy and reading the base would be published over."""
    import stack.warehouse._ducklake_envs as envs

    published = lake(tmp_path / "wh")
    copy, late = shutil.copy2, []

    def copy_then_a_writer(source: Any, target: Any) -> Any:
        done = copy(source, target)
        if not late:
            late.append(writer(published.path, 1000))
            finished(late[0], 5)
        return done

    monkeypatch.setattr(envs.shutil, "copy2", copy_then_a_writer)
    audit = published.clone_into("audit")
    monkeypatch.undo()
    assert finished(late[0], 60) and late[0].returncode == 0, late[0].stderr
    with audit:
        audit.execute("INSERT INTO s.t VALUES (-1, 'audited')")
    try:
        published.publish("audit")
    except WarehouseError as refused:
        assert "changed while" in str(refused)
    assert 1000 in ids(published)


def test_two_publishes_into_one_lake_never_overwrite_each_other(tmp_path, monkeypatch):
    import stack.warehouse._ducklake_envs as envs

    published = lake(tmp_path / "wh")
    for env, value in (("audit-eu", -1), ("audit-us", -2)):
        with published.clone_into(env) as wh:
            wh.execute(f"INSERT INTO s.t VALUES ({value}, 'audited')")
    replace, other = os.replace, []

    def replace_while_another_publishes(source: Any, target: Any) -> None:
        if not other:
            code = (
                "import sys; from stack.warehouse.duckdb import DuckDBWarehouse\n"
                "try: DuckDBWarehouse(sys.argv[1]).publish('audit-us')\n"
                "except Exception as e: print(type(e).__name__, e)\n"
                "else: print('published')"
            )
            other.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, str(published.path)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )
            finished(other[0], 5)
        replace(source, target)

    monkeypatch.setattr(envs.os, "replace", replace_while_another_publishes)
    published.publish("audit-eu")
    monkeypatch.undo()
    out, _ = other[0].communicate(timeout=60)
    assert "changed while" in out, out  # the second saw the first's publish and refused
    assert ids(published) == set(range(100)) | {-1}


def test_the_audits_last_commits_are_published_even_if_its_process_died(tmp_path):
    """A process that died holding the audit left its last commits in the catalog's WAL:
    publishing copies the catalog with them, not without."""
    published = lake(tmp_path / "wh")
    audit = published.clone_into("audit")
    dead = writer(audit.path, -1, "insert-and-die")
    assert finished(dead, 60) and dead.returncode == 0, dead.stderr
    assert (audit.path / "catalog.ducklake.wal").exists()
    published.publish("audit")
    assert ids(published) == set(range(100)) | {-1}


# -- environments: publish by SWAP WITH (Snowflake) -------------------------------------------
class Account:
    """Stands in for a Snowflake account for :meth:`SnowflakeWarehouse.publish` (fakesnow
    has no CLONE or SWAP of databases): what each database name holds, ledger rows and
    marts. ``writes`` lists statement numbers before which a run commits a ledger row
    to the published database (whatever content that name holds at that moment).
    """

    def __init__(self, writes: tuple[int, ...]) -> None:
        self.content = {
            PUBLISHED: {"ledger": ("run-1",), "marts": "old"},
            AUDIT_DB: {"ledger": ("run-1",), "marts": "audited"},
        }
        self.writes = writes
        self.stub = StubConnection(self.answer)

    def answer(self, sql: str, params: list | None) -> list[dict]:
        moment = len(self.stub.statements) - 1
        if moment in self.writes:
            published = self.content[PUBLISHED]
            published["ledger"] = (*published["ledger"], f"late-{moment}")
        if "SWAP WITH" in sql:
            self.content[PUBLISHED], self.content[AUDIT_DB] = (
                self.content[AUDIT_DB],
                self.content[PUBLISHED],
            )
        database = sql.split('FROM "', 1)[-1].split('"', 1)[0]
        restore_base = sfsql.RESTORE_BASE in sql
        if restore_base and sql.startswith("DROP TABLE"):
            self.content[sql.split('"', 2)[1]].pop("base", None)
            return []
        if "information_schema.tables" in sql:
            found = not restore_base or "base" in self.content[database]
            return [{"table_name": sfsql.RESTORE_BASE if restore_base else "_mds_runs"}] * found
        if restore_base:  # what a clone of an older version kept of the published ledger
            return [{"ledger_table": "_mds_runs", "hash": self.content[database]["base"]}]
        if "HASH_AGG" in sql:
            return [{"hash": hash(self.content[database]["ledger"])}]
        return []


PUBLISHED, AUDIT_DB = "ANALYTICS", "ANALYTICS_audit-eu"


def publish_on(account: Account, monkeypatch: pytest.MonkeyPatch) -> WarehouseError | None:
    import stack.warehouse.snowflake as adapter

    monkeypatch.setattr(adapter.snowflake.connector, "connect", lambda **kw: account.stub)
    try:
        adapter.SnowflakeWarehouse(fakesnow_target(PUBLISHED)).publish("audit-eu")
    except WarehouseError as refused:
        return refused
    return None


def test_a_snowflake_publish_never_swaps_a_write_out_of_the_published_database(monkeypatch):
    """A run commits to the published database before each statement of the publish in
    turn: the write stays published (the publish is refused or undone), or the publish
    happened before it; a publish that goes through publishes the audited marts."""
    clean = Account(writes=())
    assert publish_on(clean, monkeypatch) is None
    assert clean.content[PUBLISHED]["marts"] == "audited"
    statements = clean.stub.sql()
    assert sum("SWAP WITH" in s for s in statements) == 1
    for moment in range(len(statements)):
        account = Account(writes=(moment,))
        refused = publish_on(account, monkeypatch)
        assert f"late-{moment}" in account.content[PUBLISHED]["ledger"], (moment, refused)
        published = account.content[PUBLISHED]["marts"]
        assert published == ("old" if refused else "audited"), (moment, refused)
        if refused:
            assert "changed while" in str(refused)
            assert account.content[AUDIT_DB]["marts"] == "audited"  # kept for the rerun


def test_publishing_a_snowflake_clone_of_an_older_version_restores_it(monkeypatch):
    """`clone ENV --as-of` then `publish ENV`: the clone's ledger is the old one, so the
    check is against the published ledger the clone kept when it was made. A run that
    commits before any statement of the publish stays published (or the restore went
    first); the kept ledger never reaches the published database."""

    def restoring(writes: tuple[int, ...]) -> Account:
        account = Account(writes)
        account.content[AUDIT_DB] = {
            "ledger": ("run-0",),
            "marts": "restored",
            "base": hash(account.content[PUBLISHED]["ledger"]),
        }
        return account

    clean = restoring(())
    assert publish_on(clean, monkeypatch) is None
    assert clean.content[PUBLISHED] == {"ledger": ("run-0",), "marts": "restored"}
    for moment in range(len(clean.stub.sql())):
        account = restoring((moment,))
        refused = publish_on(account, monkeypatch)
        published = account.content[PUBLISHED]
        if refused:
            assert f"late-{moment}" in published["ledger"], (moment, refused)
            assert "changed while" in str(refused) and published["marts"] == "old"
        else:  # the write came after the restore: it is in the restored ledger
            assert published["marts"] == "restored", moment
            assert f"late-{moment}" in published["ledger"], moment
        assert "base" not in published, moment
    stale = restoring(())
    stale.content[PUBLISHED]["ledger"] += ("run-2",)  # a run after the clone was made
    refused = publish_on(stale, monkeypatch)
    assert refused is not None and "clone it again" in (refused.hint or "")
    assert stale.content[PUBLISHED]["marts"] == "old"


def test_a_write_during_the_undo_of_a_snowflake_swap_is_reported_not_dropped(monkeypatch):
    """A run commits just before the swap, and another just before the swap back: the
    second lands in the environment, and the error says to keep it."""
    clean = Account(writes=())
    publish_on(clean, monkeypatch)
    swap = next(i for i, s in enumerate(clean.stub.sql()) if "SWAP WITH" in s)
    undo = swap + 3  # after the environment's two lookups
    account = Account(writes=(swap, undo))
    refused = publish_on(account, monkeypatch)
    assert refused is not None and "holds a write" in str(refused), refused
    assert "before anything replaces or drops it" in refused.hint
    assert account.stub.sql()[undo] == clean.stub.sql()[swap]
    assert f"late-{swap}" in account.content[PUBLISHED]["ledger"]
    assert f"late-{undo}" in account.content[AUDIT_DB]["ledger"]


def test_the_snowflake_change_check_reads_every_ledger_table_a_write_changes():
    from stack.run import backfill

    tables = {ledger.RUNS_TABLE, ledger.STATE_TABLE, backfill.BACKFILLS_TABLE}
    assert set(sfsql.LEDGER_TABLES) == tables


# -- the SIGKILL worker -----------------------------------------------------------------------
def worker(scenario: str, path: Path, n: int) -> bool:
    """Run ``scenario`` in a process that SIGKILLs itself before its ``n``-th statement.

    Returns whether it died (False: the scenario has fewer statements and finished).
    """
    done = subprocess.run(
        [sys.executable, __file__, scenario, str(path), str(n)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode == -signal.SIGKILL:
        return True
    assert done.returncode == 0, done.stderr
    return False


def _kill_before(wh: DuckDBWarehouse, n: int) -> None:
    send, sent = wh.execute, [0]

    def counted(sql: str, params: Any = None) -> None:
        if sent[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        sent[0] += 1
        send(sql, params)

    wh.execute = counted  # type: ignore[method-assign]


def _main(scenario: str, path: str, n: str) -> None:
    if scenario.startswith("insert"):
        wh = DuckDBWarehouse(Path(path), threads=1, busy_timeout=60)
        with wh:
            wh.execute(f"INSERT INTO s.t VALUES ({int(n)}, 'late')")
            if scenario == "insert-and-die":
                os._exit(0)  # no close: the catalog keeps its WAL
        return
    with DuckDBWarehouse(Path(path), threads=1) as wh:
        _kill_before(wh, int(n))
        if scenario == "widen":
            wh.widen_columns("raw", "t", pa.schema([("day", pa.string())]))
        elif scenario == "record":
            ledger.record(wh, entry("failed", 20))
        else:
            raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    _main(*sys.argv[1:])
