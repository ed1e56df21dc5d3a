"""Test helpers for the dbt project: a DuckLake warehouse laid out as the DuckDB adapter does
(``W/catalog.ducklake``, ``W/data/``, ``W/.extensions/``) and raw shop tables loaded into it.

Used by tests/test_transform.py; never imported by product code.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

RAW_SCHEMA = "raw_shop"

META = {
    "_mds_region": pl.String,
    "_mds_run_id": pl.String,
    "_mds_loaded_at": pl.Datetime("us"),
    "_mds_deleted_at": pl.Datetime("us"),
}

RAW_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "customers": {
        "id": pl.Int64,
        "name": pl.String,
        "email": pl.String,
        "segment": pl.String,
        "signup_day": pl.Date,
        "updated_at": pl.Datetime("us"),
    },
    "products": {
        "id": pl.Int64,
        "name": pl.String,
        "category": pl.String,
        "price": pl.Float64,
        "updated_at": pl.Datetime("us"),
    },
    "orders": {
        "id": pl.Int64,
        "customer_id": pl.Int64,
        "ordered_at": pl.Datetime("us"),
        "status": pl.String,
        "channel": pl.String,
        "amount": pl.Float64,
        "updated_at": pl.Datetime("us"),
    },
    "order_items": {
        "order_id": pl.Int64,
        "line_no": pl.Int64,
        "product_id": pl.Int64,
        "quantity": pl.Int64,
        "unit_price": pl.Float64,
        "updated_at": pl.Datetime("us"),
    },
    "marketing_spend": {
        "day": pl.Date,
        "channel": pl.String,
        "spend": pl.Float64,
        "impressions": pl.Int64,
        "clicks": pl.Int64,
    },
}


def ducklake_extension_file() -> Path:
    """The ducklake binary shipped by the duckdb-extension-ducklake wheel."""
    spec = importlib.util.find_spec("duckdb_extension_ducklake")
    assert spec is not None and spec.submodule_search_locations, "duckdb-extension-ducklake?"
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "extensions" / f"v{duckdb.__version__}" / "ducklake.duckdb_extension"


def create_warehouse(root: Path) -> Path:
    """Make an empty DuckLake warehouse directory with the extension installed offline."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / ".extensions").mkdir(exist_ok=True)
    with connect(root, install=True) as con:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS lake.{RAW_SCHEMA}")
    return root


@contextmanager
def connect(warehouse: Path, *, install: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection with the warehouse's lake attached as ``lake``; closed on exit."""
    con = duckdb.connect(
        config={
            "extension_directory": str(warehouse / ".extensions"),
            "autoinstall_known_extensions": False,
        }
    )
    try:
        if install:
            con.execute(f"INSTALL '{ducklake_extension_file()}'")
        con.execute(
            f"ATTACH 'ducklake:{warehouse / 'catalog.ducklake'}' AS lake "
            f"(DATA_PATH '{warehouse / 'data'}/')"
        )
        yield con
    finally:
        con.close()


def raw_frame(stream: str, rows: list[dict[str, object]]) -> pl.DataFrame:
    """Rows (with ``_mds_region`` and optional other metadata) as a frame of the raw schema."""
    defaults = {
        "_mds_run_id": "run-1",
        "_mds_loaded_at": datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        - timedelta(hours=1),
        "_mds_deleted_at": None,
    }
    schema = {**RAW_SCHEMAS[stream], **META}
    return pl.DataFrame([{**defaults, **row} for row in rows], schema=schema, orient="row")


def load_raw(warehouse: Path, frames: Mapping[str, pl.DataFrame], *, replace: bool = True) -> None:
    """Write frames to ``lake.raw_shop.<stream>`` (replace, or append to the existing table)."""
    with connect(warehouse) as con:
        for stream, frame in frames.items():
            con.register("incoming", frame.to_arrow())
            if replace:
                con.execute(
                    f"CREATE OR REPLACE TABLE lake.{RAW_SCHEMA}.{stream} AS SELECT * FROM incoming"
                )
            else:
                con.execute(f"INSERT INTO lake.{RAW_SCHEMA}.{stream} SELECT * FROM incoming")
            con.unregister("incoming")


def read_table(warehouse: Path, relation: str) -> pl.DataFrame:
    """``SELECT *`` from ``lake.<relation>`` as a polars frame (decimals become floats)."""
    with connect(warehouse) as con:
        frame = con.sql(f"SELECT * FROM lake.{relation}").pl()
    return frame.with_columns(pl.col(pl.Decimal).cast(pl.Float64))


def days(start: date, end: date) -> list[date]:
    """Every calendar day from start to end, inclusive."""
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]
