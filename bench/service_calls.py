"""The ops calls the benchmarks make through the real service: ingest a MovieLens catalog
with the admin CLI, and fit a Rec-PCA version with ``RefitProjection``."""

from __future__ import annotations

import grpc

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from trainer_client import admin
from trainer_client.datasets import dataset_dir


def ingest(address: str, catalog: str, dataset: str) -> None:
    """Encode and store the dataset's item texts ("Title (year). Genres: ...")."""
    item_file = dataset_dir(dataset) / f"{dataset}.item"
    code = admin.main(["ingest", "--catalog", catalog, "--recbole-item", str(item_file),
                       "--server", address])
    if code:
        raise SystemExit(f"ingest failed with exit code {code}")


def refit(address: str, catalog: str, parameters: pb.FitParameters,
          activate: bool = True) -> pb.CatalogVersion:
    """Fit a new version (activated or staged) and print its headline diagnostics."""
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.EmbeddingServiceStub(channel).RefitProjection(
            pb.RefitProjectionRequest(catalog=catalog, parameters=parameters,
                                      activate=activate))
    d = reply.version.diagnostics
    print(f"{catalog} version {reply.version.version}: λ = {d.lam:.4g}, retained variance "
          f"{d.retained_variance:.3f} (PCA {d.pca_retained_variance:.3f})", flush=True)
    return reply.version
