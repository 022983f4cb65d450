"""The service end to end on real MovieLens-100K: a real server on a free port, a real
redis-server, the real encoder, a real gRPC channel."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from protos.codecs import decode_vectors
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from tests.service_harness import ServerThread
from trainer_client.cooccurrence import window_pairs
from trainer_client.sequences import leave_one_out

pytestmark = pytest.mark.slow
CATALOG = "ml-100k"
DTYPE_NAMES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_FLOAT16: "float16",
               pb.DTYPE_BFLOAT16: "bfloat16"}


@pytest.fixture(scope="module")
def service(redis_server, pooled_encoder, movielens_100k) -> Iterator[tuple[ServerThread, object]]:
    """A server with the ML-100K catalog ingested and its training counts pushed."""
    store = RedisStore(redis_server.url, key_prefix="movielens-test")
    with ServerThread(store, pooled_encoder) as server, server.channel() as channel:
        stub = server.stub(channel)
        catalog = movielens_100k.catalog
        first = upsert(stub, list(zip(catalog.item_ids, catalog.texts, strict=True)))
        assert (first.added, first.item_count) == (1682, 1682)
        push_training_counts(stub, movielens_100k)
        yield server, stub


def upsert(stub, items: list[tuple[str, str]], per_message: int = 500) -> pb.UpsertItemsResponse:
    messages = [
        pb.UpsertItemsRequest(catalog=CATALOG, items=[pb.Item(id=i, text=t) for i, t in chunk])
        for chunk in (items[s : s + per_message] for s in range(0, len(items), per_message))
    ]
    return stub.UpsertItems(iter(messages))


def fetch(stub, version: int = 0, dtype=pb.DTYPE_FLOAT32, ids=(), kind=pb.EMBEDDING_KIND_REDUCED
          ) -> tuple[pb.EmbeddingHeader, list[str], np.ndarray]:
    header, ids_out, blocks = None, [], []
    for message in stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=CATALOG, version=version, dtype=dtype, item_ids=list(ids), kind=kind)):
        if message.HasField("header"):
            header = message.header
        ids_out.extend(message.item_ids)
        blocks.append(decode_vectors(message.vectors, DTYPE_NAMES[header.dtype], header.dim))
    return header, ids_out, np.vstack(blocks)


def push_training_counts(stub, dataset, worker: str = "ml-100k-train") -> None:
    train = leave_one_out(dataset.sequences).train
    lo, hi, weights = window_pairs(train, window=3)
    batches = [
        pb.PushCooccurrenceRequest(
            catalog=CATALOG, worker_id=worker, batch_id=str(i),
            rows=lo[s : s + 50_000].astype("<u4").tobytes(),
            cols=hi[s : s + 50_000].astype("<u4").tobytes(),
            weights=weights[s : s + 50_000].astype("<f4").tobytes())
        for i, s in enumerate(range(0, len(lo), 50_000))
    ]
    stub.PushCooccurrence(iter(batches))


def test_refit_and_serve_the_ingested_catalog(service, movielens_100k) -> None:
    _, stub = service
    catalog = movielens_100k.catalog
    items = list(zip(catalog.item_ids, catalog.texts, strict=True))
    again = upsert(stub, items[:10])
    assert (again.added, again.changed, again.unchanged) == (0, 0, 10)

    refit = stub.RefitProjection(pb.RefitProjectionRequest(
        catalog=CATALOG, activate=True,
        parameters=pb.FitParameters(dim=32, retention_budget=0.8)))
    version = refit.version
    assert version.status == pb.VERSION_STATUS_ACTIVE and version.diagnostics.lam > 0
    assert version.diagnostics.alignment > version.diagnostics.pca_alignment

    reference = None
    for dtype, tolerance in ((pb.DTYPE_FLOAT32, 1e-6), (pb.DTYPE_FLOAT16, 2e-3),
                             (pb.DTYPE_BFLOAT16, 1e-2)):
        header, ids, vectors = fetch(stub, dtype=dtype)
        assert header.version == version.version and header.dim == 32
        assert ids == catalog.item_ids  # row order
        assert vectors.shape == (1682, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=tolerance * 4)
        reference = vectors if reference is None else reference
        np.testing.assert_allclose(vectors, reference, atol=tolerance * 4)

    _, ids, picked = fetch(stub, ids=[catalog.item_ids[5], catalog.item_ids[2]])
    np.testing.assert_array_equal(picked, reference[[5, 2]])

    describe = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
    assert describe.item_count == 1682 and describe.active_version == version.version
    assert describe.cooccurrence.batches >= 1


def test_pinned_versions_and_cold_start_items(service, movielens_100k) -> None:
    _, stub = service
    v1 = stub.RefitProjection(pb.RefitProjectionRequest(
        catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=32, lam=0.0))).version
    _, _, old = fetch(stub, version=v1.version)
    v2 = stub.RefitProjection(pb.RefitProjectionRequest(
        catalog=CATALOG, activate=True,
        parameters=pb.FitParameters(dim=32, retention_budget=0.7))).version
    assert v2.version > v1.version
    _, _, pinned = fetch(stub, version=v1.version)
    assert pinned.tobytes() == old.tobytes()  # bit for bit
    _, _, active = fetch(stub)
    assert not np.array_equal(active, old)

    new_items = [("new-1", "Heat 2 (2026). Genres: Action, Crime"),
                 ("new-2", "Toy Story 5 (2026). Genres: Animation, Comedy")]
    assert upsert(stub, new_items).added == 2
    header, ids, served = fetch(stub, ids=["new-1", "new-2"])
    assert header.version == v2.version and ids == ["new-1", "new-2"]
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    similar = stub.SimilarItems(pb.SimilarItemsRequest(catalog=CATALOG, item_id="new-1", k=5))
    assert len(similar.items) == 5 and all(hit.item_id != "new-1" for hit in similar.items)


def test_a_retried_push_counts_once_and_concurrent_pushers_add_up(service) -> None:
    server, stub = service
    before = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)).cooccurrence
    batch = pb.PushCooccurrenceRequest(
        catalog=CATALOG, worker_id="retry", batch_id="1",
        rows=np.array([1, 2], "<u4").tobytes(), cols=np.array([3, 4], "<u4").tobytes(),
        weights=np.array([1, 1], "<f4").tobytes())
    replies = [stub.PushCooccurrence(iter([batch])) for _ in range(3)]
    assert [r.batches_applied for r in replies] == [1, 0, 0]
    assert [r.duplicates_ignored for r in replies] == [0, 1, 1]

    def pusher(worker: int) -> None:
        with server.channel() as channel:
            own = server.stub(channel)
            for b in range(5):
                own.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
                    catalog=CATALOG, worker_id=f"w{worker}", batch_id=str(b),
                    rows=np.arange(10, 20, dtype="<u4").tobytes(),
                    cols=np.arange(20, 30, dtype="<u4").tobytes(),
                    weights=np.full(10, 0.5, "<f4").tobytes())]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(pusher, range(8)))  # re-raises any pusher's error
    after = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)).cooccurrence
    assert after.batches - before.batches == 1 + 8 * 5
    assert after.pairs - before.pairs == 2 + 8 * 5 * 10
    assert after.total_weight - before.total_weight == pytest.approx(2 + 8 * 5 * 10 * 0.5)


def test_an_unknown_catalog_is_not_found(service) -> None:
    _, stub = service
    with pytest.raises(grpc.RpcError) as error:
        stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
