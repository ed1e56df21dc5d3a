"""Zero-copy clones and write-audit-publish on DuckDB (DuckLake)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from stack.config import load_config
from stack.errors import WarehouseError
from stack.run import pipeline
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.servers.bi_servers import WEBHOOK_TOKEN, WebhookDouble, serve
from tests.test_pipeline import SHOP


def lake(path: Path, rows: int = 100_000) -> DuckDBWarehouse:
    wh = DuckDBWarehouse(path)
    with wh:
        wh.execute("CREATE SCHEMA s")
        wh.execute(f"CREATE TABLE s.t AS SELECT range AS id, 'v' || range AS v FROM range({rows})")
    return wh


def rows(wh: DuckDBWarehouse, sql: str = "SELECT count(*), sum(id) FROM s.t") -> tuple:
    with wh:
        return tuple(wh.query(sql).to_pylist()[0].values())


def disk_usage(path: Path) -> int:
    """Bytes of the files under ``path`` that are not hard links shared with another place."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def test_clone_is_zero_copy_and_isolated_both_ways(tmp_path):
    source = lake(tmp_path / "wh", rows=2_000_000)
    started = time.perf_counter()
    clone = source.clone_into("dev")
    seconds = time.perf_counter() - started
    assert clone.path == tmp_path / "wh.dev"
    assert disk_usage(clone.path) < 5_000_000  # the catalog; data files are shared links
    assert rows(clone) == rows(source)
    with clone:
        clone.execute("DELETE FROM s.t WHERE id < 1000")
        clone.execute("INSERT INTO s.t VALUES (-1, 'clone only')")
    with source:
        source.execute("UPDATE s.t SET v = 'source only' WHERE id = 5")
    assert rows(source) == (2_000_000, sum(range(2_000_000)))
    assert rows(clone) == (2_000_000 - 1000 + 1, sum(range(1000, 2_000_000)) - 1)
    assert rows(clone, "SELECT count(*) FROM s.t WHERE v = 'source only'") == (0,)
    print(f"clone of 2M rows: {seconds:.3f}s")


def test_maintenance_on_one_side_never_breaks_the_other(tmp_path):
    source = lake(tmp_path / "wh")
    clone = source.clone_into("dev")
    for side in (source, clone):
        with side:
            side.execute("DELETE FROM s.t WHERE id % 2 = 0")
            side.execute("CALL ducklake_rewrite_data_files('lake')")
            side.execute("CALL ducklake_merge_adjacent_files('lake')")
            side.execute("CALL ducklake_expire_snapshots('lake', older_than => now())")
            side.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
            side.execute("CALL ducklake_delete_orphaned_files('lake', cleanup_all => true)")
        other = clone if side is source else source
        assert rows(other)[0] in (50_000, 100_000)  # the other side still reads all its files
    source.drop_environment("dev")
    assert not clone.path.exists() and rows(source) == (50_000, sum(range(1, 100_000, 2)))


def test_publish_is_refused_when_the_published_side_changed_meanwhile(tmp_path):
    source = lake(tmp_path / "wh")
    source.clone_into("audit")
    with source:
        source.execute("INSERT INTO s.t VALUES (-5, 'late write')")
    with pytest.raises(WarehouseError, match=r"changed while wh\.audit was being audited"):
        source.publish("audit")
    assert rows(source) == (100_001, sum(range(100_000)) - 5)


# -- write-audit-publish through the pipeline --------------------------------------------------


