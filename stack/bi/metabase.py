"""Metabase: sync a database's schema (and rescan field values), then clear its caches.

Auth is an API key in the ``x-api-key`` header (checked first with
``GET /api/user/current``; a wrong key is ``401 Unauthenticated``).

Trigger: ``POST /api/database/:id/sync_schema`` (and ``/rescan_values`` with
``rescan: true``), each answering ``{"status": "ok"}`` at once: Metabase runs
them in the background and returns no job id. Completion is read from the task
history, ``GET /api/task/?limit=&offset=`` (``{"data": [{"id", "task", "db_id",
"status": "started" | "success" | "failed" | "unknown", "task_details"}]}``,
needs admin or monitoring access): the sync is over once the database's task
rows newer than the trigger are all finished; a ``failed`` one fails the hook
with its ``task_details.message``. ``wait: false`` skips the task history and
reports success once Metabase accepted the sync.

Conflict: Metabase queues a second sync instead of refusing it; a ``started``
task row for the database before the trigger is the conflict here (with
``wait``, the hook waits for those rows to finish, then syncs).

Cache: ``POST /api/cache/invalidate?database=:id&include=overrides``
(Pro / Enterprise: ``402`` elsewhere) → ``{"count", "message"}``; ``404`` with
``count: -1`` means nothing was cached, which is fine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from connectors.http import error_text
from stack.bi.base import Busy, Done, Outcome, Refresher, Running, reveal
from stack.bi.exceptions import BiAuthError, BiError
from stack.config.bi import MetabaseHook

__all__ = ["MetabaseRefresher"]

TASK_PAGE = 100
"""Task rows read per poll (newest first); enough for one database's sync steps."""


class MetabaseRefresher(Refresher[MetabaseHook]):
    """Syncs a Metabase database and follows the sync in the task history."""

    _api: httpx.Client | None = None

    def targets(self) -> Sequence[str]:
        return [f"database:{self.hook.database_id}"]

    def sign_in(self) -> None:
        self._api = self.http(self.hook.url, headers={"x-api-key": reveal(self.hook.api_key)})
        response = self._api.request("GET", "/api/user/current")
        if response.status_code in (401, 403):
            raise BiAuthError(
                f"Metabase refused the API key: HTTP {response.status_code} {error_text(response)}",
                hook=self.hook.label,
                status=response.status_code,
                hint="check `api_key` (Admin > Settings > Authentication > API keys)",
            )
        if response.status_code != 200:
            raise self._error("GET /api/user/current", response)

    def trigger(self, target: str) -> Outcome:
        db = self.hook.database_id
        tasks = self._tasks() if self.hook.wait else []
        running = [t for t in tasks if t.get("status") == "started"]
        if running:
            names = ", ".join(sorted({str(t.get("task")) for t in running}))
            return Busy(
                min(t["id"] for t in running) - 1, f"Metabase is running {names} for database {db}"
            )
        baseline = max((int(t["id"]) for t in tasks), default=0)
        steps = ["sync_schema", *(["rescan_values"] if self.hook.rescan else [])]
        for step in steps:
            response = self._api_call("POST", f"/api/database/{db}/{step}")
            if response.status_code != 200:
                raise self._error(f"POST /api/database/{db}/{step}", response)
        if not self.hook.wait:
            return Done(True, f"{' + '.join(steps)} accepted (not waited for: wait is false)")
        return Running(baseline, " + ".join(steps))

    def poll(self, target: str, job: Any) -> Running | Done:
        tasks = [t for t in self._tasks() if int(t["id"]) > int(job)]
        failed = [t for t in tasks if t.get("status") in ("failed", "unknown")]
        if failed:
            task = failed[0]
            return Done(False, f"task {task.get('task')} {task.get('status')}: {_message(task)}")
        if not tasks or any(t.get("status") == "started" for t in tasks):
            return Running(job, f"{len(tasks)} task(s) so far")
        names = ", ".join(sorted({str(t.get("task")) for t in tasks}))
        return Done(True, f"{len(tasks)} task(s) finished ({names})")

    def after(self, succeeded: Sequence[str]) -> str | None:
        if not self.hook.invalidate_cache:
            return None
        db = self.hook.database_id
        response = self._api_call(
            "POST", "/api/cache/invalidate", params={"database": db, "include": "overrides"}
        )
        body = _json(response)
        if response.status_code == 200:
            return f"cache: {body.get('message', 'invalidated')}"
        if response.status_code == 404 and body.get("count") == -1:
            return "cache: nothing to invalidate"
        hint = None
        if response.status_code == 402:
            hint = "cache invalidation needs Metabase Pro/Enterprise; set `invalidate_cache: false`"
        raise BiError(
            f"POST /api/cache/invalidate: HTTP {response.status_code} {error_text(response)}",
            hook=self.hook.label,
            status=response.status_code,
            hint=hint,
        )

    def _tasks(self) -> list[dict[str, Any]]:
        """This database's task rows, newest first."""
        response = self._api_call("GET", "/api/task/", params={"limit": TASK_PAGE, "offset": 0})
        if response.status_code == 403:
            raise BiError(
                "GET /api/task/: HTTP 403: the API key may not read the task history",
                hook=self.hook.label,
                status=403,
                hint="give the key's group monitoring access, or set `wait: false`",
            )
        if response.status_code != 200:
            raise self._error("GET /api/task/", response)
        rows = _json(response).get("data") or []
        mine = [t for t in rows if t.get("db_id") == self.hook.database_id and "id" in t]
        return sorted(mine, key=lambda t: int(t["id"]), reverse=True)

    def _api_call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self._api is not None, "sign_in() first"
        return self._api.request(method, path, **kwargs)

    def _error(self, what: str, response: httpx.Response) -> BiError:
        hint = "check `database_id`" if response.status_code == 404 else None
        return BiError(
            f"{what}: HTTP {response.status_code} {error_text(response)}",
            hook=self.hook.label,
            status=response.status_code,
            hint=hint,
        )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(task: dict[str, Any]) -> str:
    details = task.get("task_details")
    if isinstance(details, dict):
        return str(details.get("message") or details.get("exception") or details)
    return str(details or "no details")
