"""A generic webhook: one HTTP request telling a receiver the run was published.

The contract, ours to define: the request carries the run as JSON
(``pipeline``, ``region``, ``run_id``, ``published_at``; or ``body`` with
``{{ name }}`` placeholders for those); ``2xx`` is success; ``409`` means the
receiver is already refreshing (``on_conflict``: ``wait`` sends again every
``poll_interval``, ``skip`` reports skipped); ``429`` (``Retry-After``) and ``5xx``
are retried; anything else fails with the receiver's own words. The URL and the
header values are secrets: messages say ``POST webhook``, never the URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.http import error_text
from stack.bi.base import Busy, Done, Outcome, Refresher, reveal
from stack.config.bi import WebhookHook

__all__ = ["WebhookRefresher", "render_body"]

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class WebhookRefresher(Refresher[WebhookHook]):
    """Calls one webhook with the run's details."""

    def targets(self) -> Sequence[str]:
        return ["webhook"]

    def trigger(self, target: str) -> Outcome:
        hook = self.hook
        run = self.run_info.as_dict()
        client = self.http(
            "", headers={k: reveal(v) for k, v in hook.headers.items()}, label="webhook"
        )
        body = render_body(hook.body, run) if hook.body is not None else run
        kwargs: dict[str, Any] = {"params": body} if hook.method == "GET" else {"json": body}
        # the URL exactly as written (a base URL would gain a trailing slash)
        response = client.request(hook.method, reveal(hook.url), **kwargs)
        status = response.status_code
        if 200 <= status < 300:
            return Done(True, f"HTTP {status}")
        if status == 409:
            return Busy(None, f"the receiver answered 409: {error_text(response)}")
        return Done(False, f"HTTP {status}: {error_text(response)}")


def render_body(value: Any, variables: Mapping[str, str]) -> Any:
    """Fill ``{{ name }}`` in the strings of a JSON-like body; unknown names stay as written.

    >>> render_body({"text": "run {{ run_id }} of {{pipeline}}"}, {"run_id": "7", "pipeline": "p"})
    {'text': 'run 7 of p'}
    """
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {k: render_body(v, variables) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_body(v, variables) for v in value]
    return value
