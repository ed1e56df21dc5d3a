"""The orchestration sections of ``stack.yml``: ``deployments:``, ``alerts:``, ``backfill:``.

Models only (pydantic, frozen, unknown keys refused). What they drive lives in
:mod:`stack.run.deployments`, :mod:`stack.run.alerts` and :mod:`stack.run.backfill`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.config import ConfigProblem

DEFAULT_POOL_TYPE = "process"

Outcome = Literal["failure", "success"]
Grain = Literal["day", "week", "month"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileTrigger(_Model):
    """Run when a file lands in a folder (watched by ``mdstack sensor``)."""

    path: str
    """The folder, relative to ``stack.yml``; may use ``{{ region }}`` and region vars."""
    pattern: str = "*"
    """Glob of the file names that count (``*.csv``)."""


class DeploymentSpec(_Model):
    """One entry of ``deployments:``: what to run, for which regions, when."""

    per: Literal["region", "source"] = "region"
    """``region``: one deployment per region; ``source``: one per region and source."""
    sources: tuple[str, ...] | None = None
    """Sources the runs sync (default: all)."""
    regions: tuple[str, ...] | None = None
    """Regions to deploy for (default: all)."""
    schedule: str | None = None
    """Cron (5 fields); default: the region's ``schedule``; none: runs only on demand."""
    timezone: str | None = None
    """Time zone of the cron; default: the region's ``timezone``."""
    target: str | None = None
    work_pool: str = "default"
    work_pool_type: str = DEFAULT_POOL_TYPE
    work_queue: str | None = None
    project_dir: str | None = None
    """The project folder (the one holding ``stack.yml``) as the pool's workers see it,
    e.g. ``/mdstack``; default: ``mdstack deploy --project-dir``, else the worker's
    ``MDSTACK_PROJECT_DIR``. Absolute: a worker runs each flow in a folder of its own."""
    concurrency: int = Field(default=1, ge=1)
    """Runs of one deployment at a time; later runs wait (``ENQUEUE``)."""
    tags: tuple[str, ...] = ()
    paused: bool = False
    after: tuple[str, ...] = ()
    """Run when these finished: keys of this section (same region) or ``flow/deployment``."""
    on_file: FileTrigger | None = None
    description: str | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            check_cron(value)
        return value

    @field_validator("project_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None:
            check_project_dir(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            check_timezone(value)
        return value


def default_deployments() -> dict[str, DeploymentSpec]:
    """With no ``deployments:`` section: one deployment per region, named ``pipeline``."""
    return {"pipeline": DeploymentSpec()}


def check_project_dir(folder: str) -> str:
    """An absolute folder (POSIX or Windows), or a :class:`ConfigProblem`: a relative one
    would be taken relative to the temporary folder a worker runs each flow in."""
    if not (PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).is_absolute()):
        raise ConfigProblem(
            f"project_dir {folder!r} is not absolute",
            hint="name the project folder as the workers see it, e.g. /mdstack",
        )
    return folder


def check_cron(expression: str) -> str:
    """A five-field cron expression, parsed as Prefect's scheduler parses it, or a
    :class:`ConfigProblem` saying what is wrong (``99 99 * * *``: a bad minute)."""
    fields = expression.split()
    problem = f"{len(fields)} fields, not 5" if len(fields) != 5 else None
    if problem is None:
        try:
            CronSim(expression, datetime(2000, 1, 1))
        except CronSimError as exc:
            problem = str(exc).lower()
    if problem:
        raise ConfigProblem(
            f"{expression!r} is not a cron schedule ({problem})",
            hint="five fields: minute hour day-of-month month day-of-week, "
            "e.g. '0 6 * * *' (06:00 every day) or '*/15 * * * 1-5'",
        )
    return expression


def check_timezone(name: str) -> str:
    """An IANA time zone name, or a :class:`ConfigProblem`."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigProblem(
            f"unknown time zone {name!r}", hint="use an IANA name such as Europe/Berlin or UTC"
        ) from None
    return name


# -- alerts: ---------------------------------------------------------------------------------


def _one_or_many(value: Any) -> Any:
    """A lone string where a list is expected, as a one-item tuple (``on: failure``)."""
    return (value,) if isinstance(value, str) else value


class _Alert(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    on: tuple[Outcome, ...] = ("failure",)
    """Outcomes that send this alert."""

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted ``on:`` key as ``True``: take it back."""
        if isinstance(data, Mapping) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    _one_or_many = field_validator("on", mode="before")(_one_or_many)


class SlackAlert(_Alert):
    """A Slack incoming webhook (``https://hooks.slack.com/services/...``)."""

    type: Literal["slack"]
    webhook: str


class EmailAlert(_Alert):
    """E-mail through SMTP. ``smtp`` is a URL: ``smtp[s]://user:password@host:port``."""

    type: Literal["email"]
    to: tuple[str, ...]
    smtp: str
    sender: str = Field(default="mdstack@localhost", alias="from")
    starttls: bool = False
    """Upgrade a plain ``smtp://`` connection with STARTTLS (``smtps://`` is TLS at once)."""

    _recipients = field_validator("to", mode="before")(_one_or_many)


class WebhookAlert(_Alert):
    """Any HTTP endpoint: the report is POSTed as JSON."""

    type: Literal["webhook"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)


Alert = Annotated[SlackAlert | EmailAlert | WebhookAlert, Field(discriminator="type")]


# -- backfill: -------------------------------------------------------------------------------


class BackfillConfig(_Model):
    """The ``backfill:`` section of ``stack.yml``."""

    grain: Grain = "day"
    """Size of a partition: a calendar day, a week (from Monday) or a month."""
    parallelism: int = Field(default=1, ge=1)
    """Partitions run at once (warehouses with a single writer, DuckDB, run one)."""
    partition_by: dict[str, str] = Field(default_factory=dict)
    """``source.stream`` -> the column partitions are cut on (default: the stream's cursor)."""
