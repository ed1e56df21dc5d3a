"""``mdstack doctor``: why won't this run? Each thing a run needs, checked in the order it
needs them, one :class:`Check` each, with the fix to paste when it fails.

::

    config.py     stack.yml loads (nothing else can be checked without it)
    secrets.py    Vault: reachable, unsealed, the login works, the token's time left
    warehouse.py  the target opens; a DuckDB catalog's lock holder; free disk
    sources.py    each source's check(); PostgreSQL CDC's prerequisites one by one
    dbt.py        the project folder; ``dbt debug`` against the generated profile
    prefect.py    the Prefect API answers, when PREFECT_API_URL is set

Every check that talks to a server has a deadline, so the doctor never hangs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from connectors.base import Status
from stack.config import config_path
from stack.doctor.check import Check, failed
from stack.doctor.config import check_config
from stack.doctor.dbt import dbt_checks
from stack.doctor.prefect import prefect_checks
from stack.doctor.secrets import vault_checks
from stack.doctor.sources import SLOT_LAG_WARN_BYTES, source_checks
from stack.doctor.warehouse import MIN_FREE_BYTES, warehouse_checks
from stack.errors import ConfigError
from stack.run import pipeline

__all__ = ["MIN_FREE_BYTES", "SLOT_LAG_WARN_BYTES", "Check", "Status", "diagnose"]


def diagnose(
    config_file: Path | None = None,
    target: str | None = None,
    region: str | None = None,
    *,
    min_free: int = MIN_FREE_BYTES,
    slot_lag_warn: int = SLOT_LAG_WARN_BYTES,
) -> Iterator[Check]:
    """Every check, in order, as each completes.

    Args:
        config_file: ``--config`` (default ``./stack.yml`` or ``$MDSTACK_CONFIG``).
        target: ``--target`` (default: the file's ``target:``).
        region: the region whose source settings are checked (default: the first).
        min_free: warn when the warehouse's disk has less free space (bytes).
        slot_lag_warn: warn when a replication slot holds back more WAL (bytes).
    """
    check, config = check_config(config_file)
    yield check
    if config is None:
        return
    try:
        chosen = config.check_region(region) if region else config.region_names()[0]
    except ConfigError as exc:
        yield failed("config", "region", exc)
        return
    with pipeline.secrets_for(config) as resolver:
        yield from vault_checks(config, resolver)
        yield from warehouse_checks(config, target, resolver, min_free)
        yield from source_checks(config, chosen, resolver, slot_lag_warn)
    yield from dbt_checks(config, config_path(config_file), target)
    yield from prefect_checks()
