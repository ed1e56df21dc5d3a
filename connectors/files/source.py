"""Files source: CSV, JSON lines and Parquet from local paths, globs and any fsspec URL.

Config (:class:`~connectors.files.config.FilesConfig`), either one stream::

    url: data/orders/*.csv          # a file, a folder, a glob (``**`` recurses) or a URL

named after the source, or several::

    streams:
      orders: {url: "s3://bucket/orders/**/*.parquet"}
      events: {url: "gs://bucket/events/", format: jsonl}

Keys, at the top (defaults for every stream; a stream's own replace them) or per stream:
``format`` (``csv`` | ``jsonl`` |
``parquet``; by default from the extension: ``.csv``/``.tsv``, ``.jsonl``/``.ndjson``,
``.parquet``/``.pq``, also compressed as ``.gz``/``.bz2``/``.zst``/...), ``delimiter`` (``,``;
``\\t`` for ``.tsv``), ``header`` (true: without one columns are ``column_1``...), ``quote``
(``"``; null turns quoting off), ``types`` (``{column: string|int64|float64|bool|date|
timestamp|timestamptz}``, overriding inference), ``on_bad_row`` (``fail`` | ``skip``).
Top level only: ``batch_size`` (100 000 rows), ``storage_options`` (passed to fsspec:
credentials, ``endpoint_url``, ``anon``...), ``sample_bytes`` (1 MiB read from the head of a
CSV/JSON lines file to infer its types) and ``sample_files`` (10: the newest files whose
schemas make the stream's).

URLs: local paths need nothing; ``s3://`` needs ``s3fs`` (``pip install 'mdstack[s3]'``),
``gs://`` ``gcsfs`` (``[gcs]``), ``az://``/``abfs://`` ``adlfs`` (``[azure]``); any other
fsspec protocol works once its package is installed. A folder or glob skips names starting
with ``.`` or ``_`` (``_SUCCESS``); a glob or folder matching nothing is an empty stream, a
plain path that does not exist an error.

Records: the file's columns, then ``_file`` (the file's path or URL) and ``_row`` (1 for the
file's first record; a CSV header is not a record, nor are skipped bad rows or blank lines).
The primary key is ``(_file, _row)``; there is no cursor. Schemas: Parquet metadata; CSV and
JSON lines inferred (polars) from the head of the file: CSV numbers, booleans, ISO dates and
timestamps are typed, JSON keeps its own kinds (objects and arrays become JSON text,
timestamps stay text); unified across files (int -> float, date -> timestamp, anything else ->
string); ``types`` overrides. A later value that does not fit widens its batch's column (int
-> float -> string), and the stream's schema policy decides. A file only read, never sampled
(older than the newest ``sample_files``), adds its new columns the same way. Details in
:mod:`connectors.files.formats`.

Reads (every sync mode):

* **incremental**: the state is ``{"files": {path: {"size", "mtime", "etag"}}}`` (the fields
  the storage reports); a file whose path is new or whose fingerprint changed is read,
  **whole**, files in order of modification time then path. A checkpoint follows each file,
  and each batch inside a file, where the state adds ``"reading": {"file", "fingerprint",
  "rows"}``: the engine can commit inside a big file (memory stays bounded by its commit
  interval, not the file), and a resumed read skips the rows already committed (whole Parquet
  row groups unread; CSV/JSON lines parsed and dropped) unless the file changed meanwhile.
  The state lists every file still present (it grows with the folder).
  A changed file re-delivers its rows under the same ``(_file, _row)`` keys:
  ``incremental_deduped`` overwrites them (rows cut from the end of a shrunk file stay),
  ``incremental_append`` appends them again. Files that disappear are not deletes: their rows
  stay, and they leave the state (one that comes back is read again).
* **full refresh**: every file (the saved state is ignored), checkpoints as above.

Bad rows (a CSV row with the wrong number of columns or broken quoting, a JSON line that is not
an object): ``on_bad_row: fail`` raises a ConnectorError naming ``file:line``; ``skip`` drops
the row and logs each file's skipped lines (``connectors.files`` logger, warning). A file
that cannot be read as its format at all (a corrupt Parquet footer) always fails. Text must be
UTF-8. Storage timeouts and resets, and a listed file gone before it is read, raise
SourceUnavailable (retryable); anything else ConnectorError.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.base import (
    SYNC_MODES,
    BaseSource,
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Message,
    State,
    StreamSpec,
)
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.files import formats, widening
from connectors.files.config import TYPES, FilesConfig, StreamConfig

log = logging.getLogger(__name__)

FILE, ROW = "_file", "_row"
_EXTENSIONS: dict[str, formats.Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class _File:
    """One listed file: ``key`` is its path (local) or URL, as in ``_file`` and the state."""

    path: str
    key: str
    fingerprint: dict[str, Any]
    order: tuple[float, str]


class FilesSource(BaseSource[FilesConfig]):
    """Files as a :class:`~connectors.base.Source` (see the module docstring)."""

    config_model = FilesConfig

    def configure(self, config: FilesConfig) -> None:
        self._schemas: dict[tuple[Any, ...], pa.Schema] = {}  # per file version and options

    @cached_property
    def _streams(self) -> tuple[StreamConfig, ...]:
        """The configured streams; raises the config's error if it has one."""
        return self.config.stream_configs(self.name)

    def check_connection(self) -> str:
        """List every stream's files (reachability, credentials, optional packages)."""
        return "; ".join(f"{s.name}: {len(self._list(s)[1])} files" for s in self._streams)

    def discover(self) -> Catalog:
        """One stream per configured url, its schema unified over its newest files.

        Raises:
            ConnectorError: bad config, a path that does not exist, a missing package, a file
                that cannot be read; SourceUnavailable when storage cannot be reached.
        """
        return Catalog(tuple(self._discover(s) for s in self._streams))

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """New and changed files (incremental) or every file (full refresh), a checkpoint
        after each; see the module docstring.

        Raises:
            ConnectorError: bad config or state, a bad row (``file:line``) with
                ``on_bad_row: fail``, an unreadable file; SourceUnavailable (storage).
        """
        conf = next((s for s in self._streams if s.name == stream.name), None)
        if conf is None:
            hint = f"the source has streams {[s.name for s in self._streams]}"
            raise ConnectorError("no such stream", source=self.name, stream=stream.name, hint=hint)
        fs, files = self._list(conf)
        listed = {f.key for f in files}
        saved, reading = self._saved(stream.name, state) if stream.incremental else ({}, None)
        done = {k: v for k, v in saved.items() if k in listed}
        todo = [f for f in files if saved.get(f.key) != f.fingerprint]
        log.info("%s.%s: %d of %d files to read", self.name, stream.name, len(todo), len(files))
        target = pa.schema([f for f in stream.spec.schema if f.name not in (FILE, ROW)])
        for file in todo:
            skip = 0
            if reading is not None and reading["file"] == file.key:
                skip = reading["rows"] if reading["fingerprint"] == file.fingerprint else 0
            yield from self._read_file(fs, conf, file, target, stream.name, dict(done), skip)
            done[file.key] = file.fingerprint
            yield Checkpoint(stream.name, {"files": dict(done)})
        if not todo:
            yield Checkpoint(stream.name, {"files": done})

    def check_state(self, stream: ConfiguredStream, state: State) -> None:
        """An incremental stream's state lists the files read (see the module docstring);
        a full refresh reads every file and ignores it."""
        if stream.incremental:
            self._saved(stream.name, state)

    # -- internals ----------------------------------------------------------------------------
    def _saved(
        self, stream: str, state: State | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The state's finished files, and the file in progress (``reading``) if any."""
        files = (state or {}).get("files", {})
        reading = (state or {}).get("reading")
        valid = isinstance(files, dict) and all(isinstance(v, dict) for v in files.values())
        if reading is not None:
            valid &= isinstance(reading, dict) and isinstance(reading.get("file"), str)
            valid &= isinstance(reading.get("fingerprint"), dict)
            rows = reading.get("rows") if valid else None
            valid &= isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0
        if not valid:
            hint = "reset the stream's state to read every file again"
            raise ConnectorError(
                f"state {state!r} is not a valid files state: "
                '{"files": {<path>: {"size", "mtime", "etag"}, ...}}, and while a file is '
                'read "reading": {"file": <path>, "fingerprint": {...}, "rows": <count>}',
                source=self.name,
                stream=stream,
                hint=hint,
            )
        return files, reading

    def _discover(self, conf: StreamConfig) -> StreamSpec:
        fs, files = self._list(conf)
        newest = files[-self.config.sample_files :]  # files come oldest first
        schema = pa.schema([])
        for file in newest:
            schema = widening.unify(schema, self._file_schema(fs, conf, file))
        fields = {f.name: f.type for f in schema} | {
            c: TYPES[t] for c, t in conf.options.types.items()
        }
        if FILE in fields or ROW in fields:
            raise self._clash(conf.name, "the files have")
        fields = {n: pa.string() if pa.types.is_null(t) else t for n, t in fields.items()}
        return StreamSpec(
            name=conf.name,
            schema=pa.schema([*fields.items(), (FILE, pa.string()), (ROW, pa.int64())]),
            primary_key=(FILE, ROW),
            sync_modes=SYNC_MODES,
        )

    def _clash(self, stream: str, who: str) -> ConnectorError:
        hint = "rename the column in the files: mdstack adds these two to every record"
        message = f"{who} a column named {FILE} or {ROW}"
        return ConnectorError(message, source=self.name, stream=stream, hint=hint)

    def _file_schema(self, fs, conf: StreamConfig, file: _File) -> pa.Schema:
        opts = self._options(conf, file)
        sample = self.config.sample_bytes
        key = (file.key, json.dumps(file.fingerprint, sort_keys=True), opts, sample)
        if key not in self._schemas:
            with self._translate(conf.name, file.key, listed=True):
                self._schemas[key] = formats.schema(_opener(fs, file.path), opts, sample)
        return self._schemas[key]

    def _read_file(
        self,
        fs,
        conf: StreamConfig,
        file: _File,
        target: pa.Schema,
        stream: str,
        done: dict[str, Any],
        skip: int,
    ) -> Iterator[Message]:
        """The file's records after the first ``skip``, each batch followed by a checkpoint
        naming the file in progress (except the last: the caller checkpoints the whole file)."""
        skipped: list[str] = []

        def on_skip(line: int | None, reason: str) -> None:
            skipped.append(f"{file.key}:{line or '?'}: {reason}")

        opts = self._options(conf, file)
        row, held = skip + 1, None
        with self._translate(stream, file.key, listed=True):
            for batch in formats.batches(_opener(fs, file.path), opts, target, on_skip, skip):
                if held is not None:
                    yield held
                    progress = {"file": file.key, "fingerprint": file.fingerprint, "rows": row - 1}
                    yield Checkpoint(stream, {"files": done, "reading": progress})
                if FILE in batch.schema.names or ROW in batch.schema.names:
                    raise self._clash(conf.name, f"{file.key} has")
                n = batch.num_rows
                keys = pa.array([file.key], pa.string()).take(np.zeros(n, np.int32))
                rows = pa.array(np.arange(row, row + n, dtype=np.int64))
                held = Batch(stream, _with_columns(batch, keys, rows))
                row += n
        if held is not None:
            yield held
        if skipped:
            more = f" (and {len(skipped) - 20} more)" if len(skipped) > 20 else ""
            log.warning(
                "%s.%s: skipped %d bad rows in %s: %s%s",
                self.name,
                stream,
                len(skipped),
                file.key,
                "; ".join(skipped[:20]),
                more,
            )

    def _options(self, conf: StreamConfig, file: _File) -> formats.Options:
        fmt = conf.options.format or _format_of(file.path)
        if fmt is None:
            hint = "set `format:` (csv, jsonl or parquet) for the stream"
            raise ConnectorError(
                f"cannot tell the format of {file.key} from its name",
                source=self.name,
                stream=conf.name,
                key=f"{conf.prefix}format",
                hint=hint,
            )
        tsv = _strip_compression(file.path).lower().endswith(".tsv")
        delimiter = conf.options.delimiter or ("\t" if tsv else ",")
        return formats.Options(
            fmt,
            delimiter,
            conf.options.header,
            conf.options.quote,
            conf.options.on_bad_row,
            self.config.batch_size,
        )

    def _list(self, conf: StreamConfig) -> tuple[Any, list[_File]]:
        """The stream's filesystem and files, oldest first."""
        fs, path = self._filesystem(conf)
        with self._translate(conf.name, conf.options.url):
            if _GLOB.search(path):
                infos = list(fs.glob(path, detail=True).values())
            elif fs.isdir(path):
                infos = list(fs.find(path, detail=True).values())
            else:
                infos = [fs.info(path) | {"explicit": True}]  # read even if named _x or .x
        files = [_file(fs, info) for info in infos if _visible(info)]
        return fs, sorted(files, key=lambda f: f.order)

    def _filesystem(self, conf: StreamConfig):
        import fsspec  # only this source needs it

        try:
            return fsspec.core.url_to_fs(conf.options.url, **self.config.storage_options)
        except ImportError as exc:
            raise self._missing_package(conf, exc) from exc
        except (ValueError, TypeError) as exc:
            raise ConnectorError(
                f"cannot open {conf.options.url!r}: {exc}",
                source=self.name,
                stream=conf.name,
                key=f"{conf.prefix}url",
                hint="check the URL's protocol and `storage_options`",
            ) from exc

    def _missing_package(self, conf: StreamConfig, exc: ImportError) -> ConnectorError:
        from fsspec.registry import known_implementations

        protocol = conf.options.url.split("://", 1)[0]
        known = known_implementations.get(protocol, {})
        package = known.get("class", "").split(".")[0] or (exc.name or "?")
        extra = _EXTRAS.get(package)
        hint = f"pip install 'mdstack[{extra}]'" if extra else f"pip install {package}"
        return ConnectorError(
            f"reading {protocol}:// URLs needs the optional package {package}, "
            "which is not installed",
            source=self.name,
            stream=conf.name,
            key=f"{conf.prefix}url",
            hint=hint,
        )

    @contextmanager
    def _translate(self, stream: str, where: str, listed: bool = False) -> Iterator[None]:
        """The one place storage and parse errors become mdstack errors. ``listed``: ``where``
        is a file just listed, so its disappearance is a race that a retry resolves."""
        try:
            yield
        except formats.BadRow as exc:
            at = f"{where}:{exc.line}" if exc.line else where
            hint = "fix the file, or set `on_bad_row: skip` to drop such rows"
            raise ConnectorError(
                f"{at}: {exc.reason}", source=self.name, stream=stream, hint=hint
            ) from exc
        except FileNotFoundError as exc:
            if listed:
                raise SourceUnavailable(
                    f"{where} disappeared while being read",
                    source=self.name,
                    stream=stream,
                    hint="retry: the next read lists the files again",
                ) from exc
            hint = "check the path; a glob or folder matching no file is an empty stream"
            raise ConnectorError(
                f"{where} does not exist", source=self.name, stream=stream, hint=hint
            ) from exc
        except PermissionError as exc:
            hint = "check the credentials (`storage_options`) and the bucket's permissions"
            raise ConnectorError(
                f"access to {where} denied: {exc}", source=self.name, stream=stream, hint=hint
            ) from exc
        except (TimeoutError, ConnectionError) as exc:
            raise SourceUnavailable(
                f"{where}: {exc}", source=self.name, stream=stream, hint="retry later"
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            raise ConnectorError(f"{where}: {exc}", source=self.name, stream=stream) from exc


def _opener(fs, path: str):
    from fsspec.utils import infer_compression

    compression = infer_compression(path)
    return lambda: fs.open(path, "rb", compression=compression)


def _visible(info: dict[str, Any]) -> bool:
    name = info["name"].rstrip("/").rsplit("/", 1)[-1]
    return info.get("type") == "file" and (info.get("explicit") or name[:1] not in "._")


def _file(fs, info: dict[str, Any]) -> _File:
    path = info["name"]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    key = path if protocol in ("file", "local") else fs.unstrip_protocol(path)
    mtime = next(
        (
            info[k]
            for k in ("mtime", "LastModified", "last_modified", "updated", "created")
            if k in info
        ),
        None,
    )
    etag = info.get("ETag") or info.get("etag")
    fingerprint = {"size": info.get("size")}
    if mtime is not None:
        fingerprint["mtime"] = mtime.isoformat() if isinstance(mtime, datetime) else mtime
    if etag:
        fingerprint["etag"] = str(etag)
    return _File(path, key, fingerprint, (_timestamp(mtime), key))


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def _strip_compression(path: str) -> str:
    from fsspec.utils import infer_compression

    return path.rsplit(".", 1)[0] if infer_compression(path) else path


def _format_of(path: str) -> formats.Format | None:
    name = _strip_compression(path).lower()
    return next((fmt for ext, fmt in _EXTENSIONS.items() if name.endswith(ext)), None)


def _with_columns(batch: pa.RecordBatch, files: pa.Array, rows: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [*batch.columns, files, rows], names=[*batch.schema.names, FILE, ROW]
    )
