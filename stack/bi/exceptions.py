"""Errors of the BI refresh hooks, extending mdstack's root tree.

::

    MdstackError
     └── BiError                  a BI tool refused or failed a request
          ├── BiAuthError          sign-in refused: wrong secret, unknown client, no access
          └── BiUnavailable        429 / 5xx / timeouts / resets, retries used up (retryable)
               └── BiDeadline      the hook's ``timeout`` ran out while retrying (retryable)

A refresh that *runs* and fails is not an error: it is a
:class:`stack.bi.HookResult` with status ``failed``. These errors are what the
hooks raise internally; :func:`stack.bi.refresh` turns every one of them into a
result, so a failing hook never stops the others. No message ever carries a
secret: messages name the hook, the endpoint (method and URL with secret-looking
query values masked; never a webhook's URL) and the tool's own error text, scrubbed.
HTTP errors of :mod:`connectors.http` become these in
:meth:`stack.bi.base.Refresher._translate_http`.
"""

from __future__ import annotations

from connectors.errors import MdstackError

__all__ = ["BiAuthError", "BiDeadline", "BiError", "BiUnavailable"]


class BiError(MdstackError):
    """A BI tool refused or failed a request. ``hook`` names the hook, ``status`` the HTTP code."""

    def __init__(
        self, message: str, *, hook: str | None = None, status: int | None = None, **fields
    ) -> None:
        self.hook = hook
        self.status = status
        super().__init__(message, **fields)

    def _render(self) -> str:
        text = super()._render()
        return f"BI hook {self.hook!r}: {text}" if self.hook else text

    def _fields(self) -> dict[str, object]:
        return {**super()._fields(), "hook": self.hook, "status": self.status}


class BiAuthError(BiError):
    """Sign-in refused (wrong secret, unknown client or token name, missing permission)."""


class BiUnavailable(BiError):
    """The tool could not be reached or kept answering 429/5xx; retry later."""

    retryable = True


class BiDeadline(BiUnavailable):
    """The hook's ``timeout`` ran out while a request was being retried."""
