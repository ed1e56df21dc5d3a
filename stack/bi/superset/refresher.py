"""Superset: re-read datasets' columns and metrics from the warehouse, then invalidate caches.

Login: ``POST /api/v1/security/login`` with ``{"username", "password", "provider",
"refresh": true}`` → ``{"access_token", "refresh_token"}`` (a wrong password is
``401 {"message": "Not authorized"}``); the JWT goes in ``Authorization:
Bearer``. With ``csrf: true`` (Superset's default ``WTF_CSRF_ENABLED``),
``GET /api/v1/security/csrf_token/`` → ``{"result": token}`` plus a session
cookie; writes then carry ``X-CSRFToken`` and a ``Referer``.

Datasets named ``schema.table`` are looked up at sign-in: ``GET /api/v1/dataset/?q=(filters:
!((col:table_name,opr:eq,value:'t')))`` → ``{"result": [{"id", "schema", "database":
{"database_name"}}]}``.

Refresh: ``PUT /api/v1/dataset/{pk}/refresh`` → ``200 {"message": "OK"}``; it is
synchronous (no job to poll: "times out" means the request does not answer within
the hook's ``timeout``). ``404`` / ``403`` / ``422 {"message"}`` fail.

Cache: ``POST /api/v1/cachekey/invalidate`` with
``{"datasource_uids": ["<pk>__table", ...]}`` → ``201``.

Conflict: Superset's API has no "already refreshing" answer. The hook treats a
``409`` from the refresh (a proxy, a fork, a future version) as one, per
``on_conflict``, as the generic webhook does.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from connectors.http import error_text, raise_for_status
from stack.bi.base import Busy, Done, Outcome, Refresher, reveal
from stack.bi.exceptions import BiAuthError, BiError
from stack.config.bi import SupersetHook

__all__ = ["SupersetRefresher"]


class SupersetRefresher(Refresher[SupersetHook]):
    """Refreshes a Superset hook's datasets, then invalidates their cache keys."""

    _api: httpx.Client | None = None
    _datasets: tuple[int, ...] = ()

    def targets(self) -> Sequence[str]:
        return [f"dataset:{pk}" for pk in self._datasets]

    def sign_in(self) -> None:
        hook = self.hook
        api = self._api = self.http(hook.url)
        response = api.request(
            "POST",
            "/api/v1/security/login",
            json={
                "username": hook.username,
                "password": reveal(hook.password),
                "provider": hook.provider,
                "refresh": True,
            },
        )
        if response.status_code != 200:
            raise BiAuthError(
                f"Superset refused the login: HTTP {response.status_code} {error_text(response)}",
                hook=hook.label,
                status=response.status_code,
                hint="check `username`, `password` and `provider` (db or ldap)",
            )
        token = response.json().get("access_token")
        if not token:
            raise BiAuthError("the login answer has no access_token", hook=hook.label)
        api.headers["Authorization"] = f"Bearer {token}"
        if hook.csrf:
            answer = raise_for_status(api.get("/api/v1/security/csrf_token/"))
            csrf = answer.json().get("result")
            if not csrf:
                raise BiError("the CSRF answer has no token", hook=hook.label)
            api.headers["X-CSRFToken"] = csrf
            api.headers["Referer"] = hook.url
        self._datasets = tuple(
            self._dataset_id(api, name) if isinstance(name, str) else name for name in hook.datasets
        )

    def _dataset_id(self, api: httpx.Client, name: str) -> int:
        """The id of the dataset ``schema.table`` (of ``database:`` when it is set)."""
        schema, table = name.split(".", 1)
        query = f"(filters:!((col:table_name,opr:eq,value:{_rison(table)})),page_size:100)"
        answer = raise_for_status(api.get("/api/v1/dataset/", params={"q": query}))
        found = [
            row["id"]
            for row in answer.json().get("result", [])
            if row.get("schema") == schema
            and self.hook.database in (None, (row.get("database") or {}).get("database_name"))
        ]
        where = f" on database {self.hook.database!r}" if self.hook.database else ""
        if len(found) != 1:
            raise BiError(
                f"{len(found) or 'no'} Superset datasets are named {name}{where}",
                hook=self.hook.label,
                hint="name the database with `database:`, or give the dataset's id"
                if found
                else "import the dashboards (`mdstack dashboards`) or give the dataset's id",
            )
        return int(found[0])

    def trigger(self, target: str) -> Outcome:
        pk = target.split(":", 1)[1]
        assert self._api is not None, "sign_in() first"
        response = self._api.request("PUT", f"/api/v1/dataset/{pk}/refresh")
        if response.status_code == 200:
            return Done(True, f"dataset {pk} refreshed")
        if response.status_code == 409:
            return Busy(None, f"Superset answered 409: {error_text(response)}")
        hint = {404: "check the dataset ids under `datasets:`", 403: "the user may not edit it"}
        raise BiError(
            f"PUT /api/v1/dataset/{pk}/refresh: HTTP {response.status_code} {error_text(response)}",
            hook=self.hook.label,
            status=response.status_code,
            hint=hint.get(response.status_code),
        )

    def after(self, succeeded: Sequence[str]) -> str | None:
        if not self.hook.invalidate_cache:
            return None
        assert self._api is not None
        uids = [f"{t.split(':', 1)[1]}__table" for t in succeeded]
        response = self._api.post("/api/v1/cachekey/invalidate", json={"datasource_uids": uids})
        raise_for_status(response, ok=(200, 201))
        return f"cache invalidated for {len(uids)} dataset(s)"


def _rison(text: str) -> str:
    """``text`` as a Rison string (the encoding of Superset's ``q`` parameter)."""
    return "'" + text.replace("!", "!!").replace("'", "!'") + "'"
