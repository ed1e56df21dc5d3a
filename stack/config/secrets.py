"""The ``secrets:`` section of ``stack.yml``: where Vault is and how a run logs in to it.

Without ``vault:``, only ``${env:...}`` and ``${file:...}`` references resolve. The
references themselves, and the Vault session that resolves them, are :mod:`stack.secrets`
and :mod:`stack.secrets.vault`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AppRoleAuth",
    "JwtAuth",
    "KubernetesAuth",
    "SecretsConfig",
    "TokenAuth",
    "VaultAuth",
    "VaultConfig",
]

_K8S_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenAuth(_Model):
    """A token given explicitly, e.g. ``token: ${env:VAULT_TOKEN}``. Never implied."""

    method: Literal["token"]
    token: str = Field(repr=False)


class AppRoleAuth(_Model):
    """AppRole login; ``secret_id: null`` for a role bound without secret ids."""

    method: Literal["approle"]
    role_id: str = "${env:VAULT_ROLE_ID}"
    secret_id: str | None = Field(default="${env:VAULT_SECRET_ID}", repr=False)
    mount: str = "approle"


class KubernetesAuth(_Model):
    """Kubernetes login with the pod's service-account token (re-read at each login)."""

    method: Literal["kubernetes"]
    role: str
    jwt: str = Field(default=f"${{file:{_K8S_TOKEN}}}", repr=False)
    mount: str = "kubernetes"


class JwtAuth(_Model):
    """JWT/OIDC login with a token the platform hands the run (e.g. a CI job's JWT)."""

    method: Literal["jwt"]
    role: str
    jwt: str = Field(repr=False)
    mount: str = "jwt"


VaultAuth = Annotated[
    TokenAuth | AppRoleAuth | KubernetesAuth | JwtAuth, Field(discriminator="method")
]


class VaultConfig(_Model):
    """``secrets.vault``: where Vault is, how to log in, where the engines are mounted.

    ``url`` and the auth fields may be ``${env:...}`` or ``${file:...}``
    references (not ``${vault:...}``: they are needed to reach Vault).
    """

    url: str = "${env:VAULT_ADDR}"
    auth: VaultAuth
    kv_mount: str = "secret"
    database_mount: str = "database"
    namespace: str | None = None
    verify: bool | str | None = None
    """TLS: ``true``, ``false`` or a CA bundle path; unset uses VAULT_CACERT/VAULT_CAPATH."""
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _no_vault_references_in_login(self) -> VaultConfig:
        fields = {"url": self.url, **self.auth.model_dump()}
        for name, value in fields.items():
            if isinstance(value, str) and "${vault" in value:
                raise ValueError(
                    f"`{name}` cannot use a ${{vault...}} reference (it is needed to reach "
                    "Vault); use ${env:NAME} or ${file:path}"
                )
        return self

    def login_fields(self) -> dict[str, str | None]:
        """The auth fields that are sent to Vault (references not yet expanded)."""
        return self.auth.model_dump(exclude={"method", "mount", "role"})


class SecretsConfig(BaseModel):
    """The ``secrets:`` block of ``stack.yml``. Without ``vault:``, only env/file resolve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vault: VaultConfig | None = None
