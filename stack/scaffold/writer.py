"""Write a new project's files into a folder, never over a file that is there.

A folder that holds anything is refused as a whole, before a file is written: init into
the wrong folder (a home, another project) must change nothing. ``force`` lets init add
the project's files to such a folder (a fresh git clone, say), still keeping every
existing file as it is, but never into a folder that holds a ``stack.yml`` already: files
added to a project of another kind would break it (a staging model of a stream it lacks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stack.config.loader import DEFAULT_CONFIG
from stack.errors import ConfigError

__all__ = ["Written", "write_files"]

_SHOWN = 5
"""Entries of a non-empty folder an error names."""


@dataclass(frozen=True)
class Written:
    """What :func:`write_files` did: the files it wrote and those it kept (relative paths)."""

    folder: Path
    written: tuple[str, ...]
    kept: tuple[str, ...]


def write_files(folder: Path, files: Mapping[str, str], *, force: bool = False) -> Written:
    """Write ``files`` (relative path -> text) under ``folder``, creating it if missing.

    Raises:
        ConfigError: ``folder`` is a file, holds a ``stack.yml``, or holds anything and
            ``force`` is not set; nothing has been written then.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            "not a folder",
            file=str(folder),
            hint="give the folder of the new project: `mdstack init NEW_FOLDER`",
        )
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if DEFAULT_CONFIG in found:
        raise ConfigError(
            f"the folder already holds a project ({DEFAULT_CONFIG}): init would mix a second "
            "one into it",
            file=str(folder),
            hint=f"edit its {DEFAULT_CONFIG}, or give a new folder: `mdstack init NEW_FOLDER`",
        )
    if found and not force:
        shown = ", ".join(found[:_SHOWN]) + (", ..." if len(found) > _SHOWN else "")
        raise ConfigError(
            f"the folder is not empty ({shown}): init writes a project into an empty folder",
            file=str(folder),
            hint="give a new folder (`mdstack init NEW_FOLDER`), or add --force to add the "
            "project's files, keeping every file that is there",
        )
    written, kept = [], []
    for relative, text in files.items():
        path = folder / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("x") as handle:  # "x": an existing file is never opened for writing
                handle.write(text)
        except (FileExistsError, NotADirectoryError):  # the file, or a file in its folder's place
            kept.append(relative)
        else:
            written.append(relative)
    return Written(folder, tuple(written), tuple(kept))
