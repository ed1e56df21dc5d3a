"""The refresh every BI hook follows, and what it reports.

:class:`Refresher` is a template, as airbyte-cdk's ``Stream.read()`` is: it owns
the deadline, the conflict policy, polling and the result; a tool implements
only the verbs it knows::

    sign_in()                     log in, keep a token            (optional)
    targets()                     what to refresh: datasets, datagroups...
    trigger(target) -> Outcome    Running(job) | Done(ok) | Busy(blocker)
    poll(target, job) -> Outcome  Running(job) | Done(ok)
    after(succeeded) -> detail    e.g. cache invalidation         (optional)
    close()                       log out, close clients          (optional)

All targets are triggered first, then polled together every ``poll_interval``
until each is done or the hook's ``timeout`` runs out. ``Busy`` (the tool says a
refresh is already running) follows ``on_conflict``: ``skip`` reports the target
skipped; ``wait`` polls the blocker when the tool names it (else simply tries
again each round) and triggers ours once it is gone, since the running refresh
may have started before the publish and read the old data.

Every outcome, error included, becomes a frozen :class:`HookResult`; no message
carries a secret of the hook (each is scrubbed, as are all values registered with
:mod:`stack.redact`).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from connectors.errors import DeadlineExceeded, HttpStatusError, RetriesExhausted
from connectors.http import Deadline, RetryPolicy, client
from stack.bi.exceptions import BiDeadline, BiError, BiUnavailable
from stack.config.bi import HookBase
from stack.redact import MASK, redact

__all__ = [
    "Busy",
    "Done",
    "HookResult",
    "HookStatus",
    "Outcome",
    "Refresher",
    "RunInfo",
    "Running",
    "TargetResult",
    "reveal",
]

log = logging.getLogger("stack.bi")

HookStatus = Literal["succeeded", "failed", "timed_out", "skipped"]
H = TypeVar("H", bound=HookBase)


@dataclass(frozen=True)
class RunInfo:
    """The run whose publish fired the hooks: what a webhook sends, what logs name."""

    pipeline: str = "mdstack"
    region: str = "default"
    run_id: str = ""
    published_at: datetime | None = None
    """When the publish happened; a naive time is UTC (the warehouse's clock)."""

    def as_dict(self) -> dict[str, str]:
        """The run as a webhook sends it: ``published_at`` is ISO 8601 with its offset, so
        a receiver in another time zone reads the same instant."""
        published = self.published_at
        if published is not None and published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        return {
            "pipeline": self.pipeline,
            "region": self.region,
            "run_id": self.run_id,
            "published_at": published.isoformat() if published else "",
        }


@dataclass(frozen=True)
class TargetResult:
    """How one target of a hook (a data source, a dataset, a datagroup...) ended."""

    target: str
    status: HookStatus
    seconds: float
    detail: str


@dataclass(frozen=True)
class HookResult:
    """How one hook ended. ``status`` is the worst of its targets': failed, then timed_out;
    skipped only if every target was skipped."""

    name: str
    type: str
    status: HookStatus
    seconds: float
    detail: str
    targets: tuple[TargetResult, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing failed or timed out."""
        return self.status in ("succeeded", "skipped")


@dataclass(frozen=True)
class Running:
    """The refresh runs; ``job`` is whatever :meth:`Refresher.poll` needs to follow it."""

    job: Any
    detail: str = ""


@dataclass(frozen=True)
class Done:
    """The refresh is over: succeeded (``ok``) or failed, in the tool's words (``detail``)."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class Busy:
    """The tool says a refresh of this target already runs; ``blocker`` is its job when the
    tool names it (then it is polled with :meth:`Refresher.poll`), else ``None``."""

    blocker: Any = None
    detail: str = "a refresh is already running"


Outcome = Running | Done | Busy


def reveal(value: SecretStr | str) -> str:
    """A secret's text, for the HTTP edge only."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@dataclass
class _Pending:
    state: Running | Busy
    started: float = field(default_factory=time.monotonic)


class Refresher(ABC, Generic[H]):
    """Refreshes what one hook names. Subclasses implement the verbs in the module docstring.

    Args:
        hook: the hook's configuration.
        run: the run whose publish fired the hook.
        clock, sleep: injectable time, for tests.
    """

    def __init__(
        self,
        hook: H,
        run: RunInfo | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.hook = hook
        self.run_info = run or RunInfo()
        self.policy = RetryPolicy(attempts=hook.retries + 1, backoff=hook.backoff)
        self._clock = clock
        self._sleep = sleep
        self.deadline = Deadline(hook.timeout, clock=clock, sleep=sleep)
        self._clients: list[httpx.Client] = []
        self._secrets = tuple(v for v in _secret_values(hook) if len(v) >= 4)

    # ---- what a tool implements -------------------------------------------------------

    @abstractmethod
    def targets(self) -> Sequence[str]:
        """What this hook refreshes, as short names for results (``datasource:Sales``)."""

    def sign_in(self) -> None:
        """Log in (called once, before the first trigger). Raise :class:`BiAuthError`."""

    @abstractmethod
    def trigger(self, target: str) -> Outcome:
        """Start refreshing ``target``."""

    def poll(self, target: str, job: Any) -> Running | Done:
        """Where the refresh ``job`` of ``target`` is now. Synchronous tools never get here."""
        raise NotImplementedError(f"{type(self).__name__} has no asynchronous jobs")

    def after(self, succeeded: Sequence[str]) -> str | None:
        """Runs once the refreshes are over, with the targets that succeeded (none: not called).
        Returns a detail for the result; raise :class:`BiError` to fail the hook."""
        return None

    def close(self) -> None:
        """Log out (best effort). HTTP clients made with :meth:`http` are closed anyway."""

    # ---- for the tools to use -----------------------------------------------------------

    def http(
        self, base_url: str, headers: dict[str, str] | None = None, label: str | None = None
    ) -> httpx.Client:
        """A client on the shared HTTP policy (:mod:`connectors.http`) with this hook's
        retries, ``request_timeout`` and deadline, closed at the end. Responses come back
        whatever their status; retries used up raise (and end as a failed or timed-out
        result). ``label`` stands for the URL in messages when the URL may hold a secret."""
        api = client(
            self.policy,
            timeout=self.hook.request_timeout,
            base_url=base_url.rstrip("/"),  # "": requests take absolute URLs
            headers=headers,
            deadline=self.deadline,
            secrets=self._secrets,
            label=label,
        )
        self._clients.append(api)
        return api

    def scrub(self, text: str) -> str:
        """``text`` without this hook's secrets or any registered secret."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return redact(text)

    # ---- the template -------------------------------------------------------------------

    def refresh(self) -> HookResult:
        """Sign in, trigger every target, poll until done or out of time; never raises."""
        self.deadline = Deadline(self.hook.timeout, clock=self._clock, sleep=self._sleep)
        results: dict[str, TargetResult] = {}
        pending: dict[str, _Pending] = {}
        extra: str | None = None
        failure: TargetResult | None = None
        try:
            with self._translate_http():
                self.sign_in()
            for target in self.targets():
                self._step(target, None, pending, results)
            while pending and not self.deadline.expired:
                self.deadline.sleep(self.hook.poll_interval)
                if self.deadline.expired:
                    break
                for target, item in list(pending.items()):
                    self._step(target, item, pending, results)
            for target, item in pending.items():
                results[target] = self._result(target, item.started, "timed_out", _late(item))
            succeeded = [t for t, r in results.items() if r.status == "succeeded"]
            if succeeded:
                with self._translate_http():
                    extra = self.after(succeeded)
        except Exception as exc:  # sign-in or after(): the hook as a whole
            failure = self._result("(hook)", self._clock() - self.deadline.elapsed(), *_fail(exc))
        finally:
            self._close()
        return self._summary(list(results.values()), failure, extra)

    def _step(
        self,
        target: str,
        item: _Pending | None,
        pending: dict[str, _Pending],
        results: dict[str, TargetResult],
    ) -> None:
        """Trigger (``item`` None), poll, or re-trigger one target; file what came out."""
        started = item.started if item else self._clock()
        status: HookStatus
        try:
            with self._translate_http():
                outcome = self._next(target, item)
        except Exception as exc:
            pending.pop(target, None)
            status, detail = _fail(exc)
            if status == "timed_out" and item is not None:
                detail = _late(item)
            results[target] = self._result(target, started, status, detail)
            return
        if isinstance(outcome, Done):
            pending.pop(target, None)
            status = "succeeded" if outcome.ok else "failed"
            results[target] = self._result(target, started, status, outcome.detail)
            log.info(
                "BI hook %r: %s %s: %s", self.hook.label, target, status, self.scrub(outcome.detail)
            )
        elif isinstance(outcome, Busy) and item is None and self.hook.on_conflict == "skip":
            results[target] = self._result(target, started, "skipped", outcome.detail)
            log.info(
                "BI hook %r: %s skipped: %s", self.hook.label, target, self.scrub(outcome.detail)
            )
        else:
            if item is None or type(item.state) is not type(outcome):
                what = self.scrub(_describe(outcome))
                log.info("BI hook %r: %s: %s", self.hook.label, target, what)
            pending[target] = _Pending(outcome, started)

    def _next(self, target: str, item: _Pending | None) -> Outcome:
        if item is None:
            return self.trigger(target)
        state = item.state
        if isinstance(state, Running):
            return self.poll(target, state.job)
        if state.blocker is not None:
            check = self.poll(target, state.blocker)
            if isinstance(check, Running):
                return state  # still blocked
        return self.trigger(target)

    @contextmanager
    def _translate_http(self) -> Iterator[None]:
        """The HTTP policy's errors as the hook's (``raise ... from exc``), in one place."""
        hook = self.hook.label
        try:
            yield
        except DeadlineExceeded as exc:
            raise BiDeadline(exc.message, hook=hook, status=exc.status) from exc
        except RetriesExhausted as exc:
            hint = "the tool is down or throttling; the run can retry the hook later"
            raise BiUnavailable(exc.message, hook=hook, status=exc.status, hint=hint) from exc
        except HttpStatusError as exc:
            raise BiError(exc.message, hook=hook, status=exc.status) from exc

    def _result(self, target: str, started: float, status: HookStatus, detail: str) -> TargetResult:
        seconds = round(self._clock() - started, 3)
        return TargetResult(target, status, seconds, self.scrub(detail))

    def _summary(
        self, results: list[TargetResult], failure: TargetResult | None, extra: str | None
    ) -> HookResult:
        everything = [*results, *([failure] if failure else [])]
        statuses = {r.status for r in everything}
        status: HookStatus
        if "failed" in statuses:
            status = "failed"
        elif "timed_out" in statuses:
            status = "timed_out"
        elif statuses == {"skipped"}:
            status = "skipped"
        else:
            status = "succeeded"
        if len(everything) == 1 and not extra:
            detail = everything[0].detail
        else:
            lines = [f"{r.target}: {r.status} ({r.detail})" for r in everything]
            detail = "; ".join([*lines, *([extra] if extra else [])])
        result = HookResult(
            name=self.hook.label,
            type=str(getattr(self.hook, "type", "")),
            status=status,
            seconds=round(self.deadline.elapsed(), 3),
            detail=self.scrub(detail),
            targets=tuple(results),
        )
        level = logging.INFO if result.ok else logging.WARNING
        log.log(
            level, "BI hook %r %s in %.1f s: %s", result.name, status, result.seconds, result.detail
        )
        return result

    def _close(self) -> None:
        try:
            self.close()
        except Exception:  # best effort: a failed sign-out changes no result
            log.debug("BI hook %r: close failed", self.hook.label, exc_info=True)
        for api in self._clients:
            api.close()
        self._clients.clear()


def _fail(exc: BaseException) -> tuple[HookStatus, str]:
    """A raised error as (status, detail): out of time is ``timed_out``, the rest ``failed``."""
    if isinstance(exc, BiDeadline):
        return "timed_out", exc.message
    if isinstance(exc, BiError):
        return "failed", exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    log.warning("BI hook: unexpected %s", type(exc).__name__, exc_info=True)
    return "failed", f"unexpected {type(exc).__name__}: {exc}"


def _late(item: _Pending) -> str:
    state = item.state
    if isinstance(state, Busy):
        return f"still blocked by a running refresh ({state.detail})"
    return f"not finished within the timeout ({state.detail or 'running'})"


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, Busy):
        return f"waiting: {outcome.detail}"
    return f"running {outcome.detail}".strip()


def _secret_values(value: Any) -> Iterator[str]:
    """Every ``SecretStr`` text inside a hook's config."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_values(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item)
