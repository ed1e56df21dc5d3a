"""A deterministic, seeded simulator of an online shop: the source behind the demo and benchmarks.

Why it exists: the demo pipeline and the benchmarks need a source that produces realistic CDC
traffic (inserts, updates, tombstones), a full-refresh catalogue and a daily fact, at any scale,
offline and reproducibly. Every value is a pure function of ``(seed, region, day)`` and of a
record's id, drawn from a counter-based hash (splitmix64 over numpy arrays) instead of a
stateful RNG, so that:

* reading day ``d`` twice yields bit-identical batches, and a resumed read equals an
  uninterrupted one;
* an update re-emitted days later recomputes every column of its row without remembering
  anything (an order's amount is recomputed from its items at the prices of its day);
* whether order ``X`` is deleted, and when, is decided once from its id, so a deleted key is
  never re-emitted and its ``_deleted_at`` falls after its last ``updated_at``.

Generation is vectorised per simulated day (no Python loop per row): millions of rows/s.

Clock (config ``days``). Day 0 is ``start``; the state is ``{"day": d}``, the last day delivered.

* first read (no state): days ``0..history_days-1`` if ``days`` is ``"auto"``, else ``0..days``;
* ``days: "auto"``: a read with state ``{"day": d}`` delivers exactly day ``d + 1``, so every
  pipeline run advances the shop by one day;
* ``days: N``: a read with state ``{"day": d}`` delivers days ``d+1..N``; nothing once ``d >= N``.

Incremental reads yield each delivered day as its change set: Batches of the rows whose cursor
falls in that day, then Deletes whose ``_deleted_at`` falls in that day, then
``Checkpoint({"day": d})``. Full-refresh reads (always for products, for other streams when so
configured) yield the compacted snapshot as of the last day the clock reaches (the state's own
day if it reaches none), then one checkpoint with that day.

The shop, per day: ~``orders_per_day`` orders (weekly pattern), 1-4 lines each, by customers
signed up (and not deleted) by then, at that day's prices. Within a week an order ships and
is delivered (~4 % cancelled, ~6 % returned), and ~0.5 % are deleted with their lines. About
``orders_per_day / 10`` customers sign up (plus a launch cohort on day 0),
``orders_per_day / 50`` change email or segment, and ~1 % are deleted within 28 days of
signing up. 200 products at launch, a few added on some days, ~15 % discontinued later, prices
changing every 2-8 weeks. Ad spend per paid channel scales with the day's orders.

Ids are per-region sequences from 1: regions collide on purpose, the engine scopes by region.
Orders keep pointing at customers that are later deleted (GDPR erases the person, not sales).
An empty state (``{}``) counts as no state.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BeforeValidator, ConfigDict, Field, StrictInt

from connectors._demo_shop import (
    CHANGES,
    CUSTOMERS,
    MARKETING_SPEND,
    ORDER_ITEMS,
    ORDERS,
    PRODUCTS,
    SNAPSHOTS,
    Shop,
)
from connectors.base import (
    SYNC_MODES,
    BaseSource,
    Batch,
    Catalog,
    Checkpoint,
    ConfiguredStream,
    Deletes,
    Message,
    State,
    StreamSpec,
    SyncMode,
)
from connectors.config import ConfigProblem, SourceConfig
from connectors.errors import ConnectorError

_FULL: tuple[SyncMode, ...] = ("full_refresh_overwrite", "full_refresh_append")
_SPEND_MODES: tuple[SyncMode, ...] = ("incremental_append", "incremental_deduped", *_FULL)


def _cdc(name: str, schema: pa.Schema, key: tuple[str, ...], immutable: str) -> StreamSpec:
    return StreamSpec(
        name, schema, key, "updated_at", SYNC_MODES, emits_deletes=True, immutable=(*key, immutable)
    )


_CATALOG = Catalog(
    streams=(
        _cdc("customers", CUSTOMERS, ("id",), "signup_day"),
        StreamSpec("products", PRODUCTS, ("id",), "updated_at", _FULL),
        _cdc("orders", ORDERS, ("id",), "ordered_at"),
        # An order's lines never change: their updated_at is the order's time, for good.
        _cdc("order_items", ORDER_ITEMS, ("order_id", "line_no"), "updated_at"),
        StreamSpec(
            "marketing_spend",
            MARKETING_SPEND,
            ("day", "channel"),
            "day",
            _SPEND_MODES,
            immutable=("day", "channel"),
        ),
    )
)


def _day(value: Any) -> Any:
    """A datetime counts as its day (YAML reads an unquoted 2026-01-01 as a date already)."""
    return value.date() if isinstance(value, datetime) else value


def _days(value: Any) -> Any:
    auto = isinstance(value, str) and value == "auto"
    if auto or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigProblem('use "auto" or an integer >= 0', hint='set `days:` to "auto" or a day')


class DemoConfig(SourceConfig):
    """The ``config:`` of a ``connector: demo`` source."""

    model_config = ConfigDict(title="demo shop simulator")

    region: str = Field(min_length=1, description='e.g. "eu": mixed into the seed')
    seed: StrictInt = Field(7, ge=0)
    start: Annotated[date, BeforeValidator(_day)] = Field(
        date(2026, 1, 1), description="day 0 of the clock, e.g. 2026-01-01"
    )
    history_days: StrictInt = Field(30, ge=1, description="days the first read delivers")
    days: Annotated[Annotated[StrictInt, Field(ge=0)] | Literal["auto"], BeforeValidator(_days)] = (
        Field("auto", description='"auto" (one more day per read) or the last day to reach')
    )
    orders_per_day: StrictInt = Field(1000, ge=1, description="the scale knob")
    batch_size: StrictInt = Field(100_000, ge=1, description="rows per Arrow batch at most")

    @property
    def last_day(self) -> int | None:
        """The day the clock stops at; None for ``"auto"``."""
        return None if self.days == "auto" else int(self.days)


class DemoSource(BaseSource[DemoConfig]):
    """The simulated shop as a :class:`~connectors.base.Source` (see the module docstring)."""

    config_model = DemoConfig

    @cached_property
    def _shop(self) -> Shop:
        cfg = self.config
        return Shop(
            seed=cfg.seed, region=cfg.region, start=cfg.start, orders_per_day=cfg.orders_per_day
        )

    def discover(self) -> Catalog:
        """The five streams; raises ConnectorError if the config is invalid."""
        self.config  # noqa: B018 - raises the config's error, if it has one
        return _CATALOG

    def read(self, stream: ConfiguredStream, state: State | None) -> Iterator[Message]:
        """Yield the days the clock delivers after ``state`` (see the module docstring).

        Raises:
            ConnectorError: invalid config or state, unknown stream, unsupported sync mode.
        """
        shop = self._shop
        spec = _CATALOG.stream(stream.name)
        if stream.sync_mode not in spec.sync_modes:
            raise ConnectorError(
                f"sync mode {stream.sync_mode!r} is not supported",
                source=self.name,
                stream=spec.name,
                hint=f"use one of {', '.join(spec.sync_modes)}",
            )
        first, target = self._window(spec.name, state)
        size = self.config.batch_size
        if not stream.incremental:
            for batch in SNAPSHOTS[spec.name](shop, target):
                yield from _slices(Batch, spec.name, batch, size)
            yield Checkpoint(spec.name, {"day": target})
            return
        for day in range(first, target + 1):
            records, deletes = CHANGES[spec.name](shop, day)
            for batch in records:
                yield from _slices(Batch, spec.name, batch, size)
            if deletes is not None:
                yield from _slices(Deletes, spec.name, deletes, size)
            yield Checkpoint(spec.name, {"day": day})

    def check_state(self, stream: ConfiguredStream, state: State) -> None:
        """Every stream's state is ``{"day": d}``, the last day delivered (or ``{}``)."""
        self._saved_day(stream.name, state)

    def _window(self, stream: str, state: State | None) -> tuple[int, int]:
        """First day to deliver and target day (the last one, or the snapshot's)."""
        cfg = self.config
        last = cfg.last_day
        day = self._saved_day(stream, state)
        if day is None:
            return 0, cfg.history_days - 1 if last is None else last
        return day + 1, day + 1 if last is None else max(day, last)

    def _saved_day(self, stream: str, state: State | None) -> int | None:
        """The state's day; None for no state (``None`` or ``{}``)."""
        if not state:
            return None
        day = state.get("day")
        if isinstance(day, bool) or not isinstance(day, int) or day < 0 or len(state) > 1:
            raise ConnectorError(
                f'state {state!r} is not {{"day": <the last day delivered, 0 or more>}}',
                source=self.name,
                stream=stream,
                key="day",
                hint="reset the stream's state to read from day 0",
            )
        return day


def _slices(
    kind: type[Batch] | type[Deletes], stream: str, batch: pa.RecordBatch, size: int
) -> Iterator[Message]:
    """Cut a batch into zero-copy slices of at most ``size`` rows."""
    for offset in range(0, batch.num_rows, size):
        yield kind(stream, batch.slice(offset, size))
