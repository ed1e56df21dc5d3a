"""Workers killed with SIGKILL at a chosen moment, for the crash tests.

A worker is a Python script that prints ``ready`` once it is about to work and ``done``
when it finished; the kill is timed from ``ready``, so it lands inside the work however
slow the machine is to start a process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT


def run_worker(script: Path, *args: str, kill_after: float | None) -> float | None:
    """Run ``script`` with ``args``; with ``kill_after``, SIGKILL it that long after it is
    ready.

    Returns how long the start took (to "ready"), or None if the kill landed before "done".
    """
    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "ready"
    ready = time.perf_counter() - started
    if kill_after is None:
        assert worker.wait(timeout=300) == 0
        return ready
    time.sleep(kill_after)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    killed = worker.returncode == -signal.SIGKILL
    return None if killed and "done" not in (worker.stdout.read() or "") else ready
