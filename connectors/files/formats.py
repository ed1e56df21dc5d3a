"""CSV, JSON lines and Parquet as Arrow: schema inference, bounded-memory readers, type fitting.

Used by :mod:`connectors.files.source`, which owns streams, listing and state; this module sees one
file at a time, through an ``open_file()`` callable returning a binary file object (local or
any fsspec filesystem, decompressed when the name says ``.gz``/``.zst``/...).

Readers yield raw ``pyarrow.RecordBatch``es in file order, never holding the whole file:

* **CSV**: pyarrow's streaming reader (``pyarrow.csv.open_csv``) reads every column as text
  (blank cells are null); :func:`conform` then casts each batch to the discovered types.
* **JSON lines**: the file is cut into blocks at line ends (so line numbers are exact) and each
  block parsed by polars, with the discovered types as overrides; nested values (objects,
  arrays) become JSON text; blank lines are ignored.
* **Parquet**: ``ParquetFile.iter_batches``.

Schemas: Parquet's comes from its metadata; CSV and JSON lines are inferred by polars from the
first ``sample_bytes`` of the file. For CSV, pyarrow first splits the sample into records as
the reader will; polars types those; text columns whose every value casts to a date or
timestamp take that type; and the sample's text is fitted through :func:`conform`, so the
schema is exactly what the reader produces for the sample.
:func:`widen` unifies the schemas of several files: int -> float, date -> timestamp, anything
else that differs -> string.

Fitting (:func:`conform`; it and :func:`widen` live in :mod:`connectors.files.widening`): a
column that does not cast to the discovered type (a later row holds ``"n/a"`` in an int
column) is widened *in that batch* (int -> float -> string), so the engine's schema policy
decides (``evolve`` widens the table, ``freeze`` fails naming it).

A row that cannot be parsed (a CSV row with the wrong number of columns or a broken quote, a
JSON line that is not an object) raises :class:`BadRow` with the physical line number, or,
with ``on_bad_row="skip"``, is dropped and reported through ``on_skip(line, reason)``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from connectors._json_arrow import BIG_INTEGER, inexact, json_array, loads
from connectors.files.widening import CAST_ERRORS, conform, plain, rebatch, widen

Format = Literal["csv", "jsonl", "parquet"]
OpenFile = Callable[[], IO[bytes]]
OnSkip = Callable[[int | None, str], None]

BLOCK_BYTES = 8 << 20
"""Bytes parsed at a time (CSV block, JSON lines block): the unit of the readers' memory."""
_MAX_COLUMNS = 4096
_TEXT_COLUMNS = {f"f{i}": pa.string() for i in range(_MAX_COLUMNS)}  # pyarrow's generated names


@dataclass(frozen=True)
class Options:
    """How to parse one file."""

    format: Format
    delimiter: str = ","
    header: bool = True
    quote: str | None = '"'
    on_bad_row: Literal["fail", "skip"] = "fail"
    batch_size: int = 100_000


