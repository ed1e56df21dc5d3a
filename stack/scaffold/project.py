"""The files of a new project, for a kind of source and a warehouse: templates filled in.

The templates are files of this package (``templates/``, read with importlib.resources, so
an installed mdstack has them). Their placeholders are ``@@name``: the files themselves are
full of ``$`` (``${env:...}`` references, JSONPath ``$.data``) and ``{{ }}`` (dbt's Jinja,
``{{ region }}``), which stay as written.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import yaml

from stack.config.loader import DEFAULT_CONFIG
from stack.config.references import iter_references, parse_reference
from stack.scaffold.starters import SourceKind, Starter, Stream, WarehouseKind, starter
from stack.sql import META_COLUMNS, REGION
from stack.transform.dbt import PROFILE_NAME

__all__ = ["Project", "project", "project_name"]

DBT_DIR = "dbt_project"
_TARGETS: dict[WarehouseKind, str] = {"duckdb": "local", "snowflake": "snowflake"}
_NOT_NAME = re.compile(r"[^a-z0-9_]+")


class _Template(string.Template):
    delimiter = "@@"


@dataclass(frozen=True)
class Project:
    """A new project: its name, its source, its files (relative path -> text), and the
    environment variables its ``${env:...}`` references need."""

    name: str
    source: Starter
    warehouse: WarehouseKind
    files: Mapping[str, str]
    env: tuple[str, ...]


def project_name(folder_name: str) -> str:
    """A pipeline name from a folder's name: lower case, ``_`` for anything else, never
    starting with a digit (it names the dbt project and the deployments too)."""
    name = _NOT_NAME.sub("_", folder_name.lower()).strip("_")
    if not name:
        return "pipeline"
    return name if not name[0].isdigit() else f"p_{name}"


def project(name: str, source: SourceKind, warehouse: WarehouseKind) -> Project:
    """The files of project ``name`` syncing a ``source`` into a ``warehouse``."""
    start = starter(source)
    first = start.streams[0].name
    values = {
        "name": name,
        "profile": PROFILE_NAME,
        "source": start.name,
        "source_kind": source,
        "schema": start.schema,
        "stream": first,
        "streams": "\n".join(f"      {s.name}: {s.settings}" for s in start.streams),
        "warehouse_kind": warehouse,
        "target": _TARGETS[warehouse],
    }
    config = _fill(
        "stack.yml",
        values,
        targets=_fill(f"targets/{warehouse}.yml", values),
        sources=_fill(f"sources/{source}.yml", values),
    )
    env = _env_names(config)
    staging = f"{DBT_DIR}/models/staging"
    files = {
        DEFAULT_CONFIG: config,
        f"{DBT_DIR}/dbt_project.yml": _fill("dbt/dbt_project.yml", values),
        f"{DBT_DIR}/models/sources.yml": _sources_yml(start, values),
        **{f"{staging}/stg_{s.name}.sql": _staging(start, s) for s in start.streams},
        f"{DBT_DIR}/macros/raw_columns.sql": _template("dbt/macros/raw_columns.sql"),
        f"{DBT_DIR}/macros/generate_schema_name.sql": _template(
            "dbt/macros/generate_schema_name.sql"
        ),
        f"{DBT_DIR}/macros/relation_in_its_database.sql": _template(
            "dbt/macros/relation_in_its_database.sql"
        ),
        ".gitignore": _template("gitignore"),
        "README.md": _readme(start, warehouse, env, values),
    }
    return Project(name, start, warehouse, files, env)


def _env_names(config: str) -> tuple[str, ...]:
    """The variables the ``${env:...}`` references of ``config`` name, in order (those in
    comments left out)."""
    found = (parse_reference(text) for _, text in iter_references(yaml.safe_load(config)))
    return tuple(dict.fromkeys(ref.target for ref in found if ref.kind == "env"))


def _sources_yml(start: Starter, values: Mapping[str, str]) -> str:
    tables = [
        _fill(
            "dbt/source_table.yml",
            values,
            stream=stream.name,
            columns="".join(_fill("dbt/key_column.yml", values, column=c) for c in stream.key),
        )
        for stream in start.streams
    ]
    return _fill("dbt/sources.yml", values, tables="\n".join(t.rstrip("\n") for t in tables))


def _staging(start: Starter, stream: Stream) -> str:
    edit = (
        "-- EDIT: select the table's own columns: init knew only its key and cursor.\n"
        if start.placeholder
        else ""
    )
    raw = [*stream.columns, *META_COLUMNS]
    return _fill(
        "dbt/staging.sql",
        {},
        stream=stream.name,
        source=start.name,
        edit=edit,
        raw_columns=_wrap([f"'{c}'" for c in raw], indent=12),
        columns=",\n    ".join(c for c in stream.columns if c != REGION),
    )


def _readme(
    start: Starter, warehouse: WarehouseKind, env: tuple[str, ...], values: Mapping[str, str]
) -> str:
    edit = (
        "the lines marked `EDIT`."
        if start.placeholder or warehouse != "duckdb"
        else "nothing, to start with: the lines marked `EDIT` are what your own pipeline changes."
    )
    if env:
        names = ", ".join(f"`{name}`" for name in env)
        secrets = (
            f"Set {names} in the environment of a run (a `.env` file you `source` is "
            "git-ignored), or use `${vault:...}` references and a `secrets: vault:` block."
        )
    else:
        secrets = "Write them as `${env:NAME}` or `${vault:path#key}`."
    return _fill("README.md", values, edit=edit, secrets=secrets)


def _wrap(items: list[str], indent: int, width: int = 88) -> str:
    """``items`` joined by ``", "``, wrapped into lines indented by ``indent`` spaces."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(item) + 2 + indent <= width:
            lines[-1] += f", {item}"
        else:
            lines.append(item)
    return (",\n" + " " * indent).join(lines)


def _fill(path: str, values: Mapping[str, str], **more: str) -> str:
    return _Template(_template(path)).substitute(values, **more)


def _template(path: str) -> str:
    return resources.files("stack.scaffold").joinpath("templates", path).read_text()
