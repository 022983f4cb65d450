"""Scale-out (issue 8, item 2): replicas of ``python -m server`` sharing one Redis, and a
server on a real 3-node Redis Cluster. (The store's whole contract suite also runs on a
cluster, in the default run: tests/test_store_contract.py, the ``cluster`` parameter.)

* A refit activated on replica A is served by replica B within a bounded delay (B reads the
  active pointer on every call; the bound asserted is 1 s, the measured delay is printed),
  bit for bit the bytes A serves; a version staged on B and activated on A is served by
  both.
* The refit lock holds across replicas: while A refits, a refit on B is ABORTED; two refits
  fired at once on A and B give one OK and one ABORTED.
* On a cluster the whole loop works (ingest with the real encoder, push, refit, pull), every
  key of the catalog lives on the node owning its slot, and when that node dies calls fail
  with UNAVAILABLE, not INTERNAL.

Run with ``pytest -m reliability tests/test_reliability_scaleout.py`` (about a minute).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from redis.crc import key_slot

from harness.redis_server import RedisClusterServer, RedisServer
from harness.server_process import ServerProcess, refit, status_of, synthetic_catalog, wait_for
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from trainer_client.client import EmbeddingClient, RetryPolicy

pytestmark = pytest.mark.reliability
CATALOG, N_ITEMS = "replicas", 30_000
ACTIVATION_BOUND_S = 1.0
QUICK = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, budget_s=30)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[tuple[RedisServer, ServerProcess, ServerProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    with RedisServer() as redis_server:
        synthetic_catalog(RedisStore(redis_server.url), CATALOG, N_ITEMS)
        a = ServerProcess(redis_server.url, logs / "a.log")
        b = ServerProcess(redis_server.url, logs / "b.log")
        with a, b:
            yield redis_server, a, b


def served(server: ServerProcess, version: int = 0) -> tuple[int, bytes]:
    """(version, vectors) of a full pull from ``server``."""
    with server.channel() as channel:
        messages = list(server.stub(channel).GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=CATALOG, version=version, omit_item_ids=True), timeout=60))
    return messages[0].header.version, b"".join(m.vectors for m in messages)


def active_on(server: ServerProcess) -> int:
    """The version a trainer's default (active) look-up gets from ``server``."""
    with server.channel() as channel:
        stream = server.stub(channel).GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=CATALOG, item_ids=[f"{CATALOG}-0"]), timeout=10)
        return next(stream).header.version


def test_a_refit_on_one_replica_is_served_by_the_other_after_activation(replicas) -> None:
    redis_server, a, b = replicas
    with a.channel() as channel:
        first = refit(a.stub(channel), CATALOG, dim=16)
    assert active_on(b) == first
    b_pull_before = served(b)  # B now caches the first version
    with b.channel() as b_channel:  # connected before the refit: polls are one RPC each
        b_stub = b.stub(b_channel)

        def b_active() -> int:
            return next(b_stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
                catalog=CATALOG, item_ids=[f"{CATALOG}-0"]), timeout=10)).header.version

        assert b_active() == first
        with a.channel() as channel:
            second = refit(a.stub(channel), CATALOG, dim=32)
        activated = time.monotonic()
        delay = wait_for(lambda: b_active() == second, ACTIVATION_BOUND_S, 0.005,
                         "replica B to serve the new version")
    print(f"replica B served version {second} {1000 * (time.monotonic() - activated):.1f} ms "
          f"after A's refit returned (polled {1000 * delay:.1f} ms)")
    assert served(b) == served(a) != b_pull_before
    expected = RedisStore(redis_server.url).read_reduced(CATALOG, second, 0, N_ITEMS)
    assert served(b)[1] == expected.tobytes()
    with b.channel() as channel:  # staged on B, activated on A: both serve it
        staged = refit(b.stub(channel), CATALOG, dim=8, activate=False)
    assert active_on(a) == active_on(b) == second
    with a.channel() as channel:
        a.stub(channel).ActivateVersion(pb.ActivateVersionRequest(catalog=CATALOG,
                                                                  version=staged))
    assert active_on(b) == active_on(a) == staged
    assert served(a) == served(b) == served(b, version=staged)


