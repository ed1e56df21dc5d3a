"""Data checks: verify the data itself, not just exit codes, before it is published.

Provides:

- :func:`run_checks` evaluates checks (the ``checks:`` of ``stack.yml``, each a
  :class:`stack.config.checks.Check`: one table or stream, one kind, a severity) on an open
  warehouse for one region and records each :class:`DataCheckResult` in the ``_mds_checks``
  table of the warehouse's meta schema, which is also where a volume check finds the row
  count of the last run.
- :func:`blocking` picks the failures that must block the publish (severity ``error``).
- :mod:`stack.transform.source_freshness` turns dbt's ``source freshness`` results into
  check results. A :data:`SourceCount` for reconciliation comes from the run ledger
  (:func:`stack.load.ledger.ledger_source_count`), and so does a :data:`SourceLag` for
  ``replication_lag`` checks (:func:`stack.run.replication_lag.ledger_replication_lag`).

A check never raises for bad data: a missing table or column is a failed result. Only the
warehouse being busy (:class:`~stack.errors.WarehouseBusy`, retryable) propagates. SQL is
written in DuckDB's dialect with quoted identifiers and bound values; adapters render it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from sqlglot import exp

from stack.config.checks import (
    Check,
    Severity,
    duplicate_names,
)
from stack.config.sizes import binary_units, describe_size
from stack.errors import ConfigError, MdstackError, WarehouseBusy, WarehouseError
from stack.sql import DELETED_AT, REGION, ident, table

if TYPE_CHECKING:
    from stack.warehouse.base import Warehouse

__all__ = [
    "CHECKS_TABLE",
    "DataCheckResult",
    "SourceCount",
    "SourceLag",
    "blocking",
    "ensure_checks_table",
    "record_results",
    "run_checks",
]

CHECKS_TABLE = "_mds_checks"
SourceCount = Callable[[str, str, str], "int | None"]
"""``(source, stream, region) -> rows the source holds``, or None when it cannot count."""
SourceLag = Callable[[str, str], "int | None"]
"""``(source, region) -> bytes of WAL the source's replication slot held back`` at its latest
run that recorded it, or None when no run did (not a CDC source, or no run yet)."""


@dataclass(frozen=True)
class DataCheckResult:
    """The outcome of one check in one region.

    ``observed`` is what was measured: rows (volume, reconcile), age in seconds
    (freshness), offending rows (values), bytes (replication_lag), or a description
    (schema); None when nothing could be measured. ``skipped`` results (nothing to
    compare with) pass.
    """

    name: str
    table: str
    kind: str
    severity: Severity
    passed: bool
    observed: int | float | str | None
    expected: str
    message: str
    region: str = ""
    skipped: bool = False

    @property
    def blocking(self) -> bool:
        """A failure at severity ``error``: the publish must not happen."""
        return not self.passed and self.severity == "error"


def blocking(results: Iterable[DataCheckResult]) -> list[DataCheckResult]:
    """The failures at severity ``error``: any of them blocks the publish."""
    return [r for r in results if r.blocking]


# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What one evaluation needs: the check, where it looks, and the run's coordinates."""

    check: Check
    ref: str
    label: str
    columns: dict[str, str]
    scope: str | None
    region: str
    run_id: str
    now: datetime

    def where(
        self, extra: str | None = None, params: Sequence[Any] = (), live: bool = False
    ) -> tuple[str, list[Any]]:
        """WHERE clause scoping rows to the region (and live rows, when ``live``), then
        ``extra`` with its ``params``; returns the clause and every parameter in order."""
        parts, values = [], []
        if self.scope:
            parts.append(f"{ident(self.scope)} = ?")
            values.append(self.region)
        if live and DELETED_AT in self.columns:
            parts.append(f"{ident(DELETED_AT)} IS NULL")
        if extra:
            parts.append(f"({extra})")
            values.extend(params)
        return (f" WHERE {' AND '.join(parts)}" if parts else ""), values

    def result(
        self, passed: bool, observed: Any, expected: str, message: str, skipped: bool = False
    ) -> DataCheckResult:
        return DataCheckResult(
            name=self.check.label,
            table=self.label,
            kind=self.check.kind,
            severity=self.check.severity,
            passed=passed,
            observed=observed,
            expected=expected,
            message=message,
            region=self.region,
            skipped=skipped,
        )


