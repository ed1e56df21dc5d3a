"""``replication_lag`` checks: the WAL a CDC source's slot holds back, as the run ledger
recorded it, against a size limit; on a real DuckLake warehouse, through the ledger's own
API, and through ``mdstack validate`` and ``mdstack check``."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from stack.cli import app
from stack.config.checks import Check
from stack.config.sizes import describe_size, size_bytes
from stack.errors import ConfigError
from stack.load import ledger
from stack.run.replication_lag import ledger_replication_lag
from stack.transform.checks import CHECKS_TABLE, blocking, run_checks
from stack.warehouse.duckdb import DuckDBWarehouse

NOW = datetime(2026, 3, 2, 12, 0, 0)
SCHEMAS = {"crm": "raw_crm", "shop": "raw_shop"}
GB = 10**9


def record_run(wh, run_id: str, stream: str, lag: int | None, *, hours: int, region="eu"):
    """A finished run of ``crm.<stream>`` (or ``shop.orders``) that recorded ``lag`` bytes."""
    source = "shop" if stream == "orders" else "crm"
    ledger.ensure_tables(wh)
    ledger.record(
        wh,
        ledger.RunEntry(
            run_id, "pipe", source, stream, region, "incremental_deduped", "succeeded",
            NOW - timedelta(hours=hours), replication_lag_bytes=lag,
        ),
    )  # fmt: skip


def check(text: str) -> list[Check]:
    return [Check.model_validate(item) for item in yaml.safe_load(text)]


def lag_checks(wh, declared: list[Check], region: str = "eu"):
    return run_checks(
        wh,
        declared,
        region,
        "run-x",
        NOW,
        source_lag=ledger_replication_lag(wh, "pipe"),
        schemas=SCHEMAS,
    )


ONE_GB = check("- {source: crm, replication_lag: {max: 1GB}}")


def test_under_the_limit_passes_and_is_recorded(warehouse):
    record_run(warehouse, "a", "contacts", 300_000_000, hours=1)
    [result] = lag_checks(warehouse, ONE_GB)
    assert result.passed and not result.skipped
    assert (result.name, result.kind, result.table) == (
        "replication_lag:crm",
        "replication_lag",
        "source crm",
    )
    assert result.observed == 300_000_000
    assert result.message == "slot of source crm holds back 300 MB of WAL"
    assert result.expected == "<= 1 GB of WAL held back"
    stored = warehouse.query(f"SELECT name, passed, metric FROM {CHECKS_TABLE}").to_pylist()
    assert stored == [{"name": "replication_lag:crm", "passed": True, "metric": 300_000_000.0}]


def test_over_the_limit_fails_with_the_figure_the_limit_and_the_fix(warehouse):
    record_run(warehouse, "a", "contacts", 3 * GB, hours=5)  # an older run: not the figure
    record_run(warehouse, "b", "contacts", 1_300_000_000, hours=1)
    record_run(warehouse, "b", "accounts", 1_250_000_000, hours=1)
    record_run(warehouse, "b", "contacts", 9 * GB, hours=1, region="us")  # another region
    [result] = lag_checks(warehouse, ONE_GB)
    assert not result.passed and result.blocking
    assert result.observed == 1_300_000_000  # the largest of the latest run's streams
    assert result.message == (
        "slot of source crm holds back 1.3 GB of WAL (max 1 GB): sync crm more often, "
        "or see `mdstack doctor`"
    )
    assert [r.name for r in blocking([result])] == ["replication_lag:crm"]


def test_the_latest_run_decides_not_the_worst_ever(warehouse):
    """The streams share the slot: the latest run measured it, whichever streams it synced."""
    record_run(warehouse, "a", "contacts", 5 * GB, hours=3)
    record_run(warehouse, "a", "accounts", 5 * GB, hours=3)  # not synced since
    record_run(warehouse, "b", "contacts", 20_000_000, hours=1)
    record_run(warehouse, "b", "deals", None, hours=1)  # failed before its first checkpoint
    [result] = lag_checks(warehouse, ONE_GB)
    assert result.passed and result.observed == 20_000_000


def test_warn_severity_reports_without_blocking(warehouse):
    record_run(warehouse, "a", "contacts", 70_000_000, hours=1)
    declared = check("- {source: crm, replication_lag: {max: 64 MiB}, severity: warn}")
    [result] = lag_checks(warehouse, declared)
    assert not result.passed and result.severity == "warn" and not result.blocking
    assert blocking([result]) == []
    # A limit written in binary units is shown in them, and so is the figure.
    assert "holds back 66.76 MiB of WAL (max 64 MiB)" in result.message


def test_figures_that_round_alike_are_shown_in_bytes(warehouse):
    record_run(warehouse, "a", "contacts", GB + 1, hours=1)
    [result] = lag_checks(warehouse, ONE_GB)
    assert not result.passed
    assert "holds back 1,000,000,001 B of WAL (max 1,000,000,000 B)" in result.message


def test_a_source_without_recorded_lag_passes_and_says_so(warehouse):
    declared = check("- {source: shop, replication_lag: {max: 1GB}}")
    [before_any_run] = lag_checks(warehouse, declared)  # no ledger yet
    record_run(warehouse, "a", "orders", None, hours=1)  # runs, but no slot
    [no_slot] = lag_checks(warehouse, declared)
    for result in (before_any_run, no_slot):
        assert result.passed and result.skipped and result.observed is None
        assert result.message == (
            "skipped: no run of source shop in region eu recorded a replication lag "
            "(not a CDC source, or no run yet)"
        )
    [without_ledger] = run_checks(warehouse, ONE_GB, "eu", "r", NOW, schemas=SCHEMAS)
    assert without_ledger.skipped and "no run ledger" in without_ledger.message


def test_an_unknown_source_is_named(warehouse):
    declared = check("- {source: crn, replication_lag: {max: 1GB}}")
    with pytest.raises(ConfigError, match="names unknown source 'crn'") as raised:
        lag_checks(warehouse, declared)
    assert "crm" in (raised.value.hint or "")


def test_sizes_and_shapes_in_config():
    assert [size_bytes(v) for v in ("1GB", "512MB", "64 MiB", "1048576", "1.5 KiB", 4096)] == [
        10**9,
        512 * 10**6,
        64 * 2**20,
        1048576,
        1536,
        4096,
    ]
    assert [describe_size(n) for n in (1_300_000_000, 10**9, 176)] == ["1.3 GB", "1 GB", "176 B"]
    assert describe_size(2**30, binary=True) == "1 GiB"
    invalid = [
        {"source": "crm", "replication_lag": {"max": "1 gigabyte"}},
        {"source": "crm", "replication_lag": {"max": "-1GB"}},
        {"source": "crm", "replication_lag": {"max": -1}},
        {"source": "crm", "replication_lag": {}},
        {"stream": "crm.contacts", "replication_lag": {"max": "1GB"}},  # per source
        {"source": "crm", "table": "a.b", "replication_lag": {"max": "1GB"}},
        {"source": "crm", "region_column": "r", "replication_lag": {"max": "1GB"}},
        {"source": "crm", "volume": {"min_rows": 1}},  # `source:` is for replication_lag
    ]
    for item in invalid:
        with pytest.raises(ValidationError):
            Check.model_validate(item)


STACK = """\
name: pipe
target: local
targets: {local: {type: duckdb, path: warehouse/}}
regions: {eu: {timezone: UTC}}
sources:
  crm:
    connector: postgres
    config: {host: localhost, database: crm, user: mds, replication: {slot: "mds_{{ region }}"}}
    schema: raw_crm
    streams: {contacts: {sync: incremental_deduped, deletes: hard}}
  files:
    connector: postgres
    config: {host: localhost, database: crm, user: mds}
    schema: raw_files
    streams: {contacts: {sync: full_refresh_overwrite}}
