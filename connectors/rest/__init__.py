"""The REST source (:class:`RestSource`): JSON-over-HTTP APIs declared in ``stack.yml``.

Modules: ``source`` (the source), ``config`` (the pydantic config), ``http`` (requests,
retries, auth), ``paging`` (pagination), ``decode`` (pages into Arrow), ``jsonpath`` (record
selectors) and ``columns`` (Arrow columns grown from JSON values).
"""

from connectors.rest.source import RestSource

__all__ = ["RestSource"]
