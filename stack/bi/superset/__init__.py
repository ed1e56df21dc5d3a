"""Superset: the refresh hook, a local Superset for the embedded warehouse, its dashboards.

::

    refresher.py   the ``superset`` hook: re-read datasets, invalidate their cache
    local.py       install, initialise and start a Superset of one's own (``mdstack dashboards``)
    dashboards.py  import the dashboards kept as exports under ``exports/``
"""
