"""One line of ``mdstack doctor``: what was checked, how it went, and the fix to paste.

:func:`bounded` runs a check that talks to something remote with a deadline, so one server
that never answers cannot make the doctor hang.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from connectors.base import Finding
from stack.errors import MdstackError
from stack.redact import redact

_T = TypeVar("_T")


@dataclass(frozen=True)
class Check(Finding):
    """The result of one check (a source's preflight :class:`Finding`, or one of the
    doctor's own), with the area it belongs to."""

    area: str = field(kw_only=True)
    """What the check belongs to: ``config``, ``vault``, ``warehouse``, ``source shop``..."""

    def as_dict(self) -> dict[str, Any]:
        return {"area": self.area, **{k: v for k, v in asdict(self).items() if k != "area"}}


def failed(area: str, name: str, exc: MdstackError, fix: str = "") -> Check:
    """A failed check from one of mdstack's errors: its text (where included), its hint."""
    detail = redact(str(exc).partition("\n  ")[0])
    return Check(name, "fail", detail, redact(exc.hint or fix), area=area)


class TimedOut(Exception):
    """A bounded call did not return in time (it is left running in a daemon thread)."""


def bounded(call: Callable[[], _T], seconds: float) -> _T:
    """``call()``'s result, or :class:`TimedOut` after ``seconds``; its exceptions propagate.

    A daemon thread, not a pool: a call stuck in a socket must not keep the process alive.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="mdstack-doctor", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimedOut(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
