"""What the HTTP policy hides: secrets in URLs, requests, messages and httpx's log lines.

:func:`mask_url` shows secret-looking query values and URL passwords as ``***``;
:class:`Redactor` replaces known secret values in any text, and adds those a request
carries (secret-looking headers such as ``Authorization``, query values, a password).
A filter on the ``httpx`` logger masks the URLs of its ``HTTP Request: ...`` lines the same
way, and shows a label instead of a URL a labelled client sent (a webhook's URL is a
secret as a whole). Public names are re-exported by :mod:`connectors.http`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator

import httpx

MASK = "***"
SECRET_NAME = re.compile(
    r"key|token|secret|passw|pwd|signature|^sig$|auth|credential|session|cookie", re.IGNORECASE
)
"""Header and query parameter names whose values are secrets."""


def mask_url(url: httpx.URL | str) -> str:
    """``url`` with secret-looking query values and any password shown as ``***``."""
    url = httpx.URL(url)
    if url.password:
        url = url.copy_with(username=url.username, password=MASK)
    if url.query:
        params = [(k, MASK if SECRET_NAME.search(k) else v) for k, v in url.params.multi_items()]
        url = url.copy_with(params=params)
    return str(url).replace("%2A%2A%2A", MASK)


def _request_secrets(request: httpx.Request) -> Iterator[str]:
    """The secrets a request carries: secret-looking header and query values, a password."""
    for name, value in request.headers.items():
        if SECRET_NAME.search(name):
            yield value
            yield from value.split()[1:]  # "Bearer <token>": the token alone, if echoed
    for name, value in request.url.params.multi_items():
        if SECRET_NAME.search(name):
            yield value
    if request.url.password:
        yield request.url.password


class Redactor:
    """Replaces known secret values in text with ``***``; new values (a fresh token) can be
    added from any thread."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on (values under 4 characters are ignored)."""
        if len(secret) >= 4 and secret not in self._secrets:  # replaced whole: thread-safe
            self._secrets = tuple(sorted({*self._secrets, secret}, key=len, reverse=True))

    def for_request(self, request: httpx.Request) -> Redactor:
        """A redactor that also masks what ``request`` carries."""
        return Redactor((*self._secrets, *_request_secrets(request)))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


LABELLED: dict[str, str] = {}
"""URLs sent by a labelled client (secret as a whole) -> the label httpx's log shows."""


class _MaskUrls(logging.Filter):
    """Masks the URLs httpx logs (``HTTP Request: GET <url> ...``): secret query values,
    passwords, and whole URLs a labelled client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            record.args = tuple(_loggable(a) if isinstance(a, httpx.URL) else a for a in args)
        return True


def _loggable(url: httpx.URL) -> str:
    return LABELLED.get(str(url)) or mask_url(url)


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _MaskUrls) for f in _httpx_log.filters):
    _httpx_log.addFilter(_MaskUrls())


def label_url(url: httpx.URL, label: str) -> None:
    """Show ``label`` instead of ``url`` in httpx's log lines from now on."""
    if len(LABELLED) > 1000:  # a few webhooks per run; never grows without bound
        LABELLED.clear()
    LABELLED[str(url)] = label
