"""``mdstack clone ENV --as-of RUN_ID``: a zero-copy, writable environment of the warehouse
as a run left it.

A small lake is built with the sync engine (:class:`tests.scripted.ScriptedSource`), three
runs, each recording its version in the run ledger as the pipeline does; between runs a
table is made, one dropped, a column added, and merges delete rows of files that already
have deletions (DuckLake 1.0 then writes one delete file holding deletions of several
versions). The catalog file is also copied as each run left it: what DuckLake itself
wrote for that version, to compare the rolled-back catalog with.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from connectors.base import Batch, Message
from stack.cli import app
from stack.config import SourceConfig
from stack.errors import WarehouseError
from stack.load import EVERY_CHECKPOINT, RunContext, ledger, plan_stream, sync_stream, utcnow
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.contract import pg_catalog
from tests.scripted import ScriptedSource, checkpoint, deletes, rows
from tests.servers.pg_server import connect_kwargs

PIPELINE, REGION = "shop", "eu"
"""The demo config's name (the CLI test reads the ledger through it) and a region."""
VERSIONED = (
    "ducklake_schema",
    "ducklake_table",
    "ducklake_view",
    "ducklake_column",
    "ducklake_tag",
    "ducklake_column_tag",
    "ducklake_data_file",
    "ducklake_file_column_stats",
    "ducklake_partition_info",
    "ducklake_schema_versions",
    "ducklake_column_mapping",
    "ducklake_name_mapping",
    "ducklake_macro",
)
"""Catalog tables the rolled-back catalog holds exactly as DuckLake wrote them at the version."""


def items(ids: range, name: str, cursor: int) -> Batch:
    return rows(*[(i, f"{name}{i}", cursor) for i in ids])


def colored(ids: range, cursor: int) -> Batch:
    """Records with a field the table does not have yet: the load adds the column."""
    return Batch(
        "items",
        pa.record_batch(
            {
                "id": pa.array(list(ids), pa.int64()),
                "name": pa.array([f"c{i}" for i in ids]),
                "updated_at": pa.array([cursor] * len(ids), pa.int64()),
                "color": pa.array(["red"] * len(ids)),
            }
        ),
    )


RUNS: list[tuple[str, list[Message], list[str]]] = [
    (
        "r1",
        [items(range(500), "a", 1), checkpoint()],
        [
            "CREATE TABLE raw.gone AS SELECT range AS k FROM range(5)",
            "CREATE VIEW raw.big AS SELECT id, name FROM raw.items WHERE id >= 400",
        ],
    ),
    (
        "r2",
        [
            items(range(60), "b", 2),
            deletes(*range(100, 120), at=2),
            items(range(1000, 1003), "n", 2),
            colored(range(2000, 2004), 2),
            checkpoint(),
        ],
        ["DROP TABLE raw.gone"],
    ),
    (
        "r3",
        [items(range(200, 280), "c", 3), deletes(*range(300, 305), at=3), checkpoint()],
        ["CREATE TABLE raw.later AS SELECT 'later' AS what", "DROP VIEW raw.big"],
    ),
]


def sync(wh: DuckDBWarehouse, script: list[Message], run_id: str) -> None:
    """One run of the stream ``items`` into ``raw.items``: incremental, keyed on ``id``, hard
    deletes, resuming from the committed position of ``script``."""
    config = SourceConfig.model_validate(
        {
            "connector": "scripted",
            "schema": "raw",
            "streams": {"items": {"sync": "incremental_deduped", "deletes": "hard"}},
        }
    )
    source = ScriptedSource(script)
    plan = plan_stream("src", config, source.discover(), "items")
    sync_stream(wh, source, plan, RunContext(PIPELINE, REGION, run_id), policy=EVERY_CHECKPOINT)


@dataclass
class History:
    lake: DuckDBWarehouse
    versions: dict[str, int]
    """The version each run left the lake at, as the run ledger says."""
    catalogs: dict[str, Path]
    """The catalog file as each run left it (before its ledger row)."""
    script: list[Message]


def make_history(folder: Path, runs: list[tuple[str, list[Message], list[str]]]) -> History:
    lake = DuckDBWarehouse(folder / "warehouse", threads=2)
    script: list[Message] = []
    versions, catalogs = {}, {}
    for run_id, messages, statements in runs:
        script += messages
        with lake:
            sync(lake, script, run_id)
            for statement in statements:
                lake.execute(statement)
        catalogs[run_id] = folder / f"catalog-{run_id}.ducklake"
        shutil.copy2(lake.catalog, catalogs[run_id])
        with lake:
            ledger.record_snapshot(lake, (run_id, PIPELINE, REGION), utcnow())
            found = ledger.run_snapshot(lake, PIPELINE, run_id)
        assert found is not None
        versions[run_id] = found
    return History(lake, versions, catalogs, script)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("clone_as_of"), RUNS)


