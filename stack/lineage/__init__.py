"""Lineage: OpenLineage run events for every run, and a page of the graph to look at.

- ``events.py``: what lineage reads from ``stack.yml`` (:class:`PipelineInfo`) and the
  ``RunEvent``s of one run (:func:`run_events`).
- ``emit.py``: sending them through the ``lineage:`` transport (:func:`emit_run`); a
  transport error never fails a run.
- ``graph.py``: the graph source -> stream -> raw table -> dbt models -> dashboards, with
  a status per node from the last run (:func:`lineage_graph`).
- ``page.py``: the graph laid out and drawn as one self-contained HTML page
  (:func:`write_lineage_page`).

Configs are read as ``StackConfig`` models or plain dicts.
"""

from stack.lineage.emit import emit_events, emit_run
from stack.lineage.events import PRODUCER, PipelineInfo, read_pipeline, run_events
from stack.lineage.graph import Dashboard, Graph, lineage_graph
from stack.lineage.page import render_page, render_svg, write_lineage_page

__all__ = [
    "PRODUCER",
    "Dashboard",
    "Graph",
    "PipelineInfo",
    "emit_events",
    "emit_run",
    "lineage_graph",
    "read_pipeline",
    "render_page",
    "render_svg",
    "run_events",
    "write_lineage_page",
]
