"""Field names from the wild: every field lands in one column of its own, the same on every run.

The oracle never asks the engine which column it chose: every field carries values no other
field has, so the test finds each field's column by its values in the warehouse, then checks
the rules README.md states (a name that can be a column keeps it; names equal up to Unicode
normalisation share one; names equal up to case get a suffix; the choice never changes).
"""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from connectors.base import Batch, Catalog, Checkpoint, ConfiguredStream, Message, State, StreamSpec
from stack.cli import app
from stack.config import SourceConfig, load_config
from stack.load import RunContext, plan_stream, sync_stream
from stack.load.names import MAX_LENGTH, ColumnNames
from stack.run import pipeline
from stack.sql import META_COLUMNS, ident, table
from stack.warehouse.base import Warehouse
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import examples
from tests.snowflake_fixtures import open_fakesnow

# -- the mapping alone --------------------------------------------------------------------


def test_a_name_that_can_be_a_column_keeps_it_and_collisions_get_a_suffix() -> None:
    names = ColumnNames()
    assert names.columns(["id", "ID", "", "Id", "order date", 'a."b', "select", "1st"]) == (
        "id",
        "ID_2",
        "_empty",
        "Id_3",
        "order date",
        'a."b',
        "select",
        "1st",
    )
    assert [r.source for r in names.new] == ["ID", "", "Id"]


def test_unicode_forms_of_one_name_are_one_column() -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    names = ColumnNames()
    assert names.column(nfd) == nfc
    assert names.column(nfc) == nfc


def test_metadata_names_and_long_names() -> None:
    names = ColumnNames()
    assert names.column("_mds_region") == "_mds_region_2"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    a, b = names.column(long_a), names.column(long_b)
    assert len(a) == len(b) == MAX_LENGTH and a != b


def test_stored_renames_win_over_arrival_order() -> None:
    """Run 1 saw ``id`` then ``ID``; run 2 sees ``ID`` first and still maps it to ``ID_2``."""
    first = ColumnNames()
    first.columns(["id", "ID"])
    stored = {r.source: r.column for r in first.new}
    second = ColumnNames(stored, existing=["id", "ID_2", *META_COLUMNS])
    assert second.columns(["ID", "id"]) == ("ID_2", "id")
    assert second.new == []


# -- through the engine, into each warehouse ----------------------------------------------


class NamedSource:
    """One stream whose records carry whatever field names a test gives, a batch per run."""

    name = "named"

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch

    def discover(self) -> Catalog:
        modes = ("incremental_append", "full_refresh_append")
        return Catalog((StreamSpec("items", pa.schema([]), (), None, modes),))

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        yield Batch("items", self.batch)
        yield Checkpoint("items", {"runs": (state or {}).get("runs", 0) + 1})


@contextmanager
def _warehouse(kind: str, tmp_path: Path) -> Iterator[Warehouse]:
    if kind == "duckdb":
        with DuckDBWarehouse(tmp_path / "wh", threads=1) as wh:
            yield wh
    else:
        with open_fakesnow() as wh:
            yield wh


def _run(wh: Warehouse, batch: pa.RecordBatch, region: str, run_id: str) -> None:
    config = SourceConfig.model_validate(
        {
            "connector": "named",
            "schema": "raw",
            "streams": {"items": {"sync": "incremental_append"}},
        }
    )
    source = NamedSource(batch)
    plan = plan_stream("src", config, source.discover(), "items")
    sync_stream(wh, source, plan, RunContext("p", region, run_id))  # type: ignore[arg-type]


