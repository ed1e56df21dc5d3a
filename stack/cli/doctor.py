"""``mdstack doctor``: one line per check (✓ passed, ! warning, ✗ failed) and each fix.

Exit 1 when any check failed, 0 otherwise (warnings do not fail). ``--json`` prints the
checks as a JSON list instead, for scripts and CI.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from stack.cli._common import ConfigOpt, TargetOpt, errors, out
from stack.doctor import MIN_FREE_BYTES, SLOT_LAG_WARN_BYTES, Check, diagnose

_MIB = 1 << 20
_MARKS = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[bold red]✗[/]"}


def doctor(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: Annotated[
        str | None,
        typer.Option("--region", "-r", help="Region whose source settings are checked."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    min_free_mib: Annotated[
        int, typer.Option("--min-free-mib", help="Warn under this much free disk (MiB).")
    ] = MIN_FREE_BYTES // _MIB,
    max_slot_lag_mib: Annotated[
        int,
        typer.Option("--max-slot-lag-mib", help="Warn when a CDC slot holds back more WAL (MiB)."),
    ] = SLOT_LAG_WARN_BYTES // _MIB,
) -> None:
    """Why won't this run? Check config, Vault, the warehouse, sources, dbt and Prefect.

    Each check prints one line; a failed one prints the fix to paste. Exits 1 when a
    check failed (warnings, such as low disk, do not count).
    """
    checks: list[Check] = []
    with errors():
        for check in diagnose(
            config,
            target,
            region,
            min_free=min_free_mib * _MIB,
            slot_lag_warn=max_slot_lag_mib * _MIB,
        ):
            checks.append(check)
            if not as_json:
                _print(check)
    if as_json:
        out.print_json(json.dumps([c.as_dict() for c in checks]))
    else:
        failures = sum(c.failed for c in checks)
        warnings = sum(c.status == "warn" for c in checks)
        verdict = "[bold red]not ready[/]" if failures else "[green]ready[/]"
        warned = f"{warnings} warning{'' if warnings == 1 else 's'}"
        out.print(f"{verdict}: {len(checks)} checks, {failures} failed, {warned}")
    if any(c.failed for c in checks):
        raise typer.Exit(1)


def _print(check: Check) -> None:
    out.print(
        f"{_MARKS[check.status]} {escape(check.area)}: {escape(check.name)}  "
        f"[dim]{escape(check.detail)}[/]",
        soft_wrap=True,
    )
    if check.fix and check.status != "ok":
        out.print(f"    fix: {escape(check.fix)}", soft_wrap=True)
