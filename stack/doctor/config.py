"""The first check: ``stack.yml`` loads. Every other check needs it, so a failure ends the run."""

from __future__ import annotations

from pathlib import Path

from stack.config import StackConfig, config_path, load_config
from stack.doctor.check import Check, failed
from stack.errors import ConfigError


def check_config(path: Path | None) -> tuple[Check, StackConfig | None]:
    """The config check's line, and the loaded config when it passed."""
    file = config_path(path)
    try:
        config = load_config(file)
    except ConfigError as exc:
        return failed("config", "loads", exc, "fix stack.yml"), None
    streams = sum(len(s.streams) for s in config.sources.values())
    detail = f"{file}: {len(config.sources)} sources, {streams} streams, target {config.target}"
    return Check("loads", "ok", detail, area="config"), config
