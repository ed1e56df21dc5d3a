"""A Superset of one's own, on this machine, reading the embedded warehouse's BI file.

``mdstack dashboards`` needs Superset without making it a dependency of mdstack: Superset
pins Flask 2, SQLAlchemy 1.4 and numpy 1, which the pipeline's own libraries outgrew. So
it gets a virtualenv of its own (about 700 MB), built once per machine under
``~/.cache/mdstack`` (``$XDG_CACHE_HOME``) with ``uv`` when it is there, and a metadata
database initialised once beside it (``db upgrade``, an admin, ``init``: about 50 s).
Each project then copies that metadata into a folder of its own and runs ``superset run``
on loopback.

The settings are the ones the pipeline's Superset hook needs to take effect: chart data
and cache keys share one store and the keys are kept in the metadata database, so
``/api/v1/cachekey/invalidate`` drops what a chart cached before the publish. The admin's
password is random, made once per machine, and kept in a file only its owner may read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from stack.bi.superset.dashboards import signed_in
from stack.errors import MdstackError

__all__ = ["PINS", "VERSION", "Installation", "LocalSuperset", "install", "running"]

VERSION = "6.1.0"
PINS = (
    f"apache-superset=={VERSION}",
    "apache-superset-core==0.1.0",
    "flask==2.3.3",
    "werkzeug==3.1.3",
    "flask-sqlalchemy==2.5.1",
    "flask-babel==3.1.0",
    "sqlalchemy==1.4.54",
    "marshmallow==3.26.1",
    "numpy==1.26.4",
    "pandas==2.1.4",
    "setuptools<81",
    "duckdb==1.5.5",
    "duckdb-engine==0.17.0",
    "cachetools",
    "rich",
)
"""What Superset 6.1.0 runs with: its own ranges admit versions it breaks on (Flask 3,
numpy 2), and it imports ``cachetools`` and ``rich`` without declaring them. DuckDB is the
version the pipeline writes the BI file with."""
USER = "admin"
STARTUP_TIMEOUT = 180.0
CONFIG = """\
import os
from pathlib import Path
HOME = os.environ["SUPERSET_HOME"]
SECRET_KEY = Path(HOME, "secret_key").read_text().strip()
SQLALCHEMY_DATABASE_URI = f"sqlite:///{HOME}/superset.db?check_same_thread=false"
TALISMAN_ENABLED = False
RATELIMIT_ENABLED = False
PREVENT_UNSAFE_DB_CONNECTIONS = False
_cache = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": f"{HOME}/cache",
          "CACHE_KEY_PREFIX": "superset_", "CACHE_DEFAULT_TIMEOUT": 86400}
CACHE_CONFIG = dict(_cache)
DATA_CACHE_CONFIG = dict(_cache)
STORE_CACHE_KEYS_IN_METADATA_DB = True
"""
"""Superset's settings (``superset_config.py``): one file cache for charts and their keys,
keys in the metadata database (what the hook's cache invalidation needs), the secret key
from a file of the folder's own, and local database files allowed (the BI file is one)."""


def cache_root() -> Path:
    """Where the virtualenv and the initialised metadata are kept between projects."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdstack"


@dataclass(frozen=True)
class Installation:
    """Superset's virtualenv and a metadata folder initialised once, to copy from."""

    venv: Path
    template: Path

    @property
    def password(self) -> str:
        """The admin's password (made at initialisation, readable by its owner only)."""
        return (self.template / "admin_password").read_text().strip()

    def command(self, *args: str) -> list[str]:
        """``superset ARGS`` as a process list (run it with :meth:`env`)."""
        return [str(self.venv / "bin" / "superset"), *args]

    def env(self, home: Path) -> dict[str, str]:
        """The environment Superset runs in with ``home`` as its folder."""
        return {
            **os.environ,
            "SUPERSET_HOME": str(home),
            "SUPERSET_CONFIG_PATH": str(home / "superset_config.py"),
            "FLASK_APP": "superset.app:create_app()",
        }


def install(cache: Path | None = None, say: Callable[[str], None] = lambda _: None) -> Installation:
    """Build Superset's virtualenv and its initialised metadata, unless already built.

    New pins or settings are built anew beside the old (the folder's name carries their
    hash). Several processes may call this at once: a file lock lets one build.
    """
    cache = cache or cache_root()
    built = hashlib.sha256("\n".join([*PINS, CONFIG]).encode()).hexdigest()[:8]
    venv = cache / f"superset-{VERSION}-{built}"
    installation = Installation(venv, venv.with_name(venv.name + "-home"))
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "superset.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            say(f"installing Apache Superset {VERSION} into {venv} (once per machine, ~700 MB)")
            shutil.rmtree(venv, ignore_errors=True)
            _build_venv(venv)
            (venv / ".complete").touch()
        if not (installation.template / ".complete").exists():
            say("initialising Superset's metadata (once per machine, about a minute)")
            _initialise(installation)
    return installation


def _build_venv(venv: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    uv_path = str(uv) if uv.exists() else shutil.which("uv")
    if uv_path:
        _run([uv_path, "venv", "-q", "--python", sys.executable, str(venv)], "create its venv")
        pip = [uv_path, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    else:
        _run([sys.executable, "-m", "venv", str(venv)], "create its venv")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, *PINS], "install Apache Superset", timeout=1800)


def _initialise(installation: Installation) -> None:
    template = installation.template
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    _private(template / "admin_password", secrets.token_urlsafe(18))
    _settle(template)

    def superset(*args: str) -> None:
        command = installation.command(*args)
        _run(command, f"run `superset {args[0]}`", env=installation.env(template))

    superset("db", "upgrade")
    superset(
        *("fab", "create-admin", "--username", USER, "--firstname", "mdstack"),
        *("--lastname", "admin", "--email", "admin@localhost", "--password"),
        installation.password,
    )
    superset("init")
    (template / ".complete").touch()


def _settle(home: Path) -> None:
    """Write the settings and, once per folder, a secret key of its own."""
    (home / "superset_config.py").write_text(CONFIG)
    if not (home / "secret_key").exists():
        _private(home / "secret_key", secrets.token_urlsafe(42))


def _private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.write_text(text + "\n")


def _run(
    command: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 600
) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        said = (done.stderr or done.stdout)[-1500:]
        raise MdstackError(f"Superset: could not {what} (exit {done.returncode}):\n{said}")


@dataclass
class LocalSuperset:
    """A running local Superset: its address, folder and the admin's password."""

    url: str
    home: Path
    password: str
    process: subprocess.Popen

    def client(self) -> httpx.Client:
        """An API client signed in as the admin."""
        return signed_in(self.url, USER, self.password)


@contextmanager
def running(
    installation: Installation, home: Path, port: int | None = None, host: str = "127.0.0.1"
) -> Iterator[LocalSuperset]:
    """Superset with ``home`` as its folder (the metadata copied in on first use).

    It listens on ``host`` (loopback unless told: in a container, ``0.0.0.0``) and
    ``port`` (None: a free one), and stops when the block ends.
    """
    if not (home / "superset.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(installation.template / "superset.db", home / "superset.db")
    _settle(home)
    port = port or _free_port()
    command = installation.command("run", "-h", host, "-p", str(port), "--with-threads")
    with open(home / "server.log", "w") as log:
        process = subprocess.Popen(
            command,
            env=installation.env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, home)
        yield LocalSuperset(url, home, installation.password, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen, home: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log = (home / "server.log").read_text()[-2000:]
            raise MdstackError(f"Superset did not start (its log: {home / 'server.log'}):\n{log}")
        time.sleep(0.5)
