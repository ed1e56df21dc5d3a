"""The root of mdstack's error tree, kept in the bottom layer so connectors can raise it.

::

    MdstackError                    (retryable=False unless said otherwise)
     └── ConnectorError             a source failed: config, network, bad data
          ├── HttpStatusError       an HTTP answer retrying cannot fix (4xx): ``status``
          └── SourceUnavailable     timeouts, 429, 5xx, resets (retryable)
               └── RetriesExhausted     the retry policy gave up: ``status``, ``reason``,
                    │                   ``attempts`` (``connectors.http``)
                    └── DeadlineExceeded    ... because its time budget ran out

``stack/errors.py`` extends this tree (config, secret, schema, warehouse, check)
and re-exports it. Retry policy reads only ``exc.retryable``.
"""

from __future__ import annotations

from typing import Any


class MdstackError(Exception):
    """Base of every error mdstack raises on purpose.

    The message is assembled from structured fields, so every error says what
    failed, where (source / stream / model / key) and what to do (``hint``).
    Errors stay picklable: Prefect moves them between processes.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        stream: str | None = None,
        model: str | None = None,
        key: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.stream = stream
        self.model = model
        self.key = key
        self.hint = hint
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self._render())

    def _render(self) -> str:
        where = ", ".join(
            f"{label} {value!r}"
            for label, value in (
                ("source", self.source),
                ("stream", self.stream),
                ("model", self.model),
                ("key", self.key),
            )
            if value
        )
        text = f"{self.message} ({where})" if where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only fields need an explicit pickle recipe
        return (_rebuild, (type(self), self.message, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "stream": self.stream,
            "model": self.model,
            "key": self.key,
            "hint": self.hint,
            "retryable": self.retryable,
        }


def _rebuild(cls: type[MdstackError], message: str, fields: dict[str, Any]) -> MdstackError:
    return cls(message, **fields)


class ConnectorError(MdstackError):
    """A source failed: bad config, refused credentials, malformed data."""


class SourceUnavailable(ConnectorError):
    """The source could not be reached for now (timeout, 429, 5xx, reset); retry later."""

    retryable = True


class HttpStatusError(ConnectorError):
    """An HTTP request was answered with a status that retrying cannot fix (400, 403, 404...).

    The message names the request (secrets masked) and the server's own words.
    """

    def __init__(self, message: str, *, status: int, **fields: Any) -> None:
        self.status = status
        super().__init__(message, **fields)

    def _fields(self) -> dict[str, object]:
        return {**super()._fields(), "status": self.status}


class RetriesExhausted(SourceUnavailable):
    """Every attempt failed in a retryable way (timeouts, refused connections, 429, 5xx).

    ``status`` is the last HTTP status (None for a transport failure), ``reason`` the last
    failure in short (``HTTP 503``, ``ReadTimeout``), ``detail`` its text (the server's
    words, secrets masked), ``attempts`` how many were made; ``method`` and ``url`` (secrets
    masked, or the caller's label for a secret URL) name the HTTP request, when it was one.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        attempts: int,
        status: int | None = None,
        detail: str = "",
        method: str = "",
        url: str = "",
        **fields: Any,
    ) -> None:
        self.reason = reason
        self.attempts = attempts
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        super().__init__(message, **fields)

    def _fields(self) -> dict[str, object]:
        fields = {
            "reason": self.reason,
            "attempts": self.attempts,
            "status": self.status,
            "detail": self.detail,
            "method": self.method,
            "url": self.url,
        }
        return {**super()._fields(), **fields}


class DeadlineExceeded(RetriesExhausted):
    """The time budget ran out before an attempt succeeded (or the next wait would pass it)."""
