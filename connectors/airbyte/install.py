"""Airbyte connectors from PyPI, each in a virtualenv of its own under a cache folder.

Connectors pin their own ``airbyte-cdk`` (source-faker 7.2.1 wants ``<7``; another
connector may want ``>=7``), so they can share neither mdstack's environment nor one
another's. :func:`ensure_installed` creates ``<cache>/<package>-<version>`` with ``uv``
(next to ``sys.executable``, or on ``PATH``) or, failing that, ``python -m venv`` and
``pip``, then writes a marker file **last**: a folder without its marker is a half-built
install (killed, disk full) and is rebuilt. A lock file serialises two processes
installing the same package. The marker records the connector's command (its console
script) and its ``spec``, which never changes for an installed version, so reads do not
pay a process start for it.

Bytecode is compiled at install (``uv`` does not by default): a CDK connector imports
some 6 000 modules, and where ``PYTHONDONTWRITEBYTECODE`` is set every start would compile
them all again (``source-faker`` 7.2.1: 4-5 s per process instead of about 1).

The cache folder is ``$MDSTACK_CONNECTORS_DIR``, default ``~/.cache/mdstack/connectors``.
Each ``uv``/``pip`` step is stopped after ``$MDSTACK_INSTALL_TIMEOUT`` seconds (default 900):
an index that accepts connections but never answers would otherwise hang the run, holding
the install lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.errors import ConnectorError, SourceUnavailable

log = logging.getLogger("connectors.airbyte")

CACHE_ENV = "MDSTACK_CONNECTORS_DIR"
TIMEOUT_ENV = "MDSTACK_INSTALL_TIMEOUT"
DEFAULT_TIMEOUT = 900.0
MARKER = ".mdstack-installed.json"
LAYOUT = 2
"""Version of the install recipe; an older install is rebuilt (2: bytecode compiled)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!-]*$")


@dataclass(frozen=True)
class Installed:
    """One installed connector: where, which version, the command that runs it, its spec."""

    package: str
    version: str
    root: Path
    executable: Path
    spec: dict[str, Any] | None

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"


