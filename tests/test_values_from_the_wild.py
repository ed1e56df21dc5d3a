"""Values from the wild: every shape either loads as the README's rules say, or fails clearly.

The reference model (:func:`expect`) is written from the rules in README.md ("Values"), not
from the code: a column's type follows from the set of value shapes it held over the run
(integers, integers beyond int64, integers beyond 38 digits, floats, NaN/Infinity, booleans,
text, objects), and each value is checked against what that type must hold.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stack.config import StackConfig
from stack.errors import SchemaError
from stack.load import RunContext
from stack.run.scope import sync_source
from stack.warehouse.base import Warehouse
from stack.warehouse.duckdb import DuckDBWarehouse
from tests.contract import examples
from tests.snowflake_fixtures import open_fakesnow

FAKE = Path(__file__).resolve().parent / "airbyte_fake_source.py"
_FILE_COLUMNS = ("_file", "_row")
"""Where each row of the files source came from."""

# -- an API that serves whatever pages a test puts up -----------------------------------------
_PAGES: dict[str, list[str]] = {}


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        pages = _PAGES[url.path]
        page = int(parse_qs(url.query).get("page", ["1"])[0])
        body = (pages[page - 1] if page <= len(pages) else "[]").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


# -- sources and warehouses ---------------------------------------------------------------------
def _rest(base: str, pages: list[str], key: str) -> dict[str, Any]:
    _PAGES[f"/{key}"] = pages
    config = {
        "base_url": base,
        "pagination": {"type": "page_number", "param": "page", "size_param": "n", "size": 1},
        "streams": {"t": {"path": f"/{key}", "records": "$", "primary_key": ["id"]}},
    }
    return {"connector": "rest", "config": config}


def _files(folder: Path, files: dict[str, bytes]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    suffix = next(iter(files)).rsplit(".", 1)[1]
    return {"connector": "files", "config": {"streams": {"t": {"url": f"{folder}/*.{suffix}"}}}}


def _airbyte(records: list[dict], schema: dict) -> dict[str, Any]:
    wild = {"schema": schema, "records": json.dumps(records)}
    config = {"executable": [sys.executable, str(FAKE)], "config": {"count": 0, "wild": wild}}
    return {"connector": "airbyte", "config": config}


def _stack(tmp: Path, source: dict[str, Any], stream: str = "t", **options: Any) -> StackConfig:
    source = source | {"schema": "raw", "streams": {stream: {"sync": "full_refresh_overwrite"}}}
    source["streams"][stream] |= options
    return StackConfig.model_validate(
        {
            "name": "p",
            "target": "local",
            "targets": {"local": {"type": "duckdb"}},
            "sources": {"src": source},
            "path": tmp / "stack.yml",
        }
    )


@contextmanager
def _warehouse(kind: str, tmp: Path) -> Iterator[Warehouse]:
    if kind == "duckdb":
        with DuckDBWarehouse(tmp / "wh", threads=1) as wh:
            yield wh
    else:
        with open_fakesnow() as wh:
            yield wh


def _sync(wh: Warehouse, config: StackConfig, run: str) -> None:
    sync_source(wh, config, "src", RunContext("p", "default", run))


def _table(wh: Warehouse, name: str = "t") -> pa.Table:
    data = wh.query(f"SELECT * FROM raw.{name}")
    keep = [c for c in data.column_names if not c.startswith("_mds_") and c not in _FILE_COLUMNS]
    return data.select(keep).sort_by("id")


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and rows (NaN equal to NaN, as a rerun must reproduce it)."""
    return a.schema == b.schema and repr(a.to_pylist()) == repr(b.to_pylist())


# -- the two bugs, as a user meets them -------------------------------------------------------
def test_an_integer_beyond_int64_loads_exactly_from_an_api(api: str, tmp_path: Path) -> None:
    pages = [
        json.dumps([{"id": 1, "v": 5, "w": 10**40}]),
        json.dumps([{"id": 2, "v": 2**70, "w": 1}]),
        json.dumps([{"id": 3, "v": -(2**64), "w": None}]),
    ]
    config = _stack(tmp_path, _rest(api, pages, "big"))
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        _sync(wh, config, "r1")
        first = _table(wh)
        _sync(wh, config, "r2")
        assert _same(_table(wh), first)
    assert first.schema.field("v").type == pa.decimal128(38, 0)
    assert first.column("v").to_pylist() == [Decimal(5), Decimal(2**70), Decimal(-(2**64))]
    assert first.schema.field("w").type == pa.string()  # beyond 38 digits: text, exact
    assert first.column("w").to_pylist() == [str(10**40), "1", None]


