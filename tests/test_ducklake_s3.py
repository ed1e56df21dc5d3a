"""A lake with its catalog in PostgreSQL and its data files in S3 (moto's server, loopback).

What lands (rows through the engine, Parquet objects in the bucket), what another process
and dbt see, and what a user sees with bad credentials or a wrong ``storage:``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from connectors.base import Message
from stack.config import load_config
from stack.config.targets import ObjectStorage, PostgresCatalog
from stack.errors import ConfigError, WarehouseError
from stack.load import EVERY_CHECKPOINT
from stack.run.pipeline import open_target
from stack.secrets import Resolver
from stack.transform import run_dbt
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.contract import expected_rows, pg_catalog, sync, table_rows
from tests.scripted import ScriptedSource, checkpoint, deletes, rows

if TYPE_CHECKING:
    from tests.servers.pg_server import PgCluster
    from tests.servers.s3_server import S3Server

pytest_plugins = ["tests.servers.s3_server"]  # the session's `s3_server`

PREFIX = "lake/"
MODE, DELETES, REGION_NAME = "incremental_deduped", "hard", "eu"
FIRST: list[Message] = [rows(*((i, f"n{i}", 1) for i in range(1, 401))), checkpoint()]
"""400 rows: more than DuckLake inlines into its catalog, so they make a Parquet file."""
SECOND: list[Message] = [
    rows(*((i, f"u{i}", 2) for i in range(1, 51)), *((i, f"n{i}", 2) for i in range(401, 451))),
    deletes(*range(100, 150), at=3),
    checkpoint(),
]
"""Updates 50 rows, adds 50 and deletes 50: a merge and a delete."""
EXPECTED = expected_rows(MODE, DELETES, [("r1", FIRST), ("r2", SECOND)])


def storage(server: S3Server, secret: str | None = None) -> ObjectStorage:
    return ObjectStorage(
        endpoint=server.endpoint,
        region=server.region,
        key_id=server.key_id,
        secret=secret or server.secret,
        url_style="path",
        use_ssl=False,
    )


@dataclass(frozen=True)
class Lake:
    """Where one lake is: a local folder, a catalog schema, a bucket."""

    path: Path
    catalog: PostgresCatalog
    bucket: str

    @property
    def data_path(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def open(self, with_storage: ObjectStorage, read_only: bool = False) -> DuckDBWarehouse:
        return DuckDBWarehouse(
            self.path,
            threads=1,
            read_only=read_only,
            catalog=self.catalog,
            data_path=self.data_path,
            storage=with_storage,
        )


@pytest.fixture(scope="module")
def lake(
    tmp_path_factory: pytest.TempPathFactory, pg_logical: PgCluster, s3_server: S3Server
) -> Lake:
    """A lake two engine runs wrote: created and appended, then merged into and deleted from."""
    path = tmp_path_factory.mktemp("s3lake") / "wh"
    found = Lake(path, pg_catalog(path, int(pg_logical.port)), s3_server.new_bucket())
    script = list(FIRST)
    source = ScriptedSource(script)  # the second run resumes where the first committed
    with found.open(storage(s3_server)) as wh:
        _sync(wh, source, REGION_NAME, "r1")
        script += SECOND
        _sync(wh, source, REGION_NAME, "r2")
    return found


def _sync(wh: DuckDBWarehouse, source: ScriptedSource, region: str, run_id: str) -> None:
    sync(
        wh,
        source,
        mode=MODE,
        deletes=DELETES,
        region=region,
        run_id=run_id,
        policy=EVERY_CHECKPOINT,
    )


def test_synced_rows_land_in_the_lake(lake: Lake, s3_server: S3Server) -> None:
    with lake.open(storage(s3_server), read_only=True) as wh:
        assert table_rows(wh, REGION_NAME, MODE) == EXPECTED
    assert len(EXPECTED) == 400 + 50 - 50


def test_the_data_files_are_objects_in_the_bucket(lake: Lake, s3_server: S3Server) -> None:
    with lake.open(storage(s3_server), read_only=True) as wh:
        listed = wh.query(
            "SELECT data_file FROM ducklake_list_files('lake', 'items', schema => 'raw')"
        )
    files = listed.column("data_file").to_pylist()
    keys = s3_server.keys(lake.bucket, PREFIX)
    assert files, "the table's rows are in data files"
    assert all(f.startswith(lake.data_path) and f.endswith(".parquet") for f in files)
    assert {f.removeprefix(f"s3://{lake.bucket}/") for f in files} <= set(keys)
    assert not (lake.path / "data").exists(), "nothing is written to a local data folder"


SECOND_PROCESS = """
import json, os, sys
from stack.config.targets import ObjectStorage, PostgresCatalog
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import table_rows

