"""Sources: the Airbyte-style protocol (:mod:`connectors.base`) and its implementations.

Connectors import nothing from ``stack`` or ``flows``: they get a plain,
already-resolved config and yield Arrow batches, deletes and checkpoints.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from connectors.base import Source
from connectors.errors import ConnectorError

REGISTRY: dict[str, str] = {
    "demo": "connectors.demo:DemoSource",
    "postgres": "connectors.postgres.source:PostgresSource",
    "rest": "connectors.rest.source:RestSource",
    "files": "connectors.files.source:FilesSource",
    "airbyte": "connectors.airbyte.source:AirbyteSource",
    "airbyte_server": "connectors.airbyte.server:AirbyteServerSource",
}
"""Connector name -> ``module:Class``; imported lazily so one source's driver never
slows down or breaks another."""


def load_source(connector: str, name: str, config: Mapping[str, Any]) -> Source:
    """Instantiate the registered connector ``connector`` as source ``name``.

    Raises:
        ConnectorError: the connector name is not registered.
    """
    return source_class(connector, name)(name=name, config=dict(config))


def source_class(connector: str, name: str) -> Any:
    """The class registered as ``connector`` (imported now), for source ``name``'s errors.

    Raises:
        ConnectorError: the connector name is not registered.
    """
    try:
        target = REGISTRY[connector]
    except KeyError:
        raise ConnectorError(
            f"unknown connector {connector!r}; available: {', '.join(sorted(REGISTRY))}",
            source=name,
            hint="set `connector:` to one of the available connectors",
        ) from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
