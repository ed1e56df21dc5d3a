"""One authenticated Vault (or OpenBao) session per run, through hvac.

Provides :class:`VaultSession`, which :class:`stack.secrets.Resolver` drives
(its settings, ``secrets.vault``, are :class:`stack.config.secrets.VaultConfig`):
it logs in (token, AppRole, Kubernetes, JWT), reads KV v2 secrets
(any version), leases dynamic database credentials, keeps the token and the
leases alive while the run lasts, and at close revokes the leases and the
token it logged in with.

Renewal: a background thread renews anything renewable once half of its
granted TTL has passed (and :meth:`VaultSession.renew_due` also runs before
each call, as a backstop). When Vault stops extending something (its max TTL
is reached), a token obtained by login is replaced by logging in again; a
configured token or a lease is left to expire, with one warning.

hvac's errors (and requests') are translated in one place,
:meth:`VaultSession._translate`, into ``SecretError`` exceptions that name
the reference and the Vault path, say what to do, and never carry a value.
Unreachable servers, timeouts, 429 and 5xx are retryable; a sealed Vault is
not (an operator must unseal it).

The token is never taken from ``VAULT_TOKEN`` or ``~/.vault-token`` behind
the configuration's back: hvac does so whenever ``token=None``; we always
pass one (``""`` until login) and check it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions as hvac_errors
import requests

from stack.config.secrets import AppRoleAuth, JwtAuth, KubernetesAuth, TokenAuth, VaultConfig
from stack.errors import SecretError
from stack.redact import redact, register_secret

__all__ = [
    "Lease",
    "VaultSession",
]

log = logging.getLogger("stack.secrets.vault")

RENEW_AT = 0.5
"""Renew once this fraction of the granted TTL has passed."""
_RETRY_SECONDS = 5.0
_IDLE_SECONDS = 300.0
POLICY_HINT = "see secrets/policy.hcl for the policy the pipeline needs"


@dataclass(frozen=True)
class Lease:
    """Dynamic credentials leased from a secrets engine for the run."""

    lease_id: str
    role: str
    data: dict[str, Any] = field(repr=False)
    ttl: int
    renewable: bool


@dataclass
class _Renewal:
    """Something with a TTL the session keeps alive: its token, or a lease."""

    name: str
    ttl: float
    expires_at: float
    capped: bool = False
    relogin: bool = False
    """When capped, log in again (a token obtained by login) instead of giving up."""
    warned: bool = False
    retry_at: float | None = None

    @property
    def due_at(self) -> float:
        if self.retry_at is not None:
            return self.retry_at
        if self.capped and not self.relogin:
            return float("inf")
        return self.expires_at - self.ttl * (1 - RENEW_AT)

    def granted(self, seconds: float, asked: float) -> None:
        self.expires_at, self.retry_at = time.monotonic() + seconds, None
        self.capped = seconds < asked


Expand = Callable[[str, str], str]
"""``expand(value, where)``: a login field with its ``${env:}``/``${file:}`` filled in."""


class VaultSession:
    """One hvac client for one run: login, KV v2 reads, leases, renewal, revocation.

    Thread-safe: calls to Vault are serialised by one lock. Connects lazily,
    on the first read. Use :meth:`close` (the resolver does) to revoke.
    """

    def __init__(self, settings: VaultConfig, expand: Expand) -> None:
        self.settings = settings
        self._expand = expand
        self._lock = threading.RLock()
        self._client: hvac.Client | None = None
        self._url = ""
        self._owns_token = False
        self._token: _Renewal | None = None
        self._leases: dict[str, _Renewal] = {}
        self._wake = threading.Event()
        self._closed = False
        self._keeper: threading.Thread | None = None

    # -- reads ---------------------------------------------------------------

    def read_kv(self, path: str, version: int | None, ref: str) -> dict[str, Any]:
        """The key/value dict stored at ``path`` (KV v2, latest or ``version``).

        Raises:
            SecretError: Vault unreachable/sealed, access denied, or no such path,
                version or mount; the message names ``ref`` and the API path.
        """
        mount = self.settings.kv_mount
        api_path = f"{mount}/data/{path}"
        client = self._ready(ref)
        with self._lock, self._translate(ref, f"reading {api_path}", f"read on {api_path}"):
            try:
                response = client.secrets.kv.v2.read_secret_version(
                    path=path, version=version, mount_point=mount, raise_on_deleted_version=False
                )
            except hvac_errors.InvalidPath as exc:
                raise self._kv_missing(client, ref, mount, path, version, exc) from exc
        secret = response["data"]
        if secret.get("data") is None:
            number = secret.get("metadata", {}).get("version", version)
            raise SecretError(
                f"{ref}: version {number} of {api_path} is deleted or destroyed",
                hint=f"undelete it (`bao kv undelete -mount={mount} -versions={number} {path}`)"
                " or point the reference at another version",
            )
        return secret["data"]

    def lease_credentials(self, role: str, ref: str) -> Lease:
        """Lease credentials from ``<database_mount>/creds/<role>``; kept alive, revoked at close.

        Raises:
            SecretError: unreachable/sealed, access denied, or no such role.
        """
        mount = self.settings.database_mount
        api_path = f"{mount}/creds/{role}"
        client = self._ready(ref)
        with self._lock, self._translate(ref, f"reading {api_path}", f"read on {api_path}"):
            try:
                response = client.secrets.database.generate_credentials(
                    name=role, mount_point=mount
                )
            except (hvac_errors.InvalidRequest, hvac_errors.InvalidPath) as exc:
                if "no handler for route" in str(exc):
                    raise SecretError(
                        f"{ref}: no database secrets engine is mounted at {mount}/",
                        hint="set secrets.vault.database_mount, or enable the engine "
                        f"(`bao secrets enable -path={mount} database`)",
                    ) from exc
                raise SecretError(
                    f"{ref}: Vault has no database role {role!r} at {mount}/roles/{role} "
                    f"({_server_text(exc)})",
                    hint=f"create it (`bao write {mount}/roles/{role} ...`, see "
                    "secrets/bootstrap-dev.sh) or fix the role name",
                ) from exc
            lease = Lease(
                lease_id=response["lease_id"],
                role=role,
                data=response["data"],
                ttl=int(response["lease_duration"]),
                renewable=bool(response["renewable"]),
            )
            if lease.renewable and lease.ttl > 0:
                self._leases[lease.lease_id] = _Renewal(
                    lease.lease_id, lease.ttl, time.monotonic() + lease.ttl
                )
                self._start_keeper()
            elif lease.lease_id:
                self._leases[lease.lease_id] = _Renewal(lease.lease_id, 0, float("inf"), True)
        log.info("leased database credentials for role %s (ttl %ss)", role, lease.ttl)
        return lease

    def token_lookup(self) -> dict[str, Any]:
        """Log in if not yet, and return what Vault says of the session's token.

        ``auth/token/lookup-self`` without the token's ``id`` and ``accessor``: its
        ``ttl`` (seconds left; 0 for a token that never expires), ``expire_time``,
        ``renewable``, ``policies``. ``mdstack doctor`` shows it; a run learns as much at login.

        Raises:
            SecretError: unreachable/sealed, or the login was refused.
        """
        ref = "secrets.vault.auth"
        client = self._ready(ref)
        with self._lock, self._translate(ref, "looking up the token", "auth/token/lookup-self"):
            data = client.auth.token.lookup_self()["data"]
        return {k: v for k, v in data.items() if k not in ("id", "accessor")}

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Stop renewing, revoke every lease, and revoke the token this session logged in with.

        Failures are logged, not raised: close runs in ``__exit__``, maybe while
        another error propagates; an unrevoked lease still ends at its TTL.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        if self._keeper is not None:
            self._keeper.join(timeout=10)
        client = self._client
        if client is None:
            return
        with self._lock:
            for lease_id in list(self._leases):
                try:
                    client.adapter.put(f"/v1/sys/leases/revoke/{lease_id}")
                    log.info("revoked lease %s", lease_id)
                except (hvac_errors.VaultError, requests.RequestException) as exc:
                    log.error("could not revoke lease %s (it ends at its TTL): %s", lease_id, exc)
            self._leases.clear()
            if self._owns_token:
                try:
                    client.auth.token.revoke_self()
                except (hvac_errors.VaultError, requests.RequestException) as exc:
                    log.warning("could not revoke the run's Vault token: %s", exc)
            client.adapter.close()

    def renew_due(self) -> None:
        """Renew the token and the leases whose TTL is half gone (the keeper calls this)."""
        with self._lock:
            if self._closed or self._client is None:
                return
            now = time.monotonic()
            if self._token is not None and self._token.due_at <= now:
                self._renew(self._token, self._renew_token)
            for renewal in list(self._leases.values()):
                if renewal.due_at <= now:
                    self._renew(renewal, self._renew_lease)

    # -- internals -------------------------------------------------------------

    def _ready(self, ref: str) -> hvac.Client:
        with self._lock:
            if self._closed:
                raise SecretError(f"{ref}: the resolver is closed", hint="resolve inside the run")
            if self._client is None:
                self._connect()
            self.renew_due()
            assert self._client is not None
            return self._client

    def _connect(self) -> None:
        self._url = self._expand(self.settings.url, "secrets.vault.url").strip().rstrip("/")
        if not self._url:
            raise SecretError(
                "secrets.vault.url is empty", hint="set it, e.g. `url: ${env:VAULT_ADDR}`"
            )
        client = hvac.Client(
            url=self._url,
            token="",  # never None: hvac would read VAULT_TOKEN or ~/.vault-token
            verify=self.settings.verify,
            timeout=self.settings.timeout,
            namespace=self.settings.namespace,
        )
        if client.token:
            raise SecretError("hvac picked up a token from the environment; refusing to use it")
        self._login(client)
        self._client = client

    def _login(self, client: hvac.Client) -> None:
        auth = self.settings.auth
        values = {
            name: self._expand(value, f"secrets.vault.auth.{name}") if value else value
            for name, value in self.settings.login_fields().items()
        }
        for value in values.values():
            register_secret(value or "")
        action = f"logging in to Vault with {auth.method} auth"
        with self._translate(f"secrets.vault.auth ({auth.method})", action, "login"):
            try:
                if isinstance(auth, TokenAuth):
                    client.token = values["token"]
                    data = client.auth.token.lookup_self()["data"]
                    ttl, renewable = data["ttl"], data["renewable"]
                    granted = data.get("period") or data.get("creation_ttl") or ttl
                else:
                    response = _LOGIN[type(auth)](client, auth, values)
                    ttl = granted = response["auth"]["lease_duration"]
                    renewable = response["auth"]["renewable"]
            except (hvac_errors.InvalidRequest, hvac_errors.Forbidden) as exc:
                raise SecretError(
                    f"Vault refused the {auth.method} login at {self._url}: {_server_text(exc)}",
                    hint=_LOGIN_HINTS[auth.method],
                ) from exc
            except hvac_errors.InvalidPath as exc:
                raise SecretError(
                    f"no {auth.method} auth method is enabled at auth/{getattr(auth, 'mount', '')}",
                    hint="enable it (`bao auth enable ...`) or set secrets.vault.auth.mount",
                ) from exc
        register_secret(client.token)
        self._owns_token = not isinstance(auth, TokenAuth)
        self._token = None
        if renewable and ttl > 0:
            self._token = _Renewal(
                "token", granted, time.monotonic() + ttl, relogin=self._owns_token
            )
            self._start_keeper()
        log.info("logged in to Vault at %s with %s auth (ttl %ss)", self._url, auth.method, ttl)

    def _renew(self, renewal: _Renewal, renew: Callable[[_Renewal], None]) -> None:
        try:
            renew(renewal)
        except (hvac_errors.VaultError, requests.RequestException, SecretError, KeyError) as exc:
            left = renewal.expires_at - time.monotonic()
            renewal.retry_at = time.monotonic() + max(0.05, min(_RETRY_SECONDS, left / 4))
            log.warning("could not renew %s (%.0fs left): %s", renewal.name, left, exc)

    def _renew_token(self, renewal: _Renewal) -> None:
        assert self._client is not None
        if renewal.capped and renewal.relogin:
            log.info("the Vault token reached its max TTL; logging in again")
            if self._leases:
                log.warning(
                    "%d lease(s) taken under the previous token end when it expires; raise "
                    "the auth role's token_max_ttl above the longest run",
                    len(self._leases),
                )
            self._login(self._client)
            return
        response = self._client.auth.token.renew_self(increment=int(renewal.ttl))
        renewal.granted(response["auth"]["lease_duration"], renewal.ttl)
        self._warn_capped(renewal, "the Vault token")

    def _renew_lease(self, renewal: _Renewal) -> None:
        assert self._client is not None
        response = self._client.adapter.put(
            f"/v1/sys/leases/renew/{renewal.name}", json={"increment": int(renewal.ttl)}
        )
        renewal.granted(response["lease_duration"], renewal.ttl)
        self._warn_capped(renewal, f"lease {renewal.name}")

    def _warn_capped(self, renewal: _Renewal, what: str) -> None:
        if renewal.capped and not renewal.warned and not renewal.relogin:
            renewal.warned = True
            left = renewal.expires_at - time.monotonic()
            log.warning("%s reached its max TTL and ends in %.0fs", what, left)

    def _start_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="vault-renewal", daemon=True)
            self._keeper.start()
        self._wake.set()

    def _keep(self) -> None:
        while True:
            self._wake.wait(self._seconds_to_next())
            self._wake.clear()
            if self._closed:
                return
            try:
                self.renew_due()
            except Exception as exc:  # keep the keeper alive; the next call retries
                log.warning("Vault renewal failed: %s", exc)

    def _seconds_to_next(self) -> float:
        with self._lock:
            items = [*self._leases.values(), *([self._token] if self._token else [])]
            due = min((r.due_at for r in items), default=float("inf"))
        return max(0.05, min(_IDLE_SECONDS, due - time.monotonic()))

    def _kv_missing(
        self,
        client: hvac.Client,
        ref: str,
        mount: str,
        path: str,
        version: int | None,
        exc: hvac_errors.InvalidPath,
    ) -> SecretError:
        if "no handler for route" in str(exc):
            return SecretError(
                f"{ref}: no secrets engine is mounted at {mount}/",
                hint="set secrets.vault.kv_mount to the KV v2 mount (default `secret`)",
            )
        if version is not None:
            try:
                latest = client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=False
                )["data"]["metadata"]["version"]
            except (hvac_errors.VaultError, requests.RequestException):
                latest = None
            if latest is not None:
                return SecretError(
                    f"{ref}: {mount}/data/{path} has no version {version} (latest is {latest})",
                    hint=f"use @{latest} or drop @{version} to read the latest version",
                )
        return SecretError(
            f"{ref}: no secret at {mount}/data/{path}",
            hint=f"write it (`bao kv put -mount={mount} {path} KEY=...`) or fix the path; "
            f"paths are relative to the KV mount `{mount}`, without `data/`",
        )

    @contextmanager
    def _translate(self, ref: str, action: str, needs: str) -> Iterator[None]:
        """Map hvac/requests errors to SecretError; the one place that does."""
        try:
            yield
        except SecretError:
            raise
        except requests.exceptions.SSLError as exc:
            raise SecretError(
                f"{ref}: TLS verification failed {action} at {self._url}",
                hint="set secrets.vault.verify to the CA bundle that signed Vault's certificate",
            ) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
            raise SecretError(
                f"{ref}: Vault at {self._url} {kind} ({action})",
                hint="check that Vault is up and that secrets.vault.url (VAULT_ADDR) points at it",
                retryable=True,
            ) from exc
        except hvac_errors.VaultDown as exc:
            sealed = "sealed" in str(exc) or self._is_sealed()
            raise SecretError(
                f"{ref}: Vault at {self._url} is "
                + ("sealed" if sealed else f"unavailable ({_server_text(exc)})")
                + f" ({action})",
                hint="an operator must unseal it (`bao operator unseal`)"
                if sealed
                else "retry later; check the server's health (sys/health)",
                retryable=not sealed,
            ) from exc
        except hvac_errors.Forbidden as exc:
            raise SecretError(
                f"{ref}: permission denied {action}",
                hint=f"grant {needs} to the pipeline's Vault policy ({POLICY_HINT}); "
                "an expired or revoked token is also refused this way",
            ) from exc
        except (
            hvac_errors.RateLimitExceeded,
            hvac_errors.InternalServerError,
            hvac_errors.BadGateway,
        ) as exc:
            raise SecretError(
                f"{ref}: Vault failed {action}: {_server_text(exc)}",
                hint="retry later",
                retryable=True,
            ) from exc
        except hvac_errors.VaultError as exc:
            raise SecretError(
                f"{ref}: Vault refused {action}: {_server_text(exc)}", hint=POLICY_HINT
            ) from exc

    def _is_sealed(self) -> bool:
        try:
            return bool(self._client and self._client.sys.read_seal_status()["sealed"])
        except (hvac_errors.VaultError, requests.RequestException, KeyError, TypeError):
            return False


def _server_text(exc: Exception) -> str:
    """The server's own error text, without hvac's ``, on get URL`` tail; masked."""
    text = str(exc).split(", on ", 1)[0].strip()
    return redact(text) if text and text != "None" else type(exc).__name__


def _approle(client: hvac.Client, auth: AppRoleAuth, values: dict[str, Any]) -> dict:
    return client.auth.approle.login(
        role_id=values["role_id"], secret_id=values["secret_id"], mount_point=auth.mount
    )


def _kubernetes(client: hvac.Client, auth: KubernetesAuth, values: dict[str, Any]) -> dict:
    return client.auth.kubernetes.login(
        role=auth.role, jwt=values["jwt"].strip(), mount_point=auth.mount
    )


def _jwt(client: hvac.Client, auth: JwtAuth, values: dict[str, Any]) -> dict:
    return client.auth.jwt.jwt_login(role=auth.role, jwt=values["jwt"].strip(), path=auth.mount)


_LOGIN: dict[type, Callable[..., dict]] = {
    AppRoleAuth: _approle,
    KubernetesAuth: _kubernetes,
    JwtAuth: _jwt,
}
_LOGIN_HINTS = {
    "token": "the token is invalid, expired or revoked: issue a new one "
    "(check what secrets.vault.auth.token points at)",
    "approle": "check role_id and secret_id (VAULT_ROLE_ID, VAULT_SECRET_ID); "
    "a secret_id can expire or be used up",
    "kubernetes": "check the role's bound service account and namespace, and the token file",
    "jwt": "check the role's bound audiences/claims and that the JWT has not expired",
}
