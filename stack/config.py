"""Load and validate ``stack.yml``: one declarative file for the whole pipeline.

Validation is pydantic's; what this module adds is the error a user can act
on: every problem names the file, the line, the key path and a fix, in one
paragraph, instead of a traceback. Region templating (``{{ region }}``) is
applied per run by :meth:`StackConfig.for_region`, never at load time, so one
loaded config serves every region.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from connectors.base import SyncMode
from stack.bi.configuration import BI_TYPES, BiHook
from stack.checks import CheckList
from stack.durations import Duration
from stack.errors import ConfigError
from stack.lineage import LineageConfig
from stack.orchestration import Alert, BackfillConfig, DeploymentSpec, default_deployments
from stack.schema import SchemaPolicy
from stack.secrets import SecretsConfig

CONFIG_ENV = "MDSTACK_CONFIG"
DEFAULT_CONFIG = "stack.yml"
DEFAULT_REGION = "default"
"""The region of a pipeline that declares none."""

DeleteMode = Literal["hard", "soft", "none"]
BadRecordPolicy = Literal["fail", "quarantine"]
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TEMPLATE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DuckDBTarget(_Model):
    """DuckDB on DuckLake: a catalog plus a folder of Parquet files, no server."""

    type: Literal["duckdb"]
    path: Path = Path("warehouse")
    threads: int = Field(default=4, ge=1)
    memory_limit: str = "1GB"
    """DuckDB's memory limit; staged data beyond it spills to ``<path>/.tmp``."""
    busy_timeout: float = Field(default=600.0, gt=0)
    """Seconds to wait for another process (e.g. another region's run) to let go of the
    warehouse before failing as busy (retryable): one process writes a DuckDB file at a
    time, so concurrent runs take turns rather than fail."""


class SnowflakeTarget(_Model):
    """Snowflake through snowflake-connector-python. Credentials should be references
    (``${vault:...}``, ``${env:...}``), resolved at run time, never written here."""

    type: Literal["snowflake"]
    account: str
    user: str
    password: str | None = None
    private_key: str | None = None
    """PEM text of the key-pair private key (usually a ``${vault:...}`` reference)."""
    private_key_passphrase: str | None = None
    authenticator: str | None = None
    """``externalbrowser``, ``oauth`` (with ``token``), ``snowflake_jwt``…; default: password."""
    token: str | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str
    schema_: str = Field(default="PUBLIC", alias="schema")
    threads: int = Field(default=4, ge=1)
    host: str | None = None
    """Connect here instead of ``<account>.snowflakecomputing.com`` (a proxy, or fakesnow)."""
    port: int | None = None
    protocol: Literal["https", "http"] | None = None
    fakesnow: bool = False
    """The target is a fakesnow server (local development): turns on the adapter's
    workarounds for what fakesnow cannot run (README, "The warehouse: Snowflake")."""


Target = Annotated[DuckDBTarget | SnowflakeTarget, Field(discriminator="type")]
TARGET_TYPES = ("duckdb", "snowflake")


class StreamConfig(_Model):
    """How one stream is synced. Keys and cursor default to what the source declares."""

    sync: SyncMode = "incremental_deduped"
    primary_key: tuple[str, ...] | None = None
    cursor: str | None = None
    deletes: DeleteMode = "hard"
    delete_detection: Literal["snapshot"] | None = None
    delete_window: Duration | None = None
    columns: tuple[str, ...] | None = None
    schema_policy: SchemaPolicy | None = None
    on_bad_record: BadRecordPolicy = "fail"


class SourceConfig(_Model):
    """A source: which connector, its config, the schema it lands in, its streams."""

    connector: str
    config: dict[str, Any] = Field(default_factory=dict)
    schema_: str = Field(alias="schema", pattern=_IDENTIFIER)
    schema_policy: SchemaPolicy = "evolve"
    streams: dict[str, StreamConfig]
    concurrency: int = Field(default=1, ge=1)
    """Streams of this source synced at once (one by default: an API's rate limit or a
    database's connections are the source's to give; raise it where they allow more)."""

    @field_validator("streams")
    @classmethod
    def _some_streams(cls, streams: dict[str, StreamConfig]) -> dict[str, StreamConfig]:
        if not streams:
            raise ValueError("a source needs at least one stream")
        return streams


class RegionConfig(_Model):
    """A region: one run per region, with its own state and rows."""

    timezone: str = "UTC"
    schedule: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)


class DbtConfig(_Model):
    """Where the dbt project is and what vars it gets (templated per region)."""

    project_dir: Path = Path("dbt_project")
    vars: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class PublishConfig(_Model):
    """Write-audit-publish: build and test in a clone, publish atomically when green."""

    audit: bool = False


