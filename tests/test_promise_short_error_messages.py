"""Promise: a rejected call gets its precise status and a short message that never echoes
the offending value whole, however large it is (a caller's 20 KB name must not turn the
answer into RESOURCE_EXHAUSTED from gRPC's metadata limit, nor fill logs).

Broken before: messages quoted names and ids whole, so a 20 KB catalog name came back as
RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.server_process import refit, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from tests.promise_servers import STORES, served

HUGE = "x" * 20_000
MAX_DETAILS = 300


def _calls(stub):
    one = np.array([0], "<u4").tobytes()
    push = lambda **fields: stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(  # noqa: E731
        **{"catalog": "ok", "worker_id": "w", "batch_id": "b", "rows": one,
           "cols": np.array([1], "<u4").tobytes(), "weights": np.ones(1, "<f4").tobytes(),
           **fields})]), timeout=30)
    pull = lambda **fields: list(stub.GetItemEmbeddings(  # noqa: E731
        pb.GetItemEmbeddingsRequest(**{"catalog": "ok", **fields}), timeout=30))
    upsert = lambda catalog="ok", item_id="i", text="t": stub.UpsertItems(  # noqa: E731
        iter([pb.UpsertItemsRequest(catalog=catalog, items=[pb.Item(id=item_id, text=text)])]),
        timeout=30)
    return {
        "describe: catalog": (lambda: stub.DescribeCatalog(
            pb.DescribeCatalogRequest(catalog=HUGE), timeout=30), "INVALID_ARGUMENT"),
        "pull: catalog": (lambda: pull(catalog=HUGE), "INVALID_ARGUMENT"),
        "pull: item id": (lambda: pull(item_ids=[HUGE]), "INVALID_ARGUMENT"),
        "pull: unknown item id": (lambda: pull(item_ids=["u" * 500]), "NOT_FOUND"),
        "push: catalog": (lambda: push(catalog=HUGE), "INVALID_ARGUMENT"),
        "push: worker id": (lambda: push(worker_id=HUGE), "INVALID_ARGUMENT"),
        "push: batch id": (lambda: push(batch_id=HUGE), "INVALID_ARGUMENT"),
        "push: bad weights, long ids": (lambda: push(
            worker_id="w" * 128, batch_id="b" * 128, weights=b"\0\0\xc0\x7f"),
            "INVALID_ARGUMENT"),
        "upsert: catalog": (lambda: upsert(catalog=HUGE), "INVALID_ARGUMENT"),
        "upsert: item id": (lambda: upsert(item_id=HUGE), "INVALID_ARGUMENT"),
        "upsert: long text": (lambda: upsert(item_id="i" * 500, text=HUGE), "INVALID_ARGUMENT"),
        "upsert: empty text, long id": (lambda: upsert(item_id="i" * 500, text=" "),
                                        "INVALID_ARGUMENT"),
        "refit: catalog": (lambda: stub.RefitProjection(
            pb.RefitProjectionRequest(catalog=HUGE), timeout=30), "INVALID_ARGUMENT"),
        "activate: catalog": (lambda: stub.ActivateVersion(
            pb.ActivateVersionRequest(catalog=HUGE, version=1), timeout=30), "INVALID_ARGUMENT"),
        "similar: catalog": (lambda: stub.SimilarItems(
            pb.SimilarItemsRequest(catalog=HUGE, item_id="i"), timeout=30), "INVALID_ARGUMENT"),
        "similar: item id": (lambda: stub.SimilarItems(
            pb.SimilarItemsRequest(catalog="ok", item_id=HUGE), timeout=30), "INVALID_ARGUMENT"),
        "similar: unknown item id": (lambda: stub.SimilarItems(
            pb.SimilarItemsRequest(catalog="ok", item_id="u" * 500), timeout=30), "NOT_FOUND"),
    }


@pytest.mark.parametrize("kind", STORES)
def test_hostile_sizes_get_precise_codes_and_short_messages(kind: str, tmp_path: Path,
                                                            record_property) -> None:
    wrong = {}
    longest = 0
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, "ok", 50)  # type: ignore[arg-type]
        refit(env.stub, "ok", dim=4)
        for what, (call, expected) in _calls(env.stub).items():
            try:
                call()
                wrong[what] = "OK"
                continue
            except grpc.RpcError as error:
                code, details = error.code().name, error.details() or ""
            longest = max(longest, len(details))
            if code != expected or len(details) > MAX_DETAILS:
                wrong[what] = f"{code}: {len(details)} chars: {details[:80]}"
    record_property("longest_details_chars", longest)
    assert wrong == {}
