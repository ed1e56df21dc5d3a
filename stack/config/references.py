"""The syntax of secret references in ``stack.yml``: what each ``${kind:...}`` names.

A string value anywhere in the config may hold references:

=================================  ==============================================
``${vault:path#key}``              key ``key`` of the KV v2 secret at ``path``
                                   (relative to ``secrets.vault.kv_mount``; a
                                   leading ``<kv_mount>/`` is accepted), latest
                                   version
``${vault:path#key@3}``            the same, version 3
``${vault-db:role#username}``      dynamic database credentials leased from
``${vault-db:role#password}``      ``<database_mount>/creds/<role>``: both come
                                   from ONE lease per role per run
``${vault-db:role}``               the whole lease, a ``DbCredentials``
                                   mapping (``username``, ``password``)
``${env:NAME}``                    environment variable ``NAME`` (set, non-empty)
``${file:path}``                   a file's text, trailing newlines dropped;
                                   relative to the config's folder
``$${``                            a literal ``${``
=================================  ==============================================

A string that is exactly one reference becomes a pydantic ``SecretStr`` (or a
:class:`~.resolver.DbCredentials`); a string with references inside
(``postgresql://u:${vault:db#pw}@host/db``) is interpolated, and the whole
string is a ``SecretStr`` too, so that no repr or str of a resolved config
shows a secret. Every resolved value is registered with :mod:`stack.redact`,
so it is masked in logs and in :func:`stack.redact.redact`.
Non-string KV values (numbers, objects) resolve to their JSON text.

This module is the syntax: :func:`parse_reference`, :func:`find_references`
and :func:`iter_references` read references without resolving them.
Resolving is :class:`stack.secrets.resolver.Resolver`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel

from stack.errors import SecretError

__all__ = [
    "PATTERN",
    "Reference",
    "ReferenceKind",
    "find_references",
    "from_match",
    "iter_references",
    "join_key",
    "parse_reference",
]

ReferenceKind = Literal["vault", "vault-db", "env", "file"]
PATTERN = re.compile(
    r"\$\$\{"  # an escaped, literal "${"
    r"|\$\{(?P<kind>[a-z][a-z0-9-]*):(?P<body>(?:\{\{[^{}]*\}\}|[^{}])*)\}"
)
"""A reference, or an escaped ``$${`` (its ``kind`` group is then ``None``)."""
_BODIES: dict[ReferenceKind, re.Pattern[str]] = {
    "vault": re.compile(r"(?P<target>[^#@]+)#(?P<key>[^#@]+)(?:@(?P<version>[0-9]+))?"),
    "vault-db": re.compile(r"(?P<target>[A-Za-z0-9_.-]+)(?:#(?P<key>[^#@]+))?"),
    "env": re.compile(r"(?P<target>[A-Za-z_][A-Za-z0-9_]*)"),
    "file": re.compile(r"(?P<target>.+)"),
}
_SYNTAX: dict[ReferenceKind, str] = {
    "vault": "${vault:path#key} or ${vault:path#key@version}",
    "vault-db": "${vault-db:role#username}, ${vault-db:role#password} or ${vault-db:role}",
    "env": "${env:NAME}",
    "file": "${file:path}",
}


@dataclass(frozen=True)
class Reference:
    """One parsed ``${kind:...}`` reference. ``text`` is how it was written."""

    kind: ReferenceKind
    target: str
    key: str | None = None
    version: int | None = None
    text: str = ""


def parse_reference(text: str) -> Reference:
    """Parse a string that is exactly one reference.

    Raises:
        SecretError: not a reference, an unknown kind, or a malformed body.
    """
    match = PATTERN.fullmatch(text.strip())
    if match is None or match.group("kind") is None:
        raise SecretError(f"not a secret reference: {text!r}", hint=_hint_all())
    return from_match(match)


def find_references(text: str) -> list[Reference]:
    """Every reference in ``text``, in order (escaped ``$${`` skipped).

    Raises:
        SecretError: a reference is malformed or of an unknown kind.
    """
    return [from_match(m) for m in PATTERN.finditer(text) if m.group("kind")]


def from_match(match: re.Match[str]) -> Reference:
    """The reference a :data:`PATTERN` match holds (not an escape).

    Raises:
        SecretError: an unknown kind, a leftover template, or a malformed body.
    """
    kind, body, text = match.group("kind"), match.group("body").strip(), match.group(0)
    if not _is_kind(kind):
        raise SecretError(
            f"unknown reference kind {kind!r} in {text}",
            hint=f"{_hint_all()}; write $${{ for a literal ${{",
        )
    if "{{" in body:
        raise SecretError(
            f"{text} still holds a {{{{ template }}}}",
            hint="resolve the region's rendered config (StackConfig.source_config)",
        )
    parts = _BODIES[kind].fullmatch(body)
    if parts is None:
        raise SecretError(f"malformed reference {text}", hint=f"write {_SYNTAX[kind]}")
    groups = parts.groupdict()
    return Reference(
        kind=kind,
        target=groups["target"].strip("/") if kind == "vault" else groups["target"],
        key=groups.get("key"),
        version=int(groups["version"]) if groups.get("version") else None,
        text=text,
    )


def _is_kind(kind: str) -> TypeGuard[ReferenceKind]:
    return kind in _BODIES


def _hint_all() -> str:
    return "write one of " + ", ".join(_SYNTAX.values())


def iter_references(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(location, reference text)`` for every reference written in ``value``."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, str):
        for match in PATTERN.finditer(value):
            if match.group("kind"):
                yield where, match.group(0)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_references(item, join_key(where, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from iter_references(item, f"{where}[{index}]")


def join_key(where: str, key: Any) -> str:
    """The key path of ``key`` inside ``where`` (``sources.pg.password``)."""
    return f"{where}.{key}" if where else str(key)