class StackConfig(_Model):
    """The whole of ``stack.yml``."""

    name: str = Field(pattern=_IDENTIFIER)
    target: str
    targets: dict[str, Target]
    regions: dict[str, RegionConfig] = Field(default_factory=dict)
    sources: dict[str, SourceConfig]
    dbt: DbtConfig | None = None
    publish: PublishConfig = Field(default_factory=PublishConfig)
    bi: list[BiHook] = Field(default_factory=list)
    checks: CheckList = ()
    lineage: LineageConfig | None = None
    deployments: dict[str, DeploymentSpec] = Field(default_factory=default_deployments)
    alerts: list[Alert] = Field(default_factory=list)
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)
    max_parallel_streams: int = Field(default=4, ge=1)
    """Streams of a run synced at once, all sources together (each within its own
    ``concurrency``)."""
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    path: Path = Field(default=Path(DEFAULT_CONFIG), exclude=True)

    @property
    def root(self) -> Path:
        """Directory that relative paths in the file are relative to."""
        return self.path.parent

    def resolve_path(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.root / path).resolve()

    def active_target(self, name: str | None = None) -> Target:
        """The target chosen with ``--target`` (or the file's default)."""
        chosen = name or self.target
        if chosen not in self.targets:
            raise ConfigError(
                f"unknown target {chosen!r}",
                file=str(self.path),
                key="target",
                hint=f"use one of: {', '.join(self.targets)}",
            )
        return self.targets[chosen]

    def region_names(self) -> list[str]:
        return list(self.regions) or [DEFAULT_REGION]

    def check_region(self, region: str) -> str:
        if region not in self.region_names():
            raise ConfigError(
                f"unknown region {region!r}",
                file=str(self.path),
                key="regions",
                hint=f"use one of: {', '.join(self.region_names())}, or declare it in `regions:`",
            )
        return region

    def source(self, name: str) -> SourceConfig:
        if name not in self.sources:
            raise ConfigError(
                f"unknown source {name!r}",
                file=str(self.path),
                key="sources",
                hint=f"use one of: {', '.join(self.sources)}",
            )
        return self.sources[name]

    def template_vars(self, region: str) -> dict[str, Any]:
        """Values ``{{ name }}`` may refer to in a region's run."""
        declared = self.regions.get(region)
        return {"region": region, "pipeline": self.name, **(declared.vars if declared else {})}

    def dbt_vars(self, region: str) -> dict[str, Any]:
        """dbt vars for a region's run: ``region`` plus the declared ``dbt.vars``, rendered."""
        declared = self.dbt.vars if self.dbt else {}
        return {"region": region, **render(declared, self.template_vars(region))}

    def source_config(self, name: str, region: str) -> dict[str, Any]:
        """The source's ``config:`` with ``{{ region }}`` and region vars filled in."""
        return render(self.source(name).config, self.template_vars(region))


def render(value: Any, variables: Mapping[str, Any]) -> Any:
    """Fill ``{{ name }}`` placeholders in strings nested anywhere in ``value``.

    A string that is exactly one placeholder takes the variable's own type
    (``"{{ rows }}"`` with ``rows: 5`` gives ``5``).

    Raises:
        ConfigError: a placeholder names no known variable.
    """
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole:
            return _lookup(whole.group(1), variables)
        return _TEMPLATE.sub(lambda m: str(_lookup(m.group(1), variables)), value)
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    return value


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    if name not in variables:
        raise ConfigError(
            f"unknown template variable {{{{ {name} }}}}",
            hint=f"use one of: {', '.join(sorted(variables))}, or add it to the region's `vars:`",
        )
    return variables[name]


def config_path(path: str | Path | None = None) -> Path:
    """``--config``, else ``$MDSTACK_CONFIG``, else ``./stack.yml``."""
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: str | Path | None = None) -> StackConfig:
    """Read and validate a ``stack.yml``.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate;
            the message names file:line, the key and a fix.
    """
    file = config_path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(
            "config file not found",
            file=str(file),
            hint="run from the project folder, or pass --config PATH (or set MDSTACK_CONFIG)",
        ) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}",
            file=str(file),
            line=mark.line + 1 if mark else None,
            hint="check indentation and quoting; inside {...} a ${...} reference must be quoted",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            "expected a mapping at the top level",
            file=str(file),
            line=1,
            hint="start the file with `name:`, `target:`, `targets:`, `sources:`",
        )
    try:
        config = StackConfig.model_validate({**data, "path": file.resolve()})
    except ValidationError as exc:
        raise _explain(exc, file, node) from None
    _check_references(config, file, node)
    return config


def _check_references(config: StackConfig, file: Path, node: yaml.Node | None) -> None:
    if config.target not in config.targets:
        raise ConfigError(
            f"default target {config.target!r} is not declared under `targets:`",
            file=str(file),
            line=_line(node, ("target",)),
            key="target",
            hint=f"set `target:` to one of: {', '.join(config.targets) or '(none declared)'}",
        )


def _explain(exc: ValidationError, file: Path, node: yaml.Node | None) -> ConfigError:
    """Turn pydantic's first error into one actionable paragraph."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    if loc[:1] == ("targets",) and len(loc) > 2 and loc[2] in TARGET_TYPES:
        loc = loc[:2] + loc[3:]  # drop the union's tag: targets.<name>.<type>.<key>
    if loc[:1] == ("bi",) and len(loc) > 2 and loc[2] in BI_TYPES:
        loc = loc[:2] + loc[3:]
    key = ".".join(str(part) for part in loc) or "(top level)"
    message, hint = error["msg"], None
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        message = "unknown key"
        hint = (f"did you mean `{close[0]}`? " if close else "") + (
            f"allowed here: {', '.join(allowed)}" if allowed else "remove it"
        )
    elif error["type"] == "missing":
        message = "required key is missing"
        hint = f"add `{loc[-1]}:` here"
    elif error["type"] in ("literal_error", "enum"):
        hint = "use one of the values listed"
    elif loc[:1] in (("targets",), ("secrets",), ("sources",), ("bi",), ("alerts",)):
        hint = "change it to the expected type"  # never echo: the value may be a secret
    else:
        hint = f"got {error.get('input')!r}; change it to the expected type"
    line = _line(node, loc) or _line(node, loc[:-1])
    return ConfigError(message, file=str(file), line=line, key=key, hint=hint)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = StackConfig
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:  # a dict key (a source's or stream's name): take the value type
            continue
        model = _model_of(field.annotation)
    if model is None:
        return []
    return sorted(f.alias or name for name, f in model.model_fields.items() if name != "path")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the key (or item) at ``loc`` in the composed YAML tree."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
