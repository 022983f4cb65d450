"""Fuzz of every request type (issue 8, item 3; the engine is bench/reliability_fuzz.py).

The default run fuzzes a 300-case slice against the real server in this process (a real
gRPC channel, a hash encoder), once on a real redis-server and once on the embedded SQLite
store. ``-m reliability`` runs the full 2,000
cases against a ``python -m server`` process with the real encoder, and checks that the
server's memory stays bounded while it refuses 8 MiB messages over its 256 KiB limit.
Every status must be OK or a caller's-mistake code (never INTERNAL/UNKNOWN/UNAVAILABLE/
DATA_LOSS) and a rejected call must change nothing."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bench.reliability_fuzz import SERVER_SETTINGS, Fuzzer, oversize_memory, server_flags
from harness.redis_server import RedisServer
from harness.server_process import ServerProcess
from server.stores import LocalStore, RedisStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

SLICE, FULL = 300, 2_000


def check(report) -> None:
    summary = report.as_dict()
    assert report.unexpected == [], summary
    assert report.state_changes == [], summary
    assert summary["internal_errors"] == 0
    # The fuzz reached every RPC and both accepted and rejected outcomes.
    rpcs = {rpc for rpc, _ in report.outcomes}
    assert len(rpcs) == 7, rpcs
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"} <= set(
        summary["by_status"]), summary["by_status"]


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_a_fuzz_slice_of_every_request_type_gets_no_internal_error_and_changes_nothing(
        request, tmp_path: Path, backend: str) -> None:
    if backend == "redis":
        url = request.getfixturevalue("redis_server").url
        store = RedisStore(url, key_prefix=f"fuzz-{secrets.token_hex(4)}")
    else:  # the embedded default store
        store = LocalStore(tmp_path / "fuzz.db")
    with ServerThread(store, HashEncoder(16), **SERVER_SETTINGS) as server, \
            server.channel() as channel:
        fuzzer = Fuzzer(channel)
        fuzzer.setup()
        report = fuzzer.run(SLICE)
    assert report.cases == SLICE
    check(report)


@pytest.mark.reliability
def test_the_full_fuzz_against_a_server_process_and_bounded_memory_under_oversize(
        tmp_path: Path) -> None:
    with RedisServer() as redis_server, ServerProcess(
            redis_server.url, tmp_path / "server.log", args=server_flags()) as server, \
            server.channel() as channel:
        fuzzer = Fuzzer(channel)
        fuzzer.setup()
        report = fuzzer.run(FULL)
        memory = oversize_memory(channel, server.rss_bytes, rounds=30)
    assert report.cases == FULL
    check(report)
    assert set(k.split()[-1] for k in memory["statuses"]) == {"RESOURCE_EXHAUSTED"}, memory
    assert memory["rss_growth_mb"] < 64, memory
    assert memory["rss_growth_second_half_mb"] < 16, memory  # flat once pools are warm