class BadRow(Exception):  # internal: connectors.files raises it as a ConnectorError
    """A row (or the whole file) could not be parsed; ``line`` is 1-based, None if unknown."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(line, reason)
        self.line = line
        self.reason = reason


# -- schemas ----------------------------------------------------------------------------------
def schema(open_file: OpenFile, opts: Options, sample_bytes: int) -> pa.Schema:
    """The file's schema: Parquet metadata, or inferred from the first ``sample_bytes``.

    Raises:
        BadRow: the file cannot be read as its format (``line`` None).
    """
    if opts.format == "parquet":
        try:
            with open_file() as fh:
                return pa.schema([(f.name, plain(f.type)) for f in pq.read_schema(fh)])
        except CAST_ERRORS as exc:
            raise BadRow(None, f"not a readable Parquet file: {exc}") from exc
    with open_file() as fh:
        sample = fh.read(sample_bytes + 1)
    cut = len(sample) > sample_bytes
    while True:
        if cut:  # keep whole lines only
            sample = sample[: sample.rfind(b"\n", 0, min(len(sample), sample_bytes)) + 1]
        if not sample.strip():
            return pa.schema([])
        if opts.format == "jsonl":
            return _jsonl_schema(sample)
        try:
            return _csv_schema(sample, opts, whole=not cut)
        except BadRow:  # the cut may fall inside a quoted value spanning lines: cut earlier
            if not cut or len(sample) < 1024:
                raise
            sample_bytes = len(sample) // 2


def _csv_schema(sample: bytes, opts: Options, whole: bool) -> pa.Schema:
    """pyarrow parses the sample as the reader will (dropping the last record if the sample is
    cut: it may be partial); polars guesses numbers and booleans from those records; text
    columns whose every value is an ISO date or timestamp take that type; the text is then
    fitted to the guess, so the schema is what the reader will really produce."""
    skip = Options("csv", opts.delimiter, opts.header, opts.quote, "skip")
    raw = list(csv_batches(lambda: io.BytesIO(sample), skip, lambda *_: None))
    if not raw:
        return pa.schema([])
    text = pa.concat_batches(raw)
    text = text if whole else text.slice(0, max(0, text.num_rows - 1))
    clean = io.BytesIO()  # the records exactly as pyarrow split them, for polars to type
    pa_csv.write_csv(text, clean, pa_csv.WriteOptions(quoting_style="needed"))
    try:
        frame = pl.read_csv(
            io.BytesIO(clean.getvalue()), infer_schema_length=None, raise_if_empty=False
        )
        guessed = [plain(t) for t in frame.to_arrow().schema.types]
    except (pl.exceptions.PolarsError, pa.ArrowException):
        guessed = []
    if len(guessed) != text.num_columns:
        guessed = [pa.string()] * text.num_columns
    fields = [
        (name, _temporal(text.column(name)) if pa.types.is_string(t) else t)
        for name, t in zip(text.schema.names, guessed, strict=True)
    ]
    checked = conform(text, pa.schema(fields))
    return pa.schema(
        [(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in checked.schema]
    )


def _temporal(column: pa.Array) -> pa.DataType:
    """date32 / timestamp[us] / timestamp[us, UTC] if every value casts, else string."""
    values = column.drop_null()
    if not len(values):
        return pa.string()
    for candidate in (pa.date32(), pa.timestamp("us"), pa.timestamp("us", "UTC")):
        try:
            pc.cast(values.slice(0, 100), candidate)  # most text fails here, cheaply
            pc.cast(values, candidate)
            return candidate
        except CAST_ERRORS:
            continue
    return pa.string()


def _jsonl_schema(sample: bytes) -> pa.Schema:
    try:
        if inexact(sample):  # polars would round integers beyond 64 bits among floats
            raise pl.exceptions.ComputeError("read in Python")
        frame = pl.read_ndjson(io.BytesIO(sample), infer_schema_length=None)
        return pa.schema([(n, _json_type(t)) for n, t in frame.schema.items()])
    except pl.exceptions.PolarsError:  # mixed kinds polars will not unify, or bad lines
        kinds: dict[str, pa.DataType] = {}
        for line in sample.split(b"\n"):
            record = _json_object(line)
            for key, value in (record if isinstance(record, dict) else {}).items():
                kind = _python_type(value)
                kinds[key] = widen(kinds[key], kind) if key in kinds else kind
        return pa.schema(list(kinds.items()))


def _json_type(t: pl.DataType) -> pa.DataType:
    """Arrow type of a polars JSON column: nested values are kept as JSON text, integers
    beyond int64 (polars' Int128, UInt64) are decimal(38, 0)."""
    if t.is_nested():
        return pa.string()
    if t in (pl.Int128(), pl.UInt64()):
        return BIG_INTEGER
    return plain(pl.Series([], dtype=t).to_arrow().type)


def _python_type(value: object) -> pa.DataType:
    return json_array([value]).type


def _json_object(line: bytes) -> object:
    try:
        return loads(line) if line.strip() else None
    except ValueError:
        return None


# -- readers ----------------------------------------------------------------------------------
def batches(
    open_file: OpenFile, opts: Options, target: pa.Schema, on_skip: OnSkip, skip: int = 0
) -> Iterator[pa.RecordBatch]:
    """The file's records after the first ``skip``, fitted to ``target`` (see :func:`conform`),
    ``opts.batch_size`` rows at a time (fewer at the end). Raises :class:`BadRow`."""
    if opts.format == "parquet":
        raw = parquet_batches(open_file, opts, skip)
    elif opts.format == "csv":
        raw = _drop(csv_batches(open_file, opts, on_skip), skip)
    else:
        raw = _drop(jsonl_batches(open_file, opts, target, on_skip), skip)
    return rebatch((conform(b, target) for b in raw), opts.batch_size)


def _drop(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """``batches`` without their first ``rows`` rows (parsed, then dropped)."""
    for batch in batches:
        if rows < batch.num_rows:
            yield batch.slice(rows)
        rows = max(0, rows - batch.num_rows)


def parquet_batches(open_file: OpenFile, opts: Options, skip: int = 0) -> Iterator[pa.RecordBatch]:
    """Batches of the row groups after the first ``skip`` rows (earlier groups are not read)."""
    try:
        with open_file() as fh:
            parquet = pq.ParquetFile(fh)
            groups: list[int] = []
            before = 0
            for i in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(i).num_rows
                if groups or before + rows > skip:
                    groups.append(i)
                else:
                    before += rows
            if groups:
                raw = parquet.iter_batches(batch_size=opts.batch_size, row_groups=groups)
                yield from _drop(raw, skip - before)
    except CAST_ERRORS as exc:
        raise BadRow(None, f"not a readable Parquet file: {exc}") from exc


def csv_batches(open_file: OpenFile, opts: Options, on_skip: OnSkip) -> Iterator[pa.RecordBatch]:
    """Text columns named from the header (``column_1``... without one; a repeated name gets
    ``_duplicated_<n>``, as polars does)."""
    invalid: list[str] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        invalid.append(f"expected {row.expected_columns} columns, got {row.actual_columns}")
        return "skip" if opts.on_bad_row == "skip" else "error"

    names: list[str] | None = None
    try:
        with open_file() as fh:
            reader = pa_csv.open_csv(
                fh,
                read_options=pa_csv.ReadOptions(
                    block_size=BLOCK_BYTES, autogenerate_column_names=True
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter=opts.delimiter,
                    quote_char=opts.quote or False,
                    newlines_in_values=bool(opts.quote),
                    invalid_row_handler=on_invalid,
                ),
                convert_options=pa_csv.ConvertOptions(
                    column_types=_TEXT_COLUMNS, null_values=[""], strings_can_be_null=True
                ),
            )
            for batch in reader:
                if names is None:
                    names = _column_names(batch, opts.header)
                    batch = batch.slice(1) if opts.header else batch
                yield pa.RecordBatch.from_arrays(batch.columns, names=names)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return
        problems = _csv_problems(open_file, opts)
        line, reason = problems[0] if problems else (None, str(exc))
        raise BadRow(line, reason) from exc
    if invalid:
        problems = _csv_problems(open_file, opts)
        if len(problems) == len(invalid):
            for line, reason in problems:
                on_skip(line, reason)
        else:  # Python's csv module and pyarrow disagree: report what pyarrow saw
            for reason in invalid:
                on_skip(None, reason)


def _column_names(first: pa.RecordBatch, header: bool) -> list[str]:
    count = first.num_columns
    if not header or not first.num_rows:
        return [f"column_{i + 1}" for i in range(count)]
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, value in enumerate(first.slice(0, 1).to_pylist()[0].values()):
        name = value or f"column_{i + 1}"
        if name in seen:
            seen[name] += 1
            name = f"{name}_duplicated_{seen[name] - 1}"
        else:
            seen[name] = 0
        names.append(name)
    return names


def _csv_problems(open_file: OpenFile, opts: Options) -> list[tuple[int | None, str]]:
    """Rows with the wrong number of columns or broken quoting, as (line, reason), found by
    Python's csv module: only run once pyarrow has refused a row, to say where it is."""
    problems: list[tuple[int | None, str]] = []
    with open_file() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if opts.quote:
            reader = csv.reader(text, delimiter=opts.delimiter, strict=True, quotechar=opts.quote)
        else:
            reader = csv.reader(text, delimiter=opts.delimiter, strict=True, quoting=csv.QUOTE_NONE)
        expected, start = None, 1
        try:
            for row in reader:
                if row and expected is None:
                    expected = len(row)
                elif row and len(row) != expected:
                    problems.append((start, f"expected {expected} columns, got {len(row)}"))
                start = reader.line_num + 1
        except csv.Error as exc:
            problems.append((start, f"cannot parse the row: {exc}"))
    return problems


def jsonl_batches(
    open_file: OpenFile, opts: Options, target: pa.Schema, on_skip: OnSkip
) -> Iterator[pa.RecordBatch]:
    overrides = {f.name: _polars_type(f.type) for f in target}
    with open_file() as fh:
        line = 1
        for block in _line_blocks(fh):
            table = _parse_json_block(block, line, overrides, opts, on_skip)
            line += block.count(b"\n")
            if table is not None:
                yield from table.to_batches()


def _polars_type(t: pa.DataType) -> pl.DataType:
    try:
        return pl.Series(pa.array([], t)).dtype
    except (pl.exceptions.PolarsError, TypeError, ValueError):
        return pl.String()


def _line_blocks(fh: IO[bytes]) -> Iterator[bytes]:
    """The file in blocks of about BLOCK_BYTES that end at a line end."""
    rest = b""
    while chunk := fh.read(BLOCK_BYTES):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest.strip():
        yield rest


def _parse_json_block(
    block: bytes, first_line: int, overrides: dict, opts: Options, on_skip: OnSkip
) -> pa.Table | None:
    """Parse a block of lines: with the discovered types, then with every known column as text
    (conform casts back what fits), then, line by line, to find bad lines and all the keys."""
    if not block.strip():
        return None
    for attempt in (overrides, dict.fromkeys(overrides, pl.String())):
        if inexact(block):  # polars would round integers beyond 64 bits among floats
            break
        try:
            return _polars_json(block, attempt)
        except (pl.exceptions.PolarsError, pa.ArrowInvalid):  # Int128 has no Arrow type
            continue
    records: list[dict] = []
    bad: list[tuple[int, str]] = []
    lines = block.split(b"\n")
    for offset, line in enumerate(lines):
        record = _json_object(line)
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            what = "not valid JSON" if record is None else "not a JSON object"
            bad.append((offset, f"{what}: {line[:80].decode('utf-8', 'replace')!r}"))
    if bad and opts.on_bad_row == "fail":
        offset, reason = bad[0]
        raise BadRow(first_line + offset, reason)
    for offset, reason in bad:
        on_skip(first_line + offset, reason)
    return _records_table(records)


def _records_table(records: list[dict]) -> pa.Table | None:
    """Records polars cannot read together (NaN, Infinity, integers beyond 64 bits, kinds it
    will not unify), one column at a time (:func:`json_array`); conform fits them."""
    keys = dict.fromkeys(key for record in records for key in record)
    if not keys:
        return None
    return pa.table({key: json_array([r.get(key) for r in records]) for key in keys})


def _polars_json(block: bytes, overrides: dict) -> pa.Table:
    """polars' parse of a block; nested values of columns not overridden become JSON text."""
    frame = pl.read_ndjson(io.BytesIO(block), schema_overrides=overrides, infer_schema_length=None)
    nested = {n: pl.String() for n, t in frame.schema.items() if t.is_nested()}
    if nested:
        frame = pl.read_ndjson(
            io.BytesIO(block), schema_overrides=overrides | nested, infer_schema_length=None
        )
    table = frame.to_arrow()
    return table.cast(pa.schema([(f.name, plain(f.type)) for f in table.schema]))