def project(folder: Path, webhook: str | None = None) -> Path:
    """The demo pipeline with a copy of the dbt project that has an audit gate test."""
    dbt = folder / "dbt_project"
    shutil.copytree(ROOT / "dbt_project", dbt, ignore=shutil.ignore_patterns("target", "logs"))
    (dbt / "tests" / "assert_audit_gate.sql").write_text(
        "select 1 as failure from {{ ref('daily_revenue') }} where {{ var('fail_audit', false) }}\n"
    )
    config = yaml.safe_load((ROOT / "stack.yml").read_text())
    config["targets"]["local"]["path"] = str(folder / "warehouse")
    config["sources"]["shop"]["config"] |= SHOP
    config["dbt"]["project_dir"] = str(dbt)
    if webhook:
        config["bi"] = [
            {
                "type": "webhook",
                "url": webhook,
                "timeout": 10,
                "headers": {"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
            }
        ]
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def set_vars(path: Path, **vars: object) -> None:
    config = yaml.safe_load(path.read_text())
    config["dbt"]["vars"] = vars
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run(path: Path, region: str = "eu", **vars: object) -> pipeline.RunSummary:
    if vars:
        set_vars(path, **vars)
    return pipeline.run_pipeline(path, None, pipeline.select(load_config(path), region))


MARTS = "SELECT * FROM marts.daily_revenue ORDER BY region, day"


@pytest.mark.slow
def test_failing_dbt_test_leaves_published_marts_unchanged_and_a_fix_publishes(tmp_path):
    with serve(WebhookDouble()) as dashboards:
        dashboards.add("refresh")
        wap_scenario(tmp_path, dashboards)


def wap_scenario(tmp_path: Path, dashboards: WebhookDouble) -> None:
    path = project(tmp_path, f"{dashboards.url}/hooks/refresh")
    first = run(path)
    assert first.published and first.dashboards[0].status == "succeeded"
    assert len(dashboards.received) == 1
    published = DuckDBWarehouse(tmp_path / "warehouse")
    before = rows_of(published, MARTS)
    bi_file = tmp_path / "warehouse" / "bi.duckdb"  # the demo's BI file: the marts, for BI
    assert bi_rows(bi_file) == before

    said = failing_audit(path)
    assert "run failed: dbt test assert_audit_gate fail" in said
    assert "not published" in said
    assert "dashboard webhook (webhook): skipped" in said
    assert len(dashboards.received) == 1  # no refresh fired after the failed audit
    assert rows_of(published, MARTS) == before  # dashboards still see yesterday's marts
    assert bi_rows(bi_file) == before  # and so do those reading the BI file
    audit = published.environment("audit-eu")
    assert audit.path.exists() and rows_of(audit, MARTS) != before  # kept for debugging

    fixed = run(path, fail_audit=False)
    assert fixed.ok and fixed.published
    assert len(dashboards.received) == 2
    after = rows_of(published, MARTS)
    assert len(after) > len(before) and not audit.path.exists()
    assert bi_rows(bi_file) == after
    assert [p.name for p in bi_file.parent.glob(".bi.duckdb.*")] == []  # no half-written file


def failing_audit(path: Path, region: str = "eu") -> str:
    """``mdstack run`` of ``region`` as a process, with the audit gate failing: what it said
    (it must exit 1)."""
    set_vars(path, fail_audit=True)
    command = ["run", "-c", str(path), "--region", region]
    failed = subprocess.run(
        [sys.executable, "-c", "from stack.cli import app; app()", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    return " ".join((failed.stdout + failed.stderr).split())


def rows_of(wh: DuckDBWarehouse, sql: str) -> list[tuple]:
    with wh:
        return [tuple(r.values()) for r in wh.query(sql).to_pylist()]


def bi_rows(path: Path, sql: str = MARTS) -> list[tuple]:
    """What a BI tool reads from the BI file, opened as any DuckDB client opens it."""
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


READER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import duckdb
    from stack.warehouse.duckdb import DuckDBWarehouse
    path, done, kind = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    TOTALS = [f"SELECT region, sum(revenue) AS r FROM marts.{t} GROUP BY ALL ORDER BY 1"
              for t in ("daily_revenue", "marketing_roi")]

    def read():
        if kind == "lake":  # the lake, through mdstack
            with DuckDBWarehouse(path, read_only=True, busy_timeout=60) as wh:
                return [wh.query(q).to_pylist() for q in TOTALS]
        with duckdb.connect(path, read_only=True) as con:  # a file, as any DuckDB client
            return [con.execute(q).fetchall() for q in TOTALS]

    seen, deadline = set(), time.monotonic() + 900
    while time.monotonic() < deadline:
        finished = done.exists()  # one more read after the writer is done
        daily, roi = read()
        assert daily == roi, ("half-published", daily, roi)
        seen.add(str(daily))
        if finished:
            break
        time.sleep(0.2)  # a dashboard polling: the writer gets its turns in between
    print(len(seen))
    """
)


def polling_reader(path: Path, done: Path, kind: str) -> subprocess.Popen:
    """A dashboard polling the marts' totals at ``path`` (``kind``: ``lake`` or ``file``)
    until ``done`` exists; it fails on totals that disagree (half-published marts) and
    prints how many published states it saw."""
    return subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(done), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
def test_readers_of_the_lake_and_of_the_bi_file_never_see_half_published_marts(tmp_path):
    """Dashboards polling the lake and the BI file while two runs publish, and one holding
    the BI file open across a publish: each sees whole old or whole new marts."""
    path = project(tmp_path)
    run(path)
    bi_file = tmp_path / "warehouse" / "bi.duckdb"  # the demo's: a plain DuckDB file
    with duckdb.connect(str(bi_file), read_only=True) as con:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
    assert {("marts", "daily_revenue"), ("marts", "marketing_roi")} <= set(tables)
    assert {schema for schema, _ in tables} == {"marts"}  # the schemas chosen, nothing else
    done = tmp_path / "writer-done"
    readers = [polling_reader(tmp_path / "warehouse", done, "lake")]
    readers.append(polling_reader(bi_file, done, "file"))
    try:
        before = bi_rows(bi_file)
        with duckdb.connect(str(bi_file), read_only=True) as held:
            assert run(path).published  # publishes while this reader has the file open
            assert held.execute(MARTS).fetchall() == before  # the old marts, whole
        after = bi_rows(bi_file)
        assert after != before
        assert after == rows_of(DuckDBWarehouse(tmp_path / "warehouse"), MARTS)
        assert run(path).published
    finally:
        done.touch()
        said = [reader.communicate(timeout=300) for reader in readers]
    for reader, (out, err) in zip(readers, said, strict=True):
        assert reader.returncode == 0, err
        assert int(out.strip()) >= 2  # it saw more than one published state, each whole


def test_clone_and_drop_env_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from stack.cli import app

    source = lake(tmp_path / "warehouse", rows=10)
    config = yaml.safe_load((ROOT / "stack.yml").read_text())
    config["targets"]["local"]["path"] = str(source.path)
    config["dbt"]["project_dir"] = str(ROOT / "dbt_project")
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    cli = CliRunner()
    made = cli.invoke(app, ["clone", "dev", "--config", str(path)])
    assert made.exit_code == 0 and "--target local@dev" in made.output
    wrote = cli.invoke(
        app, ["sql", "INSERT INTO s.t VALUES (99, 'dev')", "-c", str(path), "-t", "local@dev"]
    )
    assert wrote.exit_code == 0, wrote.output
    assert rows(source.environment("dev")) == (11, sum(range(10)) + 99)
    assert rows(source) == (10, sum(range(10)))
    assert cli.invoke(app, ["drop-env", "dev", "-c", str(path)]).exit_code == 0
    assert not (tmp_path / "warehouse.dev").exists()


@pytest.mark.slow
def test_an_error_check_blocks_the_publish_and_a_warn_check_does_not(tmp_path):
    """A failing check at ``error`` keeps the published marts and the dashboards as they
    were, and says which check failed; the same failure at ``warn`` is reported and the
    run publishes and refreshes."""
    with serve(WebhookDouble()) as dashboards:
        dashboards.add("refresh")
        path = project(tmp_path, f"{dashboards.url}/hooks/refresh")
        config = yaml.safe_load(path.read_text())
        impossible = {"table": "marts.daily_revenue", "region_column": "region"}
        impossible["volume"] = {"max_rows": 0}
        config["checks"] = [impossible | {"severity": "error"}]
        path.write_text(yaml.safe_dump(config, sort_keys=False))

        blocked = run(path)
        assert not blocked.ok and not blocked.published and blocked.dbt.blocked
        assert blocked.dbt.run.success  # dbt itself was green: the check alone blocked
        assert "check volume:marts.daily_revenue failed at severity error" in blocked.failure()
        assert [h.status for h in blocked.dashboards] == ["skipped"]
        assert dashboards.received == []
        published = DuckDBWarehouse(tmp_path / "warehouse")
        with published as wh:
            tables = wh.query("SELECT table_schema FROM information_schema.tables").to_pylist()
            stored = wh.query("SELECT name, passed FROM _mds_checks WHERE NOT passed").to_pylist()
        assert "marts" not in {t["table_schema"] for t in tables}
        assert stored == [{"name": "volume:marts.daily_revenue", "passed": False}]

        config["checks"] = [impossible | {"severity": "warn"}]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        warned = run(path)
        assert warned.ok and warned.published and not warned.dbt.blocked
        failed = [c for c in warned.dbt.checks if not c.passed]
        assert [(c.name, c.severity) for c in failed] == [("volume:marts.daily_revenue", "warn")]
        assert [h.status for h in warned.dashboards] == ["succeeded"]
        assert len(dashboards.received) == 1
        assert rows_of(published, MARTS)  # the marts are published now
