"""A corpus of broken ``stack.yml`` files: each is refused before any work starts, with one
clear error naming the file, the line and the key path, exit code 2, no traceback, and
nothing written to the warehouse.

Each case mutates the demo's own ``stack.yml`` (one text replacement, or a section
appended) the way a user would get it wrong: typos in keys and values, types, ranges,
schedules, time zones, names that refer to nothing, keys written twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stack.cli import app
from tests.conftest import ROOT

DEMO = (
    (ROOT / "stack.yml")
    .read_text()
    .replace("project_dir: dbt_project", f"project_dir: {ROOT / 'dbt_project'}")
)
SEED = "config: {seed: 7, "
ORDERS = "orders:          {sync: incremental_deduped, deletes: hard}"
WARN_CHECK = "volume: {min_rows: 1}, severity: warn}"


def append(text: str) -> tuple[str, str]:
    """A mutation that adds a section at the end of the file."""
    tail = DEMO.rstrip().splitlines()[-1]
    return tail, f"{tail}\n{text}"


# (case id, text replaced, replacement, key path reported, text on the line reported)
CASES: list[tuple[str, str, str, str, str]] = [
    ("seed-not-a-number", SEED, "config: {seed: twelve, ", "sources.shop.config.seed", SEED[:8]),
    (
        "history-negative",
        "history_days: 30",
        "history_days: -30",
        "sources.shop.config.history_days",
        "history_days",
    ),
    (
        "orders-per-day-text",
        "orders_per_day: 1000",
        "orders_per_day: lots",
        "sources.shop.config.orders_per_day",
        "orders_per_day",
    ),
    ("config-unknown-key", SEED, "config: {sed: 7, ", "sources.shop.config.sed", "sed: 7"),
    (
        "bi-file-named-like-its-schema",
        "path: warehouse/bi.duckdb",
        "path: warehouse/marts.duckdb",
        "targets.local.bi_file",
        "bi_file:",
    ),
    (
        "region-template-typo",
        'region: "{{ region }}"',
        'region: "{{ regoin }}"',
        "sources.shop.config",
        "regoin",
    ),
    (
        "config-key-twice",
        SEED,
        "config: {seed: 7, seed: 8, ",
        "sources.shop.config.seed",
        "seed: 8",
    ),
    ("connector-typo", "connector: demo", "connector: demoo", "sources.shop.connector", "demoo"),
    (
        "schema-not-identifier",
        "schema: raw_shop",
        "schema: raw-shop",
        "sources.shop.schema",
        "raw-",
    ),
    (
        "source-key-typo",
        "    schema: raw_shop",
        "    schema: raw_shop\n    concurency: 2",
        "sources.shop.concurency",
        "concurency",
    ),
    (
        "source-concurrency-zero",
        "    schema: raw_shop",
        "    schema: raw_shop\n    concurrency: 0",
        "sources.shop.concurrency",
        "concurrency: 0",
    ),
    (
        "sync-mode-typo",
        ORDERS,
        ORDERS.replace("incremental_deduped", "incremental"),
        "sources.shop.streams.orders.sync",
        "orders:",
    ),
    (
        "deletes-value",
        ORDERS,
        ORDERS.replace("hard", "maybe"),
        "sources.shop.streams.orders.deletes",
        "orders:",
    ),
    (
        "stream-key-typo",
        ORDERS,
        ORDERS.replace("deletes: hard", "delete: hard"),
        "sources.shop.streams.orders.delete",
        "orders:",
    ),
    (
        "stream-twice",
        "      products:",
        "      orders: {sync: full_refresh_overwrite}\n      products:",
        "sources.shop.streams.orders",
        "orders: {sync: full",
    ),
    ("name-with-space", "name: shop", 'name: "my shop"', "name", "name:"),
    ("name-twice", "name: shop", "name: shop\nname: other", "name", "name: other"),
    ("target-undeclared", "target: local ", "target: prod  ", "target", "target: prod"),
    ("target-type-typo", "type: duckdb", "type: duckdbx", "targets.local.type", "type: duckdbx"),
    (
        "target-key-unknown",
        "    path: warehouse/\n",
        "    path: warehouse/\n    threads: many\n",
        "targets.local.threads",
        "threads:",
    ),
    (
        "timezone-typo",
        "Europe/Berlin",
        "Europe/Berln",
        "regions.eu.timezone",
        "Europe/Berln",
    ),
    (
        "schedule-letters",
        'schedule: "0 6 * * *"}   #',
        "schedule: 'a b c d e'}   #",
        "regions.eu.schedule",
        "a b c d e",
    ),
    (
        "schedule-out-of-range",
        'schedule: "0 6 * * *"}   #',
        "schedule: '99 99 99 99 99'}   #",
        "regions.eu.schedule",
        "99 99",
    ),
    (
        "schedule-four-fields",
        'schedule: "0 6 * * *"}   #',
        "schedule: '0 6 * *'}   #",
        "regions.eu.schedule",
        "0 6 * *'",
    ),
    (
        "region-key-typo",
        "{timezone: Europe/Berlin,",
        "{timezone: Europe/Berlin, var: {},",
        "regions.eu.var",
        "var: {}",
    ),
    (
        "region-twice",
        "  apac: {timezone: Asia/Singapore,",
        "  eu: {timezone: UTC}\n  apac: {timezone: Asia/Singapore,",
        "regions.eu",
        "eu: {timezone: UTC}",
    ),
    (
        "partition-unknown-stream",
        "shop.orders: ordered_at",
        "shop.ordrs: ordered_at",
        "backfill.partition_by.shop.ordrs",
        "shop.ordrs",
    ),
    ("backfill-grain", "backfill:  ", "backfill:\n  grain: hour\n ", "backfill.grain", "grain:"),
    (
        "backfill-parallelism",
        "backfill:  ",
        "backfill:\n  parallelism: 0\n ",
        "backfill.parallelism",
        "parallelism:",
    ),
    (
        "dbt-project-missing",
        f"project_dir: {ROOT / 'dbt_project'}",
        "project_dir: no_such_folder",
        "dbt.project_dir",
        "no_such_folder",
    ),
    ("dbt-key-typo", "  project_dir:", "  project_folder:", "dbt.project_folder", "project_folder"),
    ("publish-audit", "audit: true", "audit: sometimes", "publish.audit", "audit:"),
    (
        "check-unknown-stream",
        "{stream: shop.orders, reconcile",
        "{stream: shop.ordrs, reconcile",
        "checks.1.stream",
        "shop.ordrs",
    ),
    (
        "check-duration",
        "max_age: 26h",
        "max_age: 26 hours",
        "checks.0.freshness.max_age",
        "26 hours",
    ),
    ("check-severity", "severity: warn", "severity: fatal", "checks.3.severity", "fatal"),
    (
        "check-table-and-stream",
        "{table: raw_shop.orders, freshness",
        "{table: raw_shop.orders, stream: shop.orders, freshness",
        "checks.0",
        "stream: shop.orders, freshness",
    ),
    (
        "check-size",
        WARN_CHECK,
        f"{WARN_CHECK}\n  - {{source: shop, replication_lag: {{max: 1 gigabyte}}}}",
        "checks.4.replication_lag.max",
        "1 gigabyte",
    ),
    (
        "check-lag-unknown-source",
        WARN_CHECK,
        f"{WARN_CHECK}\n  - {{source: crm, replication_lag: {{max: 1GB}}}}",
        "checks.4.source",
        "source: crm",
    ),
    (
        "check-lag-without-slot",
        WARN_CHECK,
        f"{WARN_CHECK}\n  - {{source: shop, replication_lag: {{max: 1GB}}}}",
        "checks.4.source",
        "source: shop",
    ),
    ("lineage-transport", "transport: file", "transport: kafka", "lineage.transport", "kafka"),
    (
        "max-parallel-zero",
        *append("max_parallel_streams: 0"),
        "max_parallel_streams",
        "max_parallel_streams",
    ),
    (
        "deployment-unknown-region",
        *append("deployments:\n  daily: {regions: [mars]}"),
        "deployments.daily.regions",
        "mars",
    ),
    (
        "deployment-unknown-source",
        *append("deployments:\n  daily: {sources: [crm]}"),
        "deployments.daily.sources",
        "crm",
    ),
    (
        "deployment-after-unknown",
        *append("deployments:\n  marts: {after: [nightly]}"),
        "deployments.marts.after",
        "nightly",
    ),
    (
        "deployment-schedule",
        *append("deployments:\n  daily: {schedule: '0 25 * * *'}"),
        "deployments.daily.schedule",
        "0 25",
    ),
    (
        "deployment-per",
        *append("deployments:\n  daily: {per: stream}"),
        "deployments.daily.per",
        "per: stream",
    ),
    (
        "deployment-unknown-target",
        *append("deployments:\n  daily: {target: prod}"),
        "deployments.daily.target",
        "target: prod",
    ),
    (
        "alert-type",
        *append("alerts:\n  - {type: pager, url: 'https://example.com'}"),
        "alerts.0.type",
        "type: pager",
    ),
    (
        "alert-webhook-missing",
        *append("alerts:\n  - {type: slack}"),
        "alerts.0.webhook",
        "type: slack",
    ),
    (
        "bi-type",
        *append("bi:\n  - {type: tableu, url: 'https://example.com'}"),
        "bi.0.type",
        "type: tableu",
    ),
    (
        "vault-key-typo",
        *append(
            "secrets:\n  vault: {url: 'http://x:8200', auth: {method: token, token: t}, adress: x}"
        ),
        "secrets.vault.adress",
        "adress",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "key", "needle"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_a_broken_config_is_refused_with_file_line_key_and_nothing_written(
    tmp_path: Path, old: str, new: str, key: str, needle: str
) -> None:
    assert old in DEMO, old
    path = tmp_path / "stack.yml"
    path.write_text(DEMO.replace(old, new, 1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)

    result = CliRunner().invoke(app, ["sync", "--config", str(path)])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.count("config error:") == 1, result.output
    assert f"{path}:{line}: {key}:" in text, result.output
    assert "fix:" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.yml"]  # no warehouse


def test_the_corpus_is_large_and_every_case_differs() -> None:
    assert len(CASES) >= 40
    assert len({case[2] for case in CASES}) == len(CASES)


def test_every_problem_of_a_file_is_reported_once_in_one_pass(tmp_path: Path) -> None:
    """Three regions read the same source config: its mistakes are reported once each, with
    the other problems of the file, in the order of their lines."""
    path = tmp_path / "stack.yml"
    path.write_text(
        DEMO.replace(SEED, "config: {seed: twelve, ")
        .replace("history_days: 30", "history_days: -30")
        .replace("Europe/Berlin", "Europe/Berln")
        .replace("shop.orders: ordered_at", "shop.ordrs: ordered_at")
    )

    result = CliRunner().invoke(app, ["validate", "--config", str(path)])

    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("config error:")]
    keys = [line.split(": ")[2] for line in errors]
    assert keys == [
        "regions.eu.timezone",
        "sources.shop.config.seed",
        "sources.shop.config.history_days",
        "backfill.partition_by.shop.ordrs",
    ]
    assert "4 problems in" in result.output


def test_a_valid_file_validates_and_says_what_it_declares() -> None:
    result = CliRunner().invoke(app, ["validate", "--config", str(ROOT / "stack.yml")])
    assert result.exit_code == 0, result.output
    assert "valid:" in result.output and "5 stream(s), 3 region(s)" in result.output