lake = json.loads(sys.argv[1])
storage = ObjectStorage.model_validate(
    lake["storage"] | {"key_id": os.environ["S3_KEY_ID"], "secret": os.environ["S3_SECRET"]}
)
catalog = PostgresCatalog.model_validate(lake["catalog"])
with DuckDBWarehouse(
    lake["path"], catalog=catalog, data_path=lake["data_path"], storage=storage, read_only=True
) as wh:
    print(json.dumps(table_rows(wh, "eu", "incremental_deduped")))
"""


def test_a_second_process_reads_the_same_rows(lake: Lake, s3_server: S3Server) -> None:
    """Another process, with a folder of its own (another machine's), reads the lake."""
    settings = storage(s3_server).model_dump(exclude={"key_id", "secret"})
    arguments = {
        "path": str(lake.path.parent / "elsewhere"),
        "catalog": lake.catalog.model_dump(by_alias=True),
        "data_path": lake.data_path,
        "storage": settings,
    }
    env = os.environ | {"S3_KEY_ID": s3_server.key_id, "S3_SECRET": s3_server.secret}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, json.dumps(arguments)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [tuple(row) for row in json.loads(result.stdout)] == EXPECTED


MODEL = "select id, name from lake.raw.items where _mds_region = 'eu'"


def test_dbt_builds_a_model_into_the_bucket(
    lake: Lake, s3_server: S3Server, tmp_path: Path
) -> None:
    """dbt reaches the lake through its profile: the storage's secret, credentials from the
    environment (never the profile's text)."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: s3lake\nversion: '1.0'\nprofile: mdstack\n"
        "models:\n  s3lake:\n    +materialized: table\n"
    )
    (project / "models" / "items_copy.sql").write_text(MODEL)
    wh = lake.open(storage(s3_server))
    output, env = wh.dbt_output(), wh.dbt_env()
    assert s3_server.secret not in json.dumps(output)
    assert s3_server.secret in env.values()
    before = set(s3_server.keys(lake.bucket, PREFIX))
    run = run_dbt(project, output, ["run"], env=env, target_path=tmp_path / "target")
    assert run.success
    with wh:
        count = wh.query("SELECT count(*) AS n FROM main.items_copy").column("n")[0].as_py()
    assert count == len(EXPECTED)
    assert {k for k in set(s3_server.keys(lake.bucket, PREFIX)) - before if k.endswith(".parquet")}


def test_bad_credentials_fail_clearly_without_the_secret(
    lake: Lake, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-secret-" + "x" * 27
    caplog.set_level(logging.DEBUG)
    with (
        lake.open(storage(s3_server, secret=wrong)) as wh,
        pytest.raises(WarehouseError) as failed,
    ):
        _sync(wh, ScriptedSource([*FIRST, *SECOND]), "us", "r3")
    shown = str(failed.value)
    assert "403" in shown
    assert "data_path and storage (endpoint, region, key_id, secret)" in shown
    for secret in (wrong, s3_server.secret):
        assert secret not in shown
        assert secret not in caplog.text


def test_credentials_are_references_resolved_at_run_time(
    tmp_path: Path, lake: Lake, s3_server: S3Server
) -> None:
    """``mdstack`` opens the lake from ``stack.yml``; the credentials come from references."""
    catalog = lake.catalog
    (tmp_path / "stack.yml").write_text(
        _stack_yml(
            f"""
    catalog: {{type: postgres, host: 127.0.0.1, port: {catalog.port}, database: postgres,
               user: postgres, schema: {catalog.schema_}}}
    data_path: {lake.data_path}
    storage:
      endpoint: {s3_server.endpoint}
      region: {s3_server.region}
      key_id: ${{env:LAKE_KEY_ID}}
      secret: ${{env:LAKE_SECRET}}
      url_style: path
      use_ssl: false
"""
        )
    )
    config = load_config(tmp_path / "stack.yml")
    assert s3_server.secret not in (tmp_path / "stack.yml").read_text()
    environ = {"LAKE_KEY_ID": s3_server.key_id, "LAKE_SECRET": s3_server.secret}
    with Resolver(config.secrets, base_dir=config.root, environ=environ) as resolver:
        warehouse = open_target(config, None, resolver)
        with warehouse as wh:
            assert table_rows(wh, REGION_NAME, MODE) == EXPECTED


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (
            "    storage: {region: us-east-1}\n",
            "storage is for object storage: set `data_path: s3://bucket/prefix/`, or remove",
        ),
        (
            "    catalog: {type: postgres, host: h, database: d, user: u}\n"
            "    data_path: gs://bucket/lake/\n",
            "the object storage supported is S3 and S3-compatible servers",
        ),
        (
            "    catalog: {type: postgres, host: h, database: d, user: u}\n"
            "    data_path: s3://bucket/lake/\n"
            "    storage: {endpoint: 'http://127.0.0.1:9000'}\n",
            "storage.endpoint is host:port, without a scheme",
        ),
        (
            "    catalog: {type: postgres, host: h, database: d, user: u}\n"
            "    data_path: s3://bucket/lake/\n"
            "    storage: {key_id: '${env:KEY}'}\n",
            "storage.key_id and storage.secret go together",
        ),
    ],
)
def test_a_wrong_storage_setting_is_named_with_its_fix(
    tmp_path: Path, target: str, says: str
) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(_stack_yml(target))
    with pytest.raises(ConfigError) as failed:
        load_config(path)
    assert str(path) in str(failed.value)
    assert "targets" in str(failed.value)
    assert says in str(failed.value)


def _stack_yml(target: str) -> str:
    """The demo's ``stack.yml`` with these lines added to its ``local`` target (and without
    write-audit-publish, not available yet on a PostgreSQL catalog)."""
    demo = (ROOT / "stack.yml").read_text()
    for old, new in (
        ("project_dir: dbt_project", f"project_dir: {ROOT / 'dbt_project'}"),
        ("  audit: true ", "  audit: false"),
        ("    path: warehouse/\n", "    path: warehouse/\n" + target.lstrip("\n")),
    ):
        assert old in demo, old
        demo = demo.replace(old, new, 1)
    return demo


def test_a_dropped_environment_takes_its_objects_and_leaves_the_lakes(
    lake: Lake, s3_server: S3Server
) -> None:
    """A clone's writes are objects in the same bucket; dropping the clone deletes exactly
    those, through DuckLake's cleanup on S3, and the lake still reads the same rows."""
    wh = lake.open(storage(s3_server))
    before = set(s3_server.keys(lake.bucket, PREFIX))
    env = wh.clone_into("dev")
    with env as dev:
        dev.execute("DELETE FROM raw.items WHERE id < 50")  # a delete file
        dev.execute("CREATE TABLE raw.copy AS SELECT * FROM raw.items")  # a data file
    written = set(s3_server.keys(lake.bucket, PREFIX)) - before
    assert len(written) >= 2, written
    wh.drop_environment("dev")
    assert set(s3_server.keys(lake.bucket, PREFIX)) == before
    with lake.open(storage(s3_server), read_only=True) as again:
        assert table_rows(again, REGION_NAME, MODE) == EXPECTED
