"""The source protocol: spec / check / discover / read, in Airbyte's vocabulary.

A source is configured with a plain, already-resolved mapping and knows no
warehouse. ``read`` drives one stream and yields, in order:

* :class:`Batch` — a ``pyarrow.RecordBatch`` of records (tens of thousands of
  rows; never per-row dicts),
* :class:`Deletes` — primary keys the source knows were deleted (CDC
  tombstones), with their deletion time,
* :class:`Checkpoint` — an opaque, JSON-serialisable state. Everything yielded
  before a checkpoint is committed together with it, so a source must only
  emit a checkpoint once the state covers every record before it.

A stream whose data another system loads (``StreamSpec.loaded_externally``)
yields :class:`ExternalLoad` and checkpoints instead of records.

The next read receives the last committed state (``None`` on a first read or
after a reset), for every sync mode: full-refresh streams may use it for the
source's own bookkeeping.

The sources of this package build on :class:`BaseSource`, which owns the name, the config
(validated into the source's pydantic model, :mod:`connectors.config`), ``spec`` and
``check``; a source adds ``discover``, ``read`` and, where it can, a connection check and
a check of the states it accepts (:func:`check_state`, for states set by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, get_args, runtime_checkable

import pyarrow as pa

from connectors.config import ConfigT, parse_config
from connectors.errors import ConnectorError

SyncMode = Literal[
    "full_refresh_overwrite",
    "full_refresh_append",
    "incremental_append",
    "incremental_deduped",
]
SYNC_MODES: tuple[SyncMode, ...] = get_args(SyncMode)
FULL_REFRESH_MODES: tuple[SyncMode, ...] = ("full_refresh_overwrite", "full_refresh_append")
INCREMENTAL_MODES: tuple[SyncMode, ...] = ("incremental_append", "incremental_deduped")

State = dict[str, Any]
"""A stream's state: JSON-serialisable, owned by the source that wrote it."""

SOURCE_DELETED_AT = "_deleted_at"
"""Column of a :class:`Deletes` batch: when the source deleted each key. The warehouse marks
deleted rows in a column of its own (``stack.sql.DELETED_AT``)."""


@dataclass(frozen=True)
class StreamSpec:
    """What ``discover`` says about one stream.

    Attributes:
        name: stream name, also the destination table name.
        schema: Arrow schema of the records ``read`` yields.
        primary_key: columns that identify a record (empty if none).
        cursor: column that grows with every change (``updated_at``), if any.
        sync_modes: the modes this stream supports.
        emits_deletes: whether ``read`` yields :class:`Deletes` (CDC tombstones).
        loaded_externally: another system (an Airbyte server) loads this stream into the
            warehouse; ``read`` runs that load and yields :class:`ExternalLoad`, never records.
        immutable: columns whose value never changes once a record exists (a creation
            time; a cursor of records that are never updated). A backfill may cut a
            deduped stream into partitions on them.
    """

    name: str
    schema: pa.Schema
    primary_key: tuple[str, ...] = ()
    cursor: str | None = None
    sync_modes: tuple[SyncMode, ...] = ("full_refresh_overwrite", "full_refresh_append")
    emits_deletes: bool = False
    loaded_externally: bool = False
    immutable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalog:
    """The streams a source offers, as ``discover`` returns them."""

    streams: tuple[StreamSpec, ...]

    def stream(self, name: str) -> StreamSpec:
        for spec in self.streams:
            if spec.name == name:
                return spec
        raise ConnectorError(
            f"no stream named {name!r}; the source offers {sorted(self.names)}",
            stream=name,
            hint="fix the stream name in stack.yml or run `mdstack discover`",
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.streams)


