"""Tableau Server / Cloud: extract refresh of data sources and workbooks, through
``tableauserverclient`` (TSC).

Sign-in is ``POST /api/{v}/auth/signin`` with a personal access token; each
target is looked up by name (``GET .../datasources?filter=name:eq:<name>``), then
"Update Data Source Now" / "Update Workbook Now" (``POST .../{id}/refresh``)
returns a job that is polled with ``GET .../jobs/{job-id}`` until it has
``completedAt``: ``finishCode`` 0 is success, 1 failure, 2 cancelled.

A refresh already queued for the item answers ``409093``; TSC turns that into a
``None`` job, which is :class:`Busy` with no blocker (Tableau does not name the
queued job), so ``wait`` tries again every ``poll_interval``.

TSC speaks ``requests``; its session is a :class:`_RetryingSession`, which sends each
request by the shared HTTP policy (:func:`connectors.http.retry_call`), so the same
retries, timeouts and deadline apply as for the other tools. TSC's own
``jobs.wait_for_job`` is not used: its backoff (0.5 s growing to 30 s) ignores
``poll_interval``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import requests
import tableauserverclient as TSC
from tableauserverclient.server.endpoint.exceptions import (
    FailedSignInError,
    NonXMLResponseError,
    ServerResponseError,
    TableauError,
)

from connectors.http import Deadline, Redactor, RetryPolicy, judge, mask_url, retry_call
from stack.bi.base import Busy, Done, Outcome, Refresher, Running, reveal
from stack.bi.exceptions import BiAuthError, BiError
from stack.config.bi import TableauHook

__all__ = ["TableauRefresher"]

_FINISH = {0: "succeeded", 1: "failed", 2: "was cancelled"}


class TableauRefresher(Refresher[TableauHook]):
    """Refreshes a Tableau hook's data sources and workbooks and waits for their jobs."""

    _server: TSC.Server | None = None

    def targets(self) -> Sequence[str]:
        return [f"datasource:{n}" for n in self.hook.datasources] + [
            f"workbook:{n}" for n in self.hook.workbooks
        ]

    def sign_in(self) -> None:
        hook = self.hook
        server = TSC.Server(
            hook.server.rstrip("/"),
            session_factory=lambda: _RetryingSession(
                self.policy, self.deadline, hook.request_timeout, Redactor(self._secrets)
            ),
        )
        server.version = hook.api_version
        self._server = server
        auth = TSC.PersonalAccessTokenAuth(hook.token_name, reveal(hook.token_secret), hook.site)
        with self._translate("sign in"):
            server.auth.sign_in(auth)

    def trigger(self, target: str) -> Outcome:
        kind, name = target.split(":", 1)
        server = self._signed_in()
        endpoint = server.datasources if kind == "datasource" else server.workbooks
        item_id = self._find(endpoint, kind, name)
        with self._translate(f"refresh {kind} {name!r}"):
            job = endpoint.refresh(item_id, incremental=self.hook.incremental)
        if job is None:
            return Busy(None, f"a refresh of {kind} {name!r} is already queued (409093)")
        return Running(job.id, f"job {job.id}")

    def poll(self, target: str, job: Any) -> Running | Done:
        with self._translate(f"query job {job}"):
            item = self._signed_in().jobs.get_by_id(job)
        if item.completed_at is None:
            return Running(job, f"job {job}, progress {item.progress or 0}%")
        code = item.finish_code
        outcome = _FINISH.get(code, f"ended with finishCode {code}")
        notes = "; ".join(n for n in (item.notes or []) if n)
        detail = f"job {job} {outcome}" + (f": {notes}" if notes else "")
        return Done(code == 0, detail)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            if server.is_signed_in():
                server.auth.sign_out()
        finally:
            server.close()

    def _signed_in(self) -> TSC.Server:
        if self._server is None:
            raise BiError("not signed in", hook=self.hook.label)
        return self._server

    def _find(self, endpoint: Any, kind: str, name: str) -> str:
        """The id of the one ``kind`` called ``name`` on the site."""
        with self._translate(f"look up {kind} {name!r}"):
            found = [item for item in endpoint.filter(name=name) if item.name == name]
        site = self.hook.site or "(default)"
        if not found:
            raise BiError(
                f"no {kind} named {name!r} on site {site}",
                hook=self.hook.label,
                hint=f"check the name under `{kind}s:` (names are case-sensitive)",
            )
        if len(found) > 1:
            projects = ", ".join(sorted(str(i.project_name) for i in found))
            raise BiError(
                f"{len(found)} {kind}s named {name!r} on site {site} (projects: {projects})",
                hook=self.hook.label,
                hint="give them distinct names; the hook refreshes by name",
            )
        return found[0].id

    @contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        """TSC's errors as mdstack's, in one place (``raise ... from exc``)."""
        try:
            yield
        except BiError:
            raise
        except FailedSignInError as exc:
            raise BiAuthError(
                f"{doing}: Tableau refused the sign-in ({exc.code} {exc.summary}: {exc.detail})",
                hook=self.hook.label,
                status=401,
                hint="check `token_name`, `token_secret` and `site` (PATs expire when unused)",
            ) from None
        except ServerResponseError as exc:
            raise BiError(
                f"{doing}: {exc.code} {exc.summary}: {exc.detail}", hook=self.hook.label
            ) from None
        except NonXMLResponseError as exc:
            raise BiError(f"{doing}: unexpected non-XML answer", hook=self.hook.label) from exc
        except TableauError as exc:
            raise BiError(f"{doing}: {type(exc).__name__}: {exc}", hook=self.hook.label) from exc


class _RetryingSession(requests.Session):
    """A ``requests.Session`` (what TSC speaks) whose every request is sent by the HTTP
    policy: retried statuses and connection errors, ``Retry-After``, the hook's deadline,
    and a timeout on each attempt. Giving up raises through TSC as
    :class:`~connectors.errors.RetriesExhausted`, which the hook's template translates."""

    def __init__(
        self, policy: RetryPolicy, deadline: Deadline, timeout: float, redact: Redactor
    ) -> None:
        super().__init__()
        self.policy = policy
        self.deadline = deadline
        self.timeout = timeout
        self.redact = redact

    def request(  # type: ignore[override]  # TSC passes everything by keyword; so do we
        self, method: str | bytes, url: str | bytes, **kwargs: Any
    ) -> requests.Response:
        method_text = method.decode() if isinstance(method, bytes) else method
        url_text = url.decode() if isinstance(url, bytes) else url

        def attempt(limit: float) -> requests.Response:
            return super(_RetryingSession, self).request(
                method_text, url_text, **{**kwargs, "timeout": limit}
            )

        return retry_call(
            attempt,
            policy=self.policy,
            what=f"{method_text.upper()} {mask_url(url_text)}",
            timeout=self.timeout,
            deadline=self.deadline,
            transient=(requests.ConnectionError, requests.Timeout),
            check=lambda response: judge(response, self.policy, self.redact),
            redact=self.redact,
        )
