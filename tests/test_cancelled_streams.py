"""Clients that drop a GetItemEmbeddings stream (a trainer that stops reading, dies, or runs
out of deadline) must never take the server down. The access-log interceptor used to read
``context.peer()`` when such a call ended; on a call the client had cancelled that
dereferences freed memory in grpc's core, and the process died with SIGSEGV after a few
dozen cancelled streams. A real ``python -m server`` process, so a crash shows as one."""

from __future__ import annotations

from pathlib import Path

from harness.server_process import ServerProcess, refit, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore

CATALOG = "cancelled"


def test_streams_cancelled_by_their_clients_never_crash_the_server(
        fresh_redis_server, tmp_path: Path) -> None:
    synthetic_catalog(RedisStore(fresh_redis_server.url), CATALOG, 2_000)
    with ServerProcess(fresh_redis_server.url, tmp_path / "server.log") as server, \
            server.channel() as channel:
        stub = server.stub(channel)
        refit(stub, CATALOG, dim=16)
        for round_ in range(300):
            if round_ % 2:  # read the only message, then drop the call before its status
                stream = stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
                    catalog=CATALOG, item_ids=[f"{CATALOG}-1"]), timeout=30)
                next(stream)
            else:  # stop reading a long stream after its first chunk
                stream = stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
                    catalog=CATALOG, max_chunk_bytes=1), timeout=30)
                next(stream)
            stream.cancel()
            assert server.process.poll() is None, f"the server died after {round_ + 1} calls"
        whole = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(catalog=CATALOG)))
        assert sum(len(m.rows) // 4 for m in whole) == 2_000
        assert server.process.poll() is None
        stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
    assert "CANCELLED" in server.log_text() and "Segmentation fault" not in server.log_text()