@dataclass(frozen=True)
class ConfiguredStream:
    """A stream as the pipeline wants it read (Airbyte's configured catalog entry)."""

    spec: StreamSpec
    sync_mode: SyncMode
    cursor: str | None = None
    primary_key: tuple[str, ...] = ()
    history: bool = False
    """The pipeline keeps every version of every row (``incremental_deduped_history``): a
    source that compacts changes (CDC: the last event per key) yields each one instead, in
    the order they happened, with :attr:`Batch.changed_at`. ``sync_mode`` stays
    ``incremental_deduped``, the read the source does."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def incremental(self) -> bool:
        return self.sync_mode.startswith("incremental")


@dataclass(frozen=True)
class Batch:
    """A block of records of one stream."""

    stream: str
    data: pa.RecordBatch
    changed_at: pa.Array | None = None
    """When the source changed each row (a CDC commit time, naive UTC ``timestamp[us]``), one
    per row of ``data``, sent on streams read for history (:attr:`ConfiguredStream.history`):
    the time each version became valid. Rows of one key in one batch are in the order their
    changes happened."""


@dataclass(frozen=True)
class Deletes:
    """Primary keys deleted at the source: the key columns plus ``_deleted_at``."""

    stream: str
    keys: pa.RecordBatch


@dataclass(frozen=True)
class Checkpoint:
    """State covering every record and delete yielded before it."""

    stream: str
    state: State = field(default_factory=dict)
    replication_lag_bytes: int | None = None
    """Bytes of change log the source server keeps for this stream at this point (with
    PostgreSQL CDC, the WAL the stream's slot holds back); None when it has none. The
    engine records the last one of a run in the run ledger."""


@dataclass(frozen=True)
class ExternalLoad:
    """Another system has loaded this stream into the warehouse (e.g. an Airbyte sync job).

    The engine writes no rows for it: it records the load in the run ledger (``rows``,
    when the system reports them) and marks the stream changed, so dbt rebuilds what is
    downstream of it.
    """

    stream: str
    rows: int | None = None
    bytes: int | None = None
    job: str = ""
    """The external system's id of the load (shown in logs)."""


Message = Batch | Deletes | Checkpoint | ExternalLoad


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``check``: whether the source can be read, and why not."""

    ok: bool
    message: str = ""


Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """One prerequisite a source looked at before reading (``mdstack doctor`` shows them):
    what, whether it holds, and, whenever it does not, the fix to paste."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@runtime_checkable
class Source(Protocol):
    """An Airbyte-style source. Implementations take their config in ``__init__``."""

    name: str

    def spec(self) -> dict[str, Any]:
        """JSON Schema of the config this source accepts."""
        ...

    def check(self) -> CheckResult:
        """Whether the config works (credentials, reachability), without reading data."""
        ...

    def discover(self) -> Catalog:
        """The streams this source offers, with schemas, keys and cursors."""
        ...

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """Read one stream from ``state`` on; see the module docstring for the order."""
        ...


@runtime_checkable
class SharedRead(Protocol):
    """A source that reads some of its streams in one pass over one change log (PostgreSQL
    CDC: one replication slot per source). The engine syncs such streams together, as one
    job (:func:`stack.load.group.sync_group`); every message names its stream."""

    def shares_read(self, stream: ConfiguredStream) -> bool:
        """Whether ``stream`` is read by :meth:`read_group` rather than :meth:`Source.read`."""
        ...

    def read_group(
        self,
        streams: Sequence[ConfiguredStream],
        states: Mapping[str, State | None],
        held: Callable[[], Sequence[State]],
    ) -> Iterator[Message]:
        """Read ``streams`` together, each from its state in ``states`` (None: from scratch).

        ``held()`` gives the committed state of every declared stream of the source,
        selected or not, as of the call: the shared log is never released past any of them.
        The engine commits while the read goes on, so a long read asks again to release
        what has been committed since it began. Each stream's messages keep the order
        :class:`Source` ``read`` promises; streams interleave.
        """
        ...

    def release(self, held: Sequence[State]) -> int | None:
        """Let the shared log go up to the smallest of ``held`` (the committed state of every
        declared stream), once a read's last states are committed: what the source server
        keeps between runs is then only what was written since.

        Returns the bytes of log the server still keeps for the source (None: unknown), what
        the run ledger records as its replication lag.
        """
        ...


class BaseSource(Generic[ConfigT]):
    """What every source shares: its name, its validated config, ``spec`` and ``check``.

    A subclass sets ``config_model`` (a :class:`~connectors.config.SourceConfig`) and
    implements ``discover`` and ``read``; it leaves ``__init__``, ``spec`` and ``check``
    alone and overrides the hooks below instead.

    A bad config does not raise from ``__init__``: ``check()`` reports it as ``ok=False``,
    and ``self.config`` raises it (naming the key) when ``discover`` or ``read`` need it.
    """

    config_model: type[ConfigT]
    """The pydantic model of the source's ``config:``; ``spec()`` is its JSON Schema."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self._config: ConfigT | None = None
        self._config_error: ConnectorError | None = None
        try:
            self._config = parse_config(self.config_model, name, config)
        except ConnectorError as exc:
            self._config_error = exc
        else:
            self.configure(self._config)

    @property
    def config(self) -> ConfigT:
        """The validated config.

        Raises:
            ConnectorError: the config did not validate (the key and the fix are in it).
        """
        if self._config is None:
            raise self._config_error or ConnectorError("the source has no config")
        return self._config

    def spec(self) -> dict[str, Any]:
        """JSON Schema of the config this source accepts, derived from ``config_model``."""
        return self.config_model.model_json_schema(by_alias=True)

    def check(self) -> CheckResult:
        """Whether the config works: ``ok=False`` with the error's text when it does not."""
        try:
            message = self.check_connection()
        except ConnectorError as exc:
            return CheckResult(ok=False, message=str(exc))
        return CheckResult(ok=True, message=message)

    def configure(self, config: ConfigT) -> None:
        """Hook, run once the config has validated: set up what every read shares
        (credentials, a rate limiter). Runs in ``__init__``, so it must not do I/O."""

    def check_state(self, stream: ConfiguredStream, state: State) -> None:
        """Hook for :func:`check_state`: raise ConnectorError, saying what shape is expected,
        if ``read`` would refuse ``state`` for ``stream``. The default accepts any object;
        a source whose ``read`` looks into its state checks it the way ``read`` does."""

    def check_connection(self) -> str:
        """Hook for ``check``: prove the config works (connect, list, fetch one page) and
        say what was seen, or raise ConnectorError. The default only validates the config.
        """
        self.config  # noqa: B018 - raises the config's error, if it has one
        return ""


def check_state(source: Source, stream: ConfiguredStream, state: object) -> State:
    """``state`` (parsed JSON) as ``source`` would take it to read ``stream``.

    Every state is a JSON object; a :class:`BaseSource` checks the rest
    (:meth:`BaseSource.check_state`). A state set by hand goes through here, so that
    the next read does not fail on it, or silently start over.

    Raises:
        ConnectorError: the source would not accept it (the message says what it expects).
    """
    if not isinstance(state, dict):
        raise ConnectorError(
            f"a state is a JSON object, not {type(state).__name__} {state!r}"[:300],
            source=source.name,
            stream=stream.name,
            hint='give an object, such as {"cursor": "2026-01-01"}; '
            "`mdstack state show` shows the states stored",
        )
    if isinstance(source, BaseSource):
        source.check_state(stream, state)
    return state
