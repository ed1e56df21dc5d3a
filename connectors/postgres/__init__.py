"""The PostgreSQL source (:class:`PostgresSource`).

Modules: ``source`` (the source), ``fetch`` (catalog and the Arrow fetch path) and ``cdc``
(change data capture through logical replication).
"""

from connectors.postgres.source import PostgresSource

__all__ = ["PostgresSource"]
