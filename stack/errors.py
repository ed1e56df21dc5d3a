"""The engine's errors, extending the root tree from :mod:`connectors.errors`.

::

    MdstackError
     ├── ConnectorError ── SourceUnavailable (retryable)
     ├── ConfigError        stack.yml is wrong: names file:line, key and a fix
     │    └── ConfigProblems every problem of one file, reported together
     ├── SecretError        a secret reference cannot be resolved
     ├── SchemaError        the data does not fit the destination's schema
     ├── WarehouseError     the warehouse refused a statement
     │    └── WarehouseBusy another process holds the warehouse (retryable)
     ├── SyncConflict       another run of the same stream is active
     ├── TransformError     dbt failed to run, or its tests failed
     └── CheckError         a data check of severity ``error`` failed

Callers catch the level they mean; retry policy reads only ``exc.retryable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.errors import ConnectorError, MdstackError, SourceUnavailable

__all__ = [
    "CheckError",
    "ConfigError",
    "ConfigProblems",
    "ConnectorError",
    "MdstackError",
    "SchemaError",
    "SecretError",
    "SourceUnavailable",
    "SyncConflict",
    "TransformError",
    "WarehouseBusy",
    "WarehouseError",
    "WriteConflict",
]


class ConfigError(MdstackError):
    """``stack.yml`` (or a flag) is wrong. ``file`` and ``line`` point at the spot."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, **fields
    ) -> None:
        self.file = file
        self.line = line
        super().__init__(message, **fields)

    def _render(self) -> str:
        place = f"{self.file}:{self.line}" if self.file and self.line else self.file
        text = f"{place}: " if place else ""
        text += f"{self.key}: {self.message}" if self.key else self.message
        return f"{text}\n  fix: {self.hint}" if self.hint else text

    def _fields(self) -> dict[str, object]:
        return {**super()._fields(), "file": self.file, "line": self.line}


class ConfigProblems(ConfigError):
    """Several problems found in one pass over ``stack.yml``: a user fixes them all at once
    instead of meeting them one run at a time. Each is a :class:`ConfigError` of its own."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        super().__init__(
            f"{len(self.problems)} problems",
            file=first.file,
            line=first.line,
            key=first.key,
            hint=first.hint,
        )

    def _render(self) -> str:
        return "\n".join(problem._render() for problem in self.problems)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class SecretError(MdstackError):
    """A secret reference could not be resolved. Never carries the value."""


class SchemaError(MdstackError):
    """Incoming data does not fit the destination (policy ``freeze``, bad keys, bad types)."""


class WarehouseError(MdstackError):
    """The warehouse refused or failed a statement."""


class WarehouseBusy(WarehouseError):
    """Another process holds the warehouse; retry when it is done."""

    retryable = True


class WriteConflict(WarehouseBusy):
    """A commit lost a race with another writer's; rolled back, it can be run again."""


class SyncConflict(MdstackError):
    """Another run of the same (pipeline, region, stream) is in progress."""


class TransformError(MdstackError):
    """dbt could not run, or a model or test failed."""


class CheckError(MdstackError):
    """A data check with severity ``error`` failed."""
