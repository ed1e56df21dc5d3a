"""The files source (:class:`FilesSource`): CSV, JSON lines and Parquet from any fsspec URL.

Modules: ``source`` (the source: streams, listing, state), ``config`` (its config) and
``formats`` (reading one file of each format into Arrow).
"""

from connectors.files.source import FilesSource

__all__ = ["FilesSource"]
