"""Power BI: dataset (semantic model) refresh as an Entra ID service principal.

Token: the OAuth2 client-credentials grant, ``POST {authority}/{tenant}/oauth2/v2.0/token``
(form: ``grant_type=client_credentials``, ``client_id``, ``client_secret``,
``scope=https://analysis.windows.net/powerbi/api/.default``) → ``access_token``,
sent as ``Authorization: Bearer``. This is the request MSAL's
``ConfidentialClientApplication.acquire_token_for_client`` sends; it is made
with httpx here because MSAL only accepts ``https://`` authorities (its
``canonicalize`` rejects anything else, also with ``validate_authority=False``
and ``instance_discovery=False``), so it cannot be pointed at a plain-HTTP test
double, and one POST does not need a token cache. A wrong secret is HTTP 401
``invalid_client`` (``AADSTS7000215``).

Refresh: ``POST /v1.0/myorg/groups/{group}/datasets/{dataset}/refreshes`` with
``{"notifyOption": ...}`` (or an enhanced-refresh body) → ``202 Accepted``; the
refresh's id comes back in the ``RequestId`` header (and, for enhanced refreshes,
in ``Location``). Polling: ``GET .../refreshes?$top=10``, the entry whose
``requestId`` is ours: ``status`` ``Unknown`` is in progress, ``Completed`` done,
``Failed`` / ``Cancelled`` / ``Disabled`` not (``serviceExceptionJson`` says why).

Conflict: before triggering, the newest history entry is checked; ``Unknown``
means a refresh runs (its ``requestId`` is the blocker to poll). A refresh
submitted while one runs is refused with ``409 Conflict``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.http import error_text
from stack.bi.base import Busy, Done, Outcome, Refresher, Running, reveal
from stack.bi.exceptions import BiAuthError, BiError
from stack.config.bi import PowerBIHook

__all__ = ["SCOPE", "PowerBIRefresher"]

SCOPE = "https://analysis.windows.net/powerbi/api/.default"
_FAILED = ("Failed", "Cancelled", "Disabled")


@dataclass(frozen=True)
class _Job:
    """Our refresh: its ``requestId``, or (when Power BI gave none) the newest before ours."""

    request_id: str | None
    newest_before: str | None = None


class PowerBIRefresher(Refresher[PowerBIHook]):
    """Refreshes a Power BI hook's datasets and follows them in the refresh history."""

    _api: httpx.Client | None = None

    def targets(self) -> Sequence[str]:
        return [f"dataset:{d}" for d in self.hook.datasets]

    def sign_in(self) -> None:
        hook = self.hook
        login = self.http(hook.authority_url)
        response = login.request(
            "POST",
            f"/{hook.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": hook.client_id,
                "client_secret": reveal(hook.client_secret),
                "scope": SCOPE,
            },
        )
        if response.status_code != 200:
            raise BiAuthError(
                f"Entra ID refused the client credentials: HTTP {response.status_code} "
                f"{error_text(response)}",
                hook=hook.label,
                status=response.status_code,
                hint="check `tenant_id`, `client_id` and `client_secret` (secrets expire); "
                "the service principal needs access to the workspace",
            )
        token = response.json().get("access_token")
        if not token:
            raise BiAuthError("the token response has no access_token", hook=hook.label)
        if self._api is None:
            self._api = self.http(hook.api_url)
        self._api.headers["Authorization"] = f"Bearer {token}"

    def trigger(self, target: str) -> Outcome:
        dataset = target.split(":", 1)[1]
        history = self._history(dataset, top=1)
        newest = history[0] if history else {}
        if newest.get("status") == "Unknown":
            running = newest.get("requestId")
            return Busy(_Job(running), f"refresh {running} is in progress")
        body = self.hook.enhanced or {"notifyOption": self.hook.notify_option}
        response = self._call("POST", self._path(dataset), json=body)
        if response.status_code == 409:
            return Busy(None, f"Power BI answered 409 Conflict: {error_text(response)}")
        if response.status_code != 202:
            raise self._error("refresh", dataset, response)
        request_id = response.headers.get("RequestId") or _last_segment(
            response.headers.get("Location")
        )
        job = _Job(request_id, None if request_id else newest.get("requestId"))
        return Running(job, f"refresh {request_id or '(id not returned)'}")

    def poll(self, target: str, job: Any) -> Running | Done:
        dataset = target.split(":", 1)[1]
        entry = self._find(self._history(dataset, top=10), job)
        if entry is None:
            return Running(job, f"refresh {job.request_id} (not listed yet)")
        rid, status = entry.get("requestId"), entry.get("status")
        if status == "Completed":
            return Done(True, f"refresh {rid} completed")
        if status in _FAILED:
            return Done(False, f"refresh {rid} {status}{_why(entry)}")
        return Running(job, f"refresh {rid} in progress")

    def _find(self, history: list[dict[str, Any]], job: _Job) -> dict[str, Any] | None:
        if job.request_id:
            return next((e for e in history if e.get("requestId") == job.request_id), None)
        newest = history[0] if history else None
        if newest is None or newest.get("requestId") == job.newest_before:
            return None
        return newest

    def _history(self, dataset: str, top: int) -> list[dict[str, Any]]:
        response = self._call("GET", self._path(dataset), params={"$top": top})
        if response.status_code != 200:
            raise self._error("read the refresh history of", dataset, response)
        return list(response.json().get("value") or [])

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; on 401 (token expired during a long wait) sign in again, once."""
        assert self._api is not None, "sign_in() first"
        response = self._api.request(method, path, **kwargs)
        if response.status_code == 401:
            self.sign_in()
            response = self._api.request(method, path, **kwargs)
        return response

    def _path(self, dataset: str) -> str:
        return f"/v1.0/myorg/groups/{self.hook.workspace_id}/datasets/{dataset}/refreshes"

    def _error(self, doing: str, dataset: str, response: httpx.Response) -> BiError:
        hint = None
        if response.status_code in (401, 403):
            hint = "add the service principal to the workspace (Member or Contributor)"
        elif response.status_code == 404:
            hint = "check `workspace_id` and the dataset ids"
        return BiError(
            f"{doing} dataset {dataset}: HTTP {response.status_code} {error_text(response)}",
            hook=self.hook.label,
            status=response.status_code,
            hint=hint,
        )


def _why(entry: dict[str, Any]) -> str:
    """The failure's code and description out of ``serviceExceptionJson``."""
    raw = entry.get("serviceExceptionJson")
    if not raw:
        return ""
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return f": {raw}"
    parts = [str(data.get(k)) for k in ("errorCode", "errorDescription") if data.get(k)]
    return f": {' - '.join(parts)}" if parts else f": {raw}"


def _last_segment(url: str | None) -> str | None:
    if not url:
        return None
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or None
