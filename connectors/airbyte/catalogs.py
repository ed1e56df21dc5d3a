"""The catalogs connectors' ``discover`` printed, kept on disk so a sync need not ask again.

``discover`` costs a connector process (1-2 s for a CDK connector, more with Docker) and,
for an API or database source, calls to the source itself, on every sync; what it prints
changes only with the connector's version and its config (and the source behind it: a
table or column added upstream, which is what a refresh is for, see below).

**Where**: ``$MDSTACK_CATALOGS_DIR``, default ``~/.cache/mdstack/catalogs``, next to the
installed connectors (``~/.cache/mdstack/connectors``) but apart from them: executables and
images have no install folder, and a connectors folder may be shared read-only. A catalog
depends on the connector and its config, not on the project, so projects of one user share
it; it is a cache: deleting the folder only costs one ``discover`` per connector. The
folder is private (0700, files 0600): a catalog names the source's tables and columns.

**Key**: one file per connector version and config, named by an HMAC-SHA256 of both under a
random key kept in the folder (``.key``, 0600): the connector (``package==version``; for an
executable, the path, mtime and size of each file its command names: a script edited is a
new version; an image only when pinned by digest, else never cached) and the connector's
config as canonical JSON. The config itself is never stored, and a keyed hash makes a short
password in it no easier to guess from the file name than from nothing. A catalog holding a
secret value of the config (a connector echoing it into a description) is not stored.

**Writes** go to a temporary file renamed into place: a concurrent sync reads the old
catalog or the new one, never half of one. A file that is not a catalog (corrupt, from a
future format) is ignored, and replaced by the next ``discover``.

**Refresh**: :func:`refreshing` (``mdstack sync --refresh-catalog``) makes every look-up
miss, so each connector discovers again and its entry is rewritten; a stream the cached
catalog lacks is discovered for real once by the source (:mod:`connectors.airbyte.source`),
and a record with a field its cached stream schema lacks (a column added upstream?) makes
the source :func:`forget` the entry and discover again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("connectors.airbyte")

CACHE_ENV = "MDSTACK_CATALOGS_DIR"
FORMAT = 1
"""Version of the file's layout; a file of another is ignored."""
_KEY_FILE = ".key"
_KEY_BYTES = 32
_DIGEST = "sha256:"
_refresh = threading.Event()


def cache_dir() -> Path:
    """The folder of cached catalogs."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "mdstack" / "catalogs"


@contextlib.contextmanager
def refreshing() -> Iterator[None]:
    """Within it, no cached catalog is used: each connector runs ``discover`` and its cached
    catalog is replaced by what it printed."""
    _refresh.set()
    try:
        yield
    finally:
        _refresh.clear()


def package_identity(package: str, version: str) -> str:
    """A PyPI connector: its name and exact installed version."""
    return f"package {package}=={version}"


def executable_identity(argv: Sequence[str]) -> str:
    """A command: each word, and for each word naming a file (the program, a script it
    runs) its path, mtime and size, so that a rebuilt or edited connector is a new one."""
    parts = []
    for word in argv:
        path = Path(word)
        if not path.is_file() and os.sep not in word:  # a command found on PATH
            path = Path(shutil.which(word) or word)
        try:
            stat = path.stat()
        except OSError:
            parts.append(word)
            continue
        found = path.is_file()
        parts.append(f"{path.resolve()}@{stat.st_mtime_ns}:{stat.st_size}" if found else word)
    return "executable " + json.dumps(parts)


def image_identity(image: str) -> str | None:
    """An image pinned by digest (``name@sha256:...``); None for a tag, which may move to
    another image at any pull (its catalog is not cached)."""
    return f"image {image}" if f"@{_DIGEST}" in image else None


def load(connector: str, config: Any) -> list[dict[str, Any]] | None:
    """The cached streams of ``connector`` with ``config``; None when there are none, the
    file is unreadable, or a refresh is under way."""
    if _refresh.is_set():
        return None
    path = _entry(connector, config)
    if path is None:
        return None
    try:
        content = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("ignoring the cached catalog %s (%s); discovering again", path, exc)
        return None
    streams = content.get("streams") if isinstance(content, dict) else None
    if (
        not isinstance(content, dict)
        or content.get("format") != FORMAT
        or not isinstance(streams, list)
        or not all(_stream(s) for s in streams)
    ):
        log.info("ignoring the cached catalog %s (not a catalog); discovering again", path)
        return None
    return streams


def forget(connector: str, config: Any) -> None:
    """Remove the cached catalog of ``connector`` with ``config``: it is out of date, and the
    next look-up, in any process, discovers again."""
    path = _entry(connector, config)
    if path is None:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the outdated catalog %s: %s", path, exc)


def _stream(entry: Any) -> bool:
    """Whether ``entry`` looks like an AirbyteStream of a catalog."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("json_schema", {}), dict)
    )


def store(
    connector: str, config: Any, streams: list[dict[str, Any]], secret_values: Sequence[str]
) -> None:
    """Keep what ``discover`` printed, unless it holds one of ``secret_values``. A cache that
    cannot be written (read-only home, disk full) is logged, never an error: the next sync
    discovers again."""
    text = json.dumps({"format": FORMAT, "streams": streams}, separators=(",", ":"))
    if any(value in text for value in secret_values):
        log.info("the catalog holds a secret value of the config: it is not cached")
        return
    try:
        path = _entry(connector, config, create=True)
        if path is None:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")  # 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("could not cache the catalog in %s: %s", cache_dir(), exc)


def _entry(connector: str, config: Any, create: bool = False) -> Path | None:
    """The file of ``connector`` with ``config``; None when the folder has no key yet (and
    ``create`` is false)."""
    folder = cache_dir()
    key = _key(folder, create)
    if key is None:
        return None
    canonical = json.dumps(
        {"connector": connector, "config": config},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    name = hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    return folder / f"{name}.json"


def _key(folder: Path, create: bool) -> bytes | None:
    """The folder's random HMAC key, made on first write. A key of the wrong size (a
    damaged file) is replaced: the entries made under it are then never found again."""
    path = folder / _KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    except OSError as exc:
        log.info("cannot read the catalog cache key %s (%s); not using the cache", path, exc)
        return None
    if len(key) == _KEY_BYTES:
        return key
    if not create:
        return None
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-key-")  # 0600
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(_KEY_BYTES))
    try:
        if key:  # damaged: replace it
            os.replace(tmp, path)
        else:  # first use: only if no concurrent sync made one meanwhile
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    key = path.read_bytes()
    return key if len(key) == _KEY_BYTES else None
