"""Fixtures of the engine's contract suite: one warehouse per test, for every adapter.

Opening a warehouse costs about half a second, so Hypothesis examples share
their test's warehouse and each takes a fresh region from ``regions``: the
engine scopes rows and state by region, so examples never see each other.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.warehouse.base import Warehouse
from tests.contract import ADAPTERS, CATALOG_PORT, Adapter
from tests.snowflake_fixtures import stop_fakesnow_server


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    if request.param == "duckdb-pg":  # the catalogs' server: the session's PostgreSQL
        os.environ[CATALOG_PORT] = str(request.getfixturevalue("pg_logical").dsn["port"])
    return ADAPTERS[request.param]


@pytest.fixture(scope="module", autouse=True)
def _fakesnow_server() -> Iterator[None]:
    """fakesnow's server, started by a module's first Snowflake test: stopped after the module.

    Its databases (one per test) go with it, and it never outlives the session's log capture.
    """
    yield
    stop_fakesnow_server()


@pytest.fixture
def warehouse_location(tmp_path: Path) -> Path:
    return tmp_path / "wh"


@pytest.fixture
def warehouse(adapter: Adapter, warehouse_location: Path) -> Iterator[Warehouse]:
    """An open warehouse of the adapter under test, in a fresh location."""
    with adapter.open(warehouse_location) as wh:
        yield wh


@pytest.fixture
def regions() -> Callable[[], str]:
    """A fresh region name per call: ``r0``, ``r1``, ..."""
    counter = itertools.count()
    return lambda: f"r{next(counter)}"
