"""Running an Airbyte protocol connector: one child process per command, never left behind.

:func:`run` starts ``<connector> <verb> --config ... [--catalog ...] [--state ...]`` in a
process group of its own and yields its stdout line by line, as bytes. A thread reads the
output as it comes, up to :data:`READ_AHEAD_BYTES` ahead of the caller
(:class:`_ReadAhead`): the connector, usually the slower side, never waits while mdstack
converts or commits. The files it reads live in a private temporary folder (0700; the config
file 0600) that is deleted when the command ends, whatever the outcome; the folder's name
carries mdstack's pid, so a folder that a killed process (SIGKILL skips every cleanup) left
behind is deleted by the next use once that pid is gone. When the generator
is closed early, or an exception or KeyboardInterrupt passes through it, the whole group
gets SIGTERM and, after :data:`GRACE_SECONDS`, SIGKILL: a cancelled read leaves no process
behind; a read abandoned in another thread is stopped when mdstack exits. A non-zero exit is
a ConnectorError carrying the tail of the connector's stderr.

Connectors are commands (``argv`` lists): an installed package's console script, a local
executable, or ``docker run`` of an image (only when a Docker engine answers).

:class:`Scrubber` masks the connector config's secrets (fields the spec marks
``airbyte_secret``) in anything the connector says that mdstack repeats: log lines, error
messages, stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connectors._json_arrow import loads
from connectors.errors import ConnectorError

log = logging.getLogger("connectors.airbyte")

GRACE_SECONDS = 5.0
"""How long a connector gets between SIGTERM and SIGKILL."""
READ_AHEAD_BYTES = 64 << 20
"""Connector output read ahead of the conversion, at most: memory stays bounded."""
STDERR_LINES = 40
"""Lines of stderr kept for an error message."""
LEVELS = {
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": logging.DEBUG,
}
_MOUNT = "/mdstack"
_LIVE: set[subprocess.Popen] = set()
"""Connector processes started and not yet finished or stopped."""
_FOLDERS: set[Path] = set()
"""Private folders of config files not yet deleted."""
_FOLDER_PREFIX = "mdstack-airbyte-"
_FOLDER_NAME = re.compile(rf"^{_FOLDER_PREFIX}(\d+)-[a-z0-9_]+$")
"""``mdstack-airbyte-<pid>-<random>``: mkdtemp's random part holds no dash."""


@dataclass(frozen=True)
class Connector:
    """How to start one connector: ``argv`` (a command), or ``image`` (run by Docker)."""

    source: str
    argv: tuple[str, ...] = ()
    image: str | None = None

    def command(self, verb: str, files: Mapping[str, Path]) -> list[str]:
        """The command line for ``verb`` with ``--config``/``--catalog``/``--state`` files."""
        if self.image is None:
            return [*self.argv, verb, *_options(files, None)]
        folder = next(iter(files.values())).parent if files else None
        mount = ["-v", f"{folder}:{_MOUNT}:ro"] if folder else []
        user = ["--user", f"{os.getuid()}:{os.getgid()}"]  # to read the private files
        docker = ["docker", "run", "--rm", "-i", "--init", *user, *mount]
        return [*docker, self.image, verb, *_options(files, _MOUNT)]


def _options(files: Mapping[str, Path], mount: str | None) -> list[str]:
    """``--config PATH --catalog PATH ...``, paths inside ``mount`` when given."""
    return [
        part
        for name, path in files.items()
        for part in (f"--{name}", f"{mount}/{path.name}" if mount else str(path))
    ]


@dataclass
class Scrubber:
    """Masks secret values (strings of 4+ characters) in text the connector produced."""

    secrets: list[str] = field(default_factory=list)

    @classmethod
    def for_config(cls, config: Any, spec: Mapping[str, Any] | None) -> Scrubber:
        """The secrets of ``config``: values under properties the spec marks
        ``airbyte_secret`` (anywhere, also inside ``oneOf`` branches)."""
        names = _secret_names(spec or {})
        found: list[str] = []

        def walk(value: Any, secret: bool) -> None:
            if isinstance(value, Mapping):
                for key, item in value.items():
                    walk(item, secret or key in names)
            elif isinstance(value, list):
                for item in value:
                    walk(item, secret)
            elif secret and isinstance(value, str | int) and len(str(value)) >= 4:
                found.append(str(value))

        walk(config, False)
        return cls(sorted(set(found), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _secret_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, Mapping):
        for key, prop in (schema.get("properties") or {}).items():
            if isinstance(prop, Mapping) and prop.get("airbyte_secret"):
                names.add(key)
        for value in schema.values():
            names |= _secret_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names |= _secret_names(item)
    return names


@contextlib.contextmanager
def private_files(**contents: Any) -> Iterator[dict[str, Path]]:
    """JSON files (``config=...``, ``catalog=...``) in a private folder deleted afterwards;
    None values are left out."""
    _remove_orphans()
    folder = Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))  # 0700
    _FOLDERS.add(folder)
    try:
        paths = {}
        for name, value in contents.items():
            if value is None:
                continue
            path = folder / f"{name}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(orjson.dumps(value))
            paths[name] = path
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _FOLDERS.discard(folder)