def test_nan_and_infinity_from_an_api_load_as_floats(api: str, tmp_path: Path) -> None:
    body = json.dumps([{"id": 1, "v": math.nan}, {"id": 2, "v": math.inf}, {"id": 3, "v": -1.5}])
    assert "NaN" in body  # as Python's json writes it
    pages = [body, json.dumps([{"id": 4, "v": -math.inf}])]
    config = _stack(tmp_path, _rest(api, pages, "nan"))
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        _sync(wh, config, "r1")
        values = _table(wh).column("v").to_pylist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -1.5, -math.inf]


def test_airbyte_records_with_big_integers_and_nan_load_exactly(tmp_path: Path) -> None:
    records = [
        {"id": 1, "n": 2**70, "f": math.nan, "any": math.inf},
        {"id": 2, "n": 7, "f": -math.inf, "any": {"deep": [1, {"x": 2**70}]}},
    ]
    props = {
        "id": {"type": "integer"},
        "n": {"type": ["null", "integer"]},
        "f": {"type": ["null", "number"]},
        "any": {},
    }
    config = _stack(tmp_path, _airbyte(records, {"type": "object", "properties": props}), "wild")
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        _sync(wh, config, "r1")
        data = _table(wh, "wild")
    assert data.column("n").to_pylist() == [Decimal(2**70), Decimal(7)]
    f = data.column("f").to_pylist()
    assert math.isnan(f[0]) and f[1] == -math.inf
    assert data.column("any").to_pylist() == ["Infinity", f'{{"deep":[1,{{"x":{2**70}}}]}}']


@pytest.mark.parametrize("kind", ["duckdb", "snowflake"])
def test_the_table_of_a_failed_first_sync_does_not_decide_the_next(
    kind: str, tmp_path: Path
) -> None:
    """The failed run had created ``v`` as an integer column; under ``freeze`` that half-made
    table would refuse the next run's text forever: the next run drops it (empty, never
    committed to) and creates it afresh."""
    folder = tmp_path / "files"
    config = _stack(tmp_path, _files(folder, {"a.jsonl": b'{"id": 1, "v": 5}\nnot json\n'}))
    with _warehouse(kind, tmp_path) as wh:
        with pytest.raises(Exception, match=r"a\.jsonl:2: not valid JSON"):
            _sync(wh, config, "r1")
        assert wh.query("SELECT COUNT(*) AS n FROM raw.t").to_pylist() == [{"n": 0}]
        fixed = _files(folder, {"a.jsonl": b'{"id": 1, "v": "five"}\n'})
        frozen = _stack(tmp_path, fixed, schema_policy="freeze")
        _sync(wh, frozen, "r2")
        assert _table(wh).to_pylist() == [{"id": 1, "v": "five"}]


def test_parquet_decimals_beyond_38_digits_and_uint64_load_exactly(tmp_path: Path) -> None:
    big = Decimal("1" * 45)
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "d": pa.array([big, None], pa.decimal256(45, 0)),
            "u": pa.array([2**64 - 1, 0], pa.uint64()),
            "b": pa.array([b"\x00\xff", None], pa.binary()),
        }
    )
    config = _stack(tmp_path, _files(tmp_path / "in", {"x.parquet": _parquet_bytes(data)}))
    with DuckDBWarehouse(tmp_path / "wh") as wh:
        _sync(wh, config, "r1")
        loaded = _table(wh)
    assert loaded.column("d").to_pylist() == [str(big), None]
    assert loaded.column("u").to_pylist() == [Decimal(2**64 - 1), Decimal(0)]
    assert loaded.column("b").to_pylist() == [b"\x00\xff", None]


@pytest.mark.parametrize("kind", ["duckdb", "snowflake"])
def test_parquet_structs_lists_and_maps_load(kind: str, tmp_path: Path) -> None:
    data = pa.table(
        {
            "id": pa.array([1], pa.int64()),
            "s": pa.array([{"a": [1, 2], "b": {"c": "x"}}]),
            "l": pa.array([[1, 2, 3]]),
            "m": pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64())),
        }
    )
    config = _stack(tmp_path, _files(tmp_path / "in", {"x.parquet": _parquet_bytes(data)}))
    with _warehouse(kind, tmp_path) as wh:
        _sync(wh, config, "r1")
        _sync(wh, config, "r2")
        row = _table(wh).to_pylist()[0]
    if kind == "duckdb":  # native types
        assert row == {"id": 1, "s": data["s"][0].as_py(), "l": [1, 2, 3], "m": [("a", 1)]}
    else:  # VARIANT, read back as JSON text
        assert json.loads(row["s"]) == {"a": [1, 2], "b": {"c": "x"}}
        assert (json.loads(row["l"]), json.loads(row["m"])) == ([1, 2, 3], [["a", 1]])