Contents = dict[tuple[str, str, str], Any]


def contents(wh: DuckDBWarehouse) -> Contents:
    """Every table and view with its columns and rows (sorted)."""
    with wh:
        relations = wh.query(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables "
            "WHERE table_catalog = 'lake' ORDER BY ALL"
        ).to_pylist()
        found: Contents = {}
        for r in relations:
            ref = f'"{r["table_schema"]}"."{r["table_name"]}"'
            columns = wh.query(f"DESCRIBE {ref}").to_pylist()
            data = wh.query(f"SELECT * FROM {ref} ORDER BY ALL").to_pylist()
            found[tuple(r.values())] = (
                [(c["column_name"], c["column_type"]) for c in columns],
                data,
            )
    return found


def catalog_rows(catalog: Path, table: str) -> set[tuple]:
    """A catalog table's rows (``table`` may be a query)."""
    query = table if table.startswith("SELECT") else f"SELECT * FROM {table}"
    with duckdb.connect(str(catalog), read_only=True) as con:
        return set(con.execute(query).fetchall())


def test_each_run_clones_as_it_left_the_lake_and_the_catalog_as_duckLake_wrote_it(history):
    lake, versions = history.lake, history.versions
    # The case the delete files are rewritten for: a file of run 3's deletions that also
    # holds run 2's, begun at run 2's version.
    mixed = [
        row
        for row in catalog_rows(lake.catalog, "ducklake_delete_file")
        if row[2] <= versions["r2"] < (row[12] or 0)
    ]
    assert mixed, "the lake has no delete file holding deletions of several versions"
    for run_id, version in versions.items():
        clone = lake.clone_into(f"at-{run_id}", as_of=version)
        assert clone.path == lake.path.parent / f"warehouse.at-{run_id}"
        assert contents(clone) == contents(lake.as_of(version)), run_id
        truth = history.catalogs[run_id]
        for table in VERSIONED:
            assert catalog_rows(clone.catalog, table) == catalog_rows(truth, table), (run_id, table)
        # Statistics: DuckLake's own at the version; a column it kept none for (one added
        # after rows were written) gets some, covering its data; row ids go on from the latest.
        stats = "ducklake_table_column_stats"
        extra = catalog_rows(clone.catalog, stats) - catalog_rows(truth, stats)
        assert catalog_rows(truth, stats) <= catalog_rows(clone.catalog, stats), run_id
        assert not {r[:2] for r in extra} & {r[:2] for r in catalog_rows(truth, stats)}
        counts = "SELECT table_id, record_count, file_size_bytes FROM ducklake_table_stats"
        assert catalog_rows(clone.catalog, counts) == catalog_rows(truth, counts), run_id
        next_ids = "SELECT table_id, next_row_id FROM ducklake_table_stats"
        truth_next = dict(catalog_rows(truth, next_ids))
        assert all(n >= truth_next[t] for t, n in catalog_rows(clone.catalog, next_ids))
        # The version comes back as it was, then one version holding it, after the lake's.
        with clone:
            assert clone.current_snapshot() == _latest(lake) + 1
            assert clone.query(
                f"SELECT count(*) AS n FROM lake.snapshots() WHERE snapshot_id > {version}"
            ).to_pylist() == [{"n": 1}]
    relations = {
        run: {
            name
            for _, name, _ in contents(DuckDBWarehouse(lake.path.parent / f"warehouse.at-{run}"))
        }
        for run in versions
    }
    assert "gone" in relations["r1"] and "gone" not in relations["r2"]  # dropped later: back
    assert "later" not in relations["r2"] and "later" in relations["r3"]  # made later: absent
    assert "big" in relations["r2"] and "big" not in relations["r3"]


def _latest(lake: DuckDBWarehouse) -> int:
    with lake:
        return int(lake.current_snapshot() or 0)


def data_columns(wh: DuckDBWarehouse, where: str = "") -> list[dict]:
    """``raw.items`` without mdstack's bookkeeping columns (run ids, load times)."""
    with wh:
        return wh.query(
            f"SELECT id, name, updated_at FROM raw.items {where} ORDER BY id"
        ).to_pylist()


