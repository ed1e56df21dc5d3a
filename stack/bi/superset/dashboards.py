"""Dashboards kept in the repository as Superset exports, imported into a running Superset.

A folder here is what Superset's own export writes (``metadata.yaml``, ``databases/``,
``datasets/``, ``charts/``, ``dashboards/``), so a dashboard changed in Superset's UI is
kept by exporting it over the folder. Two things are set at import, not kept:

- the database's ``sqlalchemy_uri``: the BI file of the project importing it;
- each chart's saved query's dataset id (Superset keeps ids in it, which differ between
  Supersets), so ``GET /api/v1/chart/{id}/data/``, reports and thumbnails answer.

The import is ``POST /api/v1/assets/import/`` (multipart ``bundle``: the folder zipped
under one top folder), which overwrites what the bundle's uuids name: importing again
after a change updates in place, and the dataset ids the hooks name stay.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from connectors.http import error_text
from stack.errors import MdstackError

__all__ = ["SHOP", "Imported", "import_dashboards", "require_export", "signed_in"]

SHOP = Path(__file__).with_name("exports") / "shop"
"""The demo's dashboard: daily revenue by region, marketing ROI by channel and region."""


@dataclass(frozen=True)
class Imported:
    """A dashboard now in Superset: its title, address and charts (id by name)."""

    title: str
    url: str
    charts: dict[str, int]


def signed_in(url: str, username: str, password: str) -> httpx.Client:
    """An API client signed in to Superset at ``url`` (JWT; CSRF token and its cookie)."""
    api = httpx.Client(base_url=url, timeout=120)
    login = api.post(
        "/api/v1/security/login",
        json={"username": username, "password": password, "provider": "db", "refresh": True},
    )
    if login.status_code != 200:
        api.close()
        raise MdstackError(
            f"Superset at {url} refused {username!r}: HTTP {login.status_code} {error_text(login)}"
        )
    api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    csrf = api.get("/api/v1/security/csrf_token/")
    csrf.raise_for_status()
    api.headers["X-CSRFToken"] = csrf.json()["result"]
    api.headers["Referer"] = url
    return api


def require_export(folder: Path) -> None:
    """Refuse a folder that is not a Superset export (before anything starts)."""
    if not (folder / "metadata.yaml").is_file():
        raise MdstackError(
            f"{folder} is not a Superset export folder: it has no metadata.yaml "
            "(unzip what Superset's Export wrote, and name the folder inside)"
        )


def import_dashboards(api: httpx.Client, folder: Path, database_uri: str) -> list[Imported]:
    """Import the export in ``folder`` with its database pointed at ``database_uri``."""
    require_export(folder)
    answer = api.post(
        "/api/v1/assets/import/",
        files={"bundle": ("dashboards.zip", _bundle(folder, database_uri), "application/zip")},
        data={"passwords": "{}"},
    )
    if answer.status_code != 200:
        raise MdstackError(
            f"Superset refused the dashboards of {folder}: HTTP {answer.status_code} "
            f"{error_text(answer)}"
        )
    queries = {
        spec["slice_name"]: json.loads(spec["query_context"])
        for spec in _specs(folder, "charts")
        if spec.get("query_context")
    }
    return [
        _save_queries(api, spec["slug"], spec["dashboard_title"], queries)
        for spec in _specs(folder, "dashboards")
    ]


def _bundle(folder: Path, database_uri: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.yaml")):
            relative = path.relative_to(folder)
            text = path.read_text()
            if relative.parts[0] == "databases":
                text = _replaced(text, sqlalchemy_uri=database_uri)
            elif relative.name == "metadata.yaml":
                text = _replaced(text, type="assets")  # what the assets endpoint takes
            archive.writestr(f"mdstack_dashboards/{relative.as_posix()}", text)
    return buffer.getvalue()


def _replaced(text: str, **values: str) -> str:
    return yaml.safe_dump({**yaml.safe_load(text), **values}, sort_keys=False)


def _specs(folder: Path, kind: str) -> list[dict]:
    return [yaml.safe_load(path.read_text()) for path in sorted((folder / kind).glob("*.yaml"))]


def _save_queries(api: httpx.Client, slug: str, title: str, queries: dict[str, dict]) -> Imported:
    """Give each chart of dashboard ``slug`` its saved query, with this Superset's dataset id."""
    answer = api.get(f"/api/v1/dashboard/{slug}/charts")
    if answer.status_code != 200:
        raise MdstackError(f"Superset has no dashboard {slug!r} after the import: {answer.text}")
    charts = {}
    for chart in answer.json()["result"]:
        name, form = chart["slice_name"], chart["form_data"]
        charts[name] = chart["id"]
        if name in queries:
            dataset = int(str(form["datasource"]).split("__", 1)[0])
            query = {**queries[name], "datasource": {"id": dataset, "type": "table"}}
            saved = api.put(
                f"/api/v1/chart/{chart['id']}", json={"query_context": json.dumps(query)}
            )
            if saved.status_code != 200:
                raise MdstackError(f"Superset refused chart {name!r}'s query: {saved.text}")
    return Imported(title, f"{str(api.base_url).rstrip('/')}/superset/dashboard/{slug}/", charts)
