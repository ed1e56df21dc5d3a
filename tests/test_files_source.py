"""FilesSource on real files: formats, globs, incremental by file, schemas, bad rows, the engine.

Files are written to pytest's tmp folders (and fsspec's in-memory filesystem); no mocks but
one: an optional cloud package is hidden from ``import`` to see the error it gets.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import uuid
from datetime import date
from pathlib import Path
from unittest.mock import ANY

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import REGISTRY, load_source
from connectors.base import Batch, Checkpoint, ConfiguredStream, Source
from connectors.errors import ConnectorError
from connectors.files import FilesSource
from stack.config import SourceConfig
from stack.load import CommitPolicy, RunContext, plan_stream, sync_stream

ROWS = [
    {"id": 1, "name": "ada", "amount": 1.5, "day": date(2026, 1, 1)},
    {"id": 2, "name": "alan", "amount": 2.0, "day": date(2026, 1, 2)},
    {"id": 3, "name": None, "amount": None, "day": None},
]


def write(path: Path, text: str, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as CSV, JSON lines or Parquet, after ``path``'s extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    else:
        head = ",".join(rows[0])
        lines = [",".join("" if v is None else str(v) for v in r.values()) for r in rows]
        path.write_text("\n".join([head, *lines]) + "\n")
    return path


def read(source: Source, stream: str | None = None, mode="incremental_append", state=None):
    catalog = source.discover()
    spec = catalog.stream(stream) if stream else catalog.streams[0]
    return list(source.read(ConfiguredStream(spec, mode), state))


def records(messages: list) -> list[dict]:
    return [row for m in messages if isinstance(m, Batch) for row in m.data.to_pylist()]


def last_state(messages: list) -> dict:
    return [m.state for m in messages if isinstance(m, Checkpoint)][-1]


def data(rows: list[dict]) -> list[dict]:
    """Rows without the traceability columns."""
    return [{k: v for k, v in r.items() if k not in ("_file", "_row")} for r in rows]


def test_registered() -> None:
    assert REGISTRY["files"] == "connectors.files.source:FilesSource"
    assert isinstance(load_source("files", "f", {"url": "x.csv"}), FilesSource)


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_each_format_reads_typed_records_with_file_and_row(tmp_path: Path, ext: str) -> None:
    path = write_rows(tmp_path / f"orders.{ext}", ROWS)
    source = FilesSource("orders", {"url": str(path)})
    spec = source.discover().stream("orders")  # one url: one stream named after the source
    day = pa.string() if ext == "jsonl" else pa.date32()  # JSON has no dates: text
    assert spec.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("amount", pa.float64()),
            ("day", day),
            ("_file", pa.string()),
            ("_row", pa.int64()),
        ]
    )
    assert (spec.primary_key, spec.cursor) == (("_file", "_row"), None)
    got = records(read(source))
    assert [(r["_file"], r["_row"]) for r in got] == [
        (str(path), 1),
        (str(path), 2),
        (str(path), 3),
    ]
    expected = ROWS
    if ext == "jsonl":
        expected = [r | {"day": r["day"] and str(r["day"])} for r in ROWS]
    assert data(got) == expected


def test_csv_options_delimiter_quote_no_header_tsv_and_gzip(tmp_path: Path) -> None:
    write(tmp_path / "semi.csv", "a;b\n1;'x;y'\n")
    write(tmp_path / "bare.csv", "1,x\n2,y\n")
    write(tmp_path / "tabs.tsv", "a\tb\n1\tx\n")
    with gzip.open(tmp_path / "zipped.csv.gz", "wt") as fh:
        fh.write('a,b\n1,"multi\nline"\n2,z\n')
    source = FilesSource(
        "f",
        {
            "streams": {
                "semi": {"url": str(tmp_path / "semi.csv"), "delimiter": ";", "quote": "'"},
                "bare": {"url": str(tmp_path / "bare.csv"), "header": False},
                "tabs": {"url": str(tmp_path / "tabs.tsv")},
                "zipped": {"url": str(tmp_path / "*.gz")},
            }
        },
    )
    assert data(records(read(source, "semi"))) == [{"a": 1, "b": "x;y"}]
    assert data(records(read(source, "bare"))) == [
        {"column_1": 1, "column_2": "x"},
        {"column_1": 2, "column_2": "y"},
    ]
    assert data(records(read(source, "tabs"))) == [{"a": 1, "b": "x"}]
    assert data(records(read(source, "zipped"))) == [
        {"a": 1, "b": "multi\nline"},
        {"a": 2, "b": "z"},
    ]


def test_a_sample_cut_inside_a_quoted_multiline_value_still_infers(tmp_path: Path) -> None:
    note = '"' + "a long note\n" * 40 + '"'
    text = "id,note\n" + "".join(f"{i},{note}\n" for i in range(100))
    path = write(tmp_path / "notes.csv", text)
    source = FilesSource("n", {"url": str(path), "sample_bytes": 2000})
    schema = source.discover().streams[0].schema
    assert schema.field("id").type == pa.int64()
    assert len(records(read(source))) == 100


def test_globs_and_folders_list_files_and_skip_hidden_ones(tmp_path: Path) -> None:
    for name in ("2026/01/a.csv", "2026/02/b.csv", "c.csv", "2026/_SUCCESS", "2026/.x.csv"):
        write(tmp_path / name, "id\n1\n")
    write(tmp_path / "notes.txt", "not data")

    def files(url: str, **extra) -> list[str]:
        rows = records(read(FilesSource("f", {"url": url, **extra})))
        return sorted(Path(r["_file"]).relative_to(tmp_path).as_posix() for r in rows)

    assert files(str(tmp_path / "*.csv")) == ["c.csv"]
    assert files(str(tmp_path / "**" / "*.csv")) == ["2026/01/a.csv", "2026/02/b.csv", "c.csv"]
    assert files(str(tmp_path / "2026")) == ["2026/01/a.csv", "2026/02/b.csv"]
    assert files(str(tmp_path / "2026" / "_SUCCESS"), format="csv") == ["2026/_SUCCESS"]
    assert files(str(tmp_path / "nothing-yet-*.csv")) == []  # an empty stream, not an error
    with pytest.raises(ConnectorError, match=r"cannot tell the format of .*notes\.txt") as err:
        read(FilesSource("f", {"url": str(tmp_path / "*.txt")}))
    assert err.value.key == "format"
    with pytest.raises(ConnectorError, match="does not exist"):
        FilesSource("f", {"url": str(tmp_path / "missing.csv")}).discover()
    assert not FilesSource("f", {"url": str(tmp_path / "missing.csv")}).check().ok


def test_incremental_reads_new_and_changed_files_whole_with_a_checkpoint_each(
    tmp_path: Path,
) -> None:
    a = write(tmp_path / "a.csv", "id\n1\n2\n", mtime=1_000)
    write(tmp_path / "b.csv", "id\n3\n", mtime=2_000)
    source = FilesSource("f", {"url": str(tmp_path / "*.csv")})
    first = read(source)
    assert [type(m).__name__ for m in first] == ["Batch", "Checkpoint", "Batch", "Checkpoint"]
    assert list(first[1].state["files"]) == [str(a)]  # the state covers the file just read
    state = last_state(first)
    assert state["files"][str(a)] == {"size": a.stat().st_size, "mtime": 1_000.0}
    nothing = read(source, state=state)
    assert records(nothing) == [] and last_state(nothing) == state

    write(tmp_path / "c.csv", "id\n4\n", mtime=3_000)  # a new file
    write(tmp_path / "a.csv", "id\n1\n2\n5\n", mtime=4_000)  # a changed one: re-read whole
    second = read(source, state=state)
    assert [(r["id"], Path(r["_file"]).name, r["_row"]) for r in records(second)] == [
        (4, "c.csv", 1),
        (1, "a.csv", 1),
        (2, "a.csv", 2),
        (5, "a.csv", 3),
    ]
    (tmp_path / "b.csv").unlink()  # a vanished file is not a delete; it leaves the state
    third = read(source, state=last_state(second))
    assert records(third) == []
    assert sorted(Path(p).name for p in last_state(third)["files"]) == ["a.csv", "c.csv"]

    full = read(source, mode="full_refresh_overwrite", state=last_state(third))
    assert sorted(r["id"] for r in records(full)) == [1, 2, 4, 5]


def test_schema_unifies_across_files_and_a_late_misfit_widens_its_batch(tmp_path: Path) -> None:
    write(tmp_path / "1.csv", "id,score,tag\n1,10,x\n", mtime=1)
    write(tmp_path / "2.csv", "id,score,note\n2,2.5,hello\n", mtime=2)
    write(tmp_path / "3.csv", "id,score\nabc,3\n", mtime=3)
    source = FilesSource("f", {"url": str(tmp_path / "*.csv")})
    schema = source.discover().streams[0].schema
    assert [(f.name, str(f.type)) for f in schema] == [
        ("id", "string"),  # int + text -> string
        ("score", "double"),  # int + float -> float
        ("tag", "string"),
        ("note", "string"),
        ("_file", "string"),
        ("_row", "int64"),
    ]
    assert [r["tag"] for r in records(read(source))] == ["x", None, None]  # missing: null

    rows = "id,amount\n" + "".join(f"{i},{i}\n" for i in range(5000)) + "5000,n/a\n"
    write(tmp_path / "late" / "big.csv", rows)  # the sample (1 KiB+) only sees integers
    late = FilesSource("late", {"url": str(tmp_path / "late"), "sample_bytes": 1024})
    spec = late.discover().streams[0]
    assert spec.schema.field("amount").type == pa.int64()
    batches = [m.data for m in read(late) if isinstance(m, Batch)]
    assert [b.schema.field("amount").type for b in batches] == [pa.string()]  # engine decides
    assert batches[0].column("amount")[-1].as_py() == "n/a"
    typed = FilesSource("t", {"url": str(tmp_path / "late"), "types": {"amount": "string"}})
    assert typed.discover().streams[0].schema.field("amount").type == pa.string()


def test_jsonl_mixed_kinds_and_nested_values(tmp_path: Path) -> None:
    write(
        tmp_path / "e.jsonl",
        '{"id": 1, "flag": true, "obj": {"a": 1}, "list": [1, 2]}\n'
        "\n"
        '{"id": 2, "flag": 1, "obj": [3], "extra": "x"}\n',
    )
    source = FilesSource("e", {"url": str(tmp_path / "e.jsonl")})
    schema = source.discover().streams[0].schema
    assert schema.field("id").type == pa.int64()
    assert schema.field("obj").type == pa.string()  # nested values are JSON text
    got = data(records(read(source)))
    assert [r["id"] for r in got] == [1, 2]
    assert json.loads(got[0]["obj"]) == {"a": 1} and json.loads(got[0]["list"]) == [1, 2]
    assert json.loads(got[1]["obj"]) == [3] and got[1]["extra"] == "x"


def test_malformed_csv_row_fails_with_file_and_line_or_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "bad.csv", 'id,name\n1,a\n2,"two\nlines"\n3,c,oops\n4,d\n5\n')
    with pytest.raises(ConnectorError, match=rf"{path}:5: expected 2 columns, got 3") as err:
        read(FilesSource("f", {"url": str(path)}))
    assert "on_bad_row: skip" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="connectors.files"):
        got = records(read(FilesSource("f", {"url": str(path), "on_bad_row": "skip"})))
    assert [(r["id"], r["_row"]) for r in got] == [(1, 1), (2, 2), (4, 3)]
    assert "skipped 2 bad rows" in caplog.text
    assert f"{path}:5: expected 2 columns, got 3" in caplog.text
    assert f"{path}:7: expected 2 columns, got 1" in caplog.text


def test_malformed_json_line_fails_with_file_and_line_or_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"id": 1}\n{"id": 2\n[3]\n{"id": 4}\n')
    with pytest.raises(ConnectorError, match=rf"{path}:2: not valid JSON"):
        read(FilesSource("f", {"url": str(path)}))
    got = records(read(FilesSource("f", {"url": str(path), "on_bad_row": "skip"})))
    assert [(r["id"], r["_row"]) for r in got] == [(1, 1), (4, 2)]


def test_a_column_named_like_the_traceability_columns_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "id,_row\n1,2\n")
    with pytest.raises(ConnectorError, match="a column named _file or _row"):
        FilesSource("f", {"url": str(tmp_path / "a.csv")}).discover()


def test_corrupt_parquet_fails_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.parquet", "this is not parquet")
    with pytest.raises(ConnectorError, match=rf"{path}: not a readable Parquet file"):
        FilesSource("f", {"url": str(path), "on_bad_row": "skip"}).discover()


def test_missing_optional_package_names_it_and_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed, even where it is
    source = FilesSource("lake", {"streams": {"o": {"url": "s3://bucket/orders/*.parquet"}}})
    result = source.check()
    assert not result.ok
    assert "needs the optional package s3fs" in result.message
    assert "pip install 'mdstack[s3]'" in result.message
    with pytest.raises(ConnectorError, match="s3fs") as err:
        source.discover()
    assert err.value.key == "streams.o.url"
    with pytest.raises(ConnectorError, match="nope://"):
        FilesSource("f", {"url": "nope://x/y.csv"}).discover()


def test_any_fsspec_url_memory_filesystem_incrementally() -> None:
    root = f"memory:///mds-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{root}/a.jsonl", b'{"id": 1}\n')
    source = FilesSource("m", {"url": f"{root}/*.jsonl"})
    first = read(source)
    assert [(r["id"], r["_file"]) for r in records(first)] == [(1, f"{root}/a.jsonl")]
    fs.pipe(f"{root}/b.jsonl", b'{"id": 2}\n')
    assert [r["id"] for r in records(read(source, state=last_state(first)))] == [2]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "url"),
        ({"url": "a.csv", "streams": {"x": {"url": "b.csv"}}}, "url"),
        ({"url": "a.csv", "format": "xls"}, "format"),
        ({"url": "a.csv", "delimiter": ";;"}, "delimiter"),
        ({"url": "a.csv", "batch_size": 0}, "batch_size"),
        ({"url": "a.csv", "on_bad_row": "ignore"}, "on_bad_row"),
        ({"url": "a.csv", "colour": "red"}, "colour"),
        ({"streams": {"x": {"format": "csv"}}}, "streams.x.url"),
        ({"streams": {"x": {"url": "a.csv", "header": "yes"}}}, "streams.x.header"),
        ({"streams": {"x": {"url": "a.csv", "types": {"a": "money"}}}}, "streams.x.types.a"),
    ],
)
def test_bad_config_names_the_key(config: dict, key: str) -> None:
    result = FilesSource("f", config).check()
    assert not result.ok and repr(key) in result.message
    with pytest.raises(ConnectorError) as err:
        FilesSource("f", config).discover()
    assert err.value.key == key


def test_state_that_is_not_a_file_list_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "id\n1\n")
    with pytest.raises(ConnectorError, match="reset the stream's state"):
        read(FilesSource("f", {"url": str(tmp_path / "a.csv")}), state={"files": [1, 2]})


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_checkpoints_inside_a_file_let_a_read_resume_where_it_stopped(
    tmp_path: Path, ext: str
) -> None:
    rows = [{"id": i, "name": f"n{i}"} for i in range(1, 26)]
    path = tmp_path / f"a.{ext}"
    if ext == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    else:
        write_rows(path, rows)
    source = FilesSource("f", {"url": str(path), "batch_size": 5})
    whole = read(source)
    states = [m.state for m in whole if isinstance(m, Checkpoint)]
    assert [len(m.data) for m in whole if isinstance(m, Batch)] == [5] * 5
    assert [s.get("reading", {}).get("rows") for s in states] == [5, 10, 15, 20, None]
    assert states[1]["files"] == {} and states[-1]["files"] == {str(path): ANY}
    resumed = read(source, state=states[1])
    assert [r["_row"] for r in records(resumed)] == list(range(11, 26))
    assert records(resumed) == records(whole)[10:]
    write_rows(path, rows[:3])  # changed since: read again whole
    assert [r["_row"] for r in records(read(source, state=states[1]))] == [1, 2, 3]


class _Measured:
    """A source whose reads record the largest batch and the Arrow memory in use."""

    def __init__(self, inner: Source) -> None:
        self.inner, self.name = inner, inner.name
        self.largest = self.peak = self.total = 0

    def discover(self):
        return self.inner.discover()

    def read(self, stream, state):
        for message in self.inner.read(stream, state):
            if isinstance(message, Batch):
                self.largest = max(self.largest, message.data.num_rows)
                self.total += message.data.nbytes
            self.peak = max(self.peak, pa.total_allocated_bytes())
            yield message


def _sync(wh, source, cfg: SourceConfig, stream: str, run_id: str, **kw):
    plan = plan_stream("files", cfg, source.discover(), stream)
    assert plan.keys == ("_file", "_row")
    return sync_stream(wh, source, plan, RunContext("p", "eu", run_id), **kw)


def test_end_to_end_sync_of_a_million_rows_in_bounded_memory(warehouse, tmp_path: Path) -> None:
    n = 1_000_000
    ids = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "id": ids,
            "amount": ids * 0.5,
            "label": pa.array(np.char.add("customer-number-", ids.astype(str)).astype(object)),
        }
    )
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=100_000)
    size = table.nbytes  # about 42 MB; 130 MB with the _file column
    del table, ids
    cfg = SourceConfig.model_validate(
        {
            "connector": "files",
            "schema": "raw",
            "config": {"url": str(tmp_path / "big.parquet"), "batch_size": 50_000},
            "streams": {"big": {"sync": "incremental_append"}},
        }
    )
    source = _Measured(FilesSource("big", cfg.config))
    baseline = pa.total_allocated_bytes()
    policy = CommitPolicy(rows=200_000)  # the source checkpoints inside the file: commits
    entry = _sync(warehouse, source, cfg, "big", "r1", policy=policy)
    assert (entry.status, entry.rows_read, entry.checkpoints) == ("succeeded", n, 5)
    assert source.largest == 50_000
    # Arrow memory in use never came near the data read: the reader holds a row group, the
    # engine what it has not committed yet, whatever the file's size
    assert source.total > size
    assert source.peak - baseline < source.total / 3, (source.peak - baseline, source.total)
    counted = warehouse.query("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM raw.big")
    assert counted.to_pylist() == [{"n": n, "ids": n}]
    assert _sync(warehouse, source, cfg, "big", "r2").rows_read == 0  # nothing changed


def test_end_to_end_changed_file_is_merged_not_duplicated(warehouse, tmp_path: Path) -> None:
    cfg = SourceConfig.model_validate(
        {
            "connector": "files",
            "schema": "raw",
            "config": {"url": str(tmp_path / "*.csv")},
            "streams": {"drops": {"sync": "incremental_deduped"}},
        }
    )
    write(tmp_path / "a.csv", "id,amount\n1,10\n2,20\n", mtime=1_000)
    source = FilesSource("drops", cfg.config)
    assert _sync(warehouse, source, cfg, "drops", "r1").rows_read == 2
    write(tmp_path / "a.csv", "id,amount\n1,11\n2,20\n3,30\n", mtime=2_000)
    write(tmp_path / "b.csv", "id,amount\n4,40\n", mtime=3_000)
    entry = _sync(warehouse, source, cfg, "drops", "r2")
    assert (entry.rows_read, entry.inserted, entry.updated) == (4, 2, 2)
    rows = warehouse.query("SELECT id, amount, _row FROM raw.drops ORDER BY id").to_pylist()
    assert [tuple(r.values()) for r in rows] == [(1, 11, 1), (2, 20, 2), (3, 30, 3), (4, 40, 1)]
