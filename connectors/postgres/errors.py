"""PostgreSQL and DuckDB errors as mdstack errors: the one place the source classifies them.

Unreachable servers, timeouts, dropped connections and server overload become
SourceUnavailable (retryable); refused credentials, permissions and bad names a
ConnectorError with a hint. The password is scrubbed from every message.
"""

from __future__ import annotations

from connectors._http_redact import Redactor
from connectors.errors import ConnectorError, SourceUnavailable
from connectors.postgres.config import PostgresConfig

_RETRYABLE_STATES = ("08", "53", "57P", "57014", "40001", "40P01", "55006")
_RETRYABLE_TEXT = (
    "connection refused",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "could not receive data",
    "could not send data",
    "connection reset",
    "the database system is",
    "too many clients",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "consuming input failed",
    "ssl syscall",
    "terminating connection",
)


def translate_error(
    exc: Exception, cfg: PostgresConfig, source: str, stream: str | None
) -> ConnectorError:
    """Map a psycopg or DuckDB error to ConnectorError / SourceUnavailable, password scrubbed."""
    text = Redactor([cfg.secret] if cfg.secret else [])(str(exc).strip())
    state = getattr(exc, "sqlstate", None) or ""
    lower = text.lower()
    where = f"PostgreSQL {cfg.host}:{cfg.port}/{cfg.database}"
    if state != "53400" and (
        state.startswith(_RETRYABLE_STATES) or any(p in lower for p in _RETRYABLE_TEXT)
    ):
        return SourceUnavailable(
            f"{where} is unavailable: {text}",
            source=source,
            stream=stream,
            hint="retry later; check that the server is up and reachable from here",
        )
    hint: str | None
    if state.startswith("28") or "authentication failed" in lower or "pg_hba.conf" in lower:
        hint = f"check `user` ({cfg.user!r}) and `password`, and pg_hba.conf on the server"
    elif state == "42501" or "permission denied" in lower:
        hint = f"grant access, e.g. GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO {cfg.user};"
    elif state == "53400":
        hint = "raise max_replication_slots, or drop unused slots (pg_drop_replication_slot)"
    elif "does not exist" in lower and "database" in lower:
        hint = "check `database`"
    elif "resolve host" in lower or "translate host name" in lower or "not known" in lower:
        hint = "check `host`"
    else:
        hint = None
    return ConnectorError(f"{where}: {text}", source=source, stream=stream, hint=hint)