def test_a_type_snowflake_cannot_hold_fails_naming_the_column_and_the_fix(tmp_path: Path) -> None:
    durations = pa.table({"id": [1], "took": pa.array([5], pa.duration("s"))})
    config = _stack(tmp_path, _files(tmp_path / "in", {"x.parquet": _parquet_bytes(durations)}))
    with open_fakesnow() as wh:
        with pytest.raises(SchemaError, match=r"column 'took': .* duration\[s\]") as failed:
            _sync(wh, config, "r1")
        assert "cast the column" in str(failed.value.hint)
        seconds = pa.table({"id": [1], "took": pa.array([5], pa.int64())})
        _files(tmp_path / "in", {"x.parquet": _parquet_bytes(seconds)})
        _sync(wh, config, "r2")  # the fixed file loads: nothing left behind to trip on
        assert _table(wh).to_pylist() == [{"id": 1, "took": 5}]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# -- the reference model ------------------------------------------------------------------------
SHAPES = ("int", "big", "huge", "float", "nonfinite", "bool", "text", "object", "null")
_TEXTS = st.sampled_from(
    ["", "x", "5", "é", "2024-01-01T00:00:00+02:00", "2024-01-01T00:00:00Z", "1850-01-01"]
) | st.sampled_from(["0001-01-01", "9999-12-31T23:59:59-05:30", "true", "null", "a\nb"])
_VALUES = {
    "int": st.integers(-(2**53), 2**53),
    "big": st.integers(2**63, 10**38 - 1) | st.integers(-(10**38) + 1, -(2**63) - 1),
    "huge": st.integers(10**38, 10**45),
    "float": st.floats(-1e6, 1e6).filter(lambda f: not f.is_integer()),
    "nonfinite": st.sampled_from([math.nan, math.inf, -math.inf]),
    "bool": st.booleans(),
    "text": _TEXTS,
    "object": st.dictionaries(st.sampled_from("ab"), st.integers(0, 9) | _TEXTS, max_size=2)
    | st.lists(st.integers(0, 9), max_size=2),
    "null": st.none(),
}


def expect(shapes: set[str]) -> str | None:
    """The column type the README's rules give a column that held values of these shapes
    (None: never a value, no column)."""
    shapes = shapes - {"null"}
    if not shapes:
        return None
    if shapes == {"int"} or shapes == {"bool"}:
        return shapes.pop()
    if shapes <= {"int", "big"}:
        return "decimal"
    if shapes <= {"int", "float", "nonfinite"}:
        return "float"
    return "text"


_TYPES = {
    "int": pa.int64(),
    "bool": pa.bool_(),
    "decimal": pa.decimal128(38, 0),
    "float": pa.float64(),
    "text": pa.string(),
}


def holds(kind: str, shape: str, value: Any, got: Any) -> bool:
    """Whether ``got`` (what the warehouse returned) is ``value`` in a column of ``kind``."""
    if value is None:
        return got is None
    if kind == "float":
        return got == value or (math.isnan(value) and math.isnan(got))
    if kind != "text":
        return got == value and (kind != "int" or type(got) is int)
    if shape == "text":
        return got == value
    if shape == "object":
        return json.loads(got) == value
    if shape == "bool":
        return got == ("true" if value else "false")
    if shape == "nonfinite":
        return _nonfinite(got) == repr(value)
    if shape in ("big", "huge"):
        return got == str(value)  # every digit
    return float(got) == value  # int or float, written as a float or not (5 or 5.0)


def _nonfinite(text: str) -> str:
    return {"nan": "nan", "inf": "inf", "infinity": "inf", "-inf": "-inf"}.get(
        text.lower(), {"-infinity": "-inf"}.get(text.lower(), text)
    )


NAMES = st.lists(
    st.sampled_from(["v", "Big", "x y", "é", "select", 'q"', "1st"]), min_size=1, max_size=3
).map(lambda names: list(dict.fromkeys(names)))


@st.composite
def runs(draw: st.DrawFn, shapes: tuple[str, ...]) -> tuple[list[str], list[list[dict]], dict]:
    """Field names, pages of records, and each field's shape per record."""
    names = draw(NAMES)
    pages, row = [], 0
    kinds: dict[tuple[int, str], str] = {}
    for _ in range(draw(st.integers(1, 4))):
        page = []
        page_shapes = {n: draw(st.sampled_from(shapes)) for n in names}
        for _ in range(draw(st.integers(1, 3))):
            row += 1
            record: dict[str, Any] = {"id": row}
            for name in names:
                kinds[(row, name)] = page_shapes[name]
                record[name] = draw(_VALUES[page_shapes[name]])
            page.append(record)
        pages.append(page)
    return names, pages, kinds