def test_the_clone_is_writable_and_the_lake_is_never_touched(history):
    lake, versions = history.lake, history.versions
    before, latest = contents(lake), _latest(lake)
    fix = lake.clone_into("fix", as_of=versions["r1"])
    linked = parquet_files(fix.path)  # the lake's files, every one: hard links
    assert linked and linked <= parquet_files(lake.path)
    with fix:
        fix.execute("INSERT INTO raw.items (id, name, updated_at) VALUES (-1, 'by hand', 0)")
        fix.execute(
            "MERGE INTO raw.items t USING (SELECT 7 AS id, 'merged' AS name) s ON t.id = s.id "
            "WHEN MATCHED THEN UPDATE SET name = s.name"
        )
        # Run 2 again, from the state the clone holds (run 1's): its merges and deletions.
        sync(fix, [m for _, messages, _ in RUNS[:2] for m in messages], "again")
    expected = {r["id"]: r for r in data_columns(lake.as_of(versions["r2"]))}
    expected[-1] = {"id": -1, "name": "by hand", "updated_at": 0}
    reopened = DuckDBWarehouse(fix.path)
    assert data_columns(reopened) == sorted(expected.values(), key=lambda r: r["id"])
    with reopened:  # the statistics DuckDB answers from cover what the clone holds
        assert reopened.query(
            "SELECT min(id) AS lo, max(id) AS hi, count(*) FILTER (id > 1500) AS high "
            "FROM raw.items"
        ).to_pylist() == [{"lo": -1, "hi": 2003, "high": 4}]
        states = reopened.query("SELECT state FROM _mds_state").to_pylist()
    replayed = sum(len(messages) for _, messages, _ in RUNS[:2])
    assert [s["state"] for s in states] == [f'{{"position": {replayed}}}']  # run 2's, again
    # Its cleanup removes its own links to the files only later versions used.
    assert fix.expire(utcnow()).files > 0
    assert linked - parquet_files(fix.path)
    assert data_columns(DuckDBWarehouse(fix.path))[0]["name"] == "by hand"
    # The lake: as it was, version and all, and every file still there.
    assert contents(lake) == before and _latest(lake) == latest
    assert linked <= parquet_files(lake.path)


def parquet_files(folder: Path) -> set[str]:
    return {p.name for p in (folder / "data").rglob("*.parquet")}


def project(folder: Path, lake: DuckDBWarehouse) -> Path:
    config = yaml.safe_load((ROOT / "stack.yml").read_text())
    assert config["name"] == PIPELINE
    config["targets"]["local"]["path"] = str(lake.path)
    del config["targets"]["local"]["bi_file"]
    config["dbt"]["project_dir"] = str(ROOT / "dbt_project")
    path = folder / "stack.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_clone_as_of_a_run_from_the_command_line(history, tmp_path):
    path = project(tmp_path, history.lake)
    cli = CliRunner()
    said = cli.invoke(app, ["clone", "--help"])
    assert "--as-of" in said.output and "as that run left it" in " ".join(said.output.split())
    made = cli.invoke(app, ["clone", "dev", "--as-of", "r1", "-c", str(path)])
    assert made.exit_code == 0, made.output
    version = history.versions["r1"]
    assert f"as run r1 left it (version {version})" in made.output
    assert "--target local@dev" in made.output
    count = cli.invoke(
        app,
        [
            "sql",
            "SELECT count(*) AS n FROM raw.items",
            "-c",
            str(path),
            "-t",
            "local@dev",
            "-f",
            "csv",
        ],
    )
    assert count.exit_code == 0 and count.output.split() == ["n", "500"], count.output
    unknown = cli.invoke(app, ["clone", "dev", "--as-of", "no-such-run", "-c", str(path)])
    assert unknown.exit_code == 1
    assert "run 'no-such-run' of 'shop' recorded no version" in " ".join(unknown.output.split())


def small_history(folder: Path) -> History:
    return make_history(
        folder,
        [
            ("s1", [items(range(3), "a", 1), checkpoint()], []),
            ("s2", [items(range(3, 6), "b", 2), checkpoint()], []),
        ],
    )


def test_a_version_expire_removed_is_refused_and_the_environment_kept(tmp_path):
    small = small_history(tmp_path)
    dev = small.lake.clone_into("dev")
    with dev:
        dev.execute("CREATE TABLE raw.mine AS SELECT 1 AS x")
    kept = contents(dev)
    small.lake.expire(utcnow())
    with pytest.raises(WarehouseError) as refused:
        small.lake.clone_into("dev", as_of=small.versions["s1"])
    assert f"no longer keeps version {small.versions['s1']}" in str(refused.value)
    assert "`retention:`" in (refused.value.hint or "")
    assert contents(dev) == kept
    path = project(tmp_path, small.lake)
    said = CliRunner().invoke(app, ["clone", "dev", "--as-of", "s1", "-c", str(path)])
    assert said.exit_code == 1
    assert "no longer keeps version" in " ".join(said.output.split())


