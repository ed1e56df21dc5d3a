"""Run-wide fixtures: isolated HOME/PREFECT_HOME/dbt target, warehouses in tmp folders,
the session's throwaway PostgreSQL (``tests/servers/pg_server.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stack.warehouse.duckdb import DuckDBWarehouse
from tests.servers.pg_server import pg_database, pg_logical, pg_replica  # noqa: F401  (fixtures)

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
