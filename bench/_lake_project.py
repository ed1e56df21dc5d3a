"""The demo project of scenario 9, made as a user makes it, and what its lakes hold.

:func:`make_template` runs ``mdstack init DIR --source demo`` (a process), then edits the
project as its comments invite: the regions ``eu``, ``us`` and ``apac``, the shop's size, and
a few marts beside the staging views (the template has none; the marts schema is what the
scenario compares between lakes, and table builds are what the regions' dbt builds take
turns on). :func:`copy` makes a fresh project from it for one run of one way, with a
DuckDB-file catalog or a PostgreSQL one. :func:`fingerprint` reads a lake back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bench._cdc_source import mdstack
from bench._pg import PgServer
from stack.config.targets import PostgresCatalog
from stack.warehouse.duckdb import DuckDBWarehouse

REGIONS = {
    "eu": {"timezone": "Europe/Berlin", "schedule": "0 6 * * *"},
    "us": {"timezone": "America/New_York", "schedule": "0 6 * * *"},
    "apac": {"timezone": "Asia/Singapore", "schedule": "0 6 * * *"},
}
RAW = "raw_shop"
MARTS = "marts"
LOADING = ("_mds_run_id", "_mds_loaded_at")
"""Columns that say when and by which run a row was loaded: they differ between lakes."""
PASSWORD_ENV = "BENCH_LAKE_PG_PASSWORD"
"""The catalog's password reaches ``stack.yml`` as ``${env:...}``, never as a value."""

_MARTS = {
    "orders_by_day": """
select
    region,
    cast(ordered_at as date) as day,
    count(*) as orders,
    sum(case when status in ('cancelled', 'returned') then 0 else 1 end) as revenue_orders,
    round(sum(case when status in ('cancelled', 'returned') then 0 else amount end), 2)
        as revenue
from {{ ref('stg_orders') }}
group by region, cast(ordered_at as date)
""",
    "sales_by_product": """
select
    items.region,
    items.product_id,
    max(products.category) as category,
    sum(items.quantity) as units,
    round(sum(items.quantity * items.unit_price), 2) as sales
from {{ ref('stg_order_items') }} as items
left join {{ ref('stg_products') }} as products
    on products.region = items.region and products.id = items.product_id
group by items.region, items.product_id
""",
    "customers_by_segment": """
select region, segment, count(*) as customers
from {{ ref('stg_customers') }}
group by region, segment
""",
    "spend_by_channel": """
select
    region,
    channel,
    round(sum(spend), 2) as spend,
    sum(clicks) as clicks,
    sum(impressions) as impressions
from {{ ref('stg_marketing_spend') }}
group by region, channel
""",
}


def make_template(folder: Path, history_days: int, orders_per_day: int) -> dict[str, Any]:
    """``mdstack init`` into ``folder``, three regions, the marts; returns its ``stack.yml``."""
    done = subprocess.run(
        [mdstack(), "init", str(folder), "--source", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"mdstack init failed: {(done.stderr or done.stdout).strip()[-800:]}")
    stack = yaml.safe_load((folder / "stack.yml").read_text())
    stack["regions"] = REGIONS
    shop = next(s for s in stack["sources"].values() if s["connector"] == "demo")
    shop["config"] |= {"history_days": history_days, "orders_per_day": orders_per_day}
    dbt = folder / stack["dbt"]["project_dir"]
    project = yaml.safe_load((dbt / "dbt_project.yml").read_text())
    name = project["name"]
    project["models"][name]["marts"] = {"+schema": MARTS, "+materialized": "table"}
    (dbt / "dbt_project.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    (dbt / "models" / "marts").mkdir()
    for model, body in _MARTS.items():
        (dbt / "models" / "marts" / f"{model}.sql").write_text(body.lstrip())
    return stack


def copy(template: Path, stack: dict[str, Any], folder: Path, catalog: dict | None) -> Path:
    """A fresh copy of the project in ``folder`` (no warehouse yet), its target's catalog
    set to ``catalog`` (None: the DuckDB file); returns its ``stack.yml``."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(template, folder)
    target = dict(stack["targets"][stack["target"]])
    if catalog is not None:
        target["catalog"] = catalog
    config = folder / "stack.yml"
    changed = stack | {"targets": stack["targets"] | {stack["target"]: target}}
    config.write_text(yaml.safe_dump(changed, sort_keys=False))
    return config


def catalog_config(pg: PgServer, schema: str) -> dict[str, Any]:
    """``targets.<t>.catalog`` for a lake whose catalog is ``schema`` on the bench's server."""
    config: dict[str, Any] = {
        "type": "postgres",
        "host": pg.host,
        "port": pg.port,
        "database": pg.database,
        "user": pg.user,
        "schema": schema,
    }
    return config | ({"password": f"${{env:{PASSWORD_ENV}}}"} if pg.password else {})


def open_lake(warehouse: Path, pg: PgServer | None, schema: str | None) -> DuckDBWarehouse:
    """The lake read-only: the DuckDB-file catalog in ``warehouse``, or ``schema`` on ``pg``."""
    if pg is None or schema is None:
        return DuckDBWarehouse(warehouse, read_only=True)
    catalog = PostgresCatalog(
        type="postgres",
        host=pg.host,
        port=pg.port,
        database=pg.database,
        user=pg.user,
        password=pg.password,
        schema=schema,
    )
    return DuckDBWarehouse(warehouse, read_only=True, catalog=catalog)


def fingerprint(wh: DuckDBWarehouse) -> dict[str, Any]:
    """What a lake holds, without the columns of loading (:data:`LOADING`): every marts
    table's rows (sorted, floats to 6 decimals), and per raw table and region the rows, the
    live rows (no ``_mds_deleted_at``) and a sum of the rows' hashes."""
    found: dict[str, Any] = {}
    for schema in (MARTS, RAW):
        tables = wh.query(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_catalog = current_database() AND table_schema = ?"
            " ORDER BY table_name",
            [schema],
        ).column("table_name")
        for table in tables.to_pylist():
            columns = [c for c in wh.columns(schema, table) or {} if c not in LOADING]
            listed = ", ".join(f'"{c}"' for c in columns)
            name = f'"{schema}"."{table}"'
            if schema == MARTS:
                rows = wh.query(f"SELECT {listed} FROM {name}").to_pylist()
                found[f"{schema}.{table}"] = sorted(repr(_rounded(r)) for r in rows)
            else:
                counts = wh.query(
                    f"SELECT _mds_region AS region, count(*) AS rows,"
                    f" count(*) FILTER (WHERE _mds_deleted_at IS NULL) AS live,"
                    f" sum(hash({listed}))::VARCHAR AS hashes FROM {name} GROUP BY 1 ORDER BY 1"
                ).to_pylist()
                found[f"{schema}.{table}"] = counts
    return found


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def differences(base: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The tables whose content differs from ``base`` in ``other``, each with how."""
    out = []
    for table in sorted(set(base) | set(other)):
        if table not in other or table not in base:
            out.append(f"{table}: {'missing' if table in base else 'not in the base lake'}")
        elif base[table] != other[table]:
            a, b = base[table], other[table]
            if table.startswith(MARTS):
                same = len(set(a) & set(b))
                how = f"{len(a)} vs {len(b)} rows, {same} alike"
            elif _live(a) == _live(b):
                how = f"same counts ({_live(a)}), other contents (row hashes)"
            else:
                how = f"{_live(a)} vs {_live(b)} (region: rows/live)"
            out.append(f"{table}: {how}")
    return out


def _live(counts: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['region']}: {c['rows']}/{c['live']}" for c in counts)
