"""The ``mdstack`` command line (Typer + Rich).

Every command takes ``--config`` (default ``./stack.yml`` or ``$MDSTACK_CONFIG``)
and ``--target``. Errors mdstack raises on purpose print as one paragraph
(what, where, how to fix) with no traceback; the exit code is 2 for a bad
config and 1 for anything else.

::

    _common.py    the consoles, the shared options, how errors print
    init.py       init: a new project's skeleton
    runs.py       sync, run, backfill, deploy, sensor: running the pipeline
    warehouse.py  status, lineage, check, sql, dbt, docs, clone, publish, drop-env
    tools.py      validate, secrets check, connector install and list
    state.py      state show, set, reset and log: where each stream resumes
    dashboards.py dashboards: a local Superset on the BI file, the demo's dashboards imported
    render.py     progress, the run summary, colours and numbers

Every command is registered here, in the order ``mdstack --help`` lists them.
"""

from __future__ import annotations

import typer

from stack.cli import dashboards, doctor, init, runs, state, tools, warehouse
from stack.cli._common import LogFormatOpt
from stack.logs import set_log_format
from stack.redact import install_redaction

app = typer.Typer(
    help="mdstack: sources -> warehouse (DuckDB or Snowflake) -> dbt -> BI, run by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
secrets_app = typer.Typer(help="Secret references in stack.yml.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
connector_app = typer.Typer(
    help="Airbyte protocol connectors from PyPI (`connector: airbyte` sources).",
    no_args_is_help=True,
)
app.add_typer(connector_app, name="connector")
state_app = typer.Typer(
    help="Where each stream resumes: show, set or reset its state; who changed it.",
    no_args_is_help=True,
)
app.add_typer(state_app, name="state")


@app.callback()
def _main(log_format: LogFormatOpt = "human") -> None:
    """mdstack: sources -> warehouse (DuckDB or Snowflake) -> dbt -> BI, run by Prefect."""
    install_redaction()
    set_log_format(log_format)


app.command()(init.init)
app.command()(tools.validate)
app.command()(doctor.doctor)
app.command()(runs.sync)
app.command()(runs.run)
app.command()(runs.deploy)
app.command()(runs.backfill)
app.command()(runs.sensor)
app.command("status")(warehouse.status_command)
app.command("sql")(warehouse.sql_command)
app.command("diff")(warehouse.diff_command)
app.command()(warehouse.expire)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    warehouse.dbt
)
app.command()(warehouse.docs)
app.command("lineage")(warehouse.lineage_command)
app.command()(warehouse.check)
app.command()(warehouse.clone)
app.command()(warehouse.publish)
app.command("drop-env")(warehouse.drop_env)
app.command()(dashboards.dashboards)
secrets_app.command("check")(tools.secrets_check)
connector_app.command("install")(tools.connector_install)
connector_app.command("list")(tools.connector_list)
state_app.command("show")(state.show)
state_app.command("set")(state.set_state)
state_app.command("reset")(state.reset)
state_app.command("log")(state.log)

__all__ = ["app"]
