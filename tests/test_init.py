"""`mdstack init`: a project skeleton per kind of source and warehouse, written offline.

Every combination's stack.yml loads, its references resolve and its source's config
validates against the connector's own model; the demo project runs green from the clean
folder (`mdstack sync`, `mdstack dbt build`, then the next run as the flow of `mdstack run`
makes it) and its models land in the warehouse.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from connectors import load_source
from connectors.base import BaseSource
from connectors.demo import DemoSource
from stack.cli import app
from stack.config import StackConfig, load_config
from stack.config.references import PATTERN
from stack.run import pipeline
from stack.run.deployments import plan_deployments
from stack.scaffold import SOURCE_KINDS, WAREHOUSE_KINDS
from stack.scaffold.project import DBT_DIR
from stack.secrets import Resolver, reveal
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import ROOT
from tests.servers.prefect_server import using_api

ENV = {"POSTGRES_PASSWORD": "pg-pw-1", "API_TOKEN": "api-token-1", "SNOWFLAKE_PASSWORD": "sf-pw-1"}
"""The variables the generated references name, as the README of each project tells."""
SECRET_KEYS = {"password", "token", "private_key", "secret_id", "client_secret", "api_token"}
TEMPLATES = {
    "README.md",
    "gitignore",
    "stack.yml",
    "dbt/dbt_project.yml",
    "dbt/key_column.yml",
    "dbt/source_table.yml",
    "dbt/sources.yml",
    "dbt/staging.sql",
    "dbt/macros/generate_schema_name.sql",
    "dbt/macros/raw_columns.sql",
    "dbt/macros/relation_in_its_database.sql",
    *(f"sources/{kind}.yml" for kind in SOURCE_KINDS),
    *(f"targets/{kind}.yml" for kind in WAREHOUSE_KINDS),
}


def mdstack(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def check_config(path: Path) -> StackConfig:
    """`mdstack validate` accepts stack.yml; with its secret references resolved too, each
    source's rendered config, for every region, validates against its connector's model."""
    validated = mdstack("validate", "--config", path)
    assert validated.exit_code == 0, validated.output
    cfg = load_config(path)
    with Resolver(cfg.secrets, base_dir=cfg.root) as resolver:
        for name, target in cfg.targets.items():
            resolver.resolve(target, f"targets.{name}")
        for region in cfg.region_names():
            for name, source in cfg.sources.items():
                rendered = cfg.source_config(name, region)
                config = reveal(resolver.resolve(rendered, f"sources.{name}.config"))
                connector = load_source(source.connector, name, config)
                assert isinstance(connector, BaseSource)
                connector.config  # noqa: B018 - raises the ConnectorError naming the bad key
    return cfg


def literal_secrets(value: object, where: str = "") -> list[str]:
    """Keys holding a secret that is written as a value instead of a ``${...}`` reference."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in literal_secrets(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in literal_secrets(v, f"{where}[{i}]")]
    key = where.rpartition(".")[2]
    if key in SECRET_KEYS and not (isinstance(value, str) and PATTERN.fullmatch(value)):
        return [where]
    return []


@pytest.mark.parametrize("warehouse", WAREHOUSE_KINDS)
@pytest.mark.parametrize("source", SOURCE_KINDS)
def test_every_source_and_warehouse_makes_a_project_that_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, warehouse: str
) -> None:
    folder = tmp_path / "my-pipeline"
    result = mdstack("init", folder, "--source", source, "--warehouse", warehouse)
    assert result.exit_code == 0, result.output
    macro = "macros/relation_in_its_database.sql"  # a Snowflake view reads its own database
    assert (folder / DBT_DIR / macro).read_text() == (ROOT / "dbt_project" / macro).read_text()
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    cfg = check_config(folder / "stack.yml")

    assert cfg.name == "my_pipeline"
    assert cfg.active_target().type == warehouse
    raw = yaml.safe_load((folder / "stack.yml").read_text())
    assert literal_secrets(raw) == []
    needed = [name for name in ENV if f"${{env:{name}}}" in (folder / "stack.yml").read_text()]
    for name in needed:
        assert f"export {name}=..." in result.output
        assert name in (folder / "README.md").read_text()
    assert ("SNOWFLAKE_PASSWORD" in needed) is (warehouse == "snowflake")
    assert all(value not in result.output for value in ENV.values())

    # a scheduled deployment per region, in the region's time zone
    planned = plan_deployments(cfg)
    assert [(d.region, d.cron, d.timezone) for d in planned] == [
        ("eu", "0 6 * * *", "Europe/Berlin")
    ]

    # the dbt project: a source per stack.yml source, its tables the streams, a staging
    # model per stream; no profiles.yml (the stack writes dbt's profile for each run)
    (name,) = cfg.sources
    streams = list(cfg.sources[name].streams)
    if source == "demo":
        assert streams == list(DemoSource("shop", {"region": "eu"}).discover().names)
    if source in ("rest", "files"):
        assert list(cfg.source_config(name, "eu")["streams"]) == streams
    dbt = folder / "dbt_project"
    (declared,) = yaml.safe_load((dbt / "models" / "sources.yml").read_text())["sources"]
    assert declared["name"] == name
    assert declared["schema"] == cfg.sources[name].schema_
    assert [table["name"] for table in declared["tables"]] == streams
    staging = sorted(p.name for p in (dbt / "models" / "staging").iterdir())
    assert staging == sorted(f"stg_{stream}.sql" for stream in streams)
    assert yaml.safe_load((dbt / "dbt_project.yml").read_text())["profile"] == "mdstack"
    assert not list(folder.rglob("profiles.yml"))
    assert cfg.resolve_path(cfg.dbt.project_dir if cfg.dbt else Path()) == dbt.resolve()

    ignored = (folder / ".gitignore").read_text().splitlines()
    assert {"/warehouse/", ".venv/", "dbt_project/target/", "dbt_project/logs/", ".env"} <= set(
        ignored
    )


def init_demo(folder: Path) -> None:
    result = mdstack("init", folder, "--source", "demo")
    assert result.exit_code == 0, result.output


def staged_counts(folder: Path) -> dict[str, tuple[int, int]]:
    """Per stream: rows of its staging model, and live rows of its raw table."""
    found = {}
    with DuckDBWarehouse(folder / "warehouse") as wh:
        for stream in DemoSource("shop", {"region": "eu"}).discover().names:
            staged = wh.query(f"SELECT count(*) AS n FROM staging.stg_{stream}")["n"][0]
            live = wh.query(
                f'SELECT count(*) AS n FROM raw_shop."{stream}" WHERE _mds_deleted_at IS NULL'
            )["n"][0]
            found[stream] = (staged.as_py(), live.as_py())
    return found


def test_the_demo_project_validates_and_runs_green_at_once_from_the_clean_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str
) -> None:
    folder = tmp_path / "shop"
    init_demo(folder)
    monkeypatch.chdir(folder)
    validated = mdstack("validate")
    assert validated.exit_code == 0, validated.output
    with using_api(prefect_api):
        result = mdstack("run")
    assert result.exit_code == 0, result.output
    counts = staged_counts(folder)
    assert all(staged == live > 0 for staged, live in counts.values()), counts

    # the next scheduled run, as the flow of `mdstack run` makes it: the next day synced,
    # the models downstream of it rebuilt, then dbt's source freshness as checks
    cfg = load_config(folder / "stack.yml")
    summary = pipeline.run_pipeline(folder / "stack.yml", None, pipeline.select(cfg, "eu"))
    assert summary.ok, summary.failure()
    assert summary.dbt is not None and summary.dbt.published
    built = {n.name for n in summary.dbt.run.nodes if n.resource_type == "model"}
    assert built == {f"stg_{stream}" for stream in cfg.sources["shop"].streams}
    freshness = [c for c in summary.dbt.checks if c.kind == "freshness"]
    assert len(freshness) == len(cfg.sources["shop"].streams)
    assert all(check.passed for check in freshness)
    after = staged_counts(folder)
    assert all(staged == live for staged, live in after.values()), after
    assert after["orders"][0] > counts["orders"][0]


def test_a_folder_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = mdstack("init", tmp_path, "--source", "demo")
    assert result.exit_code == 2
    assert "is not empty (notes.txt)" in result.output and "--force" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

    (tmp_path / "notes.txt").unlink()
    (tmp_path / "stack.yml").write_text("name: mine\n")
    result = mdstack("init", tmp_path, "--source", "postgres")
    assert result.exit_code == 2
    assert "already holds a project (stack.yml)" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["stack.yml"]
    assert (tmp_path / "stack.yml").read_text() == "name: mine\n"


def test_force_adds_the_project_to_a_folder_and_keeps_every_existing_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "README.md").write_text("# mine\n")
    (tmp_path / ".git").mkdir()
    result = mdstack("init", tmp_path, "--source", "demo", "--name", "shop", "--force")
    assert result.exit_code == 0, result.output
    assert "kept  README.md" in result.output and "wrote stack.yml" in result.output
    assert (tmp_path / "README.md").read_text() == "# mine\n"
    assert load_config(tmp_path / "stack.yml").name == "shop"

    before = sorted(tmp_path.rglob("*"))
    again = mdstack("init", tmp_path, "--source", "rest", "--force")
    assert again.exit_code == 2
    assert "already holds a project (stack.yml)" in again.output
    assert sorted(tmp_path.rglob("*")) == before


def test_the_templates_are_package_data() -> None:
    """Read through importlib.resources, as an installed mdstack reads them (pyproject.toml
    declares them as the package's data)."""
    root = resources.files("stack.scaffold").joinpath("templates")

    def walk(node, prefix: str = "") -> set[str]:
        found = set()
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            found |= walk(child, f"{name}/") if child.is_dir() else {name}
        return found

    assert walk(root) == TEMPLATES
