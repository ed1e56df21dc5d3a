"""A DuckDB warehouse folder moved or copied elsewhere (a project cloned to another path, a
container mounting it at /mdstack) opens there: its catalog named the old folder."""

from __future__ import annotations

import shutil

import duckdb
import pyarrow as pa

from stack.warehouse.duckdb import DuckDBWarehouse


def test_a_moved_warehouse_reads_and_writes_where_it_is_now(tmp_path):
    before = DuckDBWarehouse(tmp_path / "old" / "warehouse")
    with before as wh:
        wh.create_table("raw", "items", pa.schema([("id", pa.int64())]))
        wh.append("raw", "items", pa.table({"id": [1, 2, 3]}))
    shutil.move(tmp_path / "old", tmp_path / "new")

    moved = DuckDBWarehouse(tmp_path / "new" / "warehouse")
    with moved as wh:
        assert wh.query("SELECT sum(id) AS s FROM raw.items").to_pylist() == [{"s": 6}]
        wh.append("raw", "items", pa.table({"id": [4]}))
    with DuckDBWarehouse(tmp_path / "new" / "warehouse", read_only=True) as wh:
        assert wh.query("SELECT sum(id) AS s FROM raw.items").to_pylist() == [{"s": 10}]
    # What dbt and BI tools attach reads the new folder too: the catalog says where it is.
    with duckdb.connect(str(tmp_path / "new" / "warehouse" / "catalog.ducklake")) as con:
        [(path,)] = con.execute(
            "SELECT value FROM ducklake_metadata WHERE key = 'data_path'"
        ).fetchall()
    assert path == f"{tmp_path / 'new' / 'warehouse' / 'data'}/"
    assert not (tmp_path / "old").exists()
