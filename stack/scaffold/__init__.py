"""``mdstack init``: the skeleton of a new project, written offline from templates.

::

    starters.py   per kind of source: the source's name and streams a project starts with
                  (the demo's from its catalog, a placeholder stream for the others)
    project.py    the project's files: stack.yml, the dbt project (sources, a staging
                  model per stream, macros), .gitignore and README.md, from templates/
    writer.py     writes them into a folder, never over an existing file
    templates/    the files, with ``@@name`` placeholders (package data: installed with
                  mdstack, read with importlib.resources)

No profiles.yml: the stack writes dbt's profile for each run (:mod:`stack.transform.dbt`).
"""

from stack.scaffold.project import Project, project, project_name
from stack.scaffold.starters import SOURCE_KINDS, WAREHOUSE_KINDS, SourceKind, WarehouseKind
from stack.scaffold.writer import Written, write_files

__all__ = [
    "SOURCE_KINDS",
    "WAREHOUSE_KINDS",
    "Project",
    "SourceKind",
    "WarehouseKind",
    "Written",
    "project",
    "project_name",
    "write_files",
]
