"""``mdstack init``: write a new project's skeleton (stack.yml, a dbt project, .gitignore,
README.md) for a kind of source and a warehouse, offline, then say what to run next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from stack.cli._common import errors, out
from stack.scaffold import SourceKind, WarehouseKind, project, project_name, write_files


def init(
    source: Annotated[
        SourceKind,
        typer.Option(
            "--source",
            help="Kind of source: demo (a simulated shop, runs offline as it is), or a "
            "placeholder to edit for postgres, rest, files or airbyte.",
        ),
    ],
    directory: Annotated[
        Path, typer.Argument(help="Folder of the new project (made if missing; must be empty).")
    ] = Path("."),
    warehouse: Annotated[
        WarehouseKind, typer.Option("--warehouse", help="Where the data lands.")
    ] = "duckdb",
    name: Annotated[
        str | None,
        typer.Option("--name", help="Pipeline and dbt project name (default: the folder's)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Into a folder that is not empty: add the missing files, keep the rest."
        ),
    ] = False,
) -> None:
    """Start a project: stack.yml, a dbt project, .gitignore and README.md.

    The dbt project has a staging model per stream of the source. Offline: nothing is
    installed or downloaded, and no file is overwritten.
    """
    folder = directory.resolve()
    with errors():
        made = project(project_name(name or folder.name), source, warehouse)
        done = write_files(folder, made.files, force=force)
    for relative in done.written:
        out.print(f"[green]wrote[/] {relative}", highlight=False)
    for relative in done.kept:
        out.print(f"[yellow]kept[/]  {relative} (it was there)", highlight=False)
    out.print(
        f"\nProject [bold]{made.name}[/]: {source} -> {warehouse} -> dbt, in {folder}",
        highlight=False,
    )
    out.print("Next:", highlight=False)
    steps = [] if folder == Path.cwd() else [f"cd {shlex.quote(str(directory))}"]
    if made.source.placeholder or warehouse != "duckdb":
        steps.append("edit stack.yml: the lines marked EDIT")
    steps += [f"export {variable}=..." for variable in made.env]
    steps += ["mdstack validate", "mdstack run", "mdstack status", "mdstack deploy"]
    for step in steps:
        out.print(f"  {step}", highlight=False)
