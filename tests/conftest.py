"""Run-wide fixtures: isolated HOME/PREFECT_HOME, warehouses in tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stack.warehouse.duckdb import DuckDBWarehouse

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tools from writing into the real home (Prefect, dbt, DuckDB all like to)."""
    home = tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / ".prefect")
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("MDSTACK_CONFIG", None)


@pytest.fixture
def warehouse(tmp_path: Path):
    """An open DuckDB (DuckLake) warehouse in a fresh folder."""
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        yield wh
