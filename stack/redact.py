"""Redaction: resolved secrets never reach a log line, an exception text or an artifact.

Every value :class:`stack.secrets.Resolver` resolves is registered here, in one
process-wide, thread-safe registry, together with its common encodings (the raw
value; URL-encoded, JSON-escaped and ``repr``-escaped when those differ; each
long line of a multi-line value such as a PEM key). Then:

- :func:`redact` replaces every registered value in a text with ``***``; use it
  for exception messages, artifacts, run summaries, anything written out;
- :class:`RedactingFilter` does the same to a log record's message, its args,
  its traceback text and stack info;
- :func:`install_redaction` (idempotent) puts one filter on the root logger's
  handlers, on the loggers ``stack``, ``connectors``, ``dbt`` and ``prefect``
  and their handlers, and wraps the log record factory so that records are
  scrubbed when they are created: handlers attached later (Prefect's API log
  handler, pytest's capture) and child loggers (whose records skip the filters
  of their parents' loggers) are covered too.

Values shorter than :data:`MIN_SECRET_LENGTH` (4) characters are not
registered: masking every ``"1"`` or ``"dev"`` in every line would make logs
unreadable and such a value is no secret worth the name. Registered values stay
registered for the life of the process (a worker running many flows keeps
masking old ones, which is the safe side).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

__all__ = [
    "LOGGERS",
    "MASK",
    "MIN_SECRET_LENGTH",
    "RedactingFilter",
    "install_redaction",
    "redact",
    "register_secret",
]

MASK = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are not registered (see the module docstring)."""
LOGGERS = ("stack", "connectors", "dbt", "prefect")
"""Loggers mdstack emits through; :func:`install_redaction` filters each of them."""
_MIN_LINE_LENGTH = 16
"""A line of a multi-line secret is registered on its own from this length."""


class _Registry:
    """The registered values and one compiled pattern matching any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        forms = {value, quote(value, safe=""), quote_plus(value)}
        forms |= {json.dumps(value)[1:-1], repr(value)[1:-1]}  # as escaped in JSON and reprs
        if "\n" in value:
            lines = (line.strip() for line in value.splitlines())
            forms |= {line for line in lines if len(line) >= _MIN_LINE_LENGTH}
        forms = {form for form in forms if len(form) >= MIN_SECRET_LENGTH}
        with self._lock:
            if forms <= self._values:
                return
            self._values |= forms
            ordered = sorted(self._values, key=len, reverse=True)  # longest match wins
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text

    @property
    def active(self) -> bool:
        return self._pattern is not None


_REGISTRY = _Registry()


def register_secret(value: str) -> None:
    """Mask ``value`` (and its encodings) from now on, everywhere in this process.

    Values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored.
    """
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        _REGISTRY.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``.

    Args:
        text: any text about to leave the process (log, exception, artifact).

    Returns:
        The text, masked; unchanged when nothing is registered.
    """
    return _REGISTRY.redact(text)


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record's message, args, traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub(record)
        return True


def scrub(record: logging.LogRecord) -> logging.LogRecord:
    """Mask registered secrets in ``record`` in place (and return it)."""
    if not _REGISTRY.active:
        return record
    record.msg = _scrub_value(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {key: _scrub_value(arg) for key, arg in record.args.items()}
    elif record.args:
        record.args = tuple(_scrub_value(arg) for arg in record.args)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        masked = redact(record.exc_text)
        if masked != record.exc_text:  # handlers that render exc_info (Rich) would leak it
            record.exc_text, record.exc_info = masked, None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def _scrub_value(value: object) -> object:
    """A str is masked; another object is replaced by its masked text only if it leaks."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float):
        return value  # keeps %d and %f working
    try:
        text, shown = str(value), repr(value)
    except Exception:  # a broken __str__ is the formatter's problem, not ours
        return value
    if redact(text) != text or redact(shown) != shown:
        return redact(text)
    return value


_FILTER = RedactingFilter()
_factory_lock = threading.Lock()


def install_redaction() -> RedactingFilter:
    """Install the redacting filter where mdstack's logs go. Safe to call many times.

    Call it again after a framework (re)configures logging to filter its new
    handlers too; the record factory wrapper already covers records created
    after the first call.

    Returns:
        The (single, process-wide) filter instance.
    """
    root = logging.getLogger()
    targets: list[logging.Filterer] = [*root.handlers]
    for name in LOGGERS:
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
    with _factory_lock:
        current = logging.getLogRecordFactory()
        if not getattr(current, "_mdstack_redacting", False):
            logging.setLogRecordFactory(_redacting_factory(current))
    return _FILTER


def _redacting_factory(inner):
    def factory(*args, **kwargs) -> logging.LogRecord:
        return scrub(inner(*args, **kwargs))

    factory._mdstack_redacting = True
    return factory
