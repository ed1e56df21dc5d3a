"""Secrets: ``${vault:...}``, ``${env:...}``, ``${file:...}`` references in ``stack.yml``,
resolved once per run and never shown.

- ``references.py``: the reference syntax: finding and parsing references.
- ``resolver.py``: :class:`Resolver` (one per run), :func:`reveal` at the edge,
  :func:`check_references` (``mdstack secrets check``).
- ``vault.py``: one authenticated Vault (or OpenBao) session per run, through hvac:
  login, KV reads, database leases, renewal and revocation.

Where Vault is and how to log in is the ``secrets:`` section
(:mod:`stack.config.secrets`). Masking resolved values in logs and text is
:mod:`stack.redact`, which every layer uses.
"""

from stack.config.references import Reference, find_references, parse_reference
from stack.secrets.resolver import (
    DbCredentials,
    ReferenceCheck,
    Resolver,
    check_references,
    reveal,
)

__all__ = [
    "DbCredentials",
    "Reference",
    "ReferenceCheck",
    "Resolver",
    "check_references",
    "find_references",
    "parse_reference",
    "reveal",
]