def run_checks(
    wh: Warehouse,
    checks: Sequence[Check],
    region: str,
    run_id: str,
    now: datetime,
    *,
    source_count: SourceCount | None = None,
    source_lag: SourceLag | None = None,
    schemas: Mapping[str, str] | None = None,
    record: bool = True,
) -> list[DataCheckResult]:
    """Evaluate ``checks`` for ``region`` on an open warehouse.

    Args:
        wh: the open warehouse (in write-audit-publish: the audit environment).
        checks: the ``checks:`` of ``stack.yml``.
        region: the run's region; rows are scoped to it (see ``Check.region_column``).
        run_id: the run's id, recorded with each result.
        now: the run's time, naive UTC (``stack.load.utcnow()``), for freshness.
        source_count: counts rows at the source, for ``reconcile`` checks; without it
            they are skipped. :func:`stack.load.ledger.ledger_source_count` makes one.
        source_lag: reads the WAL a source's slot held back, for ``replication_lag``
            checks; without it they are skipped.
            :func:`stack.run.replication_lag.ledger_replication_lag` makes one.
        schemas: source name -> warehouse schema, for checks declared with ``stream:``
            or ``source:``.
        record: write the results to ``_mds_checks`` (see :func:`record_results`).

    Returns:
        One result per check, in order. Failures are results, never exceptions.

    Raises:
        ConfigError: two checks share a name, or a ``stream:`` or ``source:`` names an
            unknown source.
        WarehouseBusy: another process holds the warehouse (retryable).
    """
    if duplicate := duplicate_names(checks):
        raise ConfigError(
            f"checks share the names {duplicate}",
            key="checks",
            hint="give each a distinct `name:`; a volume check's history is kept by name",
        )
    ensure_checks_table(wh)
    results = [
        _replication_lag(check, region, run_id, now, source_lag, schemas or {})
        if check.replication_lag is not None
        else _evaluate(wh, check, region, run_id, now, source_count, schemas or {})
        for check in checks
    ]
    if record:
        record_results(wh, results, run_id, now)
    return results


def _evaluate(
    wh: Warehouse,
    check: Check,
    region: str,
    run_id: str,
    now: datetime,
    source_count: SourceCount | None,
    schemas: Mapping[str, str],
) -> DataCheckResult:
    schema, name = check.relation(schemas)
    label = f"{schema}.{name}"
    columns = wh.columns(schema, name)
    if columns is None:
        missing = _Target(check, "", label, {}, None, region, run_id, now)
        return missing.result(False, None, "the table exists", f"table {label} does not exist")
    wanted = check.region_column or (REGION if REGION in columns else None)
    scope = _column(columns, wanted) if wanted else None
    target = _Target(check, table(schema, name), label, columns, scope, region, run_id, now)
    if wanted is not None and scope is None:
        return target.result(False, None, f"a column {wanted}", f"{label} has no column {wanted}")
    try:
        return _EVALUATORS[check.kind](wh, target, source_count)
    except WarehouseBusy:
        raise
    except WarehouseError as exc:
        return target.result(False, None, "the check to run", f"the check failed to run: {exc}")


def _freshness(wh: Warehouse, t: _Target, _: SourceCount | None) -> DataCheckResult:
    spec = _spec(t.check.freshness)
    limit = describe_age(spec.max_age.total_seconds())
    expected = f"<= {limit} old"
    column = _column(t.columns, spec.column)
    if column is None:
        return t.result(False, None, expected, f"{t.label} has no column {spec.column}")
    where, params = t.where()
    newest = wh.query(f"SELECT max({ident(column)}) FROM {t.ref}{where}", params)
    value = newest.column(0)[0].as_py()
    if value is None:
        return t.result(False, None, expected, f"{t.label} has no rows with {spec.column}")
    age = (t.now - _naive_utc(value)).total_seconds()
    passed = age <= spec.max_age.total_seconds()
    message = f"newest {spec.column} is {describe_age(age)} old" + (
        "" if passed else f" (max {limit})"
    )
    return t.result(passed, round(age, 1), expected, message)


