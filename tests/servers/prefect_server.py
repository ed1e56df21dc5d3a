"""A real Prefect server and process worker for the orchestration tests, started once per run.

The server listens on 127.0.0.1 on a free port with its own PREFECT_HOME; readiness is
polled on ``/api/health``, never slept for. The worker is launched with SIGINT reset to
its default (a worker started from a background shell inherits SIGINT ignored and then
cannot stop itself) and in its own session, so that it and the flow-run processes it
spawns are stopped by its process-group id at the end.

Every test module of a process shares one server: the session fixture ``prefect_api``
in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
START_TIMEOUT = 240.0
"""Seconds to wait for the server (cold start ~11 s idle; far more on a loaded box)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
"""Run argv with SIGINT at its default. A Python trampoline rather than ``preexec_fn``:
without ``preexec_fn`` the child is started with vfork, which does not ask the kernel to
commit a copy of the test process's memory (a fork of a big test process can fail with
ENOMEM on a machine without swap)."""


class Process:
    """A child process in its own session (process group), its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _DEFAULT_SIGINT, *argv],
            env=env,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL to the process group (only the group this object started)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers: flow-run or uvicorn children
        if self.alive():
            self.popen.wait(10)
        self._handle.close()


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return json.loads(response.read()) is True
    except OSError:
        return False


class PrefectServer:
    """``prefect server start`` on 127.0.0.1:<free port>, with its own PREFECT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_UI_ENABLED": "false",
            # a run that finds its deployment's slot taken retries after this many seconds
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
        env.pop("PREFECT_API_URL", None)
        argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        self.process = Process([*argv, "--port", str(self.port)], env, home / "server.log")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"prefect server exited:\n{self.process.output()[-3000:]}")
            return _health(self.url)

        wait_for(ready, timeout, f"the Prefect server on {self.url}", every=0.5)

    def stop(self) -> None:
        self.process.stop()


class Worker:
    """``prefect worker start`` for one pool, polling every second."""

    def __init__(self, api_url: str, pool: str, home: Path, env: dict[str, str] | None = None):
        home.mkdir(parents=True, exist_ok=True)
        self.pool = pool
        environ = {
            **os.environ,
            **(env or {}),
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "stack,connectors",
        }
        argv = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
        self.process = Process([*argv, "--name", f"test-{pool}"], environ, home / "worker.log")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"prefect worker exited:\n{self.process.output()[-3000:]}")
            return "started!" in self.process.output()

        wait_for(ready, timeout, f"the worker of pool {self.pool!r}", every=0.5)

    def stop(self) -> None:
        self.process.stop()


@contextmanager
def using_api(url: str) -> Iterator[None]:
    """Point this process's Prefect client at ``url`` for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield
