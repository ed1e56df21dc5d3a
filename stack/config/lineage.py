"""The ``lineage:`` section of ``stack.yml``: where OpenLineage events go, where the page goes.

Events go to a JSON-lines file (``transport: file``) or to a Marquez-style server
(``transport: http``); :mod:`stack.lineage` builds and sends them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["LineageConfig"]


class LineageConfig(BaseModel):
    """The ``lineage:`` section of ``stack.yml``.

    Examples::

        lineage: {transport: file, path: lineage.jsonl}
        lineage: {transport: http, url: "http://marquez:5000", api_key: "${vault:kv/ol#key}"}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["file", "http"]
    path: Path = Path("lineage.jsonl")
    """``file``: the JSON-lines file events are appended to (relative to stack.yml)."""
    url: str | None = None
    """``http``: the OpenLineage endpoint's base URL (Marquez: ``http://host:5000``)."""
    endpoint: str = "api/v1/lineage"
    api_key: SecretStr | None = None
    """``http``: sent as ``Authorization: Bearer``; a ``${vault:...}`` reference is fine."""
    timeout: float = Field(default=5.0, gt=0)
    namespace: str | None = None
    """Namespace of mdstack's jobs (default: the pipeline's ``name``)."""
    page: Path = Path("lineage.html")
    """Where ``mdstack lineage`` writes the page (relative to stack.yml)."""

    @model_validator(mode="after")
    def _http_needs_url(self) -> LineageConfig:
        if self.transport == "http" and not self.url:
            raise ValueError("transport http needs `url:` (e.g. http://marquez:5000)")
        return self
