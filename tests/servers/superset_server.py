"""A real Apache Superset for the tests, installed and started by mdstack's own code.

``mdstack dashboards`` (:mod:`stack.bi.superset.local`) builds Superset's virtualenv and
initialised metadata once per machine; the tests use the same cache as a user of this
machine (``~/.cache/mdstack`` of the real home: the suite moves ``HOME``), so CI builds it
once and later runs start Superset in about 15 s.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

__all__ = ["CACHE", "env"]

CACHE = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache"
"""The real home's cache folder (``$XDG_CACHE_HOME`` for mdstack's processes)."""


def env(**more: str) -> dict[str, str]:
    """The environment for an ``mdstack dashboards`` process that shares the machine's cache."""
    return {**os.environ, "XDG_CACHE_HOME": str(CACHE), **more}
