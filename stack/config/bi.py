"""The ``bi:`` section of ``stack.yml``: one model per BI tool, told apart by ``type``.

Every hook shares the knobs of :class:`HookBase` (``timeout``, ``poll_interval``,
``on_conflict``, ``retries``...). Secret fields (``token_secret``,
``client_secret``, ``api_key``, ``password``, webhook ``url`` and ``headers``) are
``SecretStr``: they accept a plain string or an already-resolved ``SecretStr``
(what :class:`stack.secrets.Resolver` makes of ``${vault:...}``), never show in a
repr, and are unwrapped only at the HTTP edge.

Durations are seconds (``30``, ``0.05``) or ``90s`` / ``10m`` / ``2h``. What the hooks
do with these settings lives in :mod:`stack.bi`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from stack.config.durations import Seconds

__all__ = [
    "BI_TYPES",
    "HOOK_MODELS",
    "BiHook",
    "HookBase",
    "LookerHook",
    "LookerPdt",
    "MetabaseHook",
    "OnConflict",
    "PowerBIHook",
    "SupersetHook",
    "TableauHook",
    "WebhookHook",
]


def _schema_dot_table(name: str) -> str:
    schema, dot, table = name.partition(".")
    if not (schema and dot and table) or "." in table or name != name.strip():
        raise ValueError(f"{name!r}: a dataset is an id or schema.table (marts.daily_revenue)")
    return name


DatasetName = Annotated[str, AfterValidator(_schema_dot_table)]
"""A Superset dataset as ``schema.table``."""

OnConflict = Literal["wait", "skip"]
"""What to do when the tool says a refresh is already running.

``wait``: wait for the running refresh to end (polling it when the tool names it,
else retrying the trigger every ``poll_interval``), then trigger ours, since the
running one may have started before the publish and read the old data. ``skip``:
trigger nothing, report the target ``skipped``. Both within ``timeout``.
"""


class HookBase(BaseModel):
    """What every hook has: a name, how long to wait, how to poll, retry and handle conflicts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    """Shown in results and logs; defaults to the ``type``."""
    timeout: Seconds = 1800.0
    """Seconds the hook may take in all: sign-in, triggers, waiting for completion."""
    poll_interval: Seconds = 15.0
    """Seconds between two status checks (and between two triggers while ``wait``-ing)."""
    on_conflict: OnConflict = "wait"
    retries: int = Field(default=3, ge=0)
    """Retries of one HTTP request on 429 (honouring ``Retry-After``), 5xx, timeouts, resets."""
    backoff: Seconds = 1.0
    """First wait before a retry; doubles each time (with jitter), at most 30 s."""
    request_timeout: Seconds = 30.0
    """Seconds one HTTP request may take."""

    @property
    def label(self) -> str:
        """The hook's name in results and messages."""
        return self.name or str(getattr(self, "type", "hook"))


class TableauHook(HookBase):
    """Tableau Server / Cloud: extract refresh of data sources and workbooks, by name.

    Signs in with a personal access token through ``tableauserverclient``, runs
    "Update Data Source Now" / "Update Workbook Now" and polls the returned job.
    """

    type: Literal["tableau"]
    server: str
    site: str = ""
    """The site's ``contentUrl`` (empty for the default site of Tableau Server)."""
    token_name: str
    token_secret: SecretStr
    datasources: tuple[str, ...] = ()
    workbooks: tuple[str, ...] = ()
    api_version: str = "3.19"
    incremental: bool = False
    """Incremental extract refresh (REST API 3.25 and later)."""

    @model_validator(mode="after")
    def _something_to_refresh(self) -> TableauHook:
        if not self.datasources and not self.workbooks:
            raise ValueError("list at least one name under `datasources:` or `workbooks:`")
        return self


