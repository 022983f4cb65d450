"""``dim`` on GetItemEmbeddings and SimilarItems (a prefix of the components, renormalized)
and item texts in SimilarItems, over a real channel to the real server and store."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import EncoderIdentity, ItemChanges, LocalStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

RAW_DIM, ITEMS, CATALOG = 96, 3000, "prefix"


def decaying_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Raw vectors whose covariance has well separated eigenvalues (each direction 8 % less
    variance than the one before), so each eigenvector is determined to float precision."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = 0.92 ** np.arange(dim)
    return ((rng.standard_normal((n, dim)) * scales) @ basis.T + 0.2).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    encoder = HashEncoder(RAW_DIM)
    store = LocalStore(tmp_path_factory.mktemp("prefix") / "store.db")
    store.create_catalog(CATALOG, EncoderIdentity(encoder.name, encoder.dim))
    ids = [f"item-{row}" for row in range(ITEMS)]
    store.commit_items(CATALOG, ItemChanges(0, ids, [f"h{r}" for r in ids],
                                            decaying_vectors(ITEMS, RAW_DIM)))
    with ServerThread(store, encoder) as running:
        with running.channel() as channel:
            stub = running.stub(channel)
            rng = np.random.default_rng(1)  # random co-occurrences, so λ > 0 bites
            rows = rng.integers(0, ITEMS, 40_000).astype("<u4")
            cols = ((rows + rng.integers(1, 50, rows.size)) % ITEMS).astype("<u4")
            stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
                catalog=CATALOG, worker_id="w", batch_id="b", rows=rows.tobytes(),
                cols=cols.tobytes(), weights=np.ones(rows.size, "<f4").tobytes())]), timeout=60)
        yield running


def refit(stub, dim: int, lam: float) -> int:
    reply = stub.RefitProjection(pb.RefitProjectionRequest(
        catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=dim, lam=lam)),
        timeout=300)
    return reply.version.version


def pull(stub, version: int, dim: int = 0, **fields) -> tuple[pb.EmbeddingHeader, np.ndarray]:
    messages = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
        catalog=CATALOG, version=version, dim=dim, **fields), timeout=120))
    header = messages[0].header
    vectors = np.frombuffer(b"".join(m.vectors for m in messages), "<f4")
    return header, vectors.reshape(-1, header.dim)


def test_a_dim_32_pull_of_a_dim_64_version_equals_a_fresh_dim_32_fit(server) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        wide, narrow = refit(stub, 64, lam=0.7), refit(stub, 32, lam=0.7)
        header, prefixed = pull(stub, wide, dim=32)
        _, fresh = pull(stub, narrow)
        _, full = pull(stub, wide)
        _, again = pull(stub, wide, dim=64)
    assert header.dim == 32 and header.version == wide and prefixed.shape == (ITEMS, 32)
    gap = float(np.max(np.abs(prefixed - fresh)))
    print(f"max |dim-32 prefix of the dim-64 version − fresh dim-32 fit| = {gap:.2e}")
    assert gap < 1e-5
    np.testing.assert_allclose(np.linalg.norm(prefixed, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(again, full)  # the full width stays the stored vectors, bit for bit


def test_dim_prefix_applies_to_named_items_and_float16(server) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        version = refit(stub, 48, lam=0.0)
        _, whole = pull(stub, version, dim=8)
        messages = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=CATALOG, version=version, dim=8, item_ids=["item-7", "item-3"],
            dtype=pb.DTYPE_FLOAT16), timeout=60))
    named = np.frombuffer(b"".join(m.vectors for m in messages), "<f2").reshape(2, 8)
    np.testing.assert_allclose(named, whole[[7, 3]], atol=2e-3)


@pytest.mark.parametrize("fields, message", [
    ({"dim": -1}, "dim must be >= 0"),
    ({"dim": 65}, "above the version's dim 64"),
    ({"dim": 4, "kind": pb.EMBEDDING_KIND_RAW}, "reduced vectors only"),
])
def test_a_bad_dim_is_invalid_argument_before_any_message(server, fields, message) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        version = refit(stub, 64, lam=0.0)
        if fields.get("kind") == pb.EMBEDDING_KIND_RAW:
            version = 0
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
                catalog=CATALOG, version=version, **fields), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_similar_items_searches_the_prefix_space(server) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        version = refit(stub, 64, lam=0.0)
        _, space = pull(stub, version, dim=16)
        reply = stub.SimilarItems(pb.SimilarItemsRequest(
            catalog=CATALOG, version=version, item_id="item-5", k=5, dim=16), timeout=60)
        by_vector = stub.SimilarItems(pb.SimilarItemsRequest(
            catalog=CATALOG, version=version, vector=space[5].astype("<f4").tobytes(), k=6,
            dim=16), timeout=60)
        with pytest.raises(grpc.RpcError) as caught:  # a vector of the full width
            stub.SimilarItems(pb.SimilarItemsRequest(
                catalog=CATALOG, version=version, vector=space[5].tobytes() * 4, dim=16),
                timeout=60)
    expected = np.argsort(-(space @ space[5]), kind="stable")
    expected = [int(r) for r in expected if r != 5][:5]
    assert [item.row for item in reply.items] == expected
    assert [item.row for item in by_vector.items][1:] == expected
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_similar_items_returns_texts_only_when_asked(tmp_path) -> None:
    texts = {f"m{i}": f"Movie number {i} (199{i % 10}). Genres: Drama" for i in range(40)}
    with ServerThread(LocalStore(tmp_path / "store.db"), HashEncoder(16)) as server, \
            server.channel() as channel:
        stub = server.stub(channel)
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog="t", items=[
            pb.Item(id=i, text=t) for i, t in texts.items()])]), timeout=60)
        stub.RefitProjection(pb.RefitProjectionRequest(
            catalog="t", activate=True, parameters=pb.FitParameters(dim=8, lam=0)), timeout=60)
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog="t", items=[
            pb.Item(id="m3", text="A changed text")])]), timeout=60)
        with_texts = stub.SimilarItems(pb.SimilarItemsRequest(
            catalog="t", item_id="m1", k=39, include_texts=True), timeout=60)
        without = stub.SimilarItems(pb.SimilarItemsRequest(catalog="t", item_id="m1", k=5),
                                    timeout=60)
    texts["m3"] = "A changed text"  # the current text, as DescribeCatalog's items are now
    assert len(with_texts.items) == 39
    assert all(item.text == texts[item.item_id] for item in with_texts.items)
    assert all(item.text == "" for item in without.items)
