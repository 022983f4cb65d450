"""A full Redis (``maxmemory`` reached under ``noeviction``, as deploy/redis.conf runs it)
refuses writes, and inside MULTI even reads. The service answers UNAVAILABLE with a message
that says so (clients back off and retry), never UNKNOWN; nothing is half-applied; and it
serves again as soon as memory is available."""

from __future__ import annotations

import secrets

import grpc
import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

CATALOG = "full"


def test_a_full_redis_is_unavailable_not_unknown_and_recovers(fresh_redis_server) -> None:
    store = RedisStore(fresh_redis_server.url, key_prefix=f"full-{secrets.token_hex(4)}")
    admin = fresh_redis_server.client()
    with ServerThread(store, HashEncoder(16)) as server, server.channel() as channel:
        stub = server.stub(channel)
        items = [pb.Item(id=f"i{k}", text=f"text {k}") for k in range(30)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items)]))
        stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=4, lam=0)))
        before = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
        rows = np.arange(10, dtype="<u4")
        calls = {
            "UpsertItems": lambda: stub.UpsertItems(iter([pb.UpsertItemsRequest(
                catalog=CATALOG, items=[pb.Item(id="new", text="a new text")])])),
            "PushCooccurrence": lambda: stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
                catalog=CATALOG, worker_id="w", batch_id="b", rows=rows.tobytes(),
                cols=(rows + 1).tobytes(), weights=np.ones(10, "<f4").tobytes())])),
            "RefitProjection": lambda: stub.RefitProjection(pb.RefitProjectionRequest(
                catalog=CATALOG, parameters=pb.FitParameters(dim=4, lam=0))),
            "DescribeCatalog": lambda: stub.DescribeCatalog(
                pb.DescribeCatalogRequest(catalog=CATALOG)),
        }
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")  # below what is used: full
        try:
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, name
                assert "maxmemory" in refused.value.details(), name
        finally:
            admin.config_set("maxmemory", "0")
        assert stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)) == before
        for call in calls.values():  # the same calls succeed once there is memory again
            call()
    admin.close()