class PowerBIHook(HookBase):
    """Power BI: dataset (semantic model) refresh as an Entra ID service principal."""

    type: Literal["powerbi"]
    tenant_id: str
    client_id: str
    client_secret: SecretStr
    workspace_id: str
    """The workspace (``groupId``) holding the datasets."""
    datasets: tuple[str, ...] = Field(min_length=1)
    authority_url: str = "https://login.microsoftonline.com"
    api_url: str = "https://api.powerbi.com"
    notify_option: Literal["NoNotification", "MailOnFailure", "MailOnCompletion"] = "NoNotification"
    """Body of a standard refresh; service principals can only use ``NoNotification``."""
    enhanced: dict[str, Any] | None = None
    """Body of an enhanced refresh (``type``, ``commitMode``, ``objects``...) instead;
    Premium / Fabric capacities only."""


class MetabaseHook(HookBase):
    """Metabase: sync the database's schema (and rescan field values), then clear caches."""

    type: Literal["metabase"]
    url: str
    api_key: SecretStr
    database_id: int = Field(ge=1)
    rescan: bool = False
    """Also rescan field values (``POST /api/database/:id/rescan_values``)."""
    invalidate_cache: bool = False
    """``POST /api/cache/invalidate?database=:id`` afterwards (Metabase Pro / Enterprise)."""
    wait: bool = True
    """Poll the task history (``GET /api/task/``, needs monitoring access) until the sync
    ends; ``false`` reports success once Metabase accepts the sync."""


class SupersetHook(HookBase):
    """Superset: re-read datasets' columns from the warehouse, then invalidate their cache."""

    type: Literal["superset"]
    url: str
    username: str
    password: SecretStr
    provider: Literal["db", "ldap"] = "db"
    datasets: tuple[int | DatasetName, ...] = Field(min_length=1)
    """Dataset ids, or ``schema.table`` names looked up at each run (ids change when a
    dashboard is imported anew, names do not)."""
    database: str | None = None
    """The Superset database a dataset name must belong to, when several hold that table."""
    invalidate_cache: bool = True
    csrf: bool = True
    """Fetch a CSRF token after login (needed unless ``WTF_CSRF_ENABLED`` is off)."""


class LookerPdt(BaseModel):
    """One persistent derived table to rebuild."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    view: str
    force_full_incremental: bool = False
    workspace: Literal["production", "dev"] = "production"


class LookerHook(HookBase):
    """Looker (API 4.0): trigger datagroups and/or rebuild persistent derived tables."""

    type: Literal["looker"]
    base_url: str
    client_id: str
    client_secret: SecretStr
    datagroups: tuple[str, ...] = ()
    """Datagroup ids: marks their caches stale and triggers their PDTs' rebuild."""
    pdts: tuple[LookerPdt, ...] = ()
    force_rebuild: bool = True

    @model_validator(mode="after")
    def _something_to_refresh(self) -> LookerHook:
        if not self.datagroups and not self.pdts:
            raise ValueError("list at least one entry under `datagroups:` or `pdts:`")
        return self


class WebhookHook(HookBase):
    """Any HTTP endpoint: one request with the run's details; 2xx is success.

    409 means "already running" (see ``on_conflict``); 429 and 5xx are retried.
    ``body`` may use ``{{ pipeline }}``, ``{{ region }}``, ``{{ run_id }}`` and
    ``{{ published_at }}``; without it the body is those four as JSON.
    """

    type: Literal["webhook"]
    url: SecretStr
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    body: dict[str, Any] | None = None


BiHook = Annotated[
    TableauHook | PowerBIHook | MetabaseHook | SupersetHook | LookerHook | WebhookHook,
    Field(discriminator="type"),
]
"""One entry of ``bi:`` in ``stack.yml``."""

HOOK_MODELS: dict[str, type[HookBase]] = {
    "tableau": TableauHook,
    "powerbi": PowerBIHook,
    "metabase": MetabaseHook,
    "superset": SupersetHook,
    "looker": LookerHook,
    "webhook": WebhookHook,
}
"""``type`` → model (for "did you mean" hints on a discriminated entry)."""

BI_TYPES = tuple(HOOK_MODELS)
