"""Load and validate ``stack.yml``: one declarative file for the whole pipeline.

Validation runs in one pass and reports every problem it finds, each naming the file,
the line, the key path and a fix: keys written twice (:mod:`stack.config.locate`), the
schema (pydantic, :mod:`stack.config.explain`), then what connects the sections and
what lies outside the file (:mod:`stack.config.validate`). One problem raises a
:class:`~stack.errors.ConfigError`, several a :class:`~stack.errors.ConfigProblems`.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from stack.config.explain import explain, without_refused
from stack.config.locate import duplicate_keys
from stack.config.model import DEFAULT_CONFIG, StackConfig
from stack.config.validate import problems
from stack.errors import ConfigError, ConfigProblems

CONFIG_ENV = "MDSTACK_CONFIG"


def config_path(path: str | Path | None = None) -> Path:
    """``--config``, else ``$MDSTACK_CONFIG``, else ``./stack.yml``."""
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: str | Path | None = None) -> StackConfig:
    """Read and validate a ``stack.yml``.

    Raises:
        ConfigError: the file is missing or is not YAML, or one problem was found;
            the message names file:line, the key and a fix.
        ConfigProblems: several problems were found; each is reported the same way.
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
    found = duplicate_keys(node, str(file))
    try:
        config = StackConfig.model_validate({**data, "path": file.resolve()})
    except ValidationError as exc:
        found += explain(exc, StackConfig, file, node, data)
        rest, refused = without_refused(exc, data)
        try:
            config = StackConfig.model_validate({**rest, "path": file.resolve()})
        except ValidationError:
            _raise(found)
        found += [
            problem
            for problem in problems(config, str(file), node)
            if not any(f"{problem.key}.".startswith(f"{section}.") for section in refused)
        ]
        _raise(found)
        raise  # unreachable: explain() reports at least one problem
    _raise([*found, *problems(config, str(file), node)])
    return config


def _raise(found: list[ConfigError]) -> None:
    """Raise what was found, in the order of the file's lines."""
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigProblems(sorted(found, key=lambda problem: problem.line or 0))
