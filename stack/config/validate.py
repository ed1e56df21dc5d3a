"""What a valid ``stack.yml`` must also get right beyond its schema, checked in one pass.

pydantic checks each section alone; this module checks what connects them and what
lies outside the file: every name a deployment, check, alert or backfill refers to is
declared (and a ``replication_lag`` check's source has a replication slot), every
source's ``config:`` is one its connector accepts (in every region, templates filled
in), and the dbt project the file points at exists and uses the
profile the stack writes. Every problem is a :class:`~stack.errors.ConfigError` with
the file, line, key path and fix; :func:`problems` returns them all, not the first.

A value that is a secret reference (``${vault:...}``) is resolved only at run time, so
it is not judged here: ``mdstack secrets check`` and ``mdstack doctor`` resolve them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

import yaml

from connectors import source_class
from connectors.config import config_problems
from stack.config.locate import line_of
from stack.config.model import StackConfig, render, window_vars
from stack.config.references import find_references
from stack.errors import ConfigError, ConnectorError

_A_WINDOW = window_vars(date(2000, 1, 1), date(2000, 1, 2))
"""What ``{{ start }}`` and ``{{ end }}`` render to in a backfill partition (a config may
use them for backfills alone): any window will do to judge the rest of the config."""

DBT_PROFILE = "mdstack"
"""The profile name the stack writes for dbt (:mod:`stack.transform.dbt`)."""


def problems(config: StackConfig, file: str, tree: yaml.Node | None) -> list[ConfigError]:
    """Every cross-reference and source-config problem of a schema-valid ``config``, read
    from ``file`` (named in the errors as the user gave it) whose YAML tree is ``tree``."""

    def at(key: tuple[Any, ...], message: str, hint: str) -> ConfigError:
        line = line_of(tree, key)
        return ConfigError(message, file=file, line=line, key=_dotted(key), hint=hint)

    found = [
        *_target(config, at),
        *_names(config, at),
        *_sources(config, at),
        *_dbt(config, at),
    ]
    unique: dict[tuple[str | None, str], ConfigError] = {}
    for problem in found:
        unique.setdefault((problem.key, problem.message), problem)
    return list(unique.values())


def _dotted(key: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in key)


def _target(config: StackConfig, at: Any) -> Iterator[ConfigError]:
    if config.target not in config.targets:
        yield at(
            ("target",),
            f"default target {config.target!r} is not declared under `targets:`",
            f"set `target:` to one of: {', '.join(config.targets) or '(none declared)'}",
        )


def _names(config: StackConfig, at: Any) -> Iterator[ConfigError]:
    """Regions, sources and streams named by deployments, checks, alerts and backfill."""
    regions = config.region_names()
    streams = [f"{s}.{t}" for s, source in config.sources.items() for t in source.streams]
    for name, spec in config.deployments.items():
        key = ("deployments", name)
        yield from _unknown(at, (*key, "regions"), spec.regions or (), regions, "region")
        yield from _unknown(at, (*key, "sources"), spec.sources or (), config.sources, "source")
        if spec.target is not None:
            yield from _unknown(at, (*key, "target"), [spec.target], config.targets, "target")
        local = [a for a in spec.after if "/" not in a]
        yield from _unknown(at, (*key, "after"), local, config.deployments, "deployment")
    for index, check in enumerate(config.checks):
        if check.stream is not None:
            yield from _unknown(at, ("checks", index, "stream"), [check.stream], streams, "stream")
        if check.reconcile and check.reconcile.source and check.reconcile.stream:
            pair = f"{check.reconcile.source}.{check.reconcile.stream}"
            yield from _unknown(at, ("checks", index, "reconcile"), [pair], streams, "stream")
        if check.source is not None:
            yield from _lag_source(config, at, ("checks", index, "source"), check.source)
    for pair in config.backfill.partition_by:
        yield from _unknown(at, ("backfill", "partition_by", pair), [pair], streams, "stream")


def _lag_source(
    config: StackConfig, at: Any, key: tuple[Any, ...], source: str
) -> Iterator[ConfigError]:
    """The source of a ``replication_lag`` check is declared and reads through a
    replication slot, the one thing whose lag the ledger records
    (``_mds_runs.replication_lag_bytes``): PostgreSQL with ``replication:``."""
    yield from _unknown(at, key, [source], config.sources, "source")
    declared = config.sources.get(source)
    if declared is None:
        return
    if declared.connector != "postgres" or declared.config.get("replication") is None:
        yield at(
            key,
            f"source {source!r} has no replication slot to check: replication_lag applies "
            "to a PostgreSQL source with `replication:` (CDC)",
            f"add `replication: {{slot: ..., publication: ...}}` to the config of source "
            f"{source!r}, or remove the check",
        )


def _unknown(
    at: Any, key: tuple[Any, ...], used: Iterable[str], known: Iterable[str], kind: str
) -> Iterator[ConfigError]:
    declared = list(known)
    for name in used:
        if name not in declared:
            yield at(key, f"unknown {kind} {name!r}", f"use one of: {', '.join(declared)}")


def _sources(config: StackConfig, at: Any) -> Iterator[ConfigError]:
    """Each source's ``config:`` against its connector's model, in every region."""
    for name, source in config.sources.items():
        try:
            cls = source_class(source.connector, name)
        except ConnectorError as exc:
            yield at(("sources", name, "connector"), exc.message, exc.hint or "")
            continue
        model = getattr(cls, "config_model", None)
        for region in config.region_names():
            try:
                rendered = render(source.config, config.template_vars(region) | _A_WINDOW)
            except ConfigError as exc:
                yield at(("sources", name, "config"), exc.message, exc.hint or "")
                break
            if model is None:
                break
            for problem in config_problems(model, name, rendered, _is_reference):
                key = ("sources", name, "config", *(problem.key or "").split("."))
                message = f"{problem.message} (the {source.connector} connector's config)"
                yield at(tuple(k for k in key if k), message, problem.hint or "")


def _is_reference(value: object) -> bool:
    return isinstance(value, str) and bool(find_references(value))


def _dbt(config: StackConfig, at: Any) -> Iterator[ConfigError]:
    """The dbt project exists and names the profile the stack writes for it."""
    if config.dbt is None or not config.dbt.enabled:
        return
    key = ("dbt", "project_dir")
    project = config.resolve_path(config.dbt.project_dir)
    manifest = project / "dbt_project.yml"
    if not manifest.is_file():
        yield at(
            key,
            f"no dbt project at {project} (no dbt_project.yml there)",
            "point `dbt.project_dir` at the folder holding dbt_project.yml, "
            "or set `dbt: {enabled: false}` to run without dbt",
        )
        return
    try:
        declared = yaml.safe_load(manifest.read_text()) or {}
    except yaml.YAMLError as exc:
        yield at(key, f"{manifest} is not valid YAML: {exc}", "fix dbt_project.yml")
        return
    profile = declared.get("profile") if isinstance(declared, dict) else None
    if profile != DBT_PROFILE:
        yield at(
            key,
            f"{manifest} uses profile {profile!r}, but the stack writes profile {DBT_PROFILE!r}",
            f"set `profile: {DBT_PROFILE}` in dbt_project.yml (the stack writes its "
            "connection from `targets:`; no profiles.yml is needed)",
        )
