"""A refit whose process died between writing its payload and publishing it leaves an
invisible, unpublished version. The next refit (holding the lock) removes such payloads once
they are older than the lock lease; younger ones may belong to a refit that is still running
somewhere and are left alone. The end-to-end version (a real server SIGKILLed mid-refit) is
tests/test_reliability_faults.py."""

from __future__ import annotations

import secrets
import time

import numpy as np

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import CooccurrenceTotals, NewVersion, RedisStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

CATALOG = "recovery"
LEASE = 30.0


def orphan(store: RedisStore, encoder: HashEncoder, started: float) -> int:
    """A payload written as a dying refit leaves it: allocated, written, never published."""
    rng = np.random.default_rng(1)
    reduced = rng.standard_normal((20, 4)).astype(np.float32)
    new = NewVersion(20, 4, store.get_catalog(CATALOG).encoder, {"lam": 0.0, "graph": {}}, {},
                     CooccurrenceTotals(), 0.1, rng.standard_normal((encoder.dim, 4)),
                     rng.standard_normal(encoder.dim), reduced)
    return store._write_payload(CATALOG, new, started)


def payload_keys(store: RedisStore, version: int) -> list[bytes]:
    return list(store._client.scan_iter(match=f"*{{{CATALOG}}}:v:{version}:*"))


def test_a_refit_removes_payloads_of_crashed_refits_older_than_the_lease(redis_server) -> None:
    encoder = HashEncoder(16)
    store = RedisStore(redis_server.url, key_prefix=f"recovery-{secrets.token_hex(4)}")
    settings = {"refit_lock_lease_seconds": LEASE}
    with ServerThread(store, encoder, **settings) as server, server.channel() as channel:
        stub = server.stub(channel)
        items = [pb.Item(id=f"i{i}", text=f"text {i}") for i in range(20)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items)]))
        old = orphan(store, encoder, started=time.time() - 2 * LEASE)  # a refit long dead
        young = orphan(store, encoder, started=time.time())  # may still be running
        assert payload_keys(store, old) and payload_keys(store, young)
        reply = stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=4, lam=0)))
        assert reply.version.version == young + 1  # numbers are never reused
        assert payload_keys(store, old) == []
        assert payload_keys(store, young)
        pending = store._client.hkeys(store._key(CATALOG, "pending"))
        assert pending == [str(young).encode()]
        described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
        assert [v.version for v in described.versions] == [young + 1]
