"""``python -m server`` as operators run it: a real process, health, reflection, and a
graceful SIGTERM that lets an in-flight stream finish."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from harness.server_process import ServerProcess
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
CATALOG = "process-test"


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(str(tmp_path / "store.db"), tmp_path / "server.log",
                           args=["--shutdown-grace-seconds", "30"])
    with server:  # returns once health says SERVING; killed at the end if still alive
        yield server


def test_sigterm_drains_an_in_flight_stream_then_exits_cleanly(server_process) -> None:
    process = server_process.process
    with server_process.channel() as channel:
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
