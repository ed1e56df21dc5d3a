"""Load and validate ``stack.yml``: one declarative file for the whole pipeline.

:class:`StackConfig` is the file; its sections are the models of the other
modules of :mod:`stack.config`. Validation is pydantic's; what this module adds
is the error a user can act on: every problem names the file, the line, the key
path and a fix, in one paragraph, instead of a traceback. Region templating
(``{{ region }}``) is applied per run (:meth:`StackConfig.source_config`,
:meth:`StackConfig.dbt_vars`), never at load time, so one loaded config serves
every region.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from stack.config.bi import BI_TYPES, BiHook
from stack.config.checks import CheckList
from stack.config.lineage import LineageConfig
from stack.config.orchestration import (
    Alert,
    BackfillConfig,
    DeploymentSpec,
    default_deployments,
)
from stack.config.secrets import SecretsConfig
from stack.config.sources import IDENTIFIER, SourceConfig
from stack.config.targets import TARGET_TYPES, Target
from stack.errors import ConfigError

CONFIG_ENV = "MDSTACK_CONFIG"
DEFAULT_CONFIG = "stack.yml"
DEFAULT_REGION = "default"
"""The region of a pipeline that declares none."""

_TEMPLATE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    name: str = Field(pattern=IDENTIFIER)
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
            raise self._unknown("target", chosen, "target", self.targets)
        return self.targets[chosen]

    def region_names(self) -> list[str]:
        return list(self.regions) or [DEFAULT_REGION]

    def check_region(self, region: str) -> str:
        if region not in self.region_names():
            raise self._unknown(
                "region", region, "regions", self.region_names(), ", or declare it in `regions:`"
            )
        return region

    def source(self, name: str) -> SourceConfig:
        if name not in self.sources:
            raise self._unknown("source", name, "sources", self.sources)
        return self.sources[name]

    def _unknown(
        self, kind: str, name: str, key: str, known: Iterable[str], more: str = ""
    ) -> ConfigError:
        """The error for a name that is not among the file's ``known`` ones."""
        return ConfigError(
            f"unknown {kind} {name!r}",
            file=str(self.path),
            key=key,
            hint=f"use one of: {', '.join(known)}{more}",
        )

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
