"""A real Apache Superset for the tests: PyPI ``apache-superset`` in a virtualenv of its own.

The virtualenv (about 700 MB) and an initialised metadata database are built once per
machine under ``~/.cache/mdstack-tests`` (the real home: the suite moves ``HOME``), under a
file lock the two test workers share; a test session then copies the metadata into a
folder of its own and starts ``superset run`` on a free loopback port (ready in about
15 s). The caches are one store for chart data and cache keys, and cache keys are kept in
the metadata database, so ``/api/v1/cachekey/invalidate`` takes effect, as a deployment
that wants it configures Superset.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers.pg_server import free_port
from tests.servers.processes import stop

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
numpy 2), and it imports ``cachetools`` and ``rich`` without declaring them."""
USER, PASSWORD = "admin", "superset-test-password"
STARTUP_TIMEOUT = 180.0
CONFIG = """
import os
HOME = os.environ["SUPERSET_HOME"]
SECRET_KEY = "mdstack-tests-" + "k" * 40
SQLALCHEMY_DATABASE_URI = f"sqlite:///{HOME}/superset.db?check_same_thread=false"
TALISMAN_ENABLED = False
RATELIMIT_ENABLED = False
PREVENT_UNSAFE_DB_CONNECTIONS = False
_cache = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": f"{HOME}/cache",
          "CACHE_KEY_PREFIX": "superset_", "CACHE_DEFAULT_TIMEOUT": 3600}
CACHE_CONFIG = dict(_cache)
DATA_CACHE_CONFIG = dict(_cache)
STORE_CACHE_KEYS_IN_METADATA_DB = True
"""


def cache_dir() -> Path:
    """``~/.cache/mdstack-tests`` of the real home (not the suite's moved ``HOME``)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "mdstack-tests"


@contextmanager
def _machine_lock() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "superset.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SUPERSET_HOME": str(home),
        "SUPERSET_CONFIG_PATH": str(home / "superset_config.py"),
        "FLASK_APP": "superset.app:create_app()",
        "UV_CACHE_DIR": str(cache_dir().parent / "uv"),
    }


def _superset(venv: Path, home: Path, *args: str) -> None:
    subprocess.run(
        [str(venv / "bin" / "superset"), *args],
        env=_env(home),
        check=True,
        capture_output=True,
        timeout=600,
    )


def installed() -> tuple[Path, Path]:
    """The virtualenv and an initialised metadata folder (built on first use)."""
    built = hashlib.sha256("\n".join([*PINS, CONFIG]).encode()).hexdigest()[:8]
    venv = cache_dir() / f"superset-{VERSION}-{built}"  # new pins or settings: built anew
    template = venv.with_name(venv.name + "-home")
    with _machine_lock():
        if not (venv / ".mdstack-complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            uv = Path(sys.executable).with_name("uv")
            env = _env(template)
            subprocess.run(
                [str(uv), "venv", "-q", "--python", "python3.11", str(venv)], env=env, check=True
            )
            command = [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
            subprocess.run([*command, *PINS], env=env, check=True, timeout=1200)
            (venv / ".mdstack-complete").touch()
        if not (template / ".mdstack-complete").exists():
            shutil.rmtree(template, ignore_errors=True)
            template.mkdir(parents=True)
            (template / "superset_config.py").write_text(CONFIG)
            _superset(venv, template, "db", "upgrade")
            _superset(
                venv,
                template,
                "fab",
                "create-admin",
                "--username",
                USER,
                "--firstname",
                "Test",
                "--lastname",
                "Admin",
                "--email",
                "admin@example.com",
                "--password",
                PASSWORD,
            )
            _superset(venv, template, "init")
            (template / ".mdstack-complete").touch()
    return venv, template


@dataclass
class Superset:
    """A running Superset: its URL, folder and process."""

    url: str
    home: Path
    process: subprocess.Popen

    def client(self) -> httpx.Client:
        """An API client signed in as the admin (JWT; CSRF token and its session cookie)."""
        api = httpx.Client(base_url=self.url, timeout=60)
        login = api.post(
            "/api/v1/security/login",
            json={"username": USER, "password": PASSWORD, "provider": "db", "refresh": True},
        )
        login.raise_for_status()
        api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        csrf = api.get("/api/v1/security/csrf_token/")
        csrf.raise_for_status()
        api.headers["X-CSRFToken"] = csrf.json()["result"]
        api.headers["Referer"] = self.url
        return api


@contextmanager
def running_superset(folder: Path) -> Iterator[Superset]:
    """Superset on a free loopback port with a copy of the initialised metadata."""
    venv, template = installed()
    home = folder / "superset"
    shutil.copytree(template, home)
    port = free_port()
    with open(home / "server.log", "w") as log:
        command = ["run", "-h", "127.0.0.1", "-p", str(port), "--with-threads"]
        process = subprocess.Popen(
            [str(venv / "bin" / "superset"), *command],
            env=_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, home)
        yield Superset(url, home, process)
    finally:
        stop(process)


def _wait_ready(url: str, process: subprocess.Popen, home: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log = (home / "server.log").read_text()[-2000:]
            raise RuntimeError(f"Superset did not start: {log}")
        time.sleep(0.5)
