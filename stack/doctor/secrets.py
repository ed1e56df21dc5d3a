"""Vault (or OpenBao), when ``secrets.vault`` is configured: reachable, unsealed, login, TTL.

The address answers ``sys/health``; the server is not sealed; the configured login works
(the same :class:`~stack.secrets.vault.VaultSession` a run uses, so the same token, AppRole
or JWT, and the same errors); the token has time left. A token or secret never appears:
only what ``auth/token/lookup-self`` says of it besides its id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hvac
import requests

from stack.config import StackConfig
from stack.config.secrets import TokenAuth, VaultConfig
from stack.doctor.check import Check, TimedOut, bounded, failed
from stack.errors import SecretError
from stack.secrets import Resolver, reveal
from stack.secrets.vault import VaultSession

AREA = "vault"
TTL_WARN_SECONDS = 3600
"""A configured token with less time left than this is worth a warning: a run may outlast it."""


def vault_checks(config: StackConfig, resolver: Resolver) -> Iterator[Check]:
    """The Vault checks in order; each one that fails ends the ones that need it."""
    settings = config.secrets.vault
    if settings is None:
        return

    def expand(value: str, where: str) -> str:
        return str(reveal(resolver.resolve(value, where)))

    try:
        url = expand(settings.url, "secrets.vault.url").strip().rstrip("/")
    except SecretError as exc:
        yield failed(AREA, "address", exc)
        return
    health = _health(url, settings)
    yield health
    if health.failed:
        return
    session = VaultSession(settings, expand)
    try:
        token = bounded(session.token_lookup, settings.timeout * 3)
    except SecretError as exc:
        yield failed(AREA, f"{settings.auth.method} login", exc)
        return
    except TimedOut as exc:
        yield Check(f"{settings.auth.method} login", "fail", str(exc), _UP, area=AREA)
        return
    finally:
        session.close()  # revokes a token it logged in with: the doctor leaves none behind
    yield Check(f"{settings.auth.method} login", "ok", _policies(token), area=AREA)
    yield _ttl(token, settings)


def _health(url: str, settings: VaultConfig) -> Check:
    """``sys/health`` with every state answered as 200, so its body says which it is."""
    client = hvac.Client(url=url, token="", verify=settings.verify, timeout=settings.timeout)
    try:
        status = client.sys.read_health_status(
            method="GET", standby_ok=True, sealed_code=200, uninit_code=200
        )
    except requests.RequestException as exc:
        kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
        return Check("reachable", "fail", f"{url} {kind} ({type(exc).__name__})", _UP, area=AREA)
    except hvac.exceptions.VaultError as exc:
        return Check("reachable", "fail", f"{url} answered sys/health with {exc}", _UP, area=AREA)
    finally:
        client.adapter.close()
    data: dict[str, Any] = status if isinstance(status, dict) else {}
    version = data.get("version", "?")
    if not data.get("initialized", True):
        return Check(
            "unsealed", "fail", f"{url} is not initialised", "bao operator init", area=AREA
        )
    if data.get("sealed"):
        return Check(
            "unsealed",
            "fail",
            f"{url} is sealed: nothing can be read until an operator unseals it",
            "bao operator unseal   # once per unseal key share, with BAO_ADDR/VAULT_ADDR set",
            area=AREA,
        )
    return Check("reachable, unsealed", "ok", f"{url} (version {version})", area=AREA)


def _policies(token: dict[str, Any]) -> str:
    policies = ", ".join(token.get("policies") or []) or "none"
    return f"policies: {policies}"


def _ttl(token: dict[str, Any], settings: VaultConfig) -> Check:
    ttl = int(token.get("ttl") or 0)
    if ttl == 0:
        return Check("token ttl", "ok", "never expires", area=AREA)
    left = f"{_duration(ttl)} left"
    if not isinstance(settings.auth, TokenAuth):
        return Check("token ttl", "ok", f"{left}; a run renews it or logs in again", area=AREA)
    renewable = bool(token.get("renewable"))
    detail = f"{left} ({'renewable' if renewable else 'not renewable'})"
    if ttl < TTL_WARN_SECONDS:
        fix = "renew it (`bao token renew`)" if renewable else "issue a new token"
        return Check(
            "token ttl",
            "warn",
            f"{detail}: a longer run will lose access",
            f"{fix}, or log in with AppRole (secrets.vault.auth.method: approle), "
            "which a run renews itself",
            area=AREA,
        )
    return Check("token ttl", "ok", detail, area=AREA)


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


_UP = "check that Vault is up and that secrets.vault.url (VAULT_ADDR) points at it"
