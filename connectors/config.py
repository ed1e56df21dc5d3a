"""What every source's config shares: a pydantic base model and one translation of its errors.

A source describes its ``config:`` once, as a :class:`SourceConfig` subclass; the JSON Schema
``spec()`` shows is derived from it. :func:`parse_config` validates the plain mapping from
``stack.yml`` (secrets already resolved) and turns pydantic's ``ValidationError`` into ONE
:class:`~connectors.errors.ConnectorError` whose ``key`` is the path of the first bad entry,
relative to the source's ``config:`` (``streams.spend.cursor_param``), and whose hint says how
to fix it. Errors never quote the value that was given (it may be a secret).

A validator that sees more than one field raises :class:`ConfigProblem` to name the key it
blames and the fix.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from connectors.errors import ConnectorError

ConfigT = TypeVar("ConfigT", bound="SourceConfig")


class SourceConfig(BaseModel):
    """Base of every source's config model: unknown keys are refused, values are frozen.

    Set ``model_config["title"]`` to the name errors use (``"PostgreSQL"``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConfigProblem(ValueError):
    """Raised by a config model's validator: what is wrong, which key (relative to the model
    the validator belongs to) and how to fix it."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.hint = hint


def parse_config(model: type[ConfigT], source: str, config: Mapping[str, Any]) -> ConfigT:
    """Validate ``config`` against ``model``.

    Raises:
        ConnectorError: the config does not validate; ``key`` is the path of the first bad
            entry, the message says what is wrong and the hint how to fix it.
    """
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        raise config_error(model, source, exc) from None


def config_error(model: type[SourceConfig], source: str, exc: ValidationError) -> ConnectorError:
    """The one ConnectorError that reports ``exc``: its first problem, and how many more."""
    errors = exc.errors(include_url=False, include_input=False)
    first = _problem(model, source, errors[0])
    count = len(errors)
    more = f" (and {count - 1} more problem{'s' * (count > 2)})" if count > 1 else ""
    title = model.model_config.get("title") or model.__name__
    where = f"{first.key}: " if first.key else ""
    return ConnectorError(
        f"invalid {title} config: {where}{first.message}{more}",
        source=source,
        key=first.key,
        hint=first.hint,
    )


def config_problems(
    model: type[SourceConfig],
    source: str,
    config: Mapping[str, Any],
    unknowable: Callable[[Any], bool] = lambda value: False,
) -> list[ConnectorError]:
    """Every problem of ``config``, one ConnectorError each (empty when it validates): the
    message says what is wrong, ``key`` where (relative to the source's ``config:``).

    ``unknowable`` marks values that cannot be judged yet (a secret reference, resolved only
    at run time): a problem with such a value is left out rather than reported wrongly.
    """
    try:
        model.model_validate(dict(config))
    except ValidationError as exc:
        return [
            _problem(model, source, error)
            for error in exc.errors(include_url=False)
            if not unknowable(error.get("input"))
        ]
    return []


def _problem(model: type[SourceConfig], source: str, error: ErrorDetails) -> ConnectorError:
    """One of pydantic's errors as a ConnectorError: the key the user wrote, what is wrong,
    how to fix it, and never the value (it may be a secret)."""
    problem = error.get("ctx", {}).get("error")
    path, owner, at = _walk(model, [str(part) for part in error["loc"]])
    if isinstance(problem, ConfigProblem) and problem.key:
        path.append(problem.key)  # a key of the model whose validator raised
        owner = at
    return ConnectorError(
        _message(error),
        source=source,
        key=".".join(path) or None,
        hint=_hint(owner, error, path, problem),
    )


def _message(error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "missing config key"
    if error["type"] == "extra_forbidden":
        return "unknown config key"
    return error["msg"].removeprefix("Value error, ")


def _hint(
    owner: type[BaseModel] | None, error: ErrorDetails, path: list[str], problem: object
) -> str:
    """How to fix it: the validator's own hint, else where to add, remove or fix the key."""
    if isinstance(problem, ConfigProblem) and problem.hint:
        return problem.hint
    key = ".".join(path)
    where = "under the source's `config:` in stack.yml"
    if not path:
        return f"fix the source's `config:` in stack.yml: {error['msg']}"
    if error["type"] == "missing":
        return f"add `{key}:` {where}"
    if error["type"] == "extra_forbidden":
        valid = sorted(_keys(owner)) if owner else []
        listed = f"; valid keys: {valid}" if valid else ""
        return f"remove `{key}` from the source's `config:` in stack.yml{listed}"
    description = _description(owner, path[-1]) if owner else None
    return f"fix `{key}` {where}" + (f": {description}" if description else "")


def _walk(
    model: type[BaseModel], loc: Sequence[str]
) -> tuple[list[str], type[BaseModel] | None, type[BaseModel] | None]:
    """Follow ``loc`` through the models (fields, mappings' values, tagged unions).

    Returns:
        the keys as the user wrote them (without the member tags pydantic adds for tagged
        unions: ``auth.bearer.token`` is ``auth.token``), the model holding the last key,
        and the model at ``loc`` itself (None where the path leaves the models).
    """
    keys: list[str] = []
    current: Any = model
    owner: type[BaseModel] | None = model
    for part in loc:
        current = _unwrap(current)
        if _is_union(current):
            member = next((m for m in get_args(current) if _tag(m) == part), None)
            if member is not None:
                current = member
                continue
        keys.append(part)
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
            current = field.annotation if field else None
        elif get_origin(current) in (dict, Mapping):
            owner = None
            current = get_args(current)[1]
        else:
            owner, current = None, None
    current = _unwrap(current)
    at = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return keys, owner, at


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X; a union of several stays a union."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif _is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _tag(member: Any) -> str | None:
    """The ``type`` literal of a tagged union's member (``"bearer"``), if it has one."""
    if not (isinstance(member, type) and issubclass(member, BaseModel)):
        return None
    field = member.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return str(get_args(field.annotation)[0])


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _description(model: type[BaseModel], key: str) -> str | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field.description
    return None
