"""Durations as people write them in ``stack.yml``: ``90s``, ``10m``, ``26h``, ``30d``, ``2w``.

One parser for every place a config takes a duration (delete windows, check
ages, hook timeouts).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(value: Any) -> Any:
    """``30``, ``0.05``, ``"90s"``, ``"26h"``, ``"2w"`` as seconds; other values unchanged.

    Raises:
        ValueError: a string that is not a duration (pydantic reports it with the key).
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            raise ValueError("expected a duration such as 90s, 10m, 26h, 30d or 2w")
        return float(match.group(1)) * _SECONDS[match.group(2)]
    return value


def _timedelta(value: Any) -> Any:
    value = seconds(value)
    return timedelta(seconds=value) if isinstance(value, int | float) else value


Duration = Annotated[timedelta, BeforeValidator(_timedelta)]
"""A duration field, as a timedelta."""

Seconds = Annotated[float, BeforeValidator(seconds), Field(gt=0)]
"""A positive duration field, as seconds."""
