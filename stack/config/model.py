"""The file itself: :class:`StackConfig`, its regions, dbt and publish sections, and
``{{ template }}`` rendering.

Region templating (``{{ region }}``) is applied per run (:meth:`StackConfig.source_config`,
:meth:`StackConfig.dbt_vars`), never at load time, so one loaded config serves every region.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stack.config.bi import BiHook
from stack.config.checks import CheckList
from stack.config.lineage import LineageConfig
from stack.config.orchestration import (
    Alert,
    BackfillConfig,
    DeploymentSpec,
    check_cron,
    check_timezone,
    default_deployments,
)
from stack.config.secrets import SecretsConfig
from stack.config.sources import IDENTIFIER, SourceConfig
from stack.config.targets import Target
from stack.errors import ConfigError

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
    """Cron (5 fields) of the region's deployments, in its ``timezone``; none: on demand."""
    vars: dict[str, Any] = Field(default_factory=dict)

    _zone = field_validator("timezone")(check_timezone)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)


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


def window_vars(start: date, end: date) -> dict[str, str]:
    """What ``{{ start }}`` and ``{{ end }}`` (exclusive) render to in a backfill partition."""
    return {"start": start.isoformat(), "end": end.isoformat()}


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
