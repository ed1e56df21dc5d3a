"""Throwaway PostgreSQL clusters: every test that needs PostgreSQL gets one of these.

:class:`PgCluster` runs ``initdb`` and ``pg_ctl`` from the machine's PostgreSQL
(``/usr/lib/postgresql/*/bin`` or ``$PATH``) in a fresh temporary folder, on a free
loopback port, with trust authentication and unix sockets off. ``initdb`` refuses to
run as root, so under root the cluster runs as the ``postgres`` system user.

The pytest fixtures at the bottom (registered for the whole suite by
``tests/conftest.py``) start one cluster per test process, with ``wal_level=logical``
so CDC tests can use it too, the first time a test asks for it, and stop it at the
end of the session; :func:`pg_database` gives each test module a database of its own
in it. :func:`pg_replica` is a second cluster, without logical decoding, started only
for the tests of what a server without it says. The fixtures skip, naming the reason,
when the binaries (or a user to run them) are missing: nothing depends on a server
already running on the machine. Never imported by product code.
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

LOGICAL = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "fsync": "off",  # commits still move the flush position logical decoding reads up to
    "full_page_writes": "off",
    "shared_buffers": "32MB",
}
"""Server settings of the session's cluster: logical decoding on, durability off (a throwaway)."""
REPLICA = LOGICAL | {"wal_level": "replica"}
"""The same with the default ``wal_level``: logical decoding off."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: the newest installed major, else PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    """One initdb'd cluster in a temporary folder; ``start()`` / ``stop()`` it."""

    def __init__(self, bin_dir: Path, settings: dict[str, str], hba: tuple[str, ...] = ()) -> None:
        self.bin_dir = bin_dir
        self.settings = settings
        self.hba = hba  # pg_hba.conf lines put before initdb's trust lines
        self.port = free_port()
        self.user = "postgres"  # the database superuser initdb creates
        self._run_as = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="mdstack-pg-"))
        self.data = self.root / "data"

    @property
    def dsn(self) -> dict[str, object]:
        return {"host": "127.0.0.1", "port": self.port, "user": self.user, "database": "postgres"}

    def _run(self, *args: str) -> None:
        # runuser rather than ``user=``: without a uid change the child is started with
        # vfork, which does not ask the kernel to commit a copy of the test process's
        # memory (a fork of a big test process can fail with ENOMEM without swap).
        run_as = ["runuser", "-u", self._run_as, "--"] if self._run_as else []
        result = subprocess.run(
            [*run_as, str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")

    def start(self) -> PgCluster:
        if self._run_as:
            owner = pwd.getpwnam(self._run_as)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if self.hba:
            hba = self.data / "pg_hba.conf"
            hba.write_text("\n".join(self.hba) + "\n" + hba.read_text())
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        """Restart with the current ``settings`` (a test changes them, e.g. leaves one out
        so that a value set by ``ALTER SYSTEM`` applies)."""
        self._pg_ctl("restart")

    def _pg_ctl(self, action: str) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        options += f" -c port={self.port} -c listen_addresses=127.0.0.1"
        options += " -c unix_socket_directories=''"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", action)

    def stop(self) -> None:
        """Immediate shutdown by signal (SIGQUIT), like ``pg_ctl -m immediate``.

        No child process: at the end of a long session the test process is large, and
        forking it to run pg_ctl as another user can fail with ENOMEM.
        """
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


def _cluster(settings: dict[str, str], hba: tuple[str, ...] = ()) -> Iterator[PgCluster]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run initdb as")
    cluster = PgCluster(bin_dir, settings, hba)
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        pytest.skip(f"could not start a throwaway PostgreSQL cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


PASSWORD_USER = "mds_pw"
"""The one role the clusters authenticate by password (scram); every other role is trusted."""


def connect_kwargs(dsn: dict[str, Any]) -> dict[str, Any]:
    """psycopg's keyword arguments for connect parameters in the connectors' shape."""
    return {("dbname" if k == "database" else k): v for k, v in dsn.items()}


@contextmanager
def schema_of_its_own(
    dsn: dict[str, Any], prefix: str
) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """An autocommit connection and a fresh schema ``<prefix>_<hex>``, dropped at the end."""
    conn = psycopg.connect(**connect_kwargs(dsn), autocommit=True)
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield conn, schema
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


def drop_slots(conn: psycopg.Connection[Any], prefix: str) -> None:
    """Drop the replication slots a test made (their names start with ``prefix``): a slot
    left behind holds WAL back for every later test on the cluster."""
    for (slot,) in conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s", (f"{prefix}%",)
    ).fetchall():
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


@pytest.fixture(scope="session")
def pg_logical() -> Iterator[PgCluster]:
    """The session's cluster, with ``wal_level=logical``: every PostgreSQL test uses it."""
    yield from _cluster(LOGICAL, (f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256",))


@pytest.fixture(scope="module")
def pg_database(pg_logical: PgCluster, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A fresh database of the session's cluster for one test module: its connect parameters.

    Never dropped: the cluster is thrown away at the end of the session anyway, and a
    Vault database engine or a replication slot may still hold on to it.
    """
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"mds_{module}_{uuid.uuid4().hex[:8]}"[-63:]
    with psycopg.connect(**connect_kwargs(pg_logical.dsn), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_logical.dsn | {"database": name}


@pytest.fixture(scope="session")
def pg_replica() -> Iterator[PgCluster]:
    """A second cluster, with ``wal_level=replica``: for what a server without CDC says."""
    yield from _cluster(REPLICA)
