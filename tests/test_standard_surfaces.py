"""The standard gRPC surfaces that ready-made tools speak, against a real ``python -m server``
process: reflection v1 and v1alpha (grpcurl and a raw v1 client), grpc.health.v1 List, and a
grpc-js client that cancels pulls mid-stream without the server logging an ERROR for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from harness.server_process import ServerProcess, refit, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import LocalStore
from tests.node_clients import REPO, run_node

CATALOG = "surfaces"
ITEMS = 20_000
SERVICE = "tfllmer.v1.EmbeddingService"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("surfaces")
    synthetic_catalog(LocalStore(folder / "store.db"), CATALOG, ITEMS)
    with ServerProcess(str(folder / "store.db"), folder / "server.log") as running:
        with running.channel() as channel:
            refit(running.stub(channel), CATALOG, dim=16)
        yield running


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def errors_in(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if '"level": "error"' in line or "Traceback" in line]


def test_grpcurl_lists_the_service_and_calls_reflection_v1(server: ServerProcess) -> None:
    listed = grpcurl("-plaintext", server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(listed.stdout.split())
    # The v1 service itself, asked by grpcurl to list the services.
    over_v1 = grpcurl("-plaintext", "-d", '{"list_services": ""}', server.address,
                      "grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert over_v1.returncode == 0, over_v1.stderr
    names = [s["name"] for s in json.loads(over_v1.stdout)["list_services_response"]["service"]]
    assert SERVICE in names
    described = grpcurl("-plaintext", server.address, "describe", SERVICE)
    assert described.returncode == 0 and "stream .tfllmer.v1.WatchCatalogResponse" in (
        described.stdout), described.stderr


def test_a_raw_reflection_v1_client_gets_the_contract(server: ServerProcess) -> None:
    with server.channel() as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = list(call(iter([
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        ]), timeout=30))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in replies[0].file_descriptor_response.file_descriptor_proto]
    assert "tfllmer/v1/embedding_service.proto" in [f.name for f in files]
    assert replies[1].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_health_list_reports_every_service_without_an_error(server: ServerProcess) -> None:
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(),
                                                         timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert reply.statuses[""].status == serving
    assert reply.statuses[SERVICE].status == serving
    assert errors_in(server.log_text()) == []


def test_grpc_js_cancels_mid_stream_log_no_error(server: ServerProcess) -> None:
    before = len(server.log_text())
    done = run_node("cancel_pulls.js", server.address, CATALOG, "40", str(REPO / "protos"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"1": 40}  # every pull ended CANCELLED on the client
    with server.channel() as channel:  # and the server still serves whole pulls
        whole = list(server.stub(channel).GetItemEmbeddings(
            pb.GetItemEmbeddingsRequest(catalog=CATALOG), timeout=60))
    assert sum(len(m.rows) // 4 for m in whole) == ITEMS
    log = server.log_text()[before:]
    assert errors_in(log) == []
    assert log.count("CANCELLED") >= 40  # one access-log line per cancelled pull
