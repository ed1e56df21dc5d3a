"""Looker (API 4.0): trigger datagroups and rebuild persistent derived tables (PDTs).

Login: ``POST /api/4.0/login`` with the form fields ``client_id`` and
``client_secret`` → ``{"access_token", "token_type", "expires_in"}``, sent as
``Authorization: token <access_token>``. Unknown credentials answer
``404 {"message": "Not found", "documentation_url"}`` (Looker's answer, not a
401). ``DELETE /api/4.0/logout`` at the end.

Datagroup: ``PATCH /api/4.0/datagroups/{id}`` with ``stale_before`` and
``triggered_at`` (UNIX seconds, now: never in the future) → ``200`` with the
datagroup. Looker marks the caches stale and its regenerator rebuilds the
datagroup's PDTs on its own schedule; there is nothing to poll.

PDT: ``GET /api/4.0/derived_table/{model}/{view}/start?force_rebuild=...&source=...``
→ ``{"materialization_id", "resp_text"}``; then
``GET /api/4.0/derived_table/{materialization_id}/status`` until ``resp_text``
(JSON) has a final ``status``: ``complete``; or ``error`` (with ``message``),
``killed``, ``unknown``, which fail. ``added``, ``pending`` and ``running`` are
in progress.

Conflict: Looker documents no "already building" answer; a ``409`` from a
trigger is taken as one, per ``on_conflict``, as for the generic webhook.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from connectors.http import error_text, raise_for_status
from stack.bi.base import Busy, Done, Outcome, Refresher, Running, reveal
from stack.bi.exceptions import BiAuthError, BiError
from stack.config.bi import LookerHook, LookerPdt

__all__ = ["LookerRefresher"]

_RUNNING = ("added", "pending", "running")
_API = "/api/4.0"


class LookerRefresher(Refresher[LookerHook]):
    """Triggers a Looker hook's datagroups and rebuilds its PDTs, following each build."""

    _api: httpx.Client | None = None

    def targets(self) -> Sequence[str]:
        return [f"datagroup:{d}" for d in self.hook.datagroups] + [
            f"pdt:{p.model}/{p.view}" for p in self.hook.pdts
        ]

    def sign_in(self) -> None:
        hook = self.hook
        api = self._api = self.http(hook.base_url)
        response = api.request(
            "POST",
            f"{_API}/login",
            data={"client_id": hook.client_id, "client_secret": reveal(hook.client_secret)},
        )
        if response.status_code != 200:
            raise BiAuthError(
                f"Looker refused the API credentials: HTTP {response.status_code} "
                f"{error_text(response)}",
                hook=hook.label,
                status=response.status_code,
                hint="check `client_id` and `client_secret` (Looker answers 404 to unknown "
                "credentials) and that `base_url` is the API host",
            )
        token = response.json().get("access_token")
        if not token:
            raise BiAuthError("the login answer has no access_token", hook=hook.label)
        api.headers["Authorization"] = f"token {token}"

    def trigger(self, target: str) -> Outcome:
        kind, name = target.split(":", 1)
        if kind == "datagroup":
            return self._trigger_datagroup(name)
        model, view = name.split("/", 1)
        pdt = next(p for p in self.hook.pdts if (p.model, p.view) == (model, view))
        return self._start_pdt(pdt)

    def poll(self, target: str, job: Any) -> Running | Done:
        path = f"{_API}/derived_table/{quote(str(job), safe='')}/status"
        response = raise_for_status(self._client().get(path))
        status = _status(response.json())
        state = str(status.get("status", "unknown"))
        if state in _RUNNING:
            return Running(job, f"materialization {job} {state}")
        if state == "complete":
            return Done(True, f"materialization {job} complete")
        reason = status.get("message") or ("cancelled" if state == "killed" else state)
        return Done(False, f"materialization {job} {state}: {reason}")

    def close(self) -> None:
        if self._api is not None and "Authorization" in self._api.headers:
            self._api.request("DELETE", f"{_API}/logout")

    def _trigger_datagroup(self, datagroup: str) -> Outcome:
        now = int(time.time())
        response = self._client().request(
            "PATCH",
            f"{_API}/datagroups/{quote(datagroup, safe='')}",
            json={"stale_before": now, "triggered_at": now},
        )
        if response.status_code == 409:
            return Busy(None, f"Looker answered 409: {error_text(response)}")
        if response.status_code != 200:
            raise self._error(f"PATCH {_API}/datagroups/{datagroup}", response)
        body = response.json()
        label = body.get("name") or datagroup
        return Done(True, f"datagroup {label} triggered (stale_before={now})")

    def _start_pdt(self, pdt: LookerPdt) -> Outcome:
        path = f"{_API}/derived_table/{quote(pdt.model, safe='')}/{quote(pdt.view, safe='')}/start"
        params = {
            "force_rebuild": str(self.hook.force_rebuild).lower(),
            "force_full_incremental": str(pdt.force_full_incremental).lower(),
            "workspace": pdt.workspace,
            "source": f"mdstack run {self.run_info.run_id}".strip(),
        }
        response = self._client().request("GET", path, params=params)
        if response.status_code == 409:
            return Busy(None, f"Looker answered 409: {error_text(response)}")
        if response.status_code != 200:
            raise self._error(f"GET {path}", response)
        materialization = response.json().get("materialization_id")
        if not materialization:
            raise BiError(f"GET {path}: no materialization_id returned", hook=self.hook.label)
        return Running(materialization, f"materialization {materialization}")

    def _client(self) -> httpx.Client:
        assert self._api is not None, "sign_in() first"
        return self._api

    def _error(self, what: str, response: httpx.Response) -> BiError:
        hint = None
        if response.status_code == 404:
            hint = "check the datagroup ids / model and view names, and the API user's access"
        return BiError(
            f"{what}: HTTP {response.status_code} {error_text(response)}",
            hook=self.hook.label,
            status=response.status_code,
            hint=hint,
        )


def _status(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON inside ``resp_text`` (``{"status", "runtime", "message", "task_slug"}``)."""
    text = body.get("resp_text")
    if not text:
        return {"status": "pending"}
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return {"status": "unknown", "message": str(text)[:300]}
    return parsed if isinstance(parsed, dict) else {"status": "unknown", "message": str(parsed)}
