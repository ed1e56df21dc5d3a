"""BI refresh hooks: after a good publish, tell the dashboards to pick up the new data.

One hook per entry of ``bi:`` in ``stack.yml`` (:data:`stack.config.bi.BiHook`, told
apart by ``type``): ``tableau``, ``powerbi``, ``metabase``, ``superset``, ``looker``,
``webhook``. Each triggers its refreshes, polls them to completion within its
``timeout``, retries transient HTTP failures, and handles "already refreshing"
per ``on_conflict``; see :mod:`stack.bi.base` for the template they share and
each tool's module for its endpoints.

- :func:`refresh_all` runs a list of hooks after a publish; with
  ``published=False`` it runs nothing and says so.
- :func:`refresh` runs one hook (what a Prefect task per hook calls).

Neither raises: every outcome is a :class:`HookResult` (``succeeded``,
``failed``, ``timed_out``, ``skipped``), so a failing hook never stops the
others. Tool modules are imported when a hook of their type runs, so
``tableauserverclient`` (extra ``bi``) is needed only by Tableau hooks.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import SecretStr

from stack.bi.base import HookResult, HookStatus, Refresher, RunInfo, TargetResult
from stack.bi.exceptions import BiAuthError, BiDeadline, BiError, BiUnavailable
from stack.config.bi import HookBase

__all__ = [
    "NOT_PUBLISHED",
    "REFRESHERS",
    "BiAuthError",
    "BiDeadline",
    "BiError",
    "BiUnavailable",
    "HookResult",
    "HookStatus",
    "RunInfo",
    "TargetResult",
    "refresh",
    "refresh_all",
    "refresher",
    "resolve_hook",
    "skip_all",
]

log = logging.getLogger("stack.bi")

REFRESHERS: dict[str, str] = {
    "tableau": "stack.bi.tableau:TableauRefresher",
    "powerbi": "stack.bi.powerbi:PowerBIRefresher",
    "metabase": "stack.bi.metabase:MetabaseRefresher",
    "superset": "stack.bi.superset.refresher:SupersetRefresher",
    "looker": "stack.bi.looker:LookerRefresher",
    "webhook": "stack.bi.webhook:WebhookRefresher",
}
"""Hook type → ``module:class`` of its :class:`Refresher`, imported on first use."""

NOT_PUBLISHED = "not run: the publish did not succeed (BI hooks fire only after a good publish)"


_H = TypeVar("_H", bound=HookBase)


def resolve_hook(hook: _H, resolve: Callable[[Any, str], Any], where: str = "bi") -> _H:
    """``hook`` with its secret references (``${vault:...}``, ``${env:...}``) resolved.

    Loading ``stack.yml`` wraps a secret field's *reference* in ``SecretStr``, which
    :meth:`stack.secrets.Resolver.resolve` passes over; this unwraps the config,
    resolves it and validates it again, so secret fields hold the values (still
    ``SecretStr``) and plain fields plain text.

    Args:
        hook: a validated ``bi:`` entry.
        resolve: :meth:`stack.secrets.Resolver.resolve` (``value, where -> value``).
        where: the entry's key path, for the resolver's errors (``bi[0]``).

    Raises:
        SecretError: from ``resolve``, naming the reference, never a value.
    """
    resolved = resolve(_plain(hook.model_dump()), where)
    return type(hook).model_validate(_plain(resolved))


def refresher(hook: HookBase, run: RunInfo | None = None) -> Refresher:
    """The :class:`Refresher` for ``hook``, its module imported now.

    Raises:
        ImportError: the tool's client library is missing (``pip install 'mdstack[bi]'``).
    """
    module, _, name = REFRESHERS[str(getattr(hook, "type", ""))].partition(":")
    return getattr(importlib.import_module(module), name)(hook, run)


def refresh(hook: HookBase, run: RunInfo | None = None) -> HookResult:
    """Run one hook: trigger its refreshes and wait for them. Never raises.

    Args:
        hook: one entry of ``bi:``.
        run: the run whose publish fired it (sent by webhooks, named in PDT sources).

    Returns:
        The hook's result; ``failed`` with the reason when it could not even start.
    """
    kind = str(getattr(hook, "type", ""))
    try:
        runner = refresher(hook, run)
    except ImportError as exc:
        return _result(hook, "failed", f"{exc.name or exc} is not installed: " + _INSTALL)
    except Exception as exc:  # an unknown type, a broken install: still a result
        return _result(hook, "failed", f"cannot run a {kind!r} hook: {type(exc).__name__}")
    return runner.refresh()


def refresh_all(
    hooks: Iterable[HookBase], published: bool, run: RunInfo | None = None
) -> list[HookResult]:
    """Run every hook, one after the other, if the publish succeeded.

    Args:
        hooks: the ``bi:`` entries, in order.
        published: whether the publish (the swap into the published environment)
            succeeded. When False nothing is called and every hook is ``skipped``.
        run: the run whose publish fired them.

    Returns:
        One result per hook, in order; a failing hook does not stop the next.
    """
    hooks = list(hooks)
    if not published:
        log.info("BI hooks not run: the publish did not succeed")
        return skip_all(hooks, NOT_PUBLISHED)
    return [refresh(hook, run) for hook in hooks]


def skip_all(hooks: Iterable[HookBase], reason: str) -> list[HookResult]:
    """A ``skipped`` result per hook, for a reason (no request is made)."""
    return [_result(hook, "skipped", reason) for hook in hooks]


_INSTALL = "pip install 'mdstack[bi]'"


def _result(hook: HookBase, status: HookStatus, detail: str) -> HookResult:
    return HookResult(hook.label, str(getattr(hook, "type", "")), status, 0.0, detail)


def _plain(value: Any) -> Any:
    """``SecretStr`` unwrapped anywhere in a dumped config (the validation rewraps them)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
