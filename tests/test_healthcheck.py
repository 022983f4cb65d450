"""``python -m server.healthcheck``, the containers' HEALTHCHECK, against a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2

from harness.ports import free_port
from protos.metadata import SERVICE
from server.healthcheck import default_address, main
from server.stores import LocalStore
from tests.service_harness import ServerThread
from tests.test_tls import issue, make_ca

TOKEN = "healthcheck-admin-token-0123456789"


@pytest.fixture(scope="module")
def running(pooled_encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    store = LocalStore(tmp_path_factory.mktemp("healthcheck") / "store.db")
    # Tokens on: the health service must still answer without one.
    with ServerThread(store, pooled_encoder, admin_tokens=TOKEN) as server:
        yield server


def set_status(server: ServerThread, status: int) -> None:
    for name in ("", SERVICE):
        asyncio.run_coroutine_threadsafe(
            server.server.health.set(name, status), server._loop
        ).result(10)


def test_serving_server_is_healthy(running: ServerThread, capsys) -> None:
    assert main(["--server", running.address]) == 0
    assert capsys.readouterr().out.strip() == f"{running.address}: SERVING"
    assert main(["--server", running.address, "--service", SERVICE, "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_not_serving_is_unhealthy(running: ServerThread, capsys) -> None:
    set_status(running, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        assert main(["--server", running.address]) == 1
        assert "NOT_SERVING" in capsys.readouterr().err
    finally:
        set_status(running, health_pb2.HealthCheckResponse.SERVING)
    assert main(["--server", running.address]) == 0


def test_unknown_service_is_unhealthy(running: ServerThread, capsys) -> None:
    assert main(["--server", running.address, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_nothing_listening_is_unhealthy(capsys) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["--server", address, "--timeout", "1"]) == 1
    assert capsys.readouterr().err.startswith(f"{address}: ")


def test_default_address_follows_tfllmer_port(monkeypatch) -> None:
    monkeypatch.delenv("TFLLMER_PORT", raising=False)
    assert default_address() == "127.0.0.1:50051"
    monkeypatch.setenv("TFLLMER_PORT", "6000")
    assert default_address() == "127.0.0.1:6000"


def test_bad_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--tls-cert", "client.pem"])
    assert exit_info.value.code == 2
    assert "go together" in capsys.readouterr().err


def test_tls_server(pooled_encoder, tmp_path: Path, capsys) -> None:
    ca = make_ca("healthcheck CA")
    server_cert = issue(ca, "tfllmer server", ExtendedKeyUsageOID.SERVER_AUTH)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "server.pem").write_bytes(server_cert.cert_pem)
    (tmp_path / "server.key").write_bytes(server_cert.key_pem)
    settings = {"tls_cert": str(tmp_path / "server.pem"), "tls_key": str(tmp_path / "server.key")}
    with ServerThread(LocalStore(tmp_path / "store.db"), pooled_encoder, **settings) as secured:
        probe = ["--server", secured.address, "--timeout", "2"]
        assert main([*probe, "--tls-ca", str(tmp_path / "ca.pem")]) == 0
        assert main([*probe, "--tls-ca", str(tmp_path / "ca.pem"),
                     "--tls-server-name", "localhost"]) == 0
        assert main(probe) == 1  # plain text against a TLS port
    assert "SERVING" in capsys.readouterr().out


def test_module_entry_point_is_light(running: ServerThread) -> None:
    """What the HEALTHCHECK runs every interval: no torch, no encoder imported."""
    script = (
        "import sys, runpy\n"
        "sys.argv = ['server.healthcheck', '--server', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('server.healthcheck', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    heavy = sorted({'torch', 'sentence_transformers', 'numpy'} & set(sys.modules))\n"
        "    print(stop.code, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, running.address],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []"
