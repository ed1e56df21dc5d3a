"""mdstack's benchmarks against the floor and the peers: ``python -m bench``.

Scenarios are modules (:data:`bench.scenarios.SCENARIOS`); each runs its tools in
their own subprocesses, interleaved, and returns a :class:`bench._results.ScenarioResult`.
See ``bench/README.md``.
"""
