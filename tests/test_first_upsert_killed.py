"""A server SIGKILLed during the first UpsertItems of a catalog leaves no catalog behind: the
catalog is created by the commit itself, in one atomic step with its first items.

Broken before: the catalog was created (empty) before its items were committed, so a
server killed between the two left an empty catalog that DescribeCatalog showed and
refits tripped over. The crash point is exact: the server reaches Redis through a proxy
that freezes its traffic at the commit's WATCH."""

from __future__ import annotations

import threading
from pathlib import Path

from harness.server_process import FreezingProxy, ServerProcess, status_of
from protos.tfllmer.v1 import embedding_service_pb2 as pb


def test_a_first_upsert_killed_before_its_commit_leaves_no_catalog(redis_server,
                                                                    tmp_path: Path) -> None:
    with redis_server.client() as client:
        client.flushall()
    proxy = FreezingProxy(redis_server.port)
    dying = ServerProcess(proxy.url, tmp_path / "dying.log")
    try:
        with dying, dying.channel() as channel:
            stub = dying.stub(channel)
            proxy.arm(rb"\$5\r\nWATCH\r\n")  # the commit's optimistic lock: after encoding
            items = [pb.Item(id=f"i{k}", text=f"item number {k}") for k in range(20)]
            caller = threading.Thread(target=lambda: status_of(lambda: stub.UpsertItems(
                iter([pb.UpsertItemsRequest(catalog="first", items=items)]), timeout=60)))
            caller.start()
            assert proxy.tripped.wait(120), "the upsert never reached its commit"
            dying.kill()
            caller.join(60)
    finally:
        proxy.close()
    with redis_server.client() as client:
        assert client.keys("tfllmer:{first}:*") == []
    with ServerProcess(redis_server.url, tmp_path / "server.log") as server, \
            server.channel() as channel:
        assert status_of(lambda: server.stub(channel).DescribeCatalog(
            pb.DescribeCatalogRequest(catalog="first"), timeout=30)).name == "NOT_FOUND"
