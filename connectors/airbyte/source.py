"""Airbyte source: any Airbyte protocol connector (``source-faker``, ``source-file``...) run
as a local process, no Docker needed::

    fake:
      connector: airbyte
      config:
        package: airbyte-source-faker     # from PyPI, into a virtualenv of its own
        version: 7.2.1                    # optional: default the newest one installed
        config: {count: 1000, seed: 42}   # the connector's own config
      schema: raw_fake
      streams:
        users: {sync: incremental_deduped}
        purchases: {sync: incremental_append}

Exactly one of:

* ``package`` (+ ``version``): a PyPI package, installed on first use into
  ``$MDSTACK_CONNECTORS_DIR/<package>-<version>`` (default ``~/.cache/mdstack/connectors``;
  see :mod:`connectors.airbyte.install`, and ``mdstack connector install``);
* ``executable``: a command speaking the protocol, a path or an argv list
  (``[python, my_source.py]``);
* ``image``: a Docker image, only where a Docker engine answers (else a clear error).

``config`` is the connector's own config. It is validated against the connector's spec
first (an error names the key, ``config.count``), and handed to the connector as a file
only the user can read (0600, in a 0700 folder), deleted when the command ends; it is never
logged, and values the spec marks ``airbyte_secret`` are masked in whatever the connector
says. ``batch_size`` (default 50 000) caps the records of one Arrow batch.

``discover`` runs the connector's ``discover`` once per connector version and config: what
it printed is cached on disk and used by later syncs instead (where, the key, refreshing:
:mod:`connectors.airbyte.catalogs`; a stream the cached catalog lacks makes the connector
discover again, once, before it is an error; a record with a top-level field the cached
schema lacks makes it discover again too, see :meth:`AirbyteSource.read`). Each stream's
JSON Schema becomes an Arrow schema (:mod:`connectors.airbyte.json_schema`); the
source-defined primary key and cursor are the stream's (nested paths are not columns and
are left out); ``full_refresh`` offers both full-refresh modes, ``incremental`` both
incremental ones; a stream with an ``_ab_cdc_deleted_at`` column and a key emits deletes.

``read`` runs ``read`` with a configured catalog of the one stream (its sync mode, cursor
and primary key as ``stack.yml`` chose them), and, for incremental modes, ``--state`` with
the stored state. How its messages become batches, deletes and checkpoints:
:mod:`connectors.airbyte.read`; the process and its cleanup:
:mod:`connectors.airbyte.process`. Each stream is one connector process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

import jsonschema
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

from connectors.airbyte import catalogs
from connectors.airbyte.install import ensure_installed, package_name
from connectors.airbyte.process import (
    Connector,
    Scrubber,
    docker_problem,
    messages,
    private_files,
    run,
    spec_of,
)
from connectors.airbyte.read import CDC_DELETED_AT, States, read_messages
from connectors.airbyte.records import Records, record_schema
from connectors.base import (
    FULL_REFRESH_MODES,
    INCREMENTAL_MODES,
    BaseSource,
    Catalog,
    ConfiguredStream,
    Message,
    State,
    StreamSpec,
)
from connectors.config import ConfigProblem, SourceConfig
from connectors.errors import ConnectorError

log = logging.getLogger("connectors.airbyte")

_DESTINATION = {
    "full_refresh_overwrite": "overwrite",
    "full_refresh_append": "append",
    "incremental_append": "append",
    "incremental_deduped": "append_dedup",
}


def _argv(value: Any) -> Any:
    """``executable``: a path, or a non-empty list of words."""
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise ConfigProblem("not a path or a list of words", hint="e.g. [python, my_source.py]")


def _package(value: str) -> str:
    """The PyPI name (``source-faker`` is ``airbyte-source-faker``)."""
    try:
        return package_name(value)
    except ConnectorError as exc:
        raise ConfigProblem(exc.message, hint=exc.hint) from None


_Text = Annotated[str, Field(min_length=1)]
_Argv = Annotated[
    tuple[str, ...],
    BeforeValidator(_argv),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        }
    ),
]


class AirbyteConfig(SourceConfig):
    """The ``config:`` of a ``connector: airbyte`` source: how to run the connector (exactly
    one of ``package``, ``executable``, ``image``) and the connector's own config."""

    model_config = ConfigDict(title="Airbyte protocol connector")

    package: Annotated[_Text, AfterValidator(_package)] | None = Field(
        None, description="PyPI package, e.g. airbyte-source-faker"
    )
    version: _Text | None = Field(None, description="exact version of `package`")
    executable: _Argv | None = Field(
        None, description="a command speaking the Airbyte protocol: a path or an argv list"
    )
    image: _Text | None = Field(None, description="Docker image (needs a Docker engine)")
    config: dict[str, Any] = Field(default_factory=dict, description="the connector's own config")
    batch_size: StrictInt = Field(50_000, ge=1, description="records per Arrow batch at most")

    @model_validator(mode="after")
    def _one_way(self) -> AirbyteConfig:
        ways = [w for w in ("package", "executable", "image") if getattr(self, w) is not None]
        if len(ways) != 1:
            found = f"got {', '.join(ways)}" if ways else "got none"
            raise ConfigProblem(
                f"give exactly one of `package`, `executable` and `image` ({found})",
                key="package",
                hint="e.g. `package: airbyte-source-faker`, or `executable: /path/to/source`",
            )
        if self.version is not None and self.package is None:
            raise ConfigProblem(
                "`version` goes with `package`",
                key="version",
                hint="remove `version`, or add `package`",
            )
        return self


