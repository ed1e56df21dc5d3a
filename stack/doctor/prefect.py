"""Prefect, when ``PREFECT_API_URL`` is set: the API answers ``/health``.

Plain HTTP (httpx), not the Prefect client: ``stack/`` does not import Prefect.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx

from stack.doctor.check import Check

AREA = "prefect"
TIMEOUT_SECONDS = 5.0


def prefect_checks() -> Iterator[Check]:
    """One check of ``$PREFECT_API_URL/health``; nothing when the variable is unset."""
    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if not url:
        return
    fix = "start it (`prefect server start`), fix PREFECT_API_URL, or unset it to run without"
    key = os.environ.get("PREFECT_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url}/health", headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        yield Check(
            "api answers", "fail", f"{url} is unreachable ({type(exc).__name__})", fix, area=AREA
        )
        return
    if response.status_code != 200:
        yield Check(
            "api answers", "fail", f"{url}/health answered {response.status_code}", fix, area=AREA
        )
        return
    yield Check("api answers", "ok", url, area=AREA)