def cache_dir() -> Path:
    """The folder holding one virtualenv per installed connector."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "mdstack" / "connectors"


def package_name(name: str) -> str:
    """The PyPI name of a connector: ``source-faker`` and ``airbyte-source-faker`` both give
    ``airbyte-source-faker``.

    Raises:
        ConnectorError: the name is not a valid package name.
    """
    if not _NAME.match(name):
        raise ConnectorError(
            f"{name!r} is not a package name",
            key="package",
            hint="e.g. `package: airbyte-source-faker`",
        )
    name = name.lower().replace("_", "-")
    return name if name.startswith("airbyte-") else f"airbyte-{name}"


def installed(package: str | None = None) -> list[Installed]:
    """The complete installs in the cache (of ``package`` only, if given), by package, newest
    version last."""
    found = []
    root = cache_dir()
    if root.is_dir():
        for folder in root.glob(f"{package}-*" if package else "*"):
            done = _read_marker(folder)
            if done is not None and package in (None, done.package):
                found.append(done)
    return sorted(found, key=lambda i: (i.package, _version_key(i.version)))


def ensure_installed(
    package: str, version: str | None = None, *, upgrade: bool = False
) -> Installed:
    """The install of ``package`` (``version``, or else the newest installed one, or else the
    index's latest), installing it first if it is missing or half-built.

    Args:
        package: PyPI name (normalised by :func:`package_name`).
        version: exact version; None takes the newest installed one (``upgrade``: the
            index's latest).
        upgrade: with no version, ask the index for its latest even if one is installed.

    Raises:
        ConnectorError: the package or version does not exist, or the install failed.
        SourceUnavailable: the package index could not be reached.
    """
    package = package_name(package)
    if version is not None and not _VERSION.match(version):
        raise ConnectorError(f"{version!r} is not a version", key="version", hint="e.g. 7.2.1")
    if version is None and not upgrade:
        have = installed(package)
        if have:
            return have[-1]
    if version is None:
        version = latest_version(package)
    folder = cache_dir() / f"{package}-{version}"
    done = _read_marker(folder)
    if done is not None:
        return done
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(f".{folder.name}.lock")):
        done = _read_marker(folder)  # another process may have finished it meanwhile
        if done is not None:
            return done
        return _install(package, version, folder)


def latest_version(package: str) -> str:
    """The newest version of ``package`` on the index that this Python can install."""
    uv = _uv()
    if uv:
        argv = [uv, "pip", "compile", "--quiet", "--no-deps", "--no-header", "--python"]
        argv += [sys.executable, "--no-annotate", "-"]
        out = _run(argv, package, stdin=package + "\n")
        pins = re.findall(rf"(?im)^{re.escape(package)}==(\S+)", out)
    else:
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet"]
        out = _run([*argv, "--report", "-", package], package)
        pins = [item["metadata"]["version"] for item in json.loads(out)["install"]]
    if not pins:
        raise ConnectorError(f"no installable version of {package} found", key="package")
    return pins[0]


def _install(package: str, version: str, folder: Path) -> Installed:
    if folder.exists():
        log.info("removing the unfinished or outdated install in %s", folder)
        shutil.rmtree(folder)
    started = time.perf_counter()
    uv = _uv()
    log.warning(  # visible by default: it takes up to a minute, once per version
        "installing %s==%s into %s with %s (once per version) ...",
        package,
        version,
        folder,
        "uv" if uv else "pip",
    )
    python = folder / "bin" / "python"
    requirement = f"{package}=={version}"
    if uv:
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(folder)], package)
        install = [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python"]
        _run([*install, str(python), requirement], package)
    else:
        _run([sys.executable, "-m", "venv", str(folder)], package)
        _run([str(python), "-m", "pip", "install", "--quiet", "--compile", requirement], package)
    executable = folder / "bin" / _console_script(python, package)
    spec = _spec(executable)
    done = Installed(package, version, folder, executable, spec)
    marker: dict[str, Any] = {"package": package, "version": version}
    marker |= {"executable": executable.name, "spec": spec, "layout": LAYOUT}
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker))
    tmp.replace(folder / MARKER)
    log.info("installed %s==%s in %.0f s", package, version, time.perf_counter() - started)
    return done


def _console_script(python: Path, package: str) -> str:
    """The console script the package declares (``source-faker``)."""
    code = (
        "import importlib.metadata as m, sys;"
        "print('\\n'.join(e.name for e in m.distribution(sys.argv[1]).entry_points "
        "if e.group == 'console_scripts'))"
    )
    names = _run([str(python), "-c", code, package], package).split()
    if not names:
        raise ConnectorError(
            f"{package} declares no command to run",
            key="package",
            hint="install a connector package (airbyte-source-*), or use `executable:`",
        )
    wanted = package.removeprefix("airbyte-")
    return wanted if wanted in names else names[0]


def _spec(executable: Path) -> dict[str, Any] | None:
    """The connector's spec, or None if it would not give one (asked again at use)."""
    from connectors.airbyte.process import Connector, spec_of

    try:
        return spec_of(Connector(executable.name, (str(executable),)))
    except ConnectorError as exc:
        log.warning("%s spec failed (%s); it will be asked at each use", executable.name, exc)
        return None


def _read_marker(folder: Path) -> Installed | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
        executable = folder / "bin" / marker["executable"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if marker.get("layout") != LAYOUT:  # an install made before bytecode was compiled
        return None
    if not executable.exists():
        return None
    return Installed(marker["package"], marker["version"], folder, executable, marker.get("spec"))


def _version_key(version: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


def _uv() -> str | None:
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.exists() else shutil.which("uv")


def install_timeout() -> float:
    """Seconds one install step may take (``$MDSTACK_INSTALL_TIMEOUT``, default 900).

    Raises:
        ConnectorError: the variable is set but is not a positive number.
    """
    configured = os.environ.get(TIMEOUT_ENV, "").strip()
    if not configured:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(configured)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConnectorError(
            f"${TIMEOUT_ENV} is {configured!r}, not a number of seconds",
            key=TIMEOUT_ENV,
            hint=f"set it to a positive number (default {DEFAULT_TIMEOUT:g}), or unset it",
        )
    return seconds


def _run(argv: list[str], package: str, stdin: str | None = None) -> str:
    step, timeout = f"{Path(argv[0]).name} {argv[1]}", install_timeout()
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(
            f"installing {package}: `{step}` did not finish within {timeout:g} s and was stopped",
            key="package",
            hint="check the network (or a PIP_INDEX_URL / UV_INDEX_URL mirror) and retry; "
            f"on a slow link raise ${TIMEOUT_ENV} (seconds). The unfinished install is rebuilt",
        ) from None
    if done.returncode == 0:
        return done.stdout
    tail = (done.stderr or done.stdout).strip()[-1500:]
    unreachable = ("Failed to fetch", "Could not connect", "NewConnectionError", "timed out")
    if any(text in tail for text in unreachable):
        raise SourceUnavailable(
            f"installing {package}: the package index could not be reached: {tail}",
            key="package",
            hint="check the network (or a PIP_INDEX_URL / UV_INDEX_URL mirror) and retry",
        )
    raise ConnectorError(
        f"installing {package} failed ({step}): {tail}",
        key="package",
        hint="check the package name and `version:`",
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