def test_publishing_a_clone_as_of_a_run_restores_the_lake_to_it(tmp_path):
    small = small_history(tmp_path)
    stale = small.lake.clone_into("stale")  # an environment taken before the restore
    at_s1 = contents(small.lake.as_of(small.versions["s1"]))
    left = small.lake.path.with_name(f".{small.lake.path.name}.restore.0badc0de")
    (left / "data").mkdir(parents=True)  # what a clone killed midway left
    small.lake.clone_into("restore", as_of=small.versions["s1"])
    assert not left.exists()
    small.lake.publish("restore")
    assert contents(small.lake) == at_s1
    assert contents(small.lake.as_of(small.versions["s1"])) == at_s1  # its history stays
    with small.lake:  # the lake goes on from there: run 2's rows load again
        sync(small.lake, small.script, "s2-again")
    assert [r["id"] for r in data_columns(small.lake)] == list(range(6))
    # Version ids are never reused: an environment cloned before the restore cannot
    # overwrite it, however many versions the lake has made since.
    with pytest.raises(WarehouseError, match="changed while"):
        small.lake.publish(stale.path.name.rpartition(".")[2])


def test_a_version_whose_rows_maintenance_mixed_with_later_ones_is_refused(tmp_path):
    """Flushing inlined rows writes the rows of every version so far into one file: the
    versions before the flush cannot be cloned exactly, those after it can."""
    small = small_history(tmp_path)
    with small.lake:
        small.lake.execute("CALL ducklake_flush_inlined_data('lake')")
    for run_id in ("s1", "s2"):
        with pytest.raises(WarehouseError, match="maintenance after it"):
            small.lake.clone_into("old", as_of=small.versions[run_id])
    assert not (tmp_path / "warehouse.old").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".warehouse.old")]
    with small.lake:
        sync(small.lake, [*small.script, items(range(6, 9), "c", 3), checkpoint()], "s3")
        after = small.lake.current_snapshot()
    assert after is not None
    cloned = small.lake.clone_into("new", as_of=after)
    assert contents(cloned) == contents(small.lake.as_of(after))
    assert len(data_columns(cloned)) == 9


def test_a_lake_with_a_postgresql_catalog_is_refused(tmp_path, pg_logical):
    catalog = pg_catalog(tmp_path / "warehouse", pg_logical.dsn["port"])
    lake = DuckDBWarehouse(tmp_path / "warehouse", threads=1, catalog=catalog)
    with lake:
        lake.execute("CREATE TABLE t AS SELECT 1 AS x")
        version = lake.current_snapshot()
        lake.execute("INSERT INTO t VALUES (2)")
    assert version is not None
    with pytest.raises(WarehouseError, match="catalog is a DuckDB file") as refused:
        lake.clone_into("dev", as_of=version)
    assert "mdstack sql --as-of" in (refused.value.hint or "")
    env = lake.environment("dev")  # no environment schema was made
    assert env.pg is not None
    with psycopg.connect(**connect_kwargs(pg_logical.dsn)) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (env.pg.schema,)
        ).fetchone()
    assert found == (0,)


def test_statistics_are_the_version_s_not_the_lake_s_latest(tmp_path):
    """DuckDB answers queries from a table's statistics (bounds, nulls), which DuckLake only
    ever widens: the clone's are those DuckLake held at the version, computed again from
    what it holds, not the lake's latest; a write to the clone widens them from there."""
    lake = DuckDBWarehouse(tmp_path / "warehouse", threads=2)
    with lake:
        lake.execute("CREATE TABLE t AS SELECT range AS id, range * 10 AS c FROM range(1000)")
        version = lake.current_snapshot()
    truth = tmp_path / "truth.ducklake"
    shutil.copy2(lake.catalog, truth)
    with lake:
        lake.execute("INSERT INTO t SELECT range + 5000, -range - 1 FROM range(100)")
        lake.execute("INSERT INTO t VALUES (NULL, NULL)")
        lake.execute("ALTER TABLE t DROP COLUMN c")
    assert version is not None
    clone = lake.clone_into("back", as_of=version)
    stats = "SELECT * FROM ducklake_table_column_stats"
    assert catalog_rows(clone.catalog, stats) == catalog_rows(truth, stats)
    assert catalog_rows(lake.catalog, stats) != catalog_rows(truth, stats)  # the lake's: wider
    with clone:
        clone.execute("INSERT INTO t VALUES (-5, 99999), (NULL, 7)")
        assert clone.query(
            "SELECT min(id) AS lo, max(c) AS hi, count(*) AS n FROM t WHERE c < 100"
        ).to_pylist() == [{"lo": 0, "hi": 90, "n": 11}]
        assert clone.query(
            "SELECT min(id) AS lo, max(c) AS hi, count(*) FILTER (id IS NULL) AS nulls FROM t"
        ).to_pylist() == [{"lo": -5, "hi": 99999, "nulls": 1}]