checks:
  - {source: crm, replication_lag: {max: 1GB}}
  - {source: crm, replication_lag: {max: 2 GiB}, severity: warn, name: crm lag 2 GiB}
"""


def test_validate_accepts_a_cdc_source_and_refuses_one_without_a_slot(tmp_path: Path):
    path = tmp_path / "stack.yml"
    path.write_text(STACK)
    valid = CliRunner().invoke(app, ["validate", "--config", str(path)])
    assert valid.exit_code == 0, valid.output

    path.write_text(STACK + "  - {source: files, replication_lag: {max: 1GB}}\n")
    refused = CliRunner().invoke(app, ["validate", "--config", str(path)])
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert f"{path}:19: checks.2.source: source 'files' has no replication slot" in text
    assert "fix: add `replication: {slot: ..., publication: ...}`" in text


def test_mdstack_check_reads_the_lag_from_the_ledger(tmp_path: Path):
    path = tmp_path / "stack.yml"
    path.write_text(STACK)
    with DuckDBWarehouse(tmp_path / "warehouse") as wh:
        record_run(wh, "a", "contacts", 1_500_000_000, hours=1)

    result = CliRunner().invoke(app, ["check", "--config", str(path)])

    assert result.exit_code == 1, result.output  # the 1 GB check fails at severity error
    text = " ".join(result.output.split())
    assert "slot of source crm holds back 1.5 GB of WAL (max 1 GB)" in text, result.output
    assert "slot of source crm holds back 1.4 GiB of WAL" in text  # the warn check passes