def _volume(wh: Warehouse, t: _Target, _: SourceCount | None) -> DataCheckResult:
    spec = _spec(t.check.volume)
    rows = _count(wh, t)
    wanted, problems = [], []
    if spec.min_rows is not None:
        wanted.append(f">= {spec.min_rows:,} rows")
        if rows < spec.min_rows:
            problems.append(f"{rows:,} rows, fewer than {spec.min_rows:,}")
    if spec.max_rows is not None:
        wanted.append(f"<= {spec.max_rows:,} rows")
        if rows > spec.max_rows:
            problems.append(f"{rows:,} rows, more than {spec.max_rows:,}")
    notes = []
    if spec.max_change is not None:
        wanted.append(f"change <= {spec.max_change:.0%} vs the last run")
        previous = _previous_count(wh, t)
        if previous is None or previous == 0:
            notes.append("no earlier count" if previous is None else "empty at the last run")
        else:
            change = (rows - previous) / previous
            notes.append(f"{change:+.1%} vs {previous:,} at the last run")
            if abs(change) > spec.max_change:
                problems.append(f"changed {change:+.1%} (from {previous:,} to {rows:,})")
    message = "; ".join(problems) or ", ".join([f"{rows:,} rows", *notes])
    return t.result(not problems, rows, ", ".join(wanted), message)


def _schema(wh: Warehouse, t: _Target, _: SourceCount | None) -> DataCheckResult:
    spec = _spec(t.check.schema_)
    actual = {name.lower(): (name, kind) for name, kind in t.columns.items()}
    missing, wrong = [], []
    for name, kind in spec.columns.items():
        found = actual.get(name.lower())
        if found is None:
            missing.append(name)
        elif _type(found[1]) != _type(kind):
            wrong.append(f"{name} is {found[1]}, expected {kind}")
    expected_names = {n.lower() for n in spec.columns}
    extra = [
        name
        for name in t.columns
        if name.lower() not in expected_names and not name.startswith("_mds_")
    ]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += wrong
    if extra and not spec.allow_extra:
        problems.append(f"unexpected {', '.join(extra)}")
    expected = ", ".join(f"{n} {k}" for n, k in spec.columns.items())
    message = "; ".join(problems) or f"{len(spec.columns)} columns as expected"
    return t.result(not problems, "; ".join(problems) or "as expected", expected, message)


def _values(wh: Warehouse, t: _Target, _: SourceCount | None) -> DataCheckResult:
    spec = _spec(t.check.values)
    found = _column(t.columns, spec.column)
    if found is None:
        return t.result(False, None, "the column exists", f"{t.label} has no column {spec.column}")
    column = ident(found)
    rules: list[tuple[str, str, list[Any]]] = []  # (description, violation predicate, params)
    if spec.between is not None:
        low, high = spec.between
        limits = [(f"{column} < ?", low), (f"{column} > ?", high)]
        predicate = " OR ".join(p for p, v in limits if v is not None) or "FALSE"
        params = [v for _, v in limits if v is not None]
        rules.append((f"between {_num(low, '-inf')} and {_num(high, 'inf')}", predicate, params))
    if spec.accepted is not None:
        marks = ", ".join("?" for _ in spec.accepted)
        rules.append(
            (f"in {list(spec.accepted)}", f"{column} NOT IN ({marks})", list(spec.accepted))
        )
    if spec.not_null:
        rules.append(("not null", f"{column} IS NULL", []))
    rule_params = [v for _, _, params in rules for v in params]
    where, scope_params = t.where(live=True)
    bad = " OR ".join(f"({p})" for _, p, _ in rules)
    sums = ", ".join(
        f"sum(CASE WHEN {p} THEN 1 ELSE 0 END)" for p in [*(p for _, p, _ in rules), bad]
    )
    counts = wh.query(f"SELECT {sums} FROM {t.ref}{where}", rule_params * 2 + scope_params)
    *failing, total = (int(c[0].as_py() or 0) for c in counts.columns)
    expected = f"{spec.column} " + ", ".join(d for d, _, _ in rules)
    if not total:
        return t.result(True, 0, expected, f"every {expected}")
    where, params = t.where(extra=bad, params=rule_params, live=True)
    examples = wh.query(f"SELECT DISTINCT {column} FROM {t.ref}{where} LIMIT 3", params)
    problems = [f"{n:,} rows not {d}" for (d, _, _), n in zip(rules, failing, strict=True) if n]
    shown = ", ".join(
        repr(v) if isinstance(v, str) else str(v) for v in examples.column(0).to_pylist()
    )
    return t.result(False, total, expected, "; ".join(problems) + f" (e.g. {shown})")


