"""pydantic's validation errors as ConfigErrors a user can act on: every problem names the
file, the line, the key path and a fix, and never echoes a value that may be a secret."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from stack.config.locate import line_of
from stack.errors import ConfigError

_SECRET_SECTIONS = (("targets",), ("secrets",), ("sources",), ("bi",), ("alerts",))
"""Sections whose values may be secrets: their errors never quote what was given."""


def explain(
    exc: ValidationError,
    model: type[BaseModel],
    file: Path,
    node: yaml.Node | None,
    data: Any,
) -> list[ConfigError]:
    """One ConfigError per key pydantic refused in ``data`` (a key refused twice, by several
    members of a union, is reported once)."""
    found: dict[str, ConfigError] = {}
    for error in exc.errors():
        problem = _explain_one(error, _user_loc(error, data), model, file, node)
        found.setdefault(problem.key or "", problem)
    return list(found.values())


def _user_loc(error: ErrorDetails, data: Any) -> tuple[Any, ...]:
    """The key path as the user wrote it: without the member names pydantic adds inside a
    tagged union (``alerts.0.slack.webhook`` is ``alerts.0.webhook``), and ending at the tag
    itself when the tag is what is wrong (``targets.local.type``)."""
    loc: list[Any] = []
    for part in error["loc"]:
        at = _at(data, loc)
        if isinstance(at, dict) and part not in at and part in at.values():
            continue  # a union member's name: the value of the item's tag key
        loc.append(part)
    if error["type"] == "union_tag_invalid":
        loc.append(str(error.get("ctx", {}).get("discriminator", "type")).strip("'"))
    return tuple(loc)


def _at(data: Any, loc: list[Any]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _explain_one(
    error: ErrorDetails,
    loc: tuple[Any, ...],
    model: type[BaseModel],
    file: Path,
    node: yaml.Node | None,
) -> ConfigError:
    key = ".".join(str(part) for part in loc) or "(top level)"
    message, hint = error["msg"].removeprefix("Value error, "), None
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        message = "unknown key"
        hint = (f"did you mean `{close[0]}`? " if close else "") + (
            f"allowed here: {', '.join(allowed)}" if allowed else "remove it"
        )
    elif error["type"] == "missing":
        message = "required key is missing"
        hint = f"add `{loc[-1]}:` here"
    elif error["type"] in ("literal_error", "enum", "union_tag_invalid"):
        hint = "use one of the values listed"
    elif error["type"] == "value_error":
        problem = error.get("ctx", {}).get("error")
        hint = getattr(problem, "hint", None) or "change it as the message says"
    elif loc[:1] in _SECRET_SECTIONS:
        hint = "change it to the expected type"  # never echo: the value may be a secret
    else:
        hint = f"got {error.get('input')!r}; change it to the expected type"
    line = line_of(node, loc) or line_of(node, loc[:-1])
    return ConfigError(message, file=str(file), line=line, key=key, hint=hint)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc`` (for "did you mean")."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        field = current.model_fields.get(str(part)) or next(
            (f for f in current.model_fields.values() if f.alias == part), None
        )
        if field is None:  # a dict key (a source's or stream's name): take the value type
            continue
        current = _model_of(field.annotation)
    if current is None:
        return []
    return sorted(f.alias or name for name, f in current.model_fields.items() if name != "path")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def without_refused(exc: ValidationError, data: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """``data`` without the keys pydantic refused, so the checks that need a valid file
    can still run on the rest of it and report their problems in the same pass (a refused
    key with a default takes it; one without fails again and those checks are skipped).

    Also returns the sections (dotted key paths) that held a refused key: what the checks
    find there follows from the refusal (a default standing in for a typo), not news.
    """
    kept = copy.deepcopy(data)
    sections: set[str] = set()
    for error in exc.errors():
        loc = _user_loc(error, data)
        parent = _at(kept, list(loc[:-1]))
        if isinstance(parent, dict) and loc:
            parent.pop(loc[-1], None)
            sections.add(".".join(str(part) for part in loc[:-1]))
    return kept, sections - {""}