def _write(source: str, pages: list[list[dict]], folder: Path, base: str, key: str) -> dict:
    if source == "airbyte":
        props = {name: {} for name in pages[0][0]} | {"id": {"type": "integer"}}
        return _airbyte([r for p in pages for r in p], {"type": "object", "properties": props})
    if source == "rest":
        return _rest(base, [json.dumps(p) for p in pages], key)
    if source == "jsonl":
        lines = ["".join(json.dumps(r) + "\n" for r in p).encode() for p in pages]
        return _files(folder, {f"p{i:03d}.jsonl": text for i, text in enumerate(lines)})
    return _files(folder, {f"p{i:03d}.parquet": _parquet_page(p) for i, p in enumerate(pages)})


def _parquet_page(page: list[dict]) -> bytes:
    """One page as a Parquet file, each column in the type a writer would give its shape."""
    columns: dict[str, pa.Array] = {}
    for name in page[0]:
        values = [r[name] for r in page]
        kinds = {type(v) for v in values if v is not None}
        if int in kinds and any(abs(v) >= 10**38 for v in values):
            array = pa.array([v and Decimal(v) for v in values], pa.decimal256(45, 0))
        elif int in kinds and any(abs(v) >= 2**63 for v in values):
            array = pa.array(values, pa.decimal128(38, 0))
        else:
            array = pa.array(values)
        columns[name] = array
    return _parquet_bytes(pa.table(columns))


def check(loaded: pa.Table, names: list[str], pages: list[list[dict]], kinds: dict) -> None:
    rows = [r for p in pages for r in p]
    assert loaded.column("id").to_pylist() == [r["id"] for r in rows]
    for name in names:
        kind = expect({kinds[(r["id"], name)] for r in rows})
        if kind is None:
            assert name not in loaded.column_names or loaded.column(name).null_count == len(rows)
            continue
        assert loaded.schema.field(name).type == _TYPES[kind], name
        for r, got in zip(rows, loaded.column(name).to_pylist(), strict=True):
            shape = kinds[(r["id"], name)]
            assert holds(kind, shape, r[name], got), (name, shape, r[name], got)


_ALL = SHAPES
_PARQUET = tuple(s for s in SHAPES if s != "object")  # a Parquet writer's structs: not here
_FAKESNOW = tuple(s for s in SHAPES if s != "big")
"""fakesnow stores NUMBER(38,0) as BIGINT: integers beyond int64 hold on Snowflake only."""


# CSV is not here: its cells are typed by inference from the text (numbers, booleans, ISO
# dates and timestamps), which the shapes above cannot say without restating that inference.
@pytest.mark.parametrize(
    ("source", "kind"),
    [(s, k) for s in ("rest", "jsonl", "parquet", "airbyte") for k in ("duckdb", "snowflake")],
)
@examples(2)
@given(data=st.data())
def test_any_values_load_as_the_rules_say_and_a_second_run_changes_nothing(
    kind: str, source: str, api: str, tmp_path_factory: pytest.TempPathFactory, data: Any
) -> None:
    # Airbyte's untyped fields are JSON text: big integers are no NUMBER column there.
    typed = source != "airbyte"
    shapes = tuple(s for s in SHAPES if (kind != "snowflake" or not typed or s in _FAKESNOW))
    if source == "parquet":
        shapes = tuple(s for s in shapes if s in _PARQUET)
    names, pages, kinds = data.draw(runs(shapes))
    tmp = tmp_path_factory.mktemp("values")
    stream = "wild" if source == "airbyte" else "t"
    config = _stack(tmp, _write(source, pages, tmp / "in", api, tmp.name), stream)
    with _warehouse(kind, tmp) as wh:
        _sync(wh, config, "r1")
        first = _table(wh, stream)
        if source == "airbyte":
            check_json_text(first, names, pages)
        else:
            check(first, names, pages, kinds)
        _sync(wh, config, "r2")
        assert _same(_table(wh, stream), first)


def check_json_text(loaded: pa.Table, names: list[str], pages: list[list[dict]]) -> None:
    """A field its stream's JSON Schema leaves untyped is one text column: each value's JSON
    text, every digit and NaN/Infinity included."""
    rows = [r for p in pages for r in p]
    for name in names:
        assert loaded.schema.field(name).type == pa.string(), name
        for r, got in zip(rows, loaded.column(name).to_pylist(), strict=True):
            parsed = None if got is None else json.loads(got)
            assert repr(parsed) == repr(r[name]), (r[name], got)
