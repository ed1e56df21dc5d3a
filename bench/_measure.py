"""Run one tool in its own subprocess and measure it; interleave tools A B A B.

:func:`run` starts a command through a small shim (``workers/_rss.py``) that waits
for it with ``os.wait4`` and takes from the kernel's accounting the peak RSS of that
process (and of any descendant it reaped, such as Prefect's server): ``ru_maxrss`` of
that child alone, not of the bench (the shim is there because ``ru_maxrss`` survives
``exec``: a tool started from the bench directly would report at least the bench's RSS).
Wall time is measured twice: the process from start to exit
(``process_seconds``), and the work inside it (``seconds``), which a worker reports
on stdout as one ``BENCH-RESULT {json}`` line (see ``bench/workers/_report.py``);
a command that reports nothing (``psql``) is timed as a whole.

:func:`interleave` runs a list of tools round-robin, ``runs`` rounds: on a shared
machine that spreads background load over every tool instead of penalising one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "
WORKERS = Path(__file__).resolve().parent / "workers"


class ToolFailed(RuntimeError):
    """A measured command exited non-zero or timed out; the message ends with its stderr."""


@dataclass(frozen=True)
class Sample:
    """One measured run of one tool."""

    seconds: float
    process_seconds: float
    rss_mb: float
    report: dict[str, Any] = field(default_factory=dict)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 1800.0,
    discard_stdout: bool = False,
    log_to: Path | None = None,
) -> Sample:
    """Run ``argv`` to completion and measure it.

    Args:
        argv: the command.
        env: extra environment variables (added to the bench's own).
        cwd: working directory.
        timeout: seconds before the process group is killed.
        discard_stdout: send stdout to /dev/null (a floor writing its data there).
        log_to: a file to keep the command's stdout and stderr in (its log, read after).

    Returns:
        The sample; ``seconds`` is the worker's own report if it made one.

    Raises:
        ToolFailed: non-zero exit or timeout.
    """
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-S", str(WORKERS / "_rss.py"), rss.name, *argv],
            stdout=subprocess.DEVNULL if discard_stdout else out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(proc.pid)  # leftovers (a server a worker forgot) must not outlive it
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        if log_to is not None:
            log_to.write_text(stdout + stderr)
        peak_kib = int(rss.read().strip() or usage.ru_maxrss)
    if proc.returncode:
        why = "timed out" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"
        raise ToolFailed(f"{Path(argv[0]).name} {why}: {_tail(stderr or stdout)}")
    report = _report(stdout)
    return Sample(
        seconds=float(report.get("seconds", elapsed)),
        process_seconds=elapsed,
        rss_mb=peak_kib / 1024,
        report=report,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _report(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else {}


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-800:]


@dataclass
class Tool:
    """One contender: how to run it once, and what to do before each run.

    ``command()`` returns ``(argv, env, cwd)`` for a run; ``before()`` (optional,
    not timed) resets whatever the run will write (a fresh warehouse folder).
    """

    name: str
    command: Callable[[], tuple[list[str], dict[str, str], Path | None]]
    before: Callable[[], None] | None = None
    after: Callable[[Sample], None] | None = None
    discard_stdout: bool = False
    note: str = ""
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


def interleave(tools: Sequence[Tool], runs: int, log: Callable[[str], None] = print) -> None:
    """Run every tool once per round, ``runs`` rounds (A B C A B C ...); fill ``samples``.

    A tool that fails keeps its error and is left out of later rounds; the others go on.
    """
    for round_ in range(1, runs + 1):
        for tool in tools:
            if tool.error:
                continue
            if tool.before:
                tool.before()
            argv, env, cwd = tool.command()
            try:
                sample = run(argv, env=env, cwd=cwd, discard_stdout=tool.discard_stdout)
            except ToolFailed as exc:
                tool.error = str(exc)
                log(f"  [{round_}/{runs}] {tool.name}: FAILED {exc}")
                continue
            tool.samples.append(sample)
            if tool.after:
                tool.after(sample)
            log(
                f"  [{round_}/{runs}] {tool.name}: {sample.seconds:.2f} s "
                f"(process {sample.process_seconds:.2f} s, {sample.rss_mb:.0f} MB)"
            )
