"""Load (issue 8, item 4; the engine is bench/reliability_load.py): 32 concurrent trainer
clients, each on its own channel, mixing full pulls, pulls abandoned after their first chunk
(the client cancels), id look-ups and pushes against a
``python -m server`` process on a real redis-server for 60 s: no errors (and no client-side
retries), every acknowledged push in the totals, p99 latency reported, the server's RSS
growing less than 10 % after a 5 s warm-up.

``-m reliability`` only (70 s); ``python -m bench.reliability`` records the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.reliability_load import run_load
from harness.redis_server import RedisServer
from harness.server_process import ServerProcess, refit, synthetic_catalog
from server.stores import RedisStore

pytestmark = pytest.mark.reliability
CATALOG, N_ITEMS = "load", 10_000


def loaded_server(redis_server: RedisServer, log: Path) -> ServerProcess:
    synthetic_catalog(RedisStore(redis_server.url), CATALOG, N_ITEMS)
    server = ServerProcess(redis_server.url, log).start()
    with server.channel() as channel:
        refit(server.stub(channel), CATALOG, dim=64)
    return server


def test_32_clients_for_60_seconds_without_errors_losses_or_memory_growth(
        tmp_path: Path) -> None:
    with RedisServer() as redis_server:
        server = loaded_server(redis_server, tmp_path / "server.log")
        try:
            result = run_load(server.address, CATALOG, clients=32, seconds=60, warmup_s=5,
                              rss=server.rss_bytes)
        finally:
            server.kill()
    print(json.dumps(result, indent=1))
    assert result["errors"] == 0 and result["client_retries"] == 0, result["error_examples"]
    assert all(result["by_operation"][op]["requests"] > 0 for op in result["by_operation"])
    assert result["lost_after_load"] == {"pairs": 0, "batches": 0, "weight": 0.0}
    assert result["p99_ms"] is not None
    assert result["rss_growth_pct"] < 10, result