class AirbyteSource(BaseSource[AirbyteConfig]):
    """An Airbyte protocol connector as a :class:`~connectors.base.Source`; see the module
    docstring. ``spec()`` is this source's config; the connector's own is its ``spec``."""

    config_model = AirbyteConfig

    def configure(self, config: AirbyteConfig) -> None:
        self._connector: Connector | None = None
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, Any]] = {}
        self._identity: str | None = None  # the connector version; None: never cached
        self._discovering = threading.Lock()
        self._live = False  # whether the connector's discover ran (not the cache)
        self._scrub = Scrubber()

    def check_connection(self) -> str:
        """Validate the connector's config against its spec, then run its ``check``.

        Raises:
            ConnectorError: a bad config, or the connector's check failed (its message).
        """
        status = None
        for message in self._run("check"):
            if message.get("type") == "CONNECTION_STATUS":
                status = message.get("connectionStatus") or {}
        if status is None:
            raise ConnectorError("the connector's check printed no status")
        text = self._scrub(str(status.get("message") or ""))
        if status.get("status") != "SUCCEEDED":
            raise ConnectorError(text)
        return text

    def discover(self) -> Catalog:
        """The connector's streams (see the module docstring): the cached catalog of this
        connector version and config, else what its ``discover`` prints (then cached).

        Raises:
            ConnectorError: bad config (naming the key), the connector failed.
        """
        self._ready()
        identity, config = self._identity, self.config.config
        cached = catalogs.load(identity, config) if identity else None
        if cached is None:
            return self._discover_live()
        self._streams = {s["name"]: s for s in cached}
        return _CachedCatalog(self._specs(), rediscover=self._rediscover)

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """Run the connector's ``read`` for this one stream; see :mod:`connectors.airbyte.read`.

        With a catalog from the cache, the first record carrying a top-level field the
        stream's cached schema lacks is checked before its batch is yielded (fields beyond a
        freshly discovered schema are dropped unseen): see :meth:`_undeclared_fields`.

        Raises:
            ConnectorError: bad config or state, an unknown stream, an incremental stream
                without a cursor, the connector's ERROR trace (retryable if transient) or
                non-zero exit; retryable: the cached catalog lacked a column of the stream.
        """
        cfg = self.config
        connector = self._ready()
        if stream.name not in self._streams:
            self.discover()
        if stream.name not in self._streams:
            self._rediscover()
        live = self._live  # before the streams: a live catalog replaces them, then sets it
        raw = self._streams.get(stream.name)
        if raw is None:
            raise ConnectorError(
                f"the connector has no stream {stream.name!r}; it offers {sorted(self._streams)}",
                source=self.name,
                stream=stream.name,
                hint="fix the stream name in stack.yml",
            )
        catalog = {"streams": [self._configured(raw, stream)]}
        states = States(self.name, stream.name, state if stream.incremental else None)
        prior = states.messages if stream.incremental and states.messages else None
        keys = tuple(stream.primary_key or stream.spec.primary_key)
        undeclared = None if live else partial(self._undeclared_fields, stream.name)
        records = Records(
            self.name, stream.name, raw.get("json_schema") or {}, undeclared=undeclared
        )
        with (
            private_files(config=cfg.config, catalog=catalog, state=prior) as files,
            closing(run(connector, "read", files, self._scrub)) as lines,
        ):
            yield from read_messages(
                lines,
                records,
                states,
                keys=keys,
                deletes=stream.spec.emits_deletes and bool(keys),
                batch_size=cfg.batch_size,
                scrub=self._scrub,
            )

    def check_state(self, stream: ConfiguredStream, state: State) -> None:
        """An incremental stream's state holds the connector's STATE messages
        (``{"airbyte_state": [...]}``); a full refresh ignores it."""
        if stream.incremental:
            States(self.name, stream.name, state)

    # -- internals ----------------------------------------------------------------------------
    def _discover_live(self) -> Catalog:
        """Run the connector's ``discover`` and cache what it printed."""
        streams = None
        for message in self._run("discover"):  # to the end: a failed exit must raise
            if message.get("type") == "CATALOG":
                streams = (message.get("catalog") or {}).get("streams") or []
        if streams is None:
            raise ConnectorError("the connector's discover printed no CATALOG", source=self.name)
        self._streams = {s["name"]: s for s in streams if isinstance(s, dict)}
        self._live = True
        if self._identity is not None:
            found = list(self._streams.values())
            catalogs.store(self._identity, self.config.config, found, self._scrub.secrets)
        return Catalog(self._specs())

    def _rediscover(self) -> Catalog:
        """The connector's own catalog: a cached one may predate a stream the connector has
        gained since, so a stream missing from it is looked for once more, for real (once per
        source: the engine asks for each stream, perhaps in parallel threads)."""
        with self._discovering:
            if not self._live:
                return self._discover_live()
            return Catalog(self._specs())

    def _undeclared_fields(self, stream: str, fields: tuple[str, ...]) -> None:
        """Records of ``stream`` read with a cached catalog carry ``fields``, which its
        schema lacks. Before the cache every sync discovered, so what the connector's
        ``discover`` says now decides: the cached catalog is removed and discovered again
        (and cached anew). If it declares one of them (a column added upstream), the stream
        fails, retryably, before the record's batch is yielded: dropping the values would
        lose them for good (an incremental sync does not read those rows again), and the
        next try reads with the new schema. If not (a connector whose records have fields
        it never declares), they are dropped, as with a fresh catalog.

        Raises:
            ConnectorError: retryable: the stream gained a column since the catalog was
                cached; or the connector's ``discover`` failed.
        """
        if self._identity is not None:
            catalogs.forget(self._identity, self.config.config)
        self._rediscover()
        fresh = (self._streams.get(stream) or {}).get("json_schema") or {}
        added = [f for f in fields if f in (fresh.get("properties") or {})]
        if not added:
            log.info(
                "%s.%s: records carry %s, which the connector's discover does not declare: dropped",
                self.name,
                stream,
                ", ".join(map(repr, fields)),
            )
            return
        names = ", ".join(map(repr, added))
        raise ConnectorError(
            f"records carry {names}, which the cached catalog lacked (added upstream since it "
            "was discovered); no record carrying them was loaded, and the catalog has been "
            "discovered again: the next try loads them",
            source=self.name,
            stream=stream,
            hint="retry the sync (a flow run retries it by itself); "
            "`mdstack sync --refresh-catalog` discovers every connector's catalog again",
            retryable=True,
        )

    def _specs(self) -> tuple[StreamSpec, ...]:
        return tuple(_stream_spec(s) for s in self._streams.values())

    def _run(self, verb: str) -> Iterator[dict[str, Any]]:
        connector = self._ready()
        with private_files(config=self.config.config) as files:
            yield from messages(connector, verb, files, self._scrub)

    def _ready(self) -> Connector:
        """The connector, installed if need be, its config validated against its spec."""
        self.config  # noqa: B018 - raises the config's error, if it has one
        with self._lock:  # streams of one run may be read in parallel threads
            if self._connector is None:
                self._connector = self._prepare()
            return self._connector

    def _prepare(self) -> Connector:
        cfg = self.config
        spec = None
        if cfg.package is not None:
            done = ensure_installed(cfg.package, cfg.version)
            connector = Connector(self.name, (str(done.executable),))
            spec = done.spec
            self._identity = catalogs.package_identity(done.package, done.version)
        elif cfg.executable is not None:
            connector = Connector(self.name, cfg.executable)
            self._identity = catalogs.executable_identity(cfg.executable)
        else:
            problem = docker_problem()
            if problem:
                raise ConnectorError(
                    f"`image:` runs the connector with Docker, and {problem}",
                    source=self.name,
                    key="image",
                    hint="use `package:` (a PyPI connector) or `executable:` instead",
                )
            connector = Connector(self.name, image=cfg.image)
            self._identity = catalogs.image_identity(cfg.image or "")
        if spec is None:
            spec = spec_of(connector)
        self._scrub = Scrubber.for_config(cfg.config, spec)
        _validate(self.name, cfg.config, spec, self._scrub)
        return connector

    def _configured(self, raw: dict[str, Any], stream: ConfiguredStream) -> dict[str, Any]:
        """The stream's entry of Airbyte's configured catalog."""
        entry: dict[str, Any] = {
            "stream": raw,
            "sync_mode": "incremental" if stream.incremental else "full_refresh",
            "destination_sync_mode": _DESTINATION[stream.sync_mode],
            "primary_key": [[k] for k in (stream.primary_key or stream.spec.primary_key)],
        }
        cursor = stream.cursor or stream.spec.cursor
        if stream.incremental and cursor is None and not raw.get("source_defined_cursor"):
            raise ConnectorError(
                "an incremental read needs a cursor, and the connector defines none",
                source=self.name,
                stream=stream.name,
                key="cursor",
                hint=f"set `cursor:` under `streams: {stream.name}:` in stack.yml",
            )
        entry["cursor_field"] = [cursor] if cursor else list(raw.get("default_cursor_field") or [])
        return entry


