"""Every status code of ARCHITECTURE §7 that a caller's bad input can cause, one test per
(RPC, cause), against the real server, a real redis-server and the real encoder.

Each test asserts the exact status code, a message that says what was wrong, and that the
failed call changed nothing: DescribeCatalog, the catalog's raw vectors and the active
version's served vectors are the same bytes before and after. Calls that would add items or
batches start with a valid prefix (a new item, a changed text, a good batch), so a partial
commit would show. UNAVAILABLE (store down) is tested elsewhere.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from server.stores.base import EncoderIdentity
from tests.service_harness import ServerThread

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ABORTED = grpc.StatusCode.ABORTED

CATALOG = "status-main"  # items, counts, an active version 1 and a staged version 2
BARE = "status-bare"  # items only: no counts, no version
FLAT = "status-flat"  # every item has the same text: no variance to fit
FOREIGN_NAME = "status-foreign-name"  # created by another encoder (name differs)
FOREIGN_DIM = "status-foreign-dim"  # created by another encoder (dim differs)
UNKNOWN = "status-unknown"  # never created; no failed call may create it
N_ITEMS, DIM, MAX_K, KiB = 40, 8, 25, 1024
SETTINGS = {
    "max_text_chars": 200,
    "max_items_per_upsert": 50,
    "max_pairs_per_push": 100,
    "max_receive_message_bytes": 64 * KiB,
    "max_similar_k": MAX_K,
}
BAD_NAMES = [
    pytest.param(name, id=label) for label, name in (
        ("empty", ""), ("leading-dash", "-leading-dash"), ("space", "has space"),
        ("65-chars", "x" * 65), ("brace", "tag{x}"), ("non-ascii", "naïve"))
]

GENRES = ["Drama", "Comedy", "Horror", "Animation", "Documentary", "Western", "Sci-Fi", "Musical"]
SUBJECTS = ["a lighthouse keeper", "two rival chefs", "a lost robot", "a jazz band", "the moon"]
TEXTS = [
    f"A film about {SUBJECTS[i % 5]} ({1950 + 3 * i}). Genres: {GENRES[i % 8]}, "
    f"{GENRES[(i * 3 + 1) % 8]}"
    for i in range(N_ITEMS)
]
IDS = [f"item-{i:02d}" for i in range(N_ITEMS)]


@pytest.fixture(scope="module")
def service(redis_server, pooled_encoder) -> Iterator[SimpleNamespace]:
    store = RedisStore(redis_server.url, key_prefix=f"status-codes-{uuid.uuid4().hex[:8]}")
    with ServerThread(store, pooled_encoder, **SETTINGS) as server, server.channel() as channel:
        stub = server.stub(channel)
        stub.UpsertItems(iter([upsert(CATALOG, *zip(IDS, TEXTS, strict=True))]))
        pairs = [(i, (i + 1) % N_ITEMS) for i in range(N_ITEMS)]
        pairs += [(i, (i + 8) % N_ITEMS) for i in range(N_ITEMS)]
        stub.PushCooccurrence(iter([batch(CATALOG, "setup", "0", pairs[:N_ITEMS]),
                                    batch(CATALOG, "setup", "1", pairs[N_ITEMS:])]))
        for retention, activate in ((0.9, True), (0.7, False)):
            stub.RefitProjection(pb.RefitProjectionRequest(
                catalog=CATALOG, activate=activate,
                parameters=pb.FitParameters(dim=DIM, retention_budget=retention)))
        stub.UpsertItems(iter([upsert(BARE, *zip(IDS[:20], TEXTS[:20], strict=True))]))
        stub.UpsertItems(iter([upsert(FLAT, *((f"same-{i}", "Same text") for i in range(10)))]))
        name, dim = pooled_encoder.name, pooled_encoder.dim
        store.create_catalog(FOREIGN_NAME, EncoderIdentity("other-backend:other-model", dim))
        store.create_catalog(FOREIGN_DIM, EncoderIdentity(name, 2 * dim))

        described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
        assert described.item_count == N_ITEMS and described.active_version == 1
        assert [v.status for v in described.versions] == [
            pb.VERSION_STATUS_ACTIVE, pb.VERSION_STATUS_STAGED]
        assert described.cooccurrence.pairs == 2 * N_ITEMS
        yield SimpleNamespace(stub=stub, store=store)
    store.close()


# -- request builders -------------------------------------------------------------------


def upsert(catalog: str, *items: tuple[str, str]) -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(catalog=catalog, items=[pb.Item(id=i, text=t) for i, t in items])


def batch(catalog: str, worker: str, batch_id: str, pairs: list[tuple[int, int]],
          weights: list[float] | None = None) -> pb.PushCooccurrenceRequest:
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    return pb.PushCooccurrenceRequest(
        catalog=catalog, worker_id=worker, batch_id=batch_id,
        rows=np.array(rows, "<u4").tobytes(), cols=np.array(cols, "<u4").tobytes(),
        weights=np.array(weights or [1.0] * len(pairs), "<f4").tobytes())


def raw_batch(rows: bytes, cols: bytes, weights: bytes) -> pb.PushCooccurrenceRequest:
    return pb.PushCooccurrenceRequest(catalog=CATALOG, worker_id="bad", batch_id="raw",
                                      rows=rows, cols=cols, weights=weights)


def vector(values: list[float] | np.ndarray) -> bytes:
    return np.asarray(values, "<f4").tobytes()


# -- the check every test runs ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    call: Callable[[Any], object]  # makes the failing call on a stub (draining streams)
    code: grpc.StatusCode
    phrase: str  # regular expression the status message must contain (any case)
    catalog: str = CATALOG  # whose state must not change
    absent: str | None = None  # a catalog that must still not exist afterwards


def case(name: str, call: Callable[[Any], object], code: grpc.StatusCode, phrase: str,
         **where: str) -> Any:
    return pytest.param(Case(call, code, phrase, **where), id=name)


def upsert_call(*messages: pb.UpsertItemsRequest) -> Callable[[Any], object]:
    return lambda stub: stub.UpsertItems(iter(messages))


def describe_call(catalog: str) -> Callable[[Any], object]:
    return lambda stub: stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))


def fetch_call(**fields: Any) -> Callable[[Any], object]:
    fields.setdefault("catalog", CATALOG)
    return lambda stub: list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(**fields)))


def push_call(*messages: pb.PushCooccurrenceRequest) -> Callable[[Any], object]:
    return lambda stub: stub.PushCooccurrence(iter(messages))


def refit_call(catalog: str = CATALOG, **parameters: Any) -> Callable[[Any], object]:
    graph = {key: parameters.pop(key) for key in ("transform", "top_k") if key in parameters}
    request = pb.RefitProjectionRequest(catalog=catalog, activate=True, parameters=pb.FitParameters(
        graph=pb.GraphOptions(**graph), **{"dim": DIM, **parameters}))
    return lambda stub: stub.RefitProjection(request)


def activate_call(version: int, catalog: str = CATALOG) -> Callable[[Any], object]:
    return lambda stub: stub.ActivateVersion(
        pb.ActivateVersionRequest(catalog=catalog, version=version))


def similar_call(**fields: Any) -> Callable[[Any], object]:
    fields.setdefault("catalog", CATALOG)
    return lambda stub: stub.SimilarItems(pb.SimilarItemsRequest(**fields))


def stream_bytes(stub: Any, catalog: str, **fields: Any) -> bytes:
    request = pb.GetItemEmbeddingsRequest(catalog=catalog, **fields)
    return b"".join(message.SerializeToString() for message in stub.GetItemEmbeddings(request))


def snapshot(stub: Any, catalog: str) -> dict[str, Any]:
    described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))
    state = {"describe": described,
             "raw vectors": stream_bytes(stub, catalog, kind=pb.EMBEDDING_KIND_RAW)}
    if described.active_version:
        state["active vectors"] = stream_bytes(stub, catalog)
    return state


def assert_not_found(stub: Any, catalog: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))
    assert caught.value.code() == NOT_FOUND, f"the failed call created catalog {catalog!r}"


def assert_rejected_without_effect(stub: Any, case: Case) -> None:
    before = snapshot(stub, case.catalog)
    with pytest.raises(grpc.RpcError) as caught:
        case.call(stub)
    error = caught.value
    assert error.code() == case.code, f"{error.code()}: {error.details()}"
    assert re.search(case.phrase, error.details(), re.IGNORECASE), error.details()
    after = snapshot(stub, case.catalog)
    for part, value in before.items():
        assert after[part] == value, f"{part} of {case.catalog!r} changed"
    assert after.keys() == before.keys()
    if case.absent:
        assert_not_found(stub, case.absent)


# -- catalog names and unknown catalogs, on every RPC -----------------------------------

RPCS_BY_NAME: dict[str, Callable[[str], Callable[[Any], object]]] = {
    "UpsertItems": lambda name: upsert_call(upsert(name, ("fresh", "A new film"))),
    "DescribeCatalog": describe_call,
    "GetItemEmbeddings": lambda name: fetch_call(catalog=name),
    "PushCooccurrence": lambda name: push_call(batch(name, "w", "b", [(0, 1)])),
    "RefitProjection": lambda name: refit_call(name),
    "ActivateVersion": lambda name: activate_call(1, name),
    "SimilarItems": lambda name: similar_call(catalog=name, item_id=IDS[0]),
}


@pytest.mark.parametrize("rpc", RPCS_BY_NAME)
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_catalog_name_is_invalid_argument_on_every_rpc(service, rpc, name) -> None:
    assert_rejected_without_effect(service.stub, Case(
        RPCS_BY_NAME[rpc](name), INVALID, r"must be 1 to 64 characters from \[A-Za-z0-9._-\]"))


@pytest.mark.parametrize("rpc", [rpc for rpc in RPCS_BY_NAME if rpc != "UpsertItems"])
def test_an_unknown_catalog_is_not_found_and_stays_unknown(service, rpc) -> None:
    assert_rejected_without_effect(service.stub, Case(
        RPCS_BY_NAME[rpc](UNKNOWN), NOT_FOUND, f"catalog '{UNKNOWN}' does not exist",
        absent=UNKNOWN))


# -- UpsertItems ------------------------------------------------------------------------

# A new item and a changed text come first in every failing call: neither may be stored.
GOOD_PREFIX = (("fresh-item", "A film nobody has seen yet (2031). Genres: Drama"),
               (IDS[0], "A changed text for the first item"))


def upsert_cases(target: str, where: str) -> list[Any]:
    def bad(*items: tuple[str, str]) -> Callable[[Any], object]:
        return upsert_call(upsert(target, *GOOD_PREFIX), upsert(target, *items))

    checked = {"absent": target} if target == UNKNOWN else {}
    too_many = [(f"many-{i}", "Text") for i in range(SETTINGS["max_items_per_upsert"] - 1)]
    cases = [
        ("empty-item-id", bad(("", "Text")), INVALID, "item id '' must be 1 to 512 bytes"),
        ("item-id-over-512-bytes", bad(("é" * 257, "Text")), INVALID, "must be 1 to 512 bytes"),
        ("empty-text", bad(("x", "")), INVALID, "has an empty text"),
        ("blank-text", bad(("x", " \n\t")), INVALID, "has an empty text"),
        ("text-over-max-text-chars", bad(("x", "y" * 201)), INVALID,
         "201 characters, more than the limit 200"),
        ("id-twice-in-one-call", bad(("fresh-item", "Another text")), INVALID,
         "'fresh-item' appears twice in one call"),
        ("messages-naming-different-catalogs",
         upsert_call(upsert(target, *GOOD_PREFIX), upsert(BARE, ("x", "Text"))), INVALID,
         "every message of a stream must name the same catalog"),
        ("more-items-than-max-items-per-upsert", bad(*too_many), EXHAUSTED,
         "more than 50 items in one call; split the ingest"),
        ("message-over-max-receive-message-bytes", bad(("x", "y" * 70 * KiB)), EXHAUSTED,
         "larger than max"),
    ]
    return [case(f"{where}-{name}", call, code, phrase, **checked)
            for name, call, code, phrase in cases]


@pytest.mark.parametrize("case", [
    *upsert_cases(CATALOG, "existing-catalog"),
    *upsert_cases(UNKNOWN, "new-catalog"),
    case("stream-with-no-message", upsert_call(), INVALID, "the stream had no message"),
])
def test_upsert_items_rejects_bad_input_and_stores_nothing(service, case) -> None:
    assert_rejected_without_effect(service.stub, case)


@pytest.mark.parametrize("catalog", [FOREIGN_NAME, FOREIGN_DIM])
def test_upsert_items_into_a_catalog_of_another_encoder_is_failed_precondition(
        service, catalog) -> None:
    assert_rejected_without_effect(service.stub, Case(
        upsert_call(upsert(catalog, *GOOD_PREFIX)), PRECONDITION,
        f"catalog '{catalog}' was encoded by .*; this server runs", catalog=catalog))


# -- GetItemEmbeddings ------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    case("negative-version", fetch_call(version=-1), INVALID, "version must be >= 0"),
    case("version-with-raw-kind", fetch_call(version=1, kind=pb.EMBEDDING_KIND_RAW), INVALID,
         "raw vectors are not versioned"),
    case("negative-max-chunk-bytes", fetch_call(max_chunk_bytes=-1), INVALID,
         "max_chunk_bytes must be >= 0"),
    case("unknown-dtype", fetch_call(dtype=9), INVALID, "unknown dtype"),
    case("unknown-kind", fetch_call(kind=9), INVALID, "unknown .*kind"),
    case("empty-item-id", fetch_call(item_ids=[IDS[0], ""]), INVALID,
         "item id '' must be 1 to 512 bytes"),
    case("item-id-over-512-bytes", fetch_call(item_ids=["x" * 513]), INVALID,
         "must be 1 to 512 bytes"),
    case("unknown-version", fetch_call(version=99), NOT_FOUND, "has no version 99"),
    case("unknown-item-id", fetch_call(item_ids=[IDS[0], "no-such-item"]), NOT_FOUND,
         "item 'no-such-item' is not in catalog"),
    case("unknown-version-of-a-catalog-without-versions", fetch_call(catalog=BARE, version=1),
         NOT_FOUND, "has no version 1", catalog=BARE),
    case("active-version-of-a-catalog-without-one", fetch_call(catalog=BARE), PRECONDITION,
         "has no active version yet", catalog=BARE),
])
def test_get_item_embeddings_rejects_bad_input_before_the_first_message(service, case) -> None:
    assert_rejected_without_effect(service.stub, case)


# -- PushCooccurrence -------------------------------------------------------------------


def push_bad(*messages: pb.PushCooccurrenceRequest) -> Callable[[Any], object]:
    """A good batch, then the bad ones: the good one must not be applied either."""
    return push_call(batch(CATALOG, "good", "prefix", [(0, 1), (2, 3)]), *messages)


FOUR_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8)]


@pytest.mark.parametrize("case", [
    case("messages-naming-different-catalogs", push_bad(batch(BARE, "w", "b", [(0, 1)])),
         INVALID, "every message of a stream must name the same catalog"),
    case("empty-worker-id", push_bad(batch(CATALOG, "", "b", [(0, 1)])), INVALID,
         "worker_id must be 1 to 128 bytes"),
    case("empty-batch-id", push_bad(batch(CATALOG, "w", "", [(0, 1)])), INVALID,
         "batch_id must be 1 to 128 bytes"),
    case("worker-id-over-128-bytes", push_bad(batch(CATALOG, "w" * 129, "b", [(0, 1)])),
         INVALID, "worker_id must be 1 to 128 bytes"),
    case("batch-id-over-128-bytes", push_bad(batch(CATALOG, "w", "é" * 65, [(0, 1)])),
         INVALID, "batch_id must be 1 to 128 bytes"),
    case("blocks-of-unequal-length",
         push_bad(raw_batch(vector([1, 2]), vector([3]), vector([1, 1]))), INVALID,
         "equally long multiples of 4 bytes"),
    case("blocks-not-a-multiple-of-4-bytes", push_bad(raw_batch(b"\0" * 6, b"\1" * 6, b"\2" * 6)),
         INVALID, "equally long multiples of 4 bytes"),
    case("row-equal-to-item-count", push_bad(batch(CATALOG, "w", "b", [(N_ITEMS, 1)])),
         INVALID, f"outside the catalog's {N_ITEMS}"),
    case("col-far-outside", push_bad(batch(CATALOG, "w", "b", [(0, 2**32 - 1)])), INVALID,
         f"outside the catalog's {N_ITEMS}"),
    case("self-pair", push_bad(batch(CATALOG, "w", "b", [(0, 1), (5, 5)])), INVALID,
         "joins an item to itself"),
    *[case(f"{label}-weight", push_bad(batch(CATALOG, "w", "b", FOUR_PAIRS, [1, 1, w, 1])),
           INVALID, "weights must be finite and positive")
      for label, w in (("nan", np.nan), ("infinite", np.inf), ("negative", -1.0), ("zero", 0.0))],
    case("stream-with-no-message", push_call(), INVALID, "the stream had no message"),
    case("more-pairs-than-max-pairs-per-push",
         push_bad(*(batch(CATALOG, "w", str(b), [(0, 1)] * 40) for b in range(3))), EXHAUSTED,
         "more than 100 pairs in one call; push in several calls"),
    case("message-over-max-receive-message-bytes",
         push_bad(batch(CATALOG, "w", "big", [(0, 1)] * 6000)), EXHAUSTED, "larger than max"),
])
def test_push_cooccurrence_rejects_bad_input_and_applies_no_batch(service, case) -> None:
    assert_rejected_without_effect(service.stub, case)


# -- RefitProjection --------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    case("dim-above-the-encoder-dim", refit_call(dim=385), INVALID,
         "dim must be between 1 and the encoder's dim 384"),
    case("negative-dim", refit_call(dim=-1), INVALID, "dim must be between 1 and"),
    case("negative-lam", refit_call(lam=-0.5), INVALID, "lam must be a finite number >= 0"),
    case("nan-lam", refit_call(lam=float("nan")), INVALID, "lam must be a finite number"),
    case("infinite-lam", refit_call(lam=float("inf")), INVALID, "lam must be a finite number"),
    case("retention-budget-zero", refit_call(retention_budget=0.0), INVALID,
         r"retention_budget must be in \(0, 1\]"),
    case("retention-budget-above-one", refit_call(retention_budget=1.5), INVALID,
         r"retention_budget must be in \(0, 1\]"),
    case("retention-budget-nan", refit_call(retention_budget=float("nan")), INVALID,
         r"retention_budget must be in \(0, 1\]"),
    case("top-k-with-identity-transform",
         refit_call(transform=pb.GRAPH_TRANSFORM_IDENTITY, top_k=5), INVALID,
         "top_k is only meaningful with GRAPH_TRANSFORM_TOP_K"),
    case("top-k-with-unset-transform", refit_call(top_k=5), INVALID,
         "top_k is only meaningful with GRAPH_TRANSFORM_TOP_K"),
    case("top-k-with-log1p-transform", refit_call(transform=pb.GRAPH_TRANSFORM_LOG1P, top_k=5),
         INVALID, "top_k is only meaningful with GRAPH_TRANSFORM_TOP_K"),
    case("negative-top-k", refit_call(transform=pb.GRAPH_TRANSFORM_TOP_K, top_k=-1), INVALID,
         "top_k must be >= 0"),
    case("unknown-transform", refit_call(transform=9), INVALID, "unknown graph transform"),
    case("fewer-items-than-dim-plus-one", refit_call(dim=N_ITEMS), PRECONDITION,
         f"has {N_ITEMS} items; a fit of dim {N_ITEMS} needs at least {N_ITEMS + 1}"),
    case("positive-lam-without-counts", refit_call(BARE, lam=0.5), PRECONDITION,
         "lam > 0 needs co-occurrence counts", catalog=BARE),
    case("vectors-without-variance", refit_call(FLAT, dim=2, lam=0.0), PRECONDITION,
         "no variance", catalog=FLAT),
])
def test_refit_projection_rejects_bad_input_and_writes_no_version(service, case) -> None:
    assert_rejected_without_effect(service.stub, case)


def test_refit_projection_while_another_refit_holds_the_lock_is_aborted(service) -> None:
    assert service.store.acquire_refit_lock(CATALOG, "someone-else", 60)
    try:
        assert_rejected_without_effect(service.stub, Case(
            refit_call(), ABORTED, f"a refit of '{CATALOG}' is already running"))
        # The lock is still the other refit's: the rejected call did not release it.
        assert not service.store.acquire_refit_lock(CATALOG, "a-third-one", 60)
    finally:
        service.store.release_refit_lock(CATALOG, "someone-else")


# -- ActivateVersion --------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    case("version-zero", activate_call(0), INVALID, "version must be >= 1, got 0"),
    case("negative-version", activate_call(-2), INVALID, "version must be >= 1, got -2"),
    case("unknown-version", activate_call(99), NOT_FOUND, "has no version 99"),
    case("catalog-without-versions", activate_call(1, BARE), NOT_FOUND, "has no version 1",
         catalog=BARE),
])
def test_activate_version_rejects_bad_input_and_keeps_the_active_version(service, case) -> None:
    assert_rejected_without_effect(service.stub, case)


# -- SimilarItems -----------------------------------------------------------------------

UNIT = [1.0] + [0.0] * (DIM - 1)


@pytest.mark.parametrize("case", [
    case("no-query", similar_call(k=5), INVALID, "give an item_id or a vector"),
    case("vector-one-value-short", similar_call(vector=vector(UNIT[:-1])), INVALID,
         f"query vector must be {DIM} float32 values"),
    case("vector-not-whole-floats", similar_call(vector=b"\0\0\0"), INVALID,
         f"query vector must be {DIM} float32 values"),
    case("empty-vector", similar_call(vector=b""), INVALID,
         f"query vector must be {DIM} float32 values"),
    case("zero-vector", similar_call(vector=vector([0.0] * DIM)), INVALID,
         "must be finite and non-zero"),
    case("nan-vector", similar_call(vector=vector([np.nan] + UNIT[1:])), INVALID,
         "must be finite and non-zero"),
    case("k-above-the-maximum", similar_call(item_id=IDS[0], k=MAX_K + 1), INVALID,
         f"k must be between 1 and {MAX_K}, got {MAX_K + 1}"),
    case("negative-k", similar_call(item_id=IDS[0], k=-1), INVALID, "k must be between 1 and"),
    case("negative-version", similar_call(item_id=IDS[0], version=-1), INVALID,
         "version must be >= 0"),
    case("empty-item-id", similar_call(item_id=""), INVALID, "item id '' must be 1 to 512 bytes"),
    case("vector-over-max-receive-message-bytes",
         similar_call(vector=vector([1.0] * 20_000)), EXHAUSTED, "larger than max"),
    case("unknown-version", similar_call(item_id=IDS[0], version=99), NOT_FOUND,
         "has no version 99"),
    case("unknown-item-id", similar_call(item_id="no-such-item"), NOT_FOUND,
         "item 'no-such-item' is not in catalog"),
    case("item-of-a-catalog-without-an-active-version", similar_call(catalog=BARE, item_id=IDS[0]),
         PRECONDITION, "has no active version yet", catalog=BARE),
    case("vector-on-a-catalog-without-an-active-version",
         similar_call(catalog=BARE, vector=vector(UNIT)), PRECONDITION,
         "has no active version yet", catalog=BARE),
])
def test_similar_items_rejects_bad_input(service, case) -> None:
    assert_rejected_without_effect(service.stub, case)


def test_similar_items_accepts_a_finite_vector_whose_float32_norm_overflows(service) -> None:
    """Finite and non-zero is valid even when the sum of squares leaves float32's range."""
    stub = service.stub
    huge = stub.SimilarItems(pb.SimilarItemsRequest(catalog=CATALOG, vector=vector([3e38] * DIM)))
    ones = stub.SimilarItems(pb.SimilarItemsRequest(catalog=CATALOG, vector=vector([1.0] * DIM)))
    assert [hit.item_id for hit in huge.items] == [hit.item_id for hit in ones.items]
    assert len(huge.items) == 10

