"""dbt, when ``dbt:`` is configured and enabled: the project is there and ``dbt debug`` passes.

``dbt debug`` runs exactly as the stack runs dbt (:func:`stack.run.pipeline.dbt_passthrough`:
the profile generated from ``stack.yml`` for the active target, credentials as
``DBT_ENV_SECRET_*``), so it proves the profile a run will use, not one on disk. dbt's
report is captured; a failure's line is what dbt said went wrong. (With DuckDB, dbt attaches
the lake, so a warehouse that has no catalog yet gets an empty one.)
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

from stack.config import StackConfig
from stack.doctor.check import Check, failed
from stack.errors import MdstackError
from stack.redact import redact
from stack.run import pipeline

AREA = "dbt"


def dbt_checks(config: StackConfig, config_file: Path, target: str | None) -> Iterator[Check]:
    """``dbt debug``; nothing without an enabled ``dbt:``. (That the project folder is there
    and names the stack's profile, loading ``stack.yml`` has checked already.)"""
    if config.dbt is None or not config.dbt.enabled:
        return
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            run = pipeline.dbt_passthrough(config_file, target, ["debug", "--no-use-colors"])
    except MdstackError as exc:
        yield failed(AREA, "dbt debug", exc)
        return
    if run.success:
        yield Check("dbt debug", "ok", "the generated profile connects", area=AREA)
    else:
        yield Check(
            "dbt debug",
            "fail",
            redact(_failure(output.getvalue())),
            "run `mdstack dbt debug` for dbt's whole report",
            area=AREA,
        )


def _failure(report: str) -> str:
    """What ``dbt debug`` says after ``N check(s) failed:``, on one line."""
    lines = [_STAMP.sub("", line).strip() for line in report.splitlines()]
    start = next((i for i, line in enumerate(lines) if _FAILED.match(line)), None)
    if start is None:
        return "dbt debug failed against the generated profile"
    said = " ".join(line.lstrip(">").strip() for line in lines[start + 1 :] if line)
    return said[:600] + ("..." if len(said) > 600 else "")


_STAMP = re.compile(r"^\d\d:\d\d:\d\d\s+")
_FAILED = re.compile(r"^\d+ checks? failed:")
