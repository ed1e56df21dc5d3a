"""Peer tools, each installed by the bench into its own virtualenv under ``bench/.peers/``.

Nothing of theirs is vendored: :func:`ensure` creates ``bench/.peers/<name>`` with
``uv`` (from mdstack's own virtualenv) and installs the pinned requirements from the
package index the first time a scenario needs them; later runs reuse the virtualenv
when its marker file matches the requirements.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / ".peers"


@dataclass(frozen=True)
class Peer:
    """A peer's virtualenv: its name and the requirements installed into it."""

    name: str
    requirements: tuple[str, ...]

    @property
    def root(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def marker(self) -> Path:
        return self.root / ".bench-installed"


DLT = Peer(
    "dlt",
    (
        "dlt[duckdb,sql_database]==1.31.0",
        "connectorx",
        "psycopg2-binary",
        "sqlalchemy",
        "pyarrow",
    ),
)
"""dlt with its sql_database source and the connectorx and pyarrow backends."""

PROFILER = Peer("profiler", ("py-spy",))
"""py-spy, for the closing profile of a missed target (not a peer: a tool)."""


class PeerUnavailable(RuntimeError):
    """A peer could not be installed (no index, no uv): its rows are skipped."""


def _uv() -> str:
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.exists() else shutil.which("uv")
    if not found:
        raise PeerUnavailable("uv is not installed (make installs it into .venv)")
    return found


def ensure(peer: Peer, log=print) -> Path:
    """Install ``peer`` unless already installed; return its Python.

    Raises:
        PeerUnavailable: the virtualenv or the install failed (the error says why).
    """
    wanted = "\n".join(peer.requirements)
    if peer.marker.exists() and peer.marker.read_text() == wanted and peer.python.exists():
        return peer.python
    uv = _uv()
    log(f"installing {peer.name} into {peer.root} ({', '.join(peer.requirements)}) ...")
    steps = [
        [uv, "venv", "--quiet", "--python", sys.executable, str(peer.root)],
        [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(peer.python)],
    ]
    steps[-1] += peer.requirements
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode:
            raise PeerUnavailable(f"{' '.join(step[:3])} failed: {done.stderr.strip()[-500:]}")
    peer.marker.write_text(wanted)
    return peer.python
