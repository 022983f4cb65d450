"""Stage 1 of the quality benchmark, through the real service: ingest, push, refit, fetch.

For each co-occurrence window of the grid one catalog is ingested (the server encodes the
titles with the pooled all-MiniLM-L6-v2 encoder) and a trainer pushes the window's counts
of the training prefixes with ``PushCooccurrence``. Then ``RefitProjection`` stages a
plain-PCA version (λ = 0) and one Rec-PCA version per grid setting, and
``GetItemEmbeddings`` fetches every served table plus the raw encoder vectors (for the
LLM-raw-PCA baselines, whose PCA of the *un-normalized* vectors is the client's own: the
service only serves normalized projections). Everything the training stage needs is saved
in one ``.npz`` and one ``.json``, so training can run on another machine (a GPU) without
the service.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.variants import (
    RAW_PCA,
    RAW_PCA_RESCALED,
    SERVED_PCA,
    Grid,
    RecPcaSetting,
)
from trainer_client.sequences import LeaveOneOutSplit, UserSequences

DIM = 64
# The ID table's expected row norm: N(0, 0.02²) in 64 dims (ItemTableConfig.init_std).
ID_INIT_NORM = 0.02 * DIM**0.5


@dataclass
class PreparedData:
    """The split and every item table the variants train from."""

    dataset: str
    split: LeaveOneOutSplit
    tables: dict[str, np.ndarray]
    # Per served table key: version number and its fit diagnostics; plus run facts.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.meta["n_items"])

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        train = self.split.train
        np.savez_compressed(
            directory / "prepared.npz", train_items=train.items, train_offsets=train.offsets,
            valid_targets=self.split.valid_targets, test_targets=self.split.test_targets,
            **{f"table/{key}": table for key, table in self.tables.items()},
        )  # fmt: skip
        (directory / "prepared.json").write_text(
            json.dumps({"dataset": self.dataset, **self.meta}, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: Path) -> PreparedData:
        meta = json.loads((directory / "prepared.json").read_text())
        with np.load(directory / "prepared.npz") as arrays:
            offsets = arrays["train_offsets"]
            train = UserSequences([str(u) for u in range(len(offsets) - 1)],
                                  arrays["train_items"], offsets)
            split = LeaveOneOutSplit(train, arrays["valid_targets"], arrays["test_targets"])
            tables = {key.removeprefix("table/"): arrays[key]
                      for key in arrays.files if key.startswith("table/")}
        return cls(meta.pop("dataset"), split, tables, meta)


def raw_pca(raw: np.ndarray, dim: int = DIM) -> np.ndarray:
    """PCA of the un-normalized encoder vectors: centred scores on the top ``dim``
    principal axes (the LLMInit / LLM-ESR style initialization)."""
    centred = raw.astype(np.float64) - raw.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return (centred @ axes[:dim].T).astype(np.float32)


def rescaled(table: np.ndarray, target_mean_norm: float = ID_INIT_NORM) -> np.ndarray:
    """One global scale so the mean row norm equals the ID init's: the relative norm
    disparity is kept, only the overall scale changes."""
    return (table * (target_mean_norm / np.linalg.norm(table, axis=1).mean())).astype(np.float32)


def prepare(dataset: str, grid: Grid, store_url: str | None = None) -> PreparedData:
    """Run stage 1 against a fresh in-process server (embedded store unless ``store_url``)."""
    from server.background import BackgroundServer

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        url = store_url or str(Path(scratch) / "quality.db")
        with BackgroundServer(store_url=url, version_cache_size=4) as service:
            prepared = _prepare_through(service.address, dataset, grid, Path(scratch))
    prepared.meta["prepare_seconds"] = time.perf_counter() - started
    return prepared


def _prepare_through(address: str, dataset: str, grid: Grid, scratch: Path) -> PreparedData:
    from bench.service_calls import ingest
    from trainer_client.client import EmbeddingClient
    from trainer_client.datasets import dataset_dir, fetch
    from trainer_client.interactions import build_sequences
    from trainer_client.pusher import CooccurrencePusher
    from trainer_client.recbole_data import read_interactions
    from trainer_client.sequences import leave_one_out

    fetch(dataset)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    catalogs = {window: f"{dataset}-quality-w{window}-{run_id}" for window in grid.windows}
    tables: dict[str, np.ndarray] = {}
    versions: dict[str, Any] = {}
    with EmbeddingClient(address, deadline_s=3600) as client:
        split: LeaveOneOutSplit | None = None
        item_ids: list[str] | None = None
        for window, catalog in catalogs.items():
            print(f"\n=== catalog {catalog}: ingest, push window-{window} counts", flush=True)
            ingest(address, catalog, dataset)
            raw = client.fetch_embeddings(catalog, kind="raw")
            if item_ids is None:
                item_ids = raw.item_ids
                row_of = {item: int(row) for item, row in zip(raw.item_ids, raw.rows,
                                                              strict=True)}
                inter = dataset_dir(dataset) / f"{dataset}.inter"
                sequences, dropped = build_sequences(read_interactions(inter), row_of)
                split = leave_one_out(sequences)
                tables[RAW_PCA] = raw_pca(raw.vectors)
                tables[RAW_PCA_RESCALED] = rescaled(tables[RAW_PCA])
            elif raw.item_ids != item_ids:
                raise RuntimeError("catalogs of one dataset must share row order")
            assert split is not None
            pusher = CooccurrencePusher(client, catalog, "quality", scratch / f"{catalog}.json")
            pushed = pusher.push_sequences(split.train, window)
            print(f"pushed {pushed.pairs_added:,} pair entries in {pushed.applied} batches")
        first = catalogs[grid.windows[0]]
        tables[SERVED_PCA], versions[SERVED_PCA] = _served(client, address, first, lam=0.0)
        versions[SERVED_PCA]["window"] = grid.windows[0]
        for setting in grid.recpca_settings():
            tables[setting.key], versions[setting.key] = _served(
                client, address, catalogs[setting.window], setting=setting)
            versions[setting.key]["window"] = setting.window
    assert split is not None and item_ids is not None
    meta = {"n_items": len(item_ids), "users": len(split.train), "dropped": dropped,
            "catalogs": {str(w): c for w, c in catalogs.items()}, "versions": versions,
            "raw_norms": _norm_summary(raw.vectors),
            "raw_pca_norms": _norm_summary(tables[RAW_PCA])}
    return PreparedData(dataset, split, tables, meta)


def _served(client: Any, address: str, catalog: str, *, lam: float | None = None,
            setting: RecPcaSetting | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage one version (not activated: each is pinned by number) and fetch its vectors."""
    from google.protobuf.json_format import MessageToDict

    from bench.service_calls import refit
    from protos.tfllmer.v1 import embedding_service_pb2 as pb

    if setting is None:
        parameters = pb.FitParameters(dim=DIM, lam=lam)
    else:
        transform = pb.GRAPH_TRANSFORM_LOG1P if setting.transform == "log1p" \
            else pb.GRAPH_TRANSFORM_IDENTITY
        parameters = pb.FitParameters(dim=DIM, retention_budget=setting.retention,
                                      graph=pb.GraphOptions(transform=transform))
    version = refit(address, catalog, parameters, activate=False)
    table = client.fetch_embeddings(catalog, version=version.version)
    diagnostics = MessageToDict(version.diagnostics, preserving_proto_field_name=True,
                                always_print_fields_with_no_presence=True)
    return table.vectors, {"catalog": catalog, "version": version.version, **diagnostics}


def _norm_summary(vectors: np.ndarray) -> dict[str, float]:
    norms = np.linalg.norm(vectors, axis=1)
    return {"min": float(norms.min()), "mean": float(norms.mean()), "max": float(norms.max())}
