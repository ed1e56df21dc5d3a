"""The shop simulation behind :mod:`connectors.demo`: one region's shop, day by day.

Every value is a pure function of ``(seed, region, day)`` and of a record's id, drawn from a
counter-based hash (splitmix64 over numpy arrays), so any row can be re-drawn without
remembering anything; :mod:`connectors.demo` says what the shop does and how reads walk
its days. This module holds the streams' schemas and :class:`Shop`, whose
``*_changes(day)`` and ``*_snapshot(day)`` methods build the Arrow batches
(:data:`CHANGES`, :data:`SNAPSHOTS`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import SOURCE_DELETED_AT

DAY_US = 86_400_000_000
_NEVER = 1 << 40  # a day that never comes
_LOOKBACK = 7  # orders change status, or are deleted, within 7 days of being placed
_GDPR_WINDOW = 28  # a deleted customer goes within 28 days of signing up
_TS = pa.timestamp("us")
_WEEKLY = np.array([0.9, 0.9, 0.95, 1.0, 1.1, 1.2, 0.95])  # Monday..Sunday, mean 1

CHANNELS = ("search", "social", "email", "display", "organic")
# channel and segment of a random byte: 30/20/12/10 % paid, organic the rest; 80/15/5 %
_CHANNEL_OF = np.searchsorted([77, 128, 159, 185], np.arange(256), "right")
_SPEND_PER_ORDER = np.array([25.0, 27.0, 4.0, 22.0])  # $ per order: ROAS ~4, 2.5, 10, 1.5
_CPM = np.array([9.0, 6.0, 1.0, 3.0])  # $ per 1000 impressions
_CTR = np.array([0.04, 0.012, 0.03, 0.004])
STATUSES = ("placed", "shipped", "delivered", "cancelled", "returned")
_SEGMENT_OF = np.searchsorted([205, 243], np.arange(256), "right")
_CATEGORY_CENTS = np.array(
    [[800, 4500], [2500, 60000], [1500, 20000], [1000, 15000], [700, 8000], [1200, 12000]]
)
_FIRST = (
    "Ada Alan Grace Linus Edsger Barbara Donald Frances Ken Margaret"
    " Niklaus Radia Tim Hedy Guido Anita"
)
_LAST = (
    "Lovelace Turing Hopper Torvalds Dijkstra Liskov Knuth Allen"
    " Thompson Hamilton Wirth Lamarr Borg Perlman Ritchie Kay"
)
_VOCAB = {
    name: pa.array(words.split())
    for name, words in {
        "first": _FIRST,
        "last": _LAST,
        "first_l": _FIRST.lower(),
        "last_l": _LAST.lower(),
        "domain": "example.com mail.test inbox.test post.test",
        "segment": "consumer smb enterprise",
        "channel": " ".join(CHANNELS),
        "status": " ".join(STATUSES),
        "category": "books electronics home garden toys apparel",
        "noun": "Novel Headphones Lamp Planter Puzzle Jacket",
        "adjective": "Classic Eco Pro Mini Deluxe Smart Urban Nordic",
    }.items()
}
_TYPES = {t: getattr(pa, t)() for t in ("int64", "float64", "string", "date32")} | {"ts": _TS}


def _schema(columns: str) -> pa.Schema:
    """``"id:int64 name:string"`` -> Arrow schema: keeps the stream schemas readable at a glance."""
    return pa.schema([(n, _TYPES[t]) for n, t in (c.split(":") for c in columns.split())])


CUSTOMERS = _schema(
    "id:int64 name:string email:string segment:string signup_day:date32 updated_at:ts"
)
PRODUCTS = _schema("id:int64 name:string category:string price:float64 updated_at:ts")
ORDERS = _schema(
    "id:int64 customer_id:int64 ordered_at:ts status:string channel:string amount:float64 "
    "updated_at:ts"
)
ORDER_ITEMS = _schema(
    "order_id:int64 line_no:int64 product_id:int64 quantity:int64 unit_price:float64 updated_at:ts"
)
MARKETING_SPEND = _schema("day:date32 channel:string spend:float64 impressions:int64 clicks:int64")
_GONE = _schema(f"id:int64 {SOURCE_DELETED_AT}:ts")
_LINES_GONE = _schema(f"order_id:int64 line_no:int64 {SOURCE_DELETED_AT}:ts")


# One hash key per independent random decision, so that decisions never correlate.
_Tag = IntEnum(
    "_Tag",
    "ORDER_COUNT CUSTOMER_COUNT PRODUCT_COUNT LIFECYCLE ORDER PICK ITEM UPDATED CUSTOMER VERSION"
    " CUSTOMER_UPDATE CUSTOMER_DELETE PRODUCT PRICE SPEND DELETED",
)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 in place on a uint64 array: a counter-based RNG, so any id can be re-drawn."""
    x += np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _bits(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    """``width`` bits of a hash from bit ``shift``, as int64: several decisions per hash."""
    return ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).view(np.int64)


