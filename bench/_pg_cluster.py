"""A PostgreSQL server with logical decoding for the CDC scenario: the bench's, or a throwaway.

CDC needs ``wal_level = logical``, which a server only takes at start. When the bench's
server (:class:`bench._pg.PgServer`) already has it, the scenario uses it; otherwise
:func:`logical_server` starts a cluster of its own with ``initdb`` and ``pg_ctl`` from the
machine's PostgreSQL (``/usr/lib/postgresql/*/bin`` or ``$PATH``), in a temporary folder, on
a free loopback port, trust authentication, and stops and deletes it at the end. ``initdb``
refuses to run as root, so under root the cluster runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from bench._pg import PgServer

SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "16",
    "max_wal_size": "4GB",  # no forced checkpoint in the middle of a workload
    "fsync": "off",  # a throwaway: durability costs nothing any contender reads
    "synchronous_commit": "off",
    "shared_buffers": "256MB",
}
"""The throwaway cluster's settings: logical decoding on, room for 20 slots of a slot per stream."""


def bin_dir() -> Path | None:
    """The folder of the newest installed PostgreSQL's programs, else the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for folder in reversed(found):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def program(name: str) -> str | None:
    """A PostgreSQL client program (``pg_recvlogical`` is not on PATH on Debian)."""
    folder = bin_dir()
    if folder and (folder / name).exists():
        return str(folder / name)
    return shutil.which(name)


def wal_level(pg: PgServer) -> str | None:
    """The server's ``wal_level``, None when it cannot be reached."""
    try:
        with pg.connect() as conn:
            return str(conn.execute("SHOW wal_level").fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        return None


@contextmanager
def logical_server(pg: PgServer) -> Iterator[tuple[PgServer, str]]:
    """A server with ``wal_level = logical`` and what it is (for the report).

    Raises:
        RuntimeError: ``pg`` lacks logical decoding and no cluster could be started.
    """
    if wal_level(pg) == "logical":
        yield pg, f"the bench's server {pg.host}:{pg.port}"
        return
    folder = bin_dir()
    if folder is None:
        raise RuntimeError("wal_level is not logical and initdb/pg_ctl were not found")
    cluster = _Cluster(folder)
    try:
        cluster.start()
        yield (
            PgServer(port=cluster.port, user="postgres", database="postgres"),
            f"a throwaway cluster ({folder.parent.name}, "
            + ", ".join(f"{k}={v}" for k, v in SETTINGS.items())
            + f"; {pg.host}:{pg.port} has wal_level={wal_level(pg) or 'unreachable'})",
        )
    finally:
        cluster.stop()


class _Cluster:
    def __init__(self, folder: Path) -> None:
        self.bin = folder
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="mdstack-bench-pg-"))
        self.data = self.root / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def _run(self, *args: str) -> None:
        run_as = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        done = subprocess.run(
            [*run_as, str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        if self.run_as:
            owner = pwd.getpwnam(self.run_as)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = " ".join(f"-c {k}={v}" for k, v in SETTINGS.items())
        options += f" -c port={self.port} -c listen_addresses=127.0.0.1"
        options += " -c unix_socket_directories=''"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster), then the folder goes."""
        try:
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)
        except (OSError, ValueError):
            pass  # already gone
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
