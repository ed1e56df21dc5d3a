"""Run-wide fixtures: isolated HOME/PREFECT_HOME/dbt target, warehouses in tmp folders,
the session's throwaway PostgreSQL (``tests/servers/pg_server.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.pg_server import pg_database, pg_logical, pg_replica  # noqa: F401  (fixtures)
from tests.servers.prefect_server import PrefectServer

ROOT = Path(__file__).resolve().parent.parent


def dbt_target(project: Path) -> Path:
    """Where dbt writes the artifacts of ``project`` in this test process."""
    return project / os.environ.get("DBT_TARGET_PATH", "target")


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tools from writing into the real home (Prefect, dbt, DuckDB all like to)."""
    home = tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / ".prefect")
    os.environ["DBT_TARGET_PATH"] = str(home / "dbt-target")  # one per test process, so
    os.environ["DBT_LOG_PATH"] = str(home / "dbt-logs")  # parallel workers never share them
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("MDSTACK_CONFIG", None)


@pytest.fixture
def warehouse(tmp_path: Path):
    """An open DuckDB (DuckLake) warehouse in a fresh folder."""
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        yield wh


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of one Prefect server per test process, started when a test first needs
    it and kept to the end: Prefect's clients (its events worker) hold on to the first
    server they talked to, so a second server in the same process would miss their events."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()