def _remove_orphans() -> None:
    """Delete the private folders of processes that are gone (killed before their cleanup).

    Only this user's folders, and only when their pid no longer runs: a recycled pid keeps
    a folder a while longer, never deletes a live one.
    """
    uid = os.getuid()
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        found = _FOLDER_NAME.match(entry.name)
        if found is None or _alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == uid:
                shutil.rmtree(entry.path, ignore_errors=True)
                log.info("deleted %s, left behind by a process that was killed", entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def run(
    connector: Connector,
    verb: str,
    files: Mapping[str, Path],
    scrub: Scrubber,
) -> Generator[bytes]:
    """Start the connector and yield its stdout lines (bytes, without the newline).

    Raises:
        ConnectorError: it cannot be started, or it exits non-zero (with its stderr tail).
    """
    proc = _start(connector, connector.command(verb, files))
    _LIVE.add(proc)
    tail: deque[str] = deque(maxlen=STDERR_LINES)
    reader = threading.Thread(
        target=_drain, args=(proc.stderr, tail, connector.source, scrub), daemon=True
    )
    reader.start()
    assert proc.stdout is not None
    ahead = _ReadAhead(proc.stdout.fileno())
    finished = False
    try:
        rest = b""
        for chunk in ahead.chunks():
            lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest
        code = proc.wait()
        reader.join(timeout=GRACE_SECONDS)
        finished = True
    finally:
        ahead.stop()
        if not finished:
            stop(proc)
        ahead.join()  # before stdout closes: its descriptor must not be reused under the reader
        _LIVE.discard(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if code != 0:
        said = " | ".join(tail)[-1500:] or "(nothing on stderr)"
        raise ConnectorError(
            f"the connector's `{verb}` exited with code {code}: {scrub(said)}",
            source=connector.source,
            hint="see the connector's log lines above; fix the config or the connector",
        )


def _start(connector: Connector, argv: list[str]) -> subprocess.Popen[bytes]:
    """The connector's process, in a process group of its own (so all of it can be stopped).

    Raises:
        ConnectorError: the command cannot be started.
    """
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=1 << 20,
            start_new_session=True,
        )
    except OSError as exc:
        raise ConnectorError(
            f"cannot start the connector {argv[0]!r}: {exc.strerror or exc}",
            source=connector.source,
            key="executable",
            hint="check the path and that the file is executable",
        ) from exc


class _ReadAhead:
    """The connector's stdout, read as it comes by a thread of its own into memory (at most
    :data:`READ_AHEAD_BYTES`), so the connector never waits on a full pipe while mdstack
    converts a block or writes to the warehouse."""

    def __init__(self, fd: int) -> None:
        self._chunks: deque[bytes | None] = deque()
        self._size = 0
        self._stopped = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(fd,), daemon=True)
        self._thread.start()

    def chunks(self) -> Iterator[bytes]:
        """What the connector wrote, in order, until it closed its stdout."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._chunks)
                chunk = self._chunks.popleft()
                if chunk is not None:
                    self._size -= len(chunk)
                self._changed.notify_all()
            if chunk is None:
                return
            yield chunk

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def join(self) -> None:
        """Wait for the reading thread, which ends at the connector's EOF once it is stopped."""
        self._thread.join(timeout=GRACE_SECONDS)

    def _pump(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 1 << 20):
                with self._changed:
                    self._changed.wait_for(lambda: self._stopped or self._size < READ_AHEAD_BYTES)
                    if self._stopped:
                        return
                    self._chunks.append(chunk)
                    self._size += len(chunk)
                    self._changed.notify_all()
        except OSError:  # closed under us: the read was stopped
            pass
        with self._changed:
            self._chunks.append(None)
            self._changed.notify_all()


