"""Resolving secret references, once per run, into ``SecretStr`` values.

:class:`Resolver` does the resolving, once per run (a context manager: leases
are revoked and the login token revoked at exit, also on failure). A string
that is exactly one reference becomes a ``SecretStr`` (or a
:class:`DbCredentials`); a string with references inside is interpolated and
the whole string is a ``SecretStr``. Every resolved value is registered with
:mod:`stack.redact`. :func:`reveal` unwraps at the very edge, where a connector
needs its plain config. :func:`check_references` tries every reference of a
config and says which resolve, never showing a value. The syntax is
:mod:`stack.config.references`; Vault access itself is
:class:`stack.secrets.vault.VaultSession`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from stack.config.references import (
    PATTERN,
    Reference,
    ReferenceKind,
    from_match,
    iter_references,
    join_key,
    parse_reference,
)
from stack.config.secrets import SecretsConfig
from stack.errors import SecretError
from stack.redact import redact, register_secret
from stack.secrets.vault import VaultSession

__all__ = ["DbCredentials", "ReferenceCheck", "Resolver", "check_references", "reveal"]

log = logging.getLogger("stack.secrets")


class DbCredentials(Mapping[str, SecretStr]):
    """Database credentials leased for the run: ``creds["username"]``, ``creds.password``.

    Its repr shows the role and the lease, never a value; :func:`reveal` gives
    the plain ``{"username": ..., "password": ...}`` dict.
    """

    def __init__(self, role: str, lease_id: str, ttl: int, values: Mapping[str, Any]) -> None:
        self.role, self.lease_id, self.ttl = role, lease_id, ttl
        self._values = {k: SecretStr(_text(v)) for k, v in values.items() if v is not None}

    def __getitem__(self, key: str) -> SecretStr:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def username(self) -> SecretStr:
        return self._values["username"]

    @property
    def password(self) -> SecretStr:
        return self._values["password"]

    def __repr__(self) -> str:
        return f"DbCredentials(role={self.role!r}, lease_id={self.lease_id!r}, keys={list(self)})"

    __str__ = __repr__


class Resolver:
    """Resolves references for one run: one Vault session, one cache, one lease per role.

    Use as a context manager; :meth:`close` (also called on failure) revokes
    the run's leases and its login token. Thread-safe.

    Args:
        settings: the ``secrets:`` block; without ``vault:`` only env/file resolve.
        base_dir: folder that relative ``${file:...}`` paths start from.
        environ: where ``${env:...}`` looks (default ``os.environ``).
    """

    def __init__(
        self,
        settings: SecretsConfig | None = None,
        *,
        base_dir: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings or SecretsConfig()
        self._base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self._environ = os.environ if environ is None else environ
        self._lock = threading.RLock()
        self._kv: dict[tuple[str, int | None], dict[str, Any]] = {}
        self._files: dict[Path, str] = {}
        self._db: dict[str, DbCredentials] = {}
        self._session: VaultSession | None = None
        self._closed = False

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def leases(self) -> tuple[DbCredentials, ...]:
        """The dynamic credentials leased so far in this run."""
        return tuple(self._db.values())

    def resolve(self, value: Any, where: str = "") -> Any:
        """``value`` with every reference resolved, walking nested dicts, lists and models.

        Args:
            value: a config value (a pydantic model is dumped to a dict first).
            where: the key path of ``value`` in the config, for error messages.

        Returns:
            The same shape: a string that is one reference becomes ``SecretStr``
            (``DbCredentials`` for ``${vault-db:role}``), a string with embedded
            references becomes a ``SecretStr`` of the interpolated text,
            anything else is unchanged.

        Raises:
            SecretError: a reference cannot be resolved; names it, never a value.
        """
        if isinstance(value, str):
            return self._resolve_string(value, where)
        if isinstance(value, BaseModel):
            return self.resolve(value.model_dump(by_alias=True), where)
        if isinstance(value, Mapping):
            return {k: self.resolve(v, join_key(where, k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = (self.resolve(v, f"{where}[{i}]") for i, v in enumerate(value))
            return type(value)(items)
        return value

    def lookup(self, reference: str | Reference, where: str = "") -> SecretStr | DbCredentials:
        """Resolve one reference (``"${vault:db#password}"`` or a parsed one).

        Raises:
            SecretError: it cannot be resolved; ``key`` is ``where``.
        """
        try:
            ref = reference if isinstance(reference, Reference) else parse_reference(reference)
            with self._lock:
                if self._closed:
                    raise SecretError(f"{ref.text}: the resolver is closed")
                value = _LOOKUPS[ref.kind](self, ref)
        except SecretError as exc:
            if not where or exc.key:
                raise
            raise SecretError(
                exc.message, key=where, hint=exc.hint, retryable=exc.retryable
            ) from exc.__cause__
        log.debug("resolved %s%s", ref.text, f" at {where}" if where else "")
        return value

    def close(self) -> None:
        """Revoke the run's leases and login token. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session, self._session = self._session, None
            self._kv.clear()
            self._files.clear()
        if session is not None:
            session.close()

    # -- one function per kind -------------------------------------------------

    def _resolve_string(self, text: str, where: str) -> Any:
        matches = list(PATTERN.finditer(text))
        if not any(match.group("kind") for match in matches):
            return text.replace("$${", "${")
        if len(matches) == 1 and matches[0].group("kind") and matches[0].span() == (0, len(text)):
            return self.lookup(from_match(matches[0]), where)

        def interpolate(match: re.Match[str]) -> str:
            if match.group("kind") is None:
                return "${"
            value = self.lookup(from_match(match), where)
            if isinstance(value, DbCredentials):
                raise SecretError(
                    f"{match.group(0)} is a whole lease and cannot sit inside a longer string",
                    key=where or None,
                    hint="add #username or #password",
                )
            return value.get_secret_value()

        return SecretStr(PATTERN.sub(interpolate, text))  # its parts are registered

    def _env(self, ref: Reference) -> SecretStr:
        return _secret(self._env_text(ref))

    def _file(self, ref: Reference) -> SecretStr:
        return _secret(self._file_text(ref))

    def _env_text(self, ref: Reference) -> str:
        value = self._environ.get(ref.target)
        if not value:
            state = "is empty" if value == "" else "is not set"
            raise SecretError(
                f"{ref.text}: environment variable {ref.target} {state}",
                hint=f"export {ref.target}=... before the run, or change the reference",
            )
        return value

    def _file_text(self, ref: Reference) -> str:
        path = Path(ref.target).expanduser()
        path = path if path.is_absolute() else self._base_dir / path
        if path not in self._files:
            try:
                self._files[path] = path.read_text().rstrip("\r\n")
            except FileNotFoundError:
                raise SecretError(
                    f"{ref.text}: file {path} does not exist",
                    hint="create it, or fix the path (relative paths start at the config's folder)",
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretError(
                    f"{ref.text}: cannot read {path} ({type(exc).__name__})",
                    hint="make it a UTF-8 text file readable by the pipeline's user",
                ) from None
        return self._files[path]

    def _vault(self, ref: Reference) -> SecretStr:
        session = self._vault_session(ref)
        mount = session.settings.kv_mount
        path = ref.target.removeprefix(f"{mount}/")
        cache_key = (path, ref.version)
        if cache_key not in self._kv:
            self._kv[cache_key] = session.read_kv(path, ref.version, ref.text)
            for value in self._kv[cache_key].values():
                register_secret(_text(value))
        data = self._kv[cache_key]
        if ref.key not in data:
            raise SecretError(
                f"{ref.text}: {mount}/data/{path} has no key {ref.key!r} "
                f"(keys: {', '.join(sorted(data)) or 'none'})",
                hint=f"fix #{ref.key}, or add it (`bao kv patch -mount={mount} {path} "
                f"{ref.key}=...`)",
            )
        return _secret(_text(data[ref.key]))

    def _vault_db(self, ref: Reference) -> SecretStr | DbCredentials:
        if ref.target not in self._db:
            lease = self._vault_session(ref).lease_credentials(ref.target, ref.text)
            creds = DbCredentials(lease.role, lease.lease_id, lease.ttl, lease.data)
            for value in creds.values():
                register_secret(value.get_secret_value())
            self._db[ref.target] = creds
        creds = self._db[ref.target]
        if ref.key is None:
            return creds
        if ref.key not in creds:
            raise SecretError(
                f"{ref.text}: the lease for role {ref.target!r} has no {ref.key!r} "
                f"(it has: {', '.join(creds)})",
                hint="use #username or #password",
            )
        return creds[ref.key]

    def _vault_session(self, ref: Reference) -> VaultSession:
        if self._session is None:
            if self.settings.vault is None:
                raise SecretError(
                    f"{ref.text} needs Vault, but stack.yml has no `secrets.vault` block",
                    hint="add secrets: {vault: {url: ${env:VAULT_ADDR}, auth: {method: approle}}}",
                )
            self._session = VaultSession(self.settings.vault, self._expand)
        return self._session

    def _expand(self, value: str, where: str) -> str:
        """A login field with its env/file references filled in, as plain text.

        Takes no lock: the session calls it while holding its own (at login,
        maybe from the renewal thread). Registers nothing: the session
        registers the login secrets, and Vault's address is no secret.
        """

        def fill(match: re.Match[str]) -> str:
            if match.group("kind") is None:
                return "${"
            ref = from_match(match)
            if ref.kind == "env":
                return self._env_text(ref)
            if ref.kind == "file":
                return self._file_text(ref)
            raise SecretError(f"{ref.text}: only ${{env:...}} and ${{file:...}} work here")

        try:
            return PATTERN.sub(fill, value)
        except SecretError as exc:
            raise SecretError(exc.message, key=where, hint=exc.hint) from None


_LOOKUPS: dict[ReferenceKind, Callable[[Resolver, Reference], SecretStr | DbCredentials]] = {
    "vault": Resolver._vault,
    "vault-db": Resolver._vault_db,
    "env": Resolver._env,
    "file": Resolver._file,
}


def reveal(value: Any) -> Any:
    """Unwrap ``SecretStr`` and ``DbCredentials`` recursively: for the connector's edge only.

    Returns:
        The same shape with plain strings (a lease becomes a plain dict).
    """
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(reveal(v) for v in value)
    return value


@dataclass(frozen=True)
class ReferenceCheck:
    """Whether one reference resolves. ``error`` is the masked error text, never a value."""

    location: str
    reference: str
    ok: bool
    error: str | None = None
    retryable: bool = False


def check_references(
    config: Mapping[str, Any] | BaseModel, resolver_factory: Callable[[], Resolver]
) -> list[ReferenceCheck]:
    """Try every reference in ``config`` with one resolver; report each, never a value.

    Dynamic credentials are really leased (that is the check) and revoked when
    the resolver closes, before this returns.

    Args:
        config: a whole config (``StackConfig`` or its dict), or any part of it.
        resolver_factory: makes the resolver, e.g.
            ``lambda: Resolver(cfg.secrets, base_dir=cfg.root)``.

    Returns:
        One :class:`ReferenceCheck` per reference occurrence, in config order.
    """
    checks = []
    with resolver_factory() as resolver:
        for location, text in iter_references(config):
            try:
                resolver.lookup(text, location)
            except SecretError as exc:
                checks.append(
                    ReferenceCheck(location, text, False, redact(str(exc)), exc.retryable)
                )
            else:
                checks.append(ReferenceCheck(location, text, True))
    return checks


def _secret(value: str) -> SecretStr:
    register_secret(value)
    return SecretStr(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
