"""Airbyte, both ways.

Sources: :class:`AirbyteSource` runs an Airbyte protocol connector as a local process
(``source``, with ``install``, ``process``, ``read``, ``records``, ``json_schema``);
:class:`AirbyteServerSource` runs the syncs of an Airbyte server's connection (``server``,
on the API client in ``api``). The reverse adapter, ``serve`` (``mdstack-source``), offers
any mdstack source as an Airbyte protocol connector (messages written by ``messages``).
"""

from connectors.airbyte.server import AirbyteServerSource
from connectors.airbyte.source import AirbyteSource

__all__ = ["AirbyteServerSource", "AirbyteSource"]
