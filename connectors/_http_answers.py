"""How the HTTP policy reads a failed answer: the server's own words and ``Retry-After``.

Public names are re-exported by :mod:`connectors.http`.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

ERROR_TEXT_LIMIT = 300
"""Characters of the server's words kept in an error."""

_MESSAGE_KEYS = ("detail", "msg", "errors", "title")


class Answer(Protocol):
    """What the policy reads of a response: httpx's and requests' both fit."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


def error_text(
    response: Answer, redact: Callable[[str], str] = str, limit: int = ERROR_TEXT_LIMIT
) -> str:
    """The server's own words for a failed answer, on one line, secrets masked, trimmed.

    The usual JSON error shapes are read (``message``; ``{"error": {"code", "message"}}``;
    OAuth2's ``error`` + ``error_description``; ``detail``, ``msg``, ``errors``,
    ``title``); any other body is shown as text.
    """
    try:
        text = _json_message(json.loads(response.content))
    except ValueError:
        text = ""
    if not text:
        text = response.content[: limit * 2].decode("utf-8", "replace")
    text = " ".join(redact(text).split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[:limit] + "..."


def _json_message(body: object) -> str:
    if not isinstance(body, dict):
        return ""
    message, error = body.get("message"), body.get("error")
    if isinstance(message, str) and message:
        return message
    if isinstance(error, dict):  # Power BI, Google: {"error": {"code", "message"}}
        parts = [str(error.get(k) or "") for k in ("code", "message")]
        return ": ".join(p for p in parts if p) or json.dumps(error, default=str)
    if isinstance(error, str) and error:  # OAuth2: {"error", "error_description"}
        description = body.get("error_description")
        if isinstance(description, str) and description.strip():
            return f"{error}: {description.strip().splitlines()[0]}"
        return error
    for key in _MESSAGE_KEYS:
        value = body.get(key)
        if value:
            return value if isinstance(value, str) else json.dumps(value, default=str)
    return ""


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, from seconds or an HTTP date (a past date is 0); ``None``
    if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
