"""``python -m server`` as operators run it: a real process, health, reflection, and a
graceful SIGTERM that lets an in-flight stream finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from harness.ports import free_port
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
CATALOG = "process-test"


def wait_until_serving(channel: grpc.Channel, process: subprocess.Popen, timeout: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.5)
    raise AssertionError("the server did not become SERVING in time")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFLLMER_")}
    with open(tmp_path / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port),
             "--store-url", str(tmp_path / "store.db"), "--log-format", "json",
             "--shutdown-grace-seconds", "30"],
            env=env, stderr=log,
        )
        try:
            yield process, f"127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def test_sigterm_drains_an_in_flight_stream_then_exits_cleanly(server_process) -> None:
    process, address = server_process
    with grpc.insecure_channel(address) as channel:
        wait_until_serving(channel, process, timeout=120)
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "tfllmer.v1.EmbeddingService" in services

        stub = pb_grpc.EmbeddingServiceStub(channel)
        items = [pb.Item(id=f"i{n}", text=f"Movie number {n} ({1950 + n % 60})")
                 for n in range(500)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items)]))
        stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=8)))

        # Raw vectors one per message: ~800 KB, far more than gRPC's flow-control window, so
        # the server is still sending when SIGTERM arrives.
        stream = stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=CATALOG, kind=pb.EMBEDDING_KIND_RAW, max_chunk_bytes=1))
        first = next(stream)
        process.send_signal(signal.SIGTERM)
        time.sleep(1)
        with pytest.raises(grpc.RpcError):  # new calls are refused while it drains
            stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG), timeout=5)
        rest = list(stream)  # the in-flight stream still finishes
        assert first.header.item_count == 500
        assert 1 + len(rest) == 500
    assert process.wait(60) == 0