def _unit(h: np.ndarray) -> np.ndarray:
    """A uniform float in [0, 1) from the top 53 bits of a hash."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _below(h: np.ndarray, n: Any) -> np.ndarray:
    """A uniform int in [0, n) from the top 53 bits (n well below 2**53)."""
    return (_unit(h) * n).astype(np.int64)


def _ids(cum: np.ndarray, c: int) -> np.ndarray:
    """Ids created on day ``c``, given cumulative counts per day."""
    return np.arange((cum[c - 1] if c else 0) + 1, cum[c] + 1, dtype=np.int64)


def _batch(schema: pa.Schema, *columns: np.ndarray | pa.Array) -> pa.RecordBatch:
    """Build a batch from numpy columns, zero-copy where Arrow allows.

    Timestamps come as int64 microseconds since the epoch, dates as int days since it.
    """
    arrays = []
    for field, column in zip(schema, columns, strict=True):
        if isinstance(column, np.ndarray):
            if field.type == _TS:
                column = column.view("M8[us]")
            elif field.type == pa.date32():
                column = column.astype("M8[D]")
            column = pa.array(column, type=field.type)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _str(ids: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(ids), pa.string())


@dataclass(frozen=True)
class _Plan:
    """The life of the orders placed on day ``day``, as uint8 day offsets from it (cheap to scan).

    ``events`` (4, n): offsets of cancelled, shipped, delivered, returned; ``deleted`` (n): offset
    of the deletion; 255 for never. Every offset is within 1.._LOOKBACK.
    """

    ids: np.ndarray
    day: int
    events: np.ndarray
    deleted: np.ndarray

    def as_of(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Status code, version day (of the last change) and liveness of each order on day t."""
        k = min(t - self.day, 254)
        hit = self.events <= k
        code = np.select(hit[::-1], [4, 2, 1, 3], 0)  # the last stage reached wins
        version = self.day + np.where(hit, self.events, 0).max(axis=0).astype(np.int64)
        return code, version, self.deleted > k

    def deleted_on(self, d: int) -> np.ndarray:
        """Ids of the orders deleted on day ``d``."""
        return self.ids[self.deleted == d - self.day] if 0 < d - self.day < 255 else self.ids[:0]


