"""Where a run spends its time: one more mdstack run under cProfile, summarised.

Used when mdstack misses a target. cProfile sees Python frames: time spent inside
DuckDB or Arrow (C++) is charged to the Python call that waits on it (``execute``,
``read_next_batch``), which is what tells which step of the engine is slow.
"""

from __future__ import annotations

import pstats
from pathlib import Path

_OURS = ("/stack/", "/connectors/")


def _where(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~":
        return name  # a builtin: "<method 'execute' of 'duckdb...' objects>"
    for marker in _OURS:
        if marker in file:
            return f"{marker.strip('/')}/{file.split(marker, 1)[1]}:{line} {name}"
    return f"{Path(file).name}:{line} {name}"


def summary(stats_file: Path, total: float | None = None, top: int = 10) -> list[str]:
    """Markdown bullet lines: our functions by cumulative time, then everything by own time."""
    stats = pstats.Stats(str(stats_file))
    entries = stats.stats  # type: ignore[attr-defined]
    total = total or max((ct for (_, _, _, ct, _) in entries.values()), default=0.0) or 1.0
    ours = sorted(
        ((ct, f) for f, (_, _, _, ct, _) in entries.items() if any(m in f[0] for m in _OURS)),
        reverse=True,
    )
    own = sorted(((tt, func) for func, (_, _, tt, _, _) in entries.items()), reverse=True)
    lines = [f"- cProfile of one more mdstack run ({total:.2f} s profiled):"]
    lines.append("  - engine/connector functions by cumulative time:")
    lines += [f"    - `{_where(func)}`: {ct:.2f} s ({ct / total:.0%})" for ct, func in ours[:top]]
    lines.append("  - functions by own time (C calls include the native work they wait on):")
    lines += [f"    - `{_where(func)}`: {tt:.2f} s ({tt / total:.0%})" for tt, func in own[:top]]
    return lines


def sql_lines(report: dict, total: float, top: int = 8) -> list[str]:
    """Markdown lines for a worker's ``--trace-sql`` report: statements by total time."""
    statements = report.get("sql") or []
    if not statements:
        return []
    spent = report.get("sql_seconds", 0.0)
    lines = [
        f"  - warehouse statements: {spent:.2f} s of {total:.2f} s ({spent / total:.0%}); "
        "the costliest:"
    ]
    for seconds, count, text in statements[:top]:
        each = seconds / count * 1000
        lines.append(f"    - {seconds:.2f} s, {count}x ({each:.0f} ms each): `{text}`")
    return lines
