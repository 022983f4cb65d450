"""Real processes for the tests and the benchmarks alike: ``redis-server`` and Redis Cluster
on free loopback ports, ``python -m server`` bound to port 0, and synthetic catalogs.

Neither is shipped in the wheel; ``tests/`` and ``bench/`` both import from here, and
nothing here imports from either (import-linter checks it).
"""
