"""The formulation options end to end: RefitProjection over a real gRPC channel (embedded
store, stand-in encoder), the admin CLI, the recorded parameters and diagnostics, the
precise status of a bad exponent, and new items served through a whitened projection."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.recpca import Projection
from server.stores import LocalStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread
from tests.test_service_status_codes import batch, upsert
from trainer_client.admin import main as admin_main
from trainer_client.client import EmbeddingClient

CATALOG, N_ITEMS, DIM = "options", 40, 4


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ServerThread, object, LocalStore]]:
    store = LocalStore(tmp_path_factory.mktemp("fit-options") / "store.db")
    with ServerThread(store, HashEncoder(16)) as server, server.channel() as channel:
        stub = server.stub(channel)
        stub.UpsertItems(iter([upsert(CATALOG, *((f"i{k}", f"text {k}")
                                                 for k in range(N_ITEMS)))]))
        pairs = [(k, (k + 1) % N_ITEMS) for k in range(N_ITEMS)]
        pairs += [(k, (k + 5) % N_ITEMS) for k in range(N_ITEMS)]
        stub.PushCooccurrence(iter([batch(CATALOG, "setup", "0", pairs,
                                          [float(1 + k % 7) for k in range(len(pairs))])]))
        yield server, stub, store


def refit(stub, **parameters) -> pb.CatalogVersion:
    return stub.RefitProjection(pb.RefitProjectionRequest(
        catalog=CATALOG, parameters=pb.FitParameters(dim=DIM, retention_budget=0.8,
                                                     **parameters))).version


def test_whitening_and_ppmi_are_recorded_with_the_version(service) -> None:
    _, stub, _ = service
    version = refit(stub, whitening=0.5, graph=pb.GraphOptions(transform=pb.GRAPH_TRANSFORM_PPMI))
    assert version.parameters.whitening == 0.5
    assert version.parameters.graph.transform == pb.GRAPH_TRANSFORM_PPMI
    assert version.diagnostics.whitening == 0.5
    described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
    stored = next(v for v in described.versions if v.version == version.version)
    assert stored.parameters.whitening == 0.5 and stored.diagnostics.whitening == 0.5


def test_unset_whitening_is_the_reference_formulation(service) -> None:
    _, stub, _ = service
    version = refit(stub)
    assert version.parameters.whitening == 0.0 and version.diagnostics.whitening == 0.0


@pytest.mark.parametrize("power", [-0.5, 1.01, float("inf"), float("nan")])
def test_a_whitening_exponent_outside_zero_to_one_is_invalid_and_changes_nothing(
        service, power: float) -> None:
    _, stub, _ = service
    before = len(stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)).versions)
    with pytest.raises(grpc.RpcError) as error:
        refit(stub, whitening=power)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "whitening" in error.value.details() and len(error.value.details()) < 200
    after = len(stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG)).versions)
    assert after == before


def test_items_added_after_a_whitened_fit_are_served_whitened(service) -> None:
    server, stub, store = service
    version = refit(stub, whitening=1.0)
    stub.UpsertItems(iter([upsert(CATALOG, ("new-a", "a new text"), ("new-b", "another"))]))
    with EmbeddingClient(server.address) as client:
        table = client.fetch_embeddings(CATALOG, version=version.version)
        raw = client.fetch_embeddings(CATALOG, kind="raw")
    served = dict(zip(table.item_ids, table.vectors, strict=True))
    assert {"new-a", "new-b"} <= set(served)
    # The version's own map, read back from the store, must serve the new rows.
    components, mean = store.read_projection(CATALOG, version.version)
    projection = Projection(components, mean, version.diagnostics.lam)
    rows = [raw.item_ids.index(item) for item in ("new-a", "new-b")]
    expected = projection.transform(raw.vectors[rows])
    np.testing.assert_allclose(np.stack([served["new-a"], served["new-b"]]), expected,
                               atol=1e-6)
    # Whitened, not the reference map: the same rows differ under p = 0.
    plain = refit(stub)
    plain_components, _ = store.read_projection(CATALOG, plain.version)
    assert not np.allclose(plain_components, components)


def test_the_admin_cli_passes_the_options(service, capsys) -> None:
    server, _, _ = service
    code = admin_main(["refit", "--catalog", CATALOG, "--server", server.address, "--dim",
                       str(DIM), "--retention", "0.8", "--transform", "ppmi",
                       "--whitening", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[-1].split() == ["whitening", "p", "1", "1"]
