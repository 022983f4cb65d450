"""Real ``python -m server`` processes in setups that used to fail silently: a second server
on an occupied port (it took half the traffic through SO_REUSEPORT), a token list of empty
items (``TFLLMER_ADMIN_TOKENS=","`` turned authentication off), and a store that answers
reads but refuses writes (a full Redis, a full disk) while health said SERVING."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from harness.server_process import ServerProcess, synthetic_catalog, wait_for
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from tests.promise_servers import served

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _run_server(args: list[str], env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TFLLMER_")}
    return subprocess.run([sys.executable, "-m", "server", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def test_a_second_server_on_an_occupied_port_refuses_to_start(tmp_path: Path) -> None:
    with ServerProcess(str(tmp_path / "a.db"), tmp_path / "a.log") as first:
        second = _run_server(["--port", str(first.port), "--store-url", str(tmp_path / "b.db")])
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"127.0.0.1:{first.port}" in second.stderr and "in use" in second.stderr
        assert first.health() == SERVING  # the first one still has every call


@pytest.mark.parametrize("tokens", [",", " , ,"])
def test_a_token_list_of_empty_items_refuses_to_start(tokens: str, tmp_path: Path) -> None:
    """Not "no tokens, so authentication is off": the operator meant to set tokens."""
    done = _run_server(["--port", "0", "--store-url", str(tmp_path / "s.db")],
                       {"TFLLMER_ADMIN_TOKENS": tokens})
    assert done.returncode == 2
    assert "TFLLMER_ADMIN_TOKENS has an empty item" in done.stderr


@pytest.mark.reliability  # waits for two health probes (5 s apart) each way
def test_health_reports_a_full_redis_and_recovers(tmp_path: Path) -> None:
    with served("redis", tmp_path) as env:
        synthetic_catalog(env.store, "full", 50)  # type: ignore[arg-type]
        assert env.redis is not None
        with env.redis.client() as admin:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")  # below what is used: writes are refused
            try:
                wait_for(lambda: env.server.health() == NOT_SERVING, 30, 0.2, "NOT_SERVING")
                assert admin.ping()  # PING still answers: it is not a health check
            finally:
                admin.config_set("maxmemory", "0")
        wait_for(lambda: env.server.health() == SERVING, 30, 0.2, "SERVING again")
        assert "refuses writes" in env.server.log_text()


@pytest.mark.reliability
def test_health_reports_a_full_disk_and_recovers(tmp_path: Path) -> None:
    with served("local", tmp_path) as env:
        synthetic_catalog(env.store, "full", 50)  # type: ignore[arg-type]
        limits = resource.prlimit(env.server.pid, resource.RLIMIT_FSIZE)
        # The server process may not grow any file: its SQLite writes fail as on a full disk
        # ("database or disk is full").
        resource.prlimit(env.server.pid, resource.RLIMIT_FSIZE, (1, limits[1]))
        try:
            wait_for(lambda: env.server.health() == NOT_SERVING, 30, 0.2, "NOT_SERVING")
            assert env.stub.DescribeCatalog(
                pb.DescribeCatalogRequest(catalog="full"), timeout=30).item_count == 50
        finally:
            resource.prlimit(env.server.pid, resource.RLIMIT_FSIZE, limits)
        wait_for(lambda: env.server.health() == SERVING, 30, 0.2, "SERVING again")