@atexit.register
def _stop_leftovers() -> None:
    """Stop connectors still running when mdstack exits, and delete their config files: a
    read abandoned in a thread (blocked on a connector gone silent) never reaches its own
    cleanup."""
    for proc in list(_LIVE):
        stop(proc, grace=0.5)
    for folder in list(_FOLDERS):
        shutil.rmtree(folder, ignore_errors=True)


def stop(proc: subprocess.Popen, grace: float | None = None) -> None:
    """SIGTERM the process group, then SIGKILL it after the grace period; reap the child."""
    grace = GRACE_SECONDS if grace is None else grace
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # descendants that outlived the leader


def _drain(pipe, tail: deque[str], source: str, scrub: Scrubber) -> None:
    """Keep the last stderr lines and log each at debug level (connectors log to stdout)."""
    for raw in pipe:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            tail.append(line)
            log.debug("%s stderr: %s", source, scrub(line))


def messages(
    connector: Connector, verb: str, files: Mapping[str, Path], scrub: Scrubber
) -> Iterator[dict[str, Any]]:
    """Every message of a short command (spec, check, discover), LOG and TRACE handled:
    logs go to logging, an ERROR trace raises."""
    for line in run(connector, verb, files, scrub):
        message = parse_line(line, connector.source, scrub)
        if message is None:
            continue
        kind = message.get("type")
        if kind == "LOG":
            log_message(connector.source, message.get("log"), scrub)
        elif kind == "TRACE":
            raise_for_trace(connector.source, message.get("trace"), scrub)
        else:
            yield message


def parse_line(line: bytes, source: str, scrub: Scrubber) -> dict[str, Any] | None:
    """One stdout line as a message; lines that are not JSON objects are logged and skipped
    (connectors print stray text), as Airbyte does."""
    try:
        message = loads(line)
    except ValueError:
        message = None
    if isinstance(message, dict):
        return message
    text = line.decode("utf-8", "replace").strip()
    if text:
        log.info("%s: %s", source, scrub(text))
    return None


def log_message(source: str, body: Any, scrub: Scrubber) -> None:
    """A LOG message into logging, at its level."""
    if not isinstance(body, Mapping):
        return
    level = LEVELS.get(str(body.get("level", "INFO")).upper(), logging.INFO)
    if log.isEnabledFor(level):
        text = scrub(str(body.get("message", "")))
        if body.get("stack_trace"):
            text += "\n" + scrub(str(body["stack_trace"]))
        log.log(level, "%s: %s", source, text)


def raise_for_trace(source: str, trace: Any, scrub: Scrubber, stream: str | None = None) -> None:
    """An ERROR trace as a ConnectorError (retryable for ``transient_error``); other traces
    (stream status, estimates) are logged at debug level."""
    if not isinstance(trace, Mapping):
        return
    if trace.get("type") != "ERROR":
        log.debug("%s trace: %s", source, scrub(json.dumps(trace)[:500]))
        return
    found = trace.get("error")
    error: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    text = str(error.get("message") or "the connector reported an error")
    internal = str(error.get("internal_message") or "")
    if internal and internal not in text:
        text = f"{text} ({internal[:1000]})"
    failure = error.get("failure_type") or "system_error"
    hint = {
        "config_error": "fix the connector's `config:` in stack.yml",
        "transient_error": "retry later: the connector says the failure is temporary",
    }.get(failure, "see the connector's log lines for details")
    raise ConnectorError(
        f"the connector failed ({failure}): {scrub(text)}",
        source=source,
        stream=stream,
        hint=hint,
        retryable=failure == "transient_error",
    )


def docker_problem() -> str | None:
    """Why ``image:`` cannot be used here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no `docker` command is installed"
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 15 s"
    if done.returncode != 0:
        return f"no Docker engine is reachable ({done.stderr.strip()[:200]})"
    return None


def spec_of(connector: Connector) -> dict[str, Any]:
    """The connector's ``connectionSpecification`` (a JSON Schema of its config).

    Raises:
        ConnectorError: the connector failed or printed no SPEC message.
    """
    spec = None
    for message in messages(connector, "spec", {}, Scrubber()):  # to the end: exit code
        if message.get("type") == "SPEC":
            spec = (message.get("spec") or {}).get("connectionSpecification")
    if not isinstance(spec, dict):
        raise ConnectorError(
            "the connector's `spec` printed no SPEC message", source=connector.source
        )
    return spec