def test_the_refit_lock_holds_across_replicas(replicas) -> None:
    redis_server, a, b = replicas
    lock_key = f"tfllmer:{{{CATALOG}}}:refit_lock"
    watcher = redis_server.client()
    outcome: list[grpc.StatusCode] = []
    with a.channel() as a_channel, b.channel() as b_channel:
        a_stub, b_stub = a.stub(a_channel), b.stub(b_channel)
        before = len(a_stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)).versions)
        running = threading.Thread(target=lambda: outcome.append(status_of(
            lambda: refit(a_stub, CATALOG, dim=64))))
        running.start()
        wait_for(lambda: watcher.exists(lock_key), 30, 0.002, "A's refit to take the lock")
        with pytest.raises(grpc.RpcError) as refused:
            refit(b_stub, CATALOG, dim=64)
        running.join(120)
        assert refused.value.code() is grpc.StatusCode.ABORTED
        assert "already running" in refused.value.details()
        assert outcome == [grpc.StatusCode.OK]

        # Both at once, one on each replica: exactly one runs.
        barrier, codes = threading.Barrier(2), []

        def fire(stub) -> None:
            barrier.wait()
            codes.append(status_of(lambda: refit(stub, CATALOG, dim=64)))

        threads = [threading.Thread(target=fire, args=(stub,)) for stub in (a_stub, b_stub)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        after = len(a_stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)).versions)
    watcher.close()
    assert sorted(code.name for code in codes) == ["ABORTED", "OK"]
    assert after == before + 2


# ---------------------------------------------------------------- Redis Cluster


def test_the_service_runs_on_a_redis_cluster_and_a_lost_node_is_unavailable(
        tmp_path: Path) -> None:
    catalog = "on-cluster"
    with RedisClusterServer() as cluster, ServerProcess(
            cluster.url, tmp_path / "server.log") as server, server.channel() as channel, \
            EmbeddingClient(server.address, token="", retry=QUICK) as client:
        stub = server.stub(channel)
        items = [pb.Item(id=f"m{i}", text=f"A film about topic {i % 17}, part {i}")
                 for i in range(200)]
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=catalog, items=items)]))
        rng = np.random.default_rng(0)
        rows = rng.integers(0, 200, 5000)
        cols = (rows + rng.integers(1, 200, 5000)) % 200
        client.push_pairs(catalog, "w0", [("b0", rows, cols, np.ones(5000, np.float32))])
        version = refit(stub, catalog, dim=16, retention_budget=0.8)
        table = client.fetch_embeddings(catalog)
        assert (table.version, table.vectors.shape) == (version, (200, 16))
        np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1, atol=1e-5)

        slot = key_slot(f"tfllmer:{{{catalog}}}:meta".encode())
        owner = next(node for node in cluster.nodes
                     if node.client().cluster("countkeysinslot", slot) > 0)
        others = [node for node in cluster.nodes if node is not owner]
        # One slot, one node: every key of the catalog is on the owner (the store-wide epoch
        # key ``tfllmer:store`` lives in a slot of its own).
        tag = f"{{{catalog}}}".encode()
        assert not [key for node in others for key in node.client().keys("*") if tag in key]
        assert owner.client().cluster("countkeysinslot", slot) > 1
        owner.kill()
        codes = {status_of(lambda: stub.DescribeCatalog(
            pb.DescribeCatalogRequest(catalog=catalog), timeout=30)) for _ in range(3)}
        codes.add(status_of(lambda: list(stub.GetItemEmbeddings(
            pb.GetItemEmbeddingsRequest(catalog=catalog), timeout=30))))
        assert codes == {grpc.StatusCode.UNAVAILABLE}