def _reconcile(wh: Warehouse, t: _Target, count: SourceCount | None) -> DataCheckResult:
    spec = _spec(t.check.reconcile)
    source, _, stream = (t.check.stream or "").partition(".")
    source, stream = spec.source or source, spec.stream or stream
    rows = _count(wh, t)
    try:
        at_source = count(source, stream, t.region) if count is not None else None
    except MdstackError as exc:
        return t.result(
            False, rows, f"{source}.{stream}: rows at the source", f"cannot count: {exc}"
        )
    if at_source is None:
        return t.result(
            True, rows, f"{source}.{stream}: rows at the source", "skipped: no source count", True
        )
    allowed = math.floor(spec.tolerance * at_source)
    expected = f"{at_source:,} rows (source {source}.{stream})" + (
        f" ± {allowed:,}" if allowed else ""
    )
    difference = rows - at_source
    passed = abs(difference) <= allowed
    message = f"{rows:,} rows, the source has {at_source:,}" + (
        "" if passed else f" ({difference:+,})"
    )
    return t.result(passed, rows, expected, message)


def _replication_lag(
    check: Check,
    region: str,
    run_id: str,
    now: datetime,
    source_lag: SourceLag | None,
    schemas: Mapping[str, str],
) -> DataCheckResult:
    """A source's slot lag: no table is read, the run ledger holds the figure."""
    spec = _spec(check.replication_lag)
    source = check.known_source(check.source or "", schemas)
    t = _Target(check, "", f"source {source}", {}, None, region, run_id, now)
    binary = binary_units(spec.max)  # the limit's units, so that both figures compare
    limit = describe_size(spec.max, binary)
    expected = f"<= {limit} of WAL held back"
    if source_lag is None:
        return t.result(True, None, expected, "skipped: no run ledger to read the lag from", True)
    try:
        held = source_lag(source, region)
    except WarehouseBusy:
        raise
    except WarehouseError as exc:
        return t.result(False, None, expected, f"cannot read the replication lag: {exc}")
    if held is None:
        return t.result(
            True,
            None,
            expected,
            f"skipped: no run of source {source} in region {region} recorded a replication "
            "lag (not a CDC source, or no run yet)",
            True,
        )
    shown = describe_size(held, binary)
    if shown == limit and held != spec.max:  # rounded to the same figure: show the bytes
        shown, limit = f"{held:,} B", f"{spec.max:,} B"
    passed = held <= spec.max
    message = f"slot of source {source} holds back {shown} of WAL" + (
        "" if passed else f" (max {limit}): sync {source} more often, or see `mdstack doctor`"
    )
    return t.result(passed, held, expected, message)


_EVALUATORS: dict[str, Callable[[Warehouse, _Target, SourceCount | None], DataCheckResult]] = {
    "freshness": _freshness,
    "volume": _volume,
    "schema": _schema,
    "values": _values,
    "reconcile": _reconcile,
}


_Spec = TypeVar("_Spec")


def _spec(spec: _Spec | None) -> _Spec:
    """The settings of a check's own kind: :data:`_EVALUATORS` picks the evaluator by that
    kind, and a ``Check`` has the settings of its kind (its model validates it)."""
    if spec is None:
        raise TypeError("a check reached the evaluator of a kind it does not have")
    return spec


def _column(columns: Mapping[str, str], name: str) -> str | None:
    """``name`` as the table spells it: the exact name, else the one equal ignoring case.

    dbt models on Snowflake have unquoted column names, which Snowflake stores upper-case
    (``region`` is ``REGION``); raw tables keep the source's spelling.
    """
    if name in columns:
        return name
    same = [column for column in columns if column.lower() == name.lower()]
    return same[0] if len(same) == 1 else None