def _columns_by_values(wh: Warehouse, region: str, run_id: str) -> dict[int, str]:
    """Field number -> the column holding its values (field i's values are i*1000 + row)."""
    rows = wh.query(
        f"SELECT * FROM {table('raw', 'items')} WHERE {ident('_mds_region')} = ? "
        f"AND {ident('_mds_run_id')} = ?",
        [region, run_id],
    )
    found: dict[int, str] = {}
    for column in rows.column_names:
        values = [v for v in rows.column(column).to_pylist() if v is not None]
        if column not in META_COLUMNS and values and all(isinstance(v, int) for v in values):
            found.setdefault(values[0] // 1000, column)
            assert {v // 1000 for v in values} == {values[0] // 1000}, column
    return found


ALPHABET = st.sampled_from(["id", "ID", "Id", "", "a b", 'q"', "x.y", "select", "1a", "é", "_"])
NAMES = st.lists(
    st.lists(ALPHABET, min_size=0, max_size=3).map("".join), min_size=1, max_size=6, unique=True
)


@pytest.mark.parametrize("kind", ["duckdb", "snowflake"])
@examples(8)
@given(names=NAMES, order=st.randoms(use_true_random=False), data=st.data())
def test_any_names_load_into_columns_of_their_own_stable_over_runs(
    kind: str, tmp_path_factory: pytest.TempPathFactory, names: list[str], order, data
) -> None:
    names = list(dict.fromkeys(unicodedata.normalize("NFC", n) for n in names))
    fields = {n: i + 1 for i, n in enumerate(names)}  # field number: the oracle's handle
    seen: dict[str, str] = {}
    with _warehouse(kind, tmp_path_factory.mktemp("names")) as wh:
        for run in range(3):
            present = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
            order.shuffle(present)
            batch = pa.record_batch(
                [pa.array([fields[n] * 1000 + r for r in range(3)], pa.int64()) for n in present],
                names=present,
            )
            _run(wh, batch, "r", f"run{run}")
            landed = _columns_by_values(wh, "r", f"run{run}")
            assert sorted(landed) == sorted(fields[n] for n in present)
            for n in present:
                column = landed[fields[n]]
                assert seen.setdefault(n, column) == column, f"{n!r} moved to another column"
    columns = list(seen.values())
    assert len({c.casefold() for c in columns}) == len(columns)
    for n, column in seen.items():
        plain = n and not n.startswith("_mds_")
        clash = any(o.casefold() == n.casefold() and seen[o] == o for o in seen if o != n)
        if plain and not clash:
            assert column == n


# -- the two reproductions, as a user runs them ----------------------------------------------


def _stack_yml(tmp_path: Path, source: dict) -> Path:
    path = tmp_path / "stack.yml"
    config = {
        "name": "wild",
        "target": "local",
        "targets": {"local": {"type": "duckdb", "path": str(tmp_path / "wh")}},
        "sources": {"wild": source},
    }
    path.write_text(json.dumps(config))
    return path


def _three_runs(path: Path) -> list[list[dict]]:
    """Run the stack three times (engine only); each run's rows, without metadata columns."""
    config = load_config(path)
    meta = ", ".join(map(ident, META_COLUMNS))
    results = []
    for _ in range(3):
        summary = pipeline.run_pipeline(
            path, None, pipeline.select(config, "default"), transform=False
        )
        assert summary.ok, summary.failure()
        with DuckDBWarehouse(path.parent / "wh") as wh:
            rows = wh.query(f"SELECT * EXCLUDE ({meta}) FROM raw.things ORDER BY id")
            results.append(rows.to_pylist())
    return results


def test_a_csv_header_with_name_and_Name_loads_stable_over_three_runs(tmp_path: Path) -> None:
    (tmp_path / "things.csv").write_text("id,name,Name\n1,a,b\n2,c,d\n")
    path = _stack_yml(
        tmp_path,
        {
            "connector": "files",
            "config": {"streams": {"things": {"url": str(tmp_path / "things.csv")}}},
            "schema": "raw",
            "streams": {"things": {"sync": "full_refresh_overwrite"}},
        },
    )
    runs = _three_runs(path)
    assert runs[0] == runs[1] == runs[2]
    assert [(r["id"], r["name"], r["Name_2"]) for r in runs[0]] == [(1, "a", "b"), (2, "c", "d")]

    status = CliRunner().invoke(app, ["status", "--config", str(path)])
    assert status.exit_code == 0, status.output
    renames = [line for line in status.output.splitlines() if " -> column " in line]
    assert renames == [
        "wild.things: field 'Name' -> column 'Name_2' ('Name' is taken, case-insensitively)"
    ]


class _Records(BaseHTTPRequestHandler):
    body = json.dumps(
        {"data": [{"id": 1, "ID": "one", "": "blank"}, {"id": 2, "ID": "two", "": None}]}
    ).encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_api_record_with_id_ID_and_an_empty_key_loads_stable_over_three_runs(
    tmp_path: Path,
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Records)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = _stack_yml(
            tmp_path,
            {
                "connector": "rest",
                "config": {
                    "base_url": f"http://127.0.0.1:{server.server_port}",
                    "pagination": {"type": "none"},
                    "streams": {
                        "things": {"path": "/things", "records": "$.data", "primary_key": ["id"]}
                    },
                },
                "schema": "raw",
                "streams": {"things": {"sync": "full_refresh_overwrite"}},
            },
        )
        runs = _three_runs(path)
    finally:
        server.shutdown()
    assert runs[0] == runs[1] == runs[2]
    assert [(r["id"], r["ID_2"], r["_empty"]) for r in runs[0]] == [
        (1, "one", "blank"),
        (2, "two", None),
    ]
