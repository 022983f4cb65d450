"""A refit whose ``dim`` exceeds the number of directions in which the catalog's normalized
raw vectors vary is refused with FAILED_PRECONDITION and a message that says the largest
dim the data supports. Before, it returned arbitrary null-space columns, so new items got
arbitrary coordinates there (two valid solutions differed by cosine 0.38)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import EncoderIdentity, ItemChanges, LocalStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread


def test_a_fit_above_the_rank_of_the_data_is_refused(tmp_path: Path) -> None:
    encoder = HashEncoder(16)
    store = LocalStore(tmp_path / "store.db")
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((3, 16))  # every item lies in one 3-dimensional subspace
    vectors = (rng.standard_normal((60, 3)) @ basis).astype(np.float32)
    ids = [f"i{k}" for k in range(60)]
    store.commit_items("low-rank", ItemChanges(0, ids, ids, vectors),
                       create=(EncoderIdentity(encoder.name, encoder.dim), "<f4"))
    with ServerThread(store, encoder) as server, server.channel() as channel:
        stub = server.stub(channel)

        def refit(dim: int) -> pb.RefitProjectionResponse:
            return stub.RefitProjection(pb.RefitProjectionRequest(
                catalog="low-rank", activate=True, parameters=pb.FitParameters(dim=dim, lam=0)))

        with pytest.raises(grpc.RpcError) as refused:
            refit(4)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "only 3 directions" in refused.value.details()
        assert "dim <= 3" in refused.value.details()
        described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="low-rank"))
        assert list(described.versions) == []  # nothing written
        assert refit(3).version.version == 1
