"""Behaviour of the demo shop source: determinism, the clock, CDC consistency, config errors.

The marts of the demo pipeline are computed from exactly what ``read`` yields, so these tests
replay the yielded change sets the way the engine does (latest ``updated_at`` per key wins,
tombstones remove) and check that the result is coherent.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from connectors.base import (
    SOURCE_DELETED_AT,
    Batch,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    Message,
    Source,
)
from connectors.demo import DemoSource
from connectors.errors import ConnectorError

START = date(2026, 1, 1)
CDC = ("customers", "orders", "order_items")
ALL = (*CDC, "products", "marketing_spend")


def shop(**config: Any) -> DemoSource:
    return DemoSource("shop", {"region": "eu", "orders_per_day": 60, "history_days": 12, **config})


def read(source: DemoSource, stream: str, state: dict | None = None, mode: str = "") -> list:
    spec = source.discover().stream(stream)
    mode = mode or ("incremental_deduped" if spec.emits_deletes else spec.sync_modes[0])
    return list(source.read(ConfiguredStream(spec, mode), state))


def records(messages: list[Message]) -> pa.Table:
    return pa.Table.from_batches([m.data for m in messages if isinstance(m, Batch)])


def tombstones(messages: list[Message]) -> list[dict]:
    return [row for m in messages if isinstance(m, Deletes) for row in m.keys.to_pylist()]


def checkpoints(messages: list[Message]) -> list[dict]:
    return [m.state for m in messages if isinstance(m, Checkpoint)]


def key_of(row: dict, stream: str) -> tuple:
    return (row["order_id"], row["line_no"]) if stream == "order_items" else (row["id"],)


def compact(messages: list[Message], stream: str) -> dict[tuple, dict]:
    """Replay change sets as the engine does: latest updated_at per key, tombstones remove."""
    table: dict[tuple, dict] = {}
    for m in messages:
        if isinstance(m, Batch):
            for row in m.data.to_pylist():
                old = table.get(key_of(row, stream))
                if old is None or row["updated_at"] > old["updated_at"]:
                    table[key_of(row, stream)] = row
        elif isinstance(m, Deletes):
            for row in m.keys.to_pylist():
                table.pop(key_of(row, stream), None)
    return table


def days_of(messages: list[Message]) -> list[list[Message]]:
    """Messages grouped per checkpoint, the checkpoint last."""
    groups, current = [], []
    for m in messages:
        current.append(m)
        if isinstance(m, Checkpoint):
            groups.append(current)
            current = []
    assert not current, "messages after the last checkpoint would never be committed"
    return groups


# --- protocol and schemas -----------------------------------------------------------------


def test_is_a_source_with_the_documented_catalog() -> None:
    source = shop()
    assert isinstance(source, Source)
    catalog = source.discover()
    assert set(catalog.names) == set(ALL)
    orders = catalog.stream("orders")
    assert orders.schema == pa.schema(
        [("id", pa.int64()), ("customer_id", pa.int64()), ("ordered_at", pa.timestamp("us")),
         ("status", pa.string()), ("channel", pa.string()), ("amount", pa.float64()),
         ("updated_at", pa.timestamp("us"))]
    )  # fmt: skip
    assert (orders.primary_key, orders.cursor, orders.emits_deletes) == (
        ("id",),
        "updated_at",
        True,
    )
    assert catalog.stream("order_items").primary_key == ("order_id", "line_no")
    assert catalog.stream("customers").schema.field("signup_day").type == pa.date32()
    products = catalog.stream("products")
    assert not products.emits_deletes
    assert set(products.sync_modes) == {"full_refresh_overwrite", "full_refresh_append"}
    spend = catalog.stream("marketing_spend")
    assert (spend.primary_key, spend.cursor) == (("day", "channel"), "day")
    assert "incremental_append" in spend.sync_modes and not spend.emits_deletes


@pytest.mark.parametrize("stream", ALL)
def test_batches_and_deletes_match_the_discovered_schema(stream: str) -> None:
    source = shop()
    spec = source.discover().stream(stream)
    messages = read(source, stream)
    assert any(isinstance(m, Batch) for m in messages)
    for m in messages:
        if isinstance(m, Batch):
            assert m.data.schema == spec.schema
            assert m.stream == stream
        elif isinstance(m, Deletes):
            assert m.keys.schema.names == [*spec.primary_key, SOURCE_DELETED_AT]
            assert m.keys.schema.field(SOURCE_DELETED_AT).type == pa.timestamp("us")
            assert all(m.keys.schema.field(k).type == pa.int64() for k in spec.primary_key)


def test_batches_respect_batch_size() -> None:
    small = read(shop(batch_size=37), "orders")
    sizes = [m.data.num_rows for m in small if isinstance(m, Batch)]
    assert max(sizes) <= 37 and min(sizes) >= 1
    assert records(small).equals(records(read(shop(), "orders")))


def test_unsupported_sync_mode_and_bad_state_raise() -> None:
    with pytest.raises(ConnectorError, match="not supported"):
        read(shop(), "products", mode="incremental_deduped")
    with pytest.raises(ConnectorError) as info:
        read(shop(), "orders", state={"day": "yesterday"})
    assert info.value.key == "day"


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ALL)
def test_two_reads_are_identical(stream: str) -> None:
    first, second = read(shop(), stream), read(shop(), stream)
    assert [type(m) for m in first] == [type(m) for m in second]
    for a, b in zip(first, second, strict=True):
        if isinstance(a, Checkpoint):
            assert a == b
        else:
            assert (a.data if isinstance(a, Batch) else a.keys).equals(
                b.data if isinstance(b, Batch) else b.keys
            )


@pytest.mark.parametrize("stream", CDC)
def test_resuming_day_by_day_equals_one_long_read(stream: str) -> None:
    whole = read(shop(history_days=8), stream)
    resumed = read(shop(history_days=3), stream)
    for _ in range(5):
        resumed += read(shop(history_days=3), stream, state=checkpoints(resumed)[-1])
    assert checkpoints(resumed) == [{"day": d} for d in range(8)]
    assert records(resumed).equals(records(whole))
    assert tombstones(resumed) == tombstones(whole)


def test_regions_and_seeds_differ_but_ids_start_at_one_everywhere() -> None:
    eu, us = records(read(shop(), "orders")), records(read(shop(region="us"), "orders"))
    other_seed = records(read(shop(seed=8), "orders"))
    assert not eu.equals(us) and not eu.equals(other_seed)
    for table in (eu, us):
        assert min(table.column("id").to_pylist()) == 1
    assert set(eu.column("id").to_pylist()) & set(us.column("id").to_pylist())


# --- the clock ------------------------------------------------------------------------------


def test_first_read_delivers_the_history_one_checkpoint_per_day() -> None:
    messages = read(shop(history_days=5), "orders")
    assert checkpoints(messages) == [{"day": d} for d in range(5)]
    for day, group in enumerate(days_of(messages)):
        kinds = [type(m) for m in group]
        assert kinds == sorted(kinds, key=[Batch, Deletes, Checkpoint].index)
        stamps = records(group).column("updated_at").to_pylist()
        stamps += [row[SOURCE_DELETED_AT] for row in tombstones(group)]
        assert {ts.date() for ts in stamps} == {START + timedelta(days=day)}


@pytest.mark.parametrize("stream", ["customers", "orders", "order_items", "marketing_spend"])
def test_auto_clock_advances_exactly_one_day_per_read(stream: str) -> None:
    messages = read(shop(), stream, state={"day": 20})
    assert checkpoints(messages) == [{"day": 21}]
    cursor = "day" if stream == "marketing_spend" else "updated_at"
    values = records(messages).column(cursor).to_pylist()
    days = {v.date() if isinstance(v, datetime) else v for v in values}
    assert values and days == {START + timedelta(days=21)}


def test_fixed_clock_runs_up_to_day_n_then_yields_nothing() -> None:
    source = shop(days=4, history_days=30)
    assert checkpoints(read(source, "orders")) == [{"day": d} for d in range(5)]
    assert checkpoints(read(source, "orders", state={"day": 1})) == [
        {"day": 2},
        {"day": 3},
        {"day": 4},
    ]
    for stream in ("customers", "orders", "order_items", "marketing_spend"):
        assert read(source, stream, state={"day": 4}) == []
        assert read(source, stream, state={"day": 9}) == []


def test_products_snapshot_follows_the_clock() -> None:
    fixed = shop(days=4)
    for state, day in ((None, 4), ({"day": 1}, 4), ({"day": 4}, 4), ({"day": 9}, 9)):
        messages = read(fixed, "products", state=state)
        assert checkpoints(messages) == [{"day": day}]
        assert max(records(messages).column("updated_at").to_pylist()).date() <= START + timedelta(
            day
        )
    assert checkpoints(read(shop(), "products", state={"day": 7})) == [{"day": 8}]
    assert checkpoints(read(shop(history_days=3), "products")) == [{"day": 2}]


# --- consistency of what is yielded ---------------------------------------------------------


def test_order_amount_is_the_sum_of_its_items() -> None:
    source = shop(history_days=15)
    lines: dict[int, float] = defaultdict(float)
    for row in records(read(source, "order_items")).to_pylist():
        lines[row["order_id"]] += row["quantity"] * row["unit_price"]
    orders = records(read(source, "orders")).to_pylist()
    assert len(orders) > 500
    for row in orders:  # every version, updates included
        assert row["amount"] == pytest.approx(round(lines[row["id"]], 2), abs=1e-9)
        assert row["amount"] > 0


def test_each_order_moves_through_a_valid_lifecycle() -> None:
    allowed = {"shipped": "placed", "cancelled": "placed", "delivered": "shipped"}
    allowed["returned"] = "delivered"
    versions: dict[int, list[dict]] = defaultdict(list)
    for row in records(read(shop(history_days=20), "orders")).to_pylist():
        versions[row["id"]].append(row)
    moved = 0
    for rows in versions.values():
        rows.sort(key=lambda r: r["updated_at"])
        assert rows[0]["status"] == "placed" and rows[0]["updated_at"] >= rows[0]["ordered_at"]
        for before, after in itertools.pairwise(rows):
            assert allowed[after["status"]] == before["status"]
            assert after["updated_at"].date() > before["updated_at"].date()
            same = ("customer_id", "ordered_at", "channel", "amount")
            assert [after[c] for c in same] == [before[c] for c in same]
            moved += 1
    assert moved > len(versions)  # most orders ship and arrive within the 20 days


@pytest.mark.parametrize("stream", CDC)
def test_tombstones_only_for_emitted_keys_and_final(stream: str) -> None:
    emitted: dict[tuple, list] = defaultdict(list)
    deleted: dict[tuple, Any] = {}
    for m in read(shop(orders_per_day=500, history_days=30), stream):
        if isinstance(m, Batch):
            for row in m.data.to_pylist():
                assert key_of(row, stream) not in deleted, "a deleted key came back"
                emitted[key_of(row, stream)].append(row["updated_at"])
        elif isinstance(m, Deletes):
            for row in m.keys.to_pylist():
                key = key_of(row, stream)
                assert emitted[key], "tombstone for a key never emitted"
                assert row[SOURCE_DELETED_AT] > max(emitted[key])
                deleted[key] = row[SOURCE_DELETED_AT]
    assert len(deleted) >= 3


def test_items_of_a_deleted_order_are_all_tombstoned_with_it() -> None:
    source = shop(orders_per_day=200, history_days=20)
    order_gone = {row["id"]: row[SOURCE_DELETED_AT] for row in tombstones(read(source, "orders"))}
    items = read(source, "order_items")
    lines_gone = {(r["order_id"], r["line_no"]): r[SOURCE_DELETED_AT] for r in tombstones(items)}
    all_lines = {(r["order_id"], r["line_no"]) for r in records(items).to_pylist()}
    assert order_gone
    assert {o for o, _ in lines_gone} == set(order_gone)
    assert {k for k in all_lines if k[0] in order_gone} == set(lines_gone)
    assert all(lines_gone[k] == order_gone[k[0]] for k in lines_gone)


@pytest.mark.parametrize("stream", CDC)
def test_full_refresh_is_the_compacted_change_history(stream: str) -> None:
    source = shop(orders_per_day=80, history_days=16)
    snapshot = read(source, stream, mode="full_refresh_overwrite")
    assert checkpoints(snapshot) == [{"day": 15}] and not tombstones(snapshot)
    expected = compact(read(source, stream), stream)
    rows = records(snapshot).to_pylist()
    assert len(rows) == len(expected)
    assert {key_of(row, stream): row for row in rows} == expected


def test_orders_reference_signed_up_customers_and_products_on_sale() -> None:
    day = 9
    source = shop(history_days=day + 1)
    customers = records(read(source, "customers")).to_pylist()
    signup = {row["id"]: row["signup_day"] for row in customers}
    catalogue = {r["id"]: r["price"] for r in records(read(source, "products")).to_pylist()}
    last_day = days_of(read(source, "orders"))[-1]
    for order in records(last_day).to_pylist():
        assert signup[order["customer_id"]] <= order["ordered_at"].date()
    new_lines = records(days_of(read(source, "order_items"))[-1]).to_pylist()
    assert new_lines
    for line in new_lines:
        assert line["unit_price"] == catalogue[line["product_id"]]


def test_new_orders_never_point_at_a_deleted_customer() -> None:
    source = shop(orders_per_day=500, history_days=30)
    gone = {row["id"]: row[SOURCE_DELETED_AT] for row in tombstones(read(source, "customers"))}
    orders = records(read(source, "orders")).to_pylist()
    later = [row for row in orders if row["customer_id"] in gone]
    assert later, "orders placed before a customer's deletion keep pointing at it"
    for row in later:
        assert row["ordered_at"].date() < gone[row["customer_id"]].date()


def test_discontinued_products_vanish_without_deletes() -> None:
    early, late = read(shop(history_days=5), "products"), read(shop(history_days=90), "products")
    early_ids = set(records(early).column("id").to_pylist())
    late_ids = set(records(late).column("id").to_pylist())
    assert 150 <= len(early_ids) <= 260
    assert early_ids - late_ids, "some products are discontinued"
    assert late_ids - early_ids, "some products are added"
    assert not any(isinstance(m, Deletes) for m in early + late)
    prices = {r["id"]: r["price"] for r in records(early).to_pylist()}
    later = {r["id"]: r["price"] for r in records(late).to_pylist()}
    assert any(prices[i] != later[i] for i in early_ids & late_ids), "prices change"


def test_marketing_spend_has_one_row_per_paid_channel_per_day() -> None:
    rows = records(read(shop(history_days=7), "marketing_spend")).to_pylist()
    keys = [(row["day"], row["channel"]) for row in rows]
    assert len(keys) == len(set(keys)) == 7 * 4
    assert {row["channel"] for row in rows} == {"search", "social", "email", "display"}
    assert all(r["spend"] > 0 and r["impressions"] > r["clicks"] > 0 for r in rows)
    orders = records(read(shop(history_days=7), "orders")).to_pylist()
    assert {row["channel"] for row in orders} == {"search", "social", "email", "display", "organic"}


# --- config -------------------------------------------------------------------------------


def test_valid_config_checks_ok_and_spec_lists_every_key() -> None:
    source = shop(seed=3, start="2025-06-30", days="auto", batch_size=10)
    assert source.check().ok
    spec = source.spec()
    assert spec["required"] == ["region"]
    defaults = {k: p["default"] for k, p in spec["properties"].items() if "default" in p}
    assert DemoSource("d", {"region": "us", **defaults}).check().ok
    assert set(spec["properties"]) == {*defaults, "region"}
    assert shop(start=date(2025, 6, 30)).check().ok  # YAML hands over a date
    day = records(read(source, "marketing_spend", state={"day": 0})).column("day")
    assert day.to_pylist() == [date(2025, 7, 1)] * 4


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "region"),
        ({"region": ""}, "region"),
        ({"region": "eu", "colour": "blue"}, "colour"),
        ({"region": "eu", "seed": "7"}, "seed"),
        ({"region": "eu", "history_days": 0}, "history_days"),
        ({"region": "eu", "days": "soon"}, "days"),
        ({"region": "eu", "days": -1}, "days"),
        ({"region": "eu", "orders_per_day": 1.5}, "orders_per_day"),
        ({"region": "eu", "batch_size": True}, "batch_size"),
        ({"region": "eu", "start": "yesterday"}, "start"),
    ],
)
def test_bad_config_names_the_key(config: dict, key: str) -> None:
    source = DemoSource("shop", config)
    result = source.check()
    assert not result.ok and repr(key) in result.message and "hint:" in result.message
    with pytest.raises(ConnectorError) as info:
        source.discover()
    assert info.value.key == key and info.value.source == "shop"
