"""Log lines for people (the default) or for log shippers (``--log-format json``).

A JSON line is one object: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
and, where a run is going on, ``run_id``, ``pipeline``, ``region`` and ``stream``; a
record's traceback goes in ``exception``. Those run fields come from
:func:`log_context`, which the engine enters where it starts a stream, so every line
logged while that stream syncs (by the engine, its connector or dbt) says which one it
was, in any thread. Records are scrubbed of secrets when they are created
(:mod:`stack.redact`), so no line carries one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

from stack.redact import redact

LogFormat = Literal["human", "json"]
LOG_FORMAT_ENV = "MDSTACK_LOG_FORMAT"
"""``--log-format``, kept in the environment: Prefect sets up its logging after the
command line has read the option, and a deployment's worker is started without it."""
RUN_FIELDS = ("run_id", "pipeline", "region", "stream")
"""What a JSON line says of the run it belongs to."""

PREFECT_FIELDS = ("flow_run_id", "task_run_name")

_CONTEXT: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("mdstack_log_context", default=())


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Name the run (and stream) that the lines logged inside belong to."""
    token = _CONTEXT.set(tuple({**dict(_CONTEXT.get()), **fields}.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str | None] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = dict(_CONTEXT.get())
        line.update({name: context.get(name) for name in RUN_FIELDS})
        for name in PREFECT_FIELDS:  # Prefect's own records name their flow and task run
            if getattr(record, name, None):
                line[name] = str(getattr(record, name))
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def set_log_format(log_format: LogFormat) -> None:
    """Log as ``log_format`` from now on, in this process and the ones it starts."""
    os.environ[LOG_FORMAT_ENV] = log_format
    apply_log_format()


def json_logs() -> bool:
    """Whether JSON logs were asked for (:data:`LOG_FORMAT_ENV`)."""
    return os.environ.get(LOG_FORMAT_ENV) == "json"


def log_reported_error(logger: logging.Logger, message: str, *args: object) -> None:
    """An error the run's summary also reports: an ERROR line for log shippers (JSON logs),
    a DEBUG one for people, who read it in the summary and need it once."""
    logger.log(logging.ERROR if json_logs() else logging.DEBUG, message, *args)


def apply_log_format() -> None:
    """JSON logs if asked for; call it again after Prefect sets up its console logging,
    which it does when imported."""
    if json_logs():
        use_json_logs()


def use_json_logs(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send every log line to ``stream`` (stderr) as JSON, instead of to the console.

    Console handlers already attached to any logger (Prefect's, its server's) are
    replaced in place by the JSON one, so nothing is printed twice or as plain text;
    call it again after a framework sets up its logging. mdstack's own loggers log
    from ``level`` on; others keep their levels. Idempotent.
    """
    handler = _json_handler(stream or sys.stderr, level)
    root = logging.getLogger()
    known = [root, *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in known:
        consoles = [h for h in logger.handlers if _is_console(h)]
        for console in consoles:
            logger.removeHandler(console)
        if consoles or logger is root:
            logger.addHandler(handler)
    for name in ("stack", "connectors", "flows"):
        logging.getLogger(name).setLevel(level)


_HANDLERS: dict[int, logging.Handler] = {}


def _json_handler(stream: TextIO, level: int) -> logging.Handler:
    """One JSON handler per stream, so that calling :func:`use_json_logs` again adds none."""
    if id(stream) not in _HANDLERS:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        handler.setLevel(level)
        _HANDLERS[id(stream)] = handler
    return _HANDLERS[id(stream)]


def _is_console(handler: logging.Handler) -> bool:
    """A handler that prints to the terminal (not a file, not Prefect's API, not ours)."""
    if handler in _HANDLERS.values() or isinstance(handler, logging.FileHandler):
        return False
    stream = getattr(handler, "stream", None) or getattr(
        getattr(handler, "console", None), "file", None
    )
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