@dataclass(frozen=True)
class _CachedCatalog(Catalog):
    """A catalog from the cache: asked for a stream it lacks (one the connector may have
    gained since it was cached), it has the connector discover once for real before the
    stream is an error."""

    rediscover: Callable[[], Catalog] = field(kw_only=True, compare=False, repr=False)

    def stream(self, name: str) -> StreamSpec:
        if name in self.names:
            return super().stream(name)
        return self.rediscover().stream(name)


def _validate(
    source: str, config: dict[str, Any], spec: Mapping[str, Any], scrub: Scrubber
) -> None:
    """The connector's config against its spec: the first error, naming its key."""
    try:
        validator_cls = jsonschema.validators.validator_for(spec, jsonschema.Draft7Validator)
        errors = sorted(validator_cls(spec).iter_errors(config), key=lambda e: list(e.path))
    except jsonschema.SchemaError:
        log.warning("%s: the connector's spec is not a valid JSON Schema; not checked", source)
        return
    if not errors:
        return
    error = errors[0]
    path = [str(p) for p in error.path]
    if error.validator == "required":
        missing = next((str(p) for p in error.validator_value if p not in error.instance), None)
        path += [missing] if missing else []
    key = ".".join(["config", *path])
    raise ConnectorError(
        f"invalid connector config: {scrub(error.message)}",
        source=source,
        key=key,
        hint=f"fix `{key}` under the source's `config:`; the connector's spec says what it takes",
    )


def _stream_spec(raw: dict[str, Any]) -> StreamSpec:
    """An AirbyteStream (from discover) as a StreamSpec."""
    json_schema = raw.get("json_schema") or {}
    schema = record_schema(json_schema)
    names = set(schema.names)
    key_paths = raw.get("source_defined_primary_key") or []
    flat = all(isinstance(p, list) and len(p) == 1 for p in key_paths)
    primary_key = tuple(p[0] for p in key_paths) if flat else ()
    if not set(primary_key) <= names:
        primary_key = ()
    default_cursor = raw.get("default_cursor_field") or []
    cursor = default_cursor[0] if len(default_cursor) == 1 and default_cursor[0] in names else None
    supported = raw.get("supported_sync_modes") or ["full_refresh"]
    modes = (FULL_REFRESH_MODES if "full_refresh" in supported else ()) + (
        INCREMENTAL_MODES if "incremental" in supported else ()
    )
    return StreamSpec(
        name=raw["name"],
        schema=schema,
        primary_key=primary_key,
        cursor=cursor,
        sync_modes=modes or FULL_REFRESH_MODES,
        emits_deletes=CDC_DELETED_AT in names and bool(primary_key),
    )