class Shop:
    """The simulation proper: one region's shop, day by day, as arrays drawn from hashes alone."""

    def __init__(self, *, seed: int, region: str, start: date, orders_per_day: int) -> None:
        self.orders_per_day = orders_per_day
        hashed = _mix(np.array([seed % 2**64], np.uint64))
        base = _mix(hashed ^ np.uint64(zlib.crc32(region.encode())))  # a stable hash, not hash()
        self._keys = {tag: _mix(base ^ np.uint64(tag << 32))[0] for tag in _Tag}
        self._epoch = (start - date(1970, 1, 1)).days
        self._weekday = start.weekday()
        self._cums: dict[_Tag, np.ndarray] = {}
        self._catalogues: dict[int, dict[str, np.ndarray]] = {}

    def _h(self, tag: _Tag, x: np.ndarray) -> np.ndarray:
        return _mix(np.asarray(x).astype(np.uint64) ^ self._keys[tag])

    def _time(self, tag: _Tag, x: np.ndarray, day: Any) -> np.ndarray:
        """A moment (epoch microseconds) within ``day``: when something happened that day."""
        return (self._epoch + day) * DAY_US + _below(self._h(tag, x), DAY_US)

    def _cum(self, tag: _Tag, base: float, upto: int) -> np.ndarray:
        """Cumulative counts for days 0..upto: ``base`` +-10 % on the weekly pattern, >= 1/day.

        Cached, and grown by doubling: every day's rows need it, and a prefix never changes.
        """
        cached = self._cums.get(tag)
        if cached is None or len(cached) <= upto:
            days = np.arange(max(2 * upto, 64))
            noise = 0.9 + 0.2 * _unit(self._h(tag, days))
            counts = np.rint(base * _WEEKLY[(self._weekday + days) % 7] * noise).astype(np.int64)
            if tag == _Tag.CUSTOMER_COUNT:
                counts[0] += self.orders_per_day // 2  # a launch cohort: day 0 has shoppers
            cached = self._cums[tag] = np.cumsum(np.maximum(counts, 1))
        return cached[: upto + 1]

    def _order_cum(self, upto: int) -> np.ndarray:
        return self._cum(_Tag.ORDER_COUNT, self.orders_per_day, upto)

    def _customer_cum(self, upto: int) -> np.ndarray:
        return self._cum(_Tag.CUSTOMER_COUNT, self.orders_per_day / 10, upto)

    # customers -----------------------------------------------------------------------------

    def _customer_deleted(self, ids: np.ndarray, cum: np.ndarray) -> np.ndarray:
        """Deletion day of each customer: about 1 % go, within 28 days of signing up."""
        h = self._h(_Tag.CUSTOMER_DELETE, ids)
        signup = np.searchsorted(cum, ids)
        return np.where(_bits(h, 0, 8) < 3, signup + 1 + _bits(h, 8, 8) % _GDPR_WINDOW, _NEVER)

    def _customer_updates(self, day: int, cum: np.ndarray) -> np.ndarray:
        """Customers drawn to change email/segment on ``day`` (some may be deleted already)."""
        k = min(max(1, self.orders_per_day // 50), (1 << 24) - 1)
        h = self._h(_Tag.CUSTOMER_UPDATE, (day << 24) + np.arange(k))
        return np.unique(1 + _below(h, cum[day - 1]))

    def _customer_rows(self, ids: np.ndarray, cum: np.ndarray, ver: np.ndarray) -> pa.RecordBatch:
        """Customers as of their version day ``ver``: name and signup fixed, email/segment vary."""
        h, hv = self._h(_Tag.CUSTOMER, ids), self._h(_Tag.VERSION, (ids << 20) | ver)
        first, last, v = pa.array(_bits(h, 0, 4)), pa.array(_bits(h, 4, 4)), _VOCAB
        name = pc.binary_join_element_wise(v["first"].take(first), v["last"].take(last), " ")
        domain = v["domain"].take(pa.array(_bits(hv, 0, 2)))
        email = pc.binary_join_element_wise(
            v["first_l"].take(first), ".", v["last_l"].take(last), _str(ids), "@", domain, ""
        )
        segment = v["segment"].take(pa.array(_SEGMENT_OF[_bits(hv, 2, 8)]))
        signup = self._epoch + np.searchsorted(cum, ids)
        updated = self._time(_Tag.UPDATED, (ids << 20) | ver, ver)
        return _batch(CUSTOMERS, ids, name, email, segment, signup, updated)

    def customer_changes(self, d: int) -> tuple[list[pa.RecordBatch], pa.RecordBatch]:
        """Day ``d``: sign-ups and profile changes, then GDPR tombstones."""
        cum = self._customer_cum(d)
        ids = _ids(cum, d)
        if d:
            changed = self._customer_updates(d, cum)
            ids = np.concatenate([ids, changed[self._customer_deleted(changed, cum) > d]])
        lo = cum[d - _GDPR_WINDOW - 1] if d > _GDPR_WINDOW else 0
        window = np.arange(lo + 1, (cum[d - 1] if d else 0) + 1, dtype=np.int64)
        gone = window[self._customer_deleted(window, cum) == d]
        keys = _batch(_GONE, gone, self._time(_Tag.DELETED, gone, d))
        return [self._customer_rows(ids, cum, np.full(len(ids), d))], keys

    def customer_snapshot(self, t: int) -> Iterator[pa.RecordBatch]:
        """Live customers on day ``t``, each at its latest version."""
        cum = self._customer_cum(t)
        ids = np.arange(1, cum[t] + 1, dtype=np.int64)
        ver = np.searchsorted(cum, ids)
        for day in range(1, t + 1):
            np.maximum.at(ver, self._customer_updates(day, cum) - 1, day)
        live = self._customer_deleted(ids, cum) > t
        yield self._customer_rows(ids[live], cum, ver[live])

    # orders and their items ----------------------------------------------------------------

    def _plan(self, c: int) -> _Plan:
        """Decide, from each order's id, when it ships, arrives, is returned or deleted."""
        ids = _ids(self._order_cum(c), c)
        h = self._h(_Tag.LIFECYCLE, ids)
        b = h.view(np.uint8).reshape(-1, 8)  # 8 random bytes per order, read as columns
        cancel = b[:, 0] < 10  # ~4 %, the day after
        ship = 1 + (b[:, 1] & 1)
        deliver = ship + 1 + np.minimum((b[:, 1] >> 1) & 3, 2)
        ret = np.where(b[:, 2] < 15, deliver + 1 + (b[:, 3] & 1), 255)  # ~6 % come back
        events = np.full((4, len(ids)), 255, np.uint8)
        events[0, cancel] = 1
        np.copyto(events[1:], np.stack([ship, deliver, ret]), where=~cancel)
        gone = h.view(np.uint16).reshape(-1, 4)[:, 2] < 328  # ~0.5 %, within the week
        deleted = np.where(gone, 1 + b[:, 6] % _LOOKBACK, 255).astype(np.uint8)
        return _Plan(ids, c, events, deleted)

    def _recent(self, d: int) -> list[_Plan]:
        """Plans of the days whose orders can change on day ``d``."""
        return [self._plan(c) for c in range(max(0, d - _LOOKBACK), d + 1)]

    def _basics(self, ids: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ordered_at, channel code and line count of orders placed on day ``c``."""
        h = self._h(_Tag.ORDER, ids)
        ordered = (self._epoch + c) * DAY_US + _below(h, DAY_US)
        return ordered, _CHANNEL_OF[_bits(h, 0, 8)], 1 + _bits(h, 8, 2)

    def _customers_of(self, ids: np.ndarray, c: int) -> np.ndarray:
        """Who placed each order: a customer signed up and not deleted by day ``c``."""
        cum = self._customer_cum(c)
        h = self._h(_Tag.PICK, ids)
        chosen = 1 + _below(h, cum[c])
        lo = cum[c - 1] if c else 0
        newcomer = lo + 1 + _bits(h, 0, 24) % (cum[c] - lo)  # cannot be deleted yet
        return np.where(self._customer_deleted(chosen, cum) <= c, newcomer, chosen)

    def _items(self, ids: np.ndarray, n: np.ndarray, c: int) -> tuple[np.ndarray, ...]:
        """Lines (order_id, line_no, product_id, quantity, cents) of orders placed on day ``c``."""
        order_id = np.repeat(ids, n)
        line = np.arange(1, len(order_id) + 1) - np.repeat(np.cumsum(n) - n, n)
        h = self._h(_Tag.ITEM, (order_id << 3) | line)
        catalogue = self._catalogue(c)
        u = _unit(h)
        pick = (u * u * len(catalogue["id"])).astype(np.int64)  # older products sell more
        quantity = 1 + (_bits(h, 0, 8) >= 180) + (_bits(h, 0, 8) >= 232)
        return order_id, line, catalogue["id"][pick], quantity, catalogue["cents"][pick]

    def _order_rows(self, plan: _Plan, t: int, changes: bool) -> pa.RecordBatch:
        """The live orders of ``plan`` as of day ``t`` (only those changed on ``t`` if
        ``changes``); the amount is the sum of the lines, recomputed from the order's id."""
        code, ver, live = plan.as_of(t)
        mask = live & (ver == t) if changes else live
        ids, code, ver, c = plan.ids[mask], code[mask], ver[mask], plan.day
        ordered, channel, n = self._basics(ids, c)
        _, _, _, quantity, cents = self._items(ids, n, c)
        amount = np.add.reduceat(quantity * cents, np.cumsum(n) - n) / 100 if len(ids) else 0.0 * n
        updated = np.where(ver == c, ordered, self._time(_Tag.UPDATED, (ids << 20) | ver, ver))
        status, channel = _VOCAB["status"].take(code), _VOCAB["channel"].take(channel)
        customer = self._customers_of(ids, c)
        return _batch(ORDERS, ids, customer, ordered, status, channel, amount, updated)

    def _item_rows(self, ids: np.ndarray, c: int) -> pa.RecordBatch:
        ordered, _, n = self._basics(ids, c)
        order_id, line, product, quantity, cents = self._items(ids, n, c)
        return _batch(
            ORDER_ITEMS, order_id, line, product, quantity, cents / 100, np.repeat(ordered, n)
        )

    def _tombstones(self, plans: list[_Plan], d: int, lines: bool) -> pa.RecordBatch:
        """Orders (or their lines) deleted on day ``d``: all were placed in the week before."""
        ids = np.concatenate([p.deleted_on(d) for p in plans])
        deleted_at = self._time(_Tag.DELETED, ids, d)
        if not lines:
            return _batch(_GONE, ids, deleted_at)
        _, _, n = self._basics(ids, d)
        line = np.arange(1, n.sum() + 1) - np.repeat(np.cumsum(n) - n, n)
        return _batch(_LINES_GONE, np.repeat(ids, n), line, np.repeat(deleted_at, n))

    def order_changes(self, d: int) -> tuple[list[pa.RecordBatch], pa.RecordBatch]:
        """Day ``d``: new orders, status changes of the week's orders, then deletions."""
        plans = self._recent(d)
        rows = [self._order_rows(plan, d, changes=True) for plan in plans]
        return rows, self._tombstones(plans, d, lines=False)

    def item_changes(self, d: int) -> tuple[list[pa.RecordBatch], pa.RecordBatch]:
        """Day ``d``: lines of new orders (lines never change), then lines of deleted orders."""
        plans = self._recent(d)
        return [self._item_rows(plans[-1].ids, d)], self._tombstones(plans, d, lines=True)

    def order_snapshot(self, t: int) -> Iterator[pa.RecordBatch]:
        """Live orders on day ``t`` at their latest status, one batch per day placed."""
        for plan in map(self._plan, range(t + 1)):
            yield self._order_rows(plan, t, changes=False)

    def item_snapshot(self, t: int) -> Iterator[pa.RecordBatch]:
        """Lines of the live orders on day ``t``, one batch per day placed."""
        for plan in map(self._plan, range(t + 1)):
            yield self._item_rows(plan.ids[plan.as_of(t)[2]], plan.day)

    # products and marketing spend ----------------------------------------------------------

    def _catalogue(self, t: int) -> dict[str, np.ndarray]:
        """Products on sale on day ``t``: 200 at launch, a few added some days, ~15 % dropped.

        A product's price changes every 2-8 weeks; ``ver`` is the day its current price began.
        Cached: every order line of day ``t`` is priced from it, on every read of a later week.
        """
        if t not in self._catalogues:
            self._catalogues[t] = self._make_catalogue(t)
        return self._catalogues[t]

    def _make_catalogue(self, t: int) -> dict[str, np.ndarray]:
        h = self._h(_Tag.PRODUCT_COUNT, np.arange(t + 1))
        added = np.where(_bits(h, 0, 8) < 64, 1 + _bits(h, 8, 8) % 3, 0)
        cum = np.cumsum(np.concatenate([[200], added[1:]]))
        ids = np.arange(1, cum[t] + 1, dtype=np.int64)
        created, h = np.searchsorted(cum, ids), self._h(_Tag.PRODUCT, ids)
        on_sale = np.where(_bits(h, 0, 8) < 38, created + 5 + _bits(h, 8, 7), _NEVER) > t
        ids, created, h = ids[on_sale], created[on_sale], h[on_sale]
        category = _bits(h, 16, 8) % len(_CATEGORY_CENTS)
        period = 14 + _bits(h, 24, 8) % 43
        phase = _bits(h, 32, 8) % period
        epoch = (t + phase) // period
        low, high = _CATEGORY_CENTS[category].T
        factor = 0.9 + 0.25 * _unit(self._h(_Tag.PRICE, (ids << 20) | epoch))
        cents = np.rint((low + _bits(h, 40, 20) % (high - low)) * factor).astype(np.int64)
        ver = np.maximum(created, epoch * period - phase)
        return {"id": ids, "cents": cents, "ver": ver, "category": category, "h": h}

    def product_snapshot(self, t: int) -> Iterator[pa.RecordBatch]:
        """The catalogue on day ``t``; discontinued products are simply absent."""
        c, v = self._catalogue(t), _VOCAB
        adjective, noun = v["adjective"].take(_bits(c["h"], 60, 3)), v["noun"].take(c["category"])
        name = pc.binary_join_element_wise(adjective, " ", noun, " #", _str(c["id"]), "")
        updated = self._time(_Tag.UPDATED, (c["id"] << 20) | c["ver"], c["ver"])
        category = v["category"].take(c["category"])
        yield _batch(PRODUCTS, c["id"], name, category, c["cents"] / 100, updated)

    def spend_rows(self, days: np.ndarray) -> pa.RecordBatch:
        """Spend per paid channel and day, in proportion to the day's orders (a stable ROI)."""
        orders = np.diff(self._order_cum(int(days.max())), prepend=0)
        day, ch = np.repeat(days, 4), np.tile(np.arange(4), len(days))
        h = self._h(_Tag.SPEND, day * 8 + ch)
        spend = np.rint(orders[day] * _SPEND_PER_ORDER[ch] * (0.8 + 0.4 * _unit(h)) * 100) / 100
        impressions = np.rint(spend / _CPM[ch] * 1000 * (0.9 + _bits(h, 0, 8) / 1280))
        clicks = np.rint(impressions * _CTR[ch] * (0.8 + _bits(h, 8, 8) / 640)).astype(np.int64)
        channel = _VOCAB["channel"].take(ch)
        return _batch(
            MARKETING_SPEND, self._epoch + day, channel, spend, impressions.astype(np.int64), clicks
        )

    def spend_changes(self, d: int) -> tuple[list[pa.RecordBatch], None]:
        """Day ``d``'s spend; rows never change, so there is nothing to delete."""
        return [self.spend_rows(np.array([d]))], None

    def spend_snapshot(self, t: int) -> Iterator[pa.RecordBatch]:
        """Every day's spend up to day ``t``."""
        yield self.spend_rows(np.arange(t + 1))


_Changes = Callable[[Shop, int], tuple[list[pa.RecordBatch], pa.RecordBatch | None]]
CHANGES: dict[str, _Changes] = {
    "customers": Shop.customer_changes,
    "orders": Shop.order_changes,
    "order_items": Shop.item_changes,
    "marketing_spend": Shop.spend_changes,
}
SNAPSHOTS: dict[str, Callable[[Shop, int], Iterator[pa.RecordBatch]]] = {
    "customers": Shop.customer_snapshot,
    "products": Shop.product_snapshot,
    "orders": Shop.order_snapshot,
    "order_items": Shop.item_snapshot,
    "marketing_spend": Shop.spend_snapshot,
}
