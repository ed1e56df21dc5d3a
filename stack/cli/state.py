"""``mdstack state``: see and repair where each stream resumes.

::

    show   the stored state of each stream and region (--json: one array, for scripts)
    set    store a state, once the source says it takes it
    reset  forget a state: the next run reads the stream from scratch (its rows stay)
    log    the changes made by hand, and the full refreshes (_mds_state_audit)

``set`` and ``reset`` hold the stream's lock (never racing a run of it) and write their
audit row in the transaction that changes the state. Whatever is printed goes through
:func:`stack.redact.redact`: a state holds positions, not secrets, but a source is free
to put what it likes in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from stack.cli._common import ConfigOpt, RegionOpt, SourceOpt, StreamOpt, TargetOpt, errors, out
from stack.cli.render import when
from stack.config import StackConfig, config_path, load_config
from stack.errors import ConfigError
from stack.load import ledger, repair
from stack.load.ledger import StateChange, StreamKey
from stack.redact import redact
from stack.run import pipeline, scope

StreamArg = Annotated[str, typer.Argument(help="Stream name, as declared in stack.yml.")]
OneSourceOpt = Annotated[
    str | None,
    typer.Option("--source", "-s", help="The stream's source (needed when two declare it)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON array (for scripts).")]

_SHOWN = ("source", "stream", "region", "state", "run_id", "updated_at")
_LOGGED = ("changed_at", "user", "action", "source", "stream", "region", "before", "after")


def show(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The state each stream resumes from, per region ("none": it reads from scratch)."""
    with errors():
        path = config_path(config)
        cfg = load_config(path)
        selections = [
            pipeline.select(cfg, name, source or (), stream or ())
            for name in region or cfg.region_names()
        ]
        regions = [s.region for s in selections]
        declared = selections[0].jobs(cfg)
        with (
            pipeline.secrets_for(cfg) as resolver,
            pipeline.open_target(cfg, target, resolver) as wh,
        ):
            stored = ledger.stored_states(wh, cfg.name)
    found = {(r["source"], r["stream"], r["region"]): r for r in stored}
    rows = [
        found.get((job.source, job.stream, name))
        or dict(source=job.source, stream=job.stream, region=name)
        for job in declared
        for name in regions
    ]
    _print(rows, _SHOWN, as_json)


def set_state(
    stream: StreamArg,
    value: Annotated[str, typer.Argument(help='The state, as JSON: \'{"cursor": "2026-01-01"}\'.')],
    region: Annotated[str, typer.Option("--region", "-r", help="The region whose state to set.")],
    source: OneSourceOpt = None,
    config: ConfigOpt = None,
    target: TargetOpt = None,
) -> None:
    """Store VALUE as the state STREAM resumes from in a region.

    The source checks it first (its shape, the cursor's type): a state it would
    not take is refused and nothing is written. The change is audited
    (`mdstack state log`).
    """
    with errors():
        cfg = load_config(config_path(config))
        owner = _owner(cfg, stream, source)
        name = cfg.check_region(region)
        parsed = _parse(value)
        with pipeline.secrets_for(cfg) as resolver:
            state = scope.check_state(cfg, owner, stream, name, parsed, resolver.resolve)
            with pipeline.open_target(cfg, target, resolver) as wh:
                change = repair.set_state(wh, StreamKey(cfg.name, owner, stream, name), state)
    _said(change, f"was {_text(change.before) or 'none'}")


def reset(
    stream: StreamArg,
    region: RegionOpt = None,
    source: OneSourceOpt = None,
    config: ConfigOpt = None,
    target: TargetOpt = None,
) -> None:
    """Forget STREAM's state, so that its next run reads from scratch; its rows stay.

    In every region, or those given. `mdstack sync --full-refresh` replaces the
    rows too. The change is audited (`mdstack state log`).
    """
    with errors():
        cfg = load_config(config_path(config))
        owner = _owner(cfg, stream, source)
        names = [cfg.check_region(name) for name in region or cfg.region_names()]
        with (
            pipeline.secrets_for(cfg) as resolver,
            pipeline.open_target(cfg, target, resolver) as wh,
        ):
            changes = {
                name: repair.reset_state(wh, StreamKey(cfg.name, owner, stream, name))
                for name in names
            }
    for name, change in changes.items():
        if change is None:
            out.print(f"{name}: {owner}.{stream} has no state: nothing to reset", markup=False)
        else:
            _said(change, f"was {_text(change.before)}")


def log(
    config: ConfigOpt = None,
    target: TargetOpt = None,
    region: RegionOpt = None,
    source: SourceOpt = None,
    stream: StreamOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who changed which state (set, reset, --full-refresh), from what to what, and when."""
    with errors():
        cfg = load_config(config_path(config))
        with (
            pipeline.secrets_for(cfg) as resolver,
            pipeline.open_target(cfg, target, resolver) as wh,
        ):
            changes = ledger.state_changes(wh, cfg.name)
    wanted = {"region": region, "source": source, "stream": stream}
    rows = [r for r in changes if all(not v or r[k] in v for k, v in wanted.items())]
    _print(rows, _LOGGED, as_json)


def _owner(cfg: StackConfig, stream: str, source: str | None) -> str:
    """The source declaring ``stream`` (``source`` when given).

    Raises:
        ConfigError: no source declares it, or more than one and ``source`` is not given.
    """
    declaring = [name for name, s in cfg.sources.items() if stream in s.streams]
    if source is not None:
        cfg.source(source)  # an unknown source names the known ones
        declaring = [source] if source in declaring else []
    if not declaring:
        known = [
            f"{name}.{s}"
            for name, src in cfg.sources.items()
            if source in (None, name)
            for s in src.streams
        ]
        raise ConfigError(
            f"unknown stream {stream!r}",
            key="STREAM",
            hint=f"declared streams: {', '.join(known) or 'none'}",
        )
    if len(declaring) > 1:
        raise ConfigError(
            f"stream {stream!r} is declared by sources {', '.join(declaring)}",
            key="STREAM",
            hint=f"name one with --source ({' or '.join(declaring)})",
        )
    return declaring[0]


def _parse(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not JSON: {exc.msg} at character {exc.pos}",
            key="VALUE",
            hint='quote it for the shell: \'{"cursor": "2026-01-01"}\'',
        ) from None


def _text(state: dict[str, Any] | None) -> str:
    """A state as JSON text, redacted; empty for none."""
    text = ledger.state_text(state)
    return "" if text is None else redact(text)


def _said(change: StateChange, then: str) -> None:
    """One line per change: where, the state now, ``then`` (what it was), who."""
    key = change.key
    now = _text(change.after) or "none"
    out.print(
        f"{key.region}: {key.source}.{key.stream} state {now} ({then}; by {change.user})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _print(rows: Iterable[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    """Rows as a table, or as one JSON array on stdout (states as JSON, times as ISO text)."""
    picked = [{c: row.get(c) for c in columns} for row in rows]
    if as_json:
        for row in picked:
            for column, value in row.items():
                if column in ("state", "before", "after") and value is not None:
                    row[column] = json.loads(value)
                elif isinstance(value, datetime):
                    row[column] = value.isoformat()
        typer.echo(redact(json.dumps(picked)))
        return
    table = Table(*columns)
    for row in picked:
        cells = [
            when(v) if isinstance(v, datetime) else "" if v is None else str(v)
            for v in row.values()
        ]
        if "state" in row and row["state"] is None:
            cells[columns.index("state")] = "none"
        table.add_row(*(Text(redact(cell)) for cell in cells))
    out.print(table)