def _count(wh: Warehouse, t: _Target) -> int:
    """Live rows of the region (soft-deleted rows left out)."""
    where, params = t.where(live=True)
    return int(wh.query(f"SELECT count(*) FROM {t.ref}{where}", params).column(0)[0].as_py())


def _previous_count(wh: Warehouse, t: _Target) -> int | None:
    """The row count this check recorded at the last other run in this region."""
    found = wh.query(
        f"SELECT {ident('metric')} FROM {table(wh.meta_schema, CHECKS_TABLE)} "
        f"WHERE {ident('name')} = ? AND {ident('region')} = ? AND {ident('kind')} = ? "
        f"AND {ident('run_id')} <> ? AND {ident('metric')} IS NOT NULL "
        f"ORDER BY {ident('checked_at')} DESC LIMIT 1",
        [t.check.label, t.region, "volume", t.run_id],
    )
    return int(found.column(0)[0].as_py()) if found.num_rows else None


def _naive_utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _type(name: str) -> str:
    """A type name in one spelling (``INT8`` and ``BIGINT``, ``TEXT`` and ``VARCHAR`` agree)."""
    try:
        return exp.DataType.build(name, dialect="duckdb").sql("duckdb").upper()
    except Exception:  # sqlglot cannot parse every type a warehouse reports; compare as text
        return " ".join(name.upper().split())


def describe_age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size, start in (("d", 86400, 3 * 86400), ("h", 3600, 3600), ("m", 60, 60)):
        if seconds >= start:
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return f"{seconds:.0f}s"


def _num(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"


# -- the _mds_checks table -------------------------------------------------------------------

_CHECKS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("region", pa.string()),
        ("name", pa.string()),
        ("table_name", pa.string()),
        ("kind", pa.string()),
        ("severity", pa.string()),
        ("passed", pa.bool_()),
        ("skipped", pa.bool_()),
        ("observed", pa.string()),
        ("metric", pa.float64()),
        ("expected", pa.string()),
        ("message", pa.string()),
        ("checked_at", pa.timestamp("us")),
    ]
)


def ensure_checks_table(wh: Warehouse) -> None:
    """Create ``_mds_checks`` in the meta schema, or add the columns a newer version needs."""
    existing = wh.columns(wh.meta_schema, CHECKS_TABLE)
    if existing is None:
        wh.create_table(wh.meta_schema, CHECKS_TABLE, _CHECKS_SCHEMA)
    elif missing := [f for f in _CHECKS_SCHEMA if f.name not in existing]:
        wh.add_columns(wh.meta_schema, CHECKS_TABLE, pa.schema(missing))


def record_results(
    wh: Warehouse, results: Sequence[DataCheckResult], run_id: str, now: datetime
) -> None:
    """Write results to ``_mds_checks`` (replacing this run's rows of the same checks).

    After a blocked publish, call it on the published warehouse too: the audit
    environment's copy is not published, and the next volume check compares with
    the last recorded run.
    """
    ensure_checks_table(wh)
    ref = table(wh.meta_schema, CHECKS_TABLE)
    names = ", ".join(ident(f.name) for f in _CHECKS_SCHEMA)
    marks = ", ".join("?" for _ in _CHECKS_SCHEMA)
    with wh.transaction():
        for r in results:
            wh.execute(
                f"DELETE FROM {ref} WHERE {ident('run_id')} = ? AND {ident('region')} = ? "
                f"AND {ident('name')} = ?",
                [run_id, r.region, r.name],
            )
            number = r.observed if not isinstance(r.observed, bool | str) else None
            observed = None if r.observed is None else str(r.observed)
            wh.execute(
                f"INSERT INTO {ref} ({names}) VALUES ({marks})",
                [
                    *(run_id, r.region, r.name, r.table, r.kind, r.severity),
                    *(r.passed, r.skipped, observed, None if number is None else float(number)),
                    *(r.expected, r.message, now),
                ],
            )
