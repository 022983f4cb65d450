"""Stage 1 of the value benchmark, through the real service (ingest, push, refit, fetch).

Two catalogs of the same RecBole atomic folder (``<dir>/<name>.item`` and ``.inter``):

* ``main``: every item; a trainer pushes the window-3 counts of the training prefixes;
  ``RefitProjection`` stages plain PCA (λ = 0) and one version per Rec-PCA formulation.
* ``cold``: the seeded cold share is held back (``bench.value.cold_split``): the warm items
  are ingested, counts of the cold-free training prefixes are pushed, every version is
  fitted, and only then are the cold items ingested, so each version serves them through
  its projection like any new item.

Everything the training stage needs is saved as two ``PreparedData`` folders, so training
can resume or run elsewhere without the service.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.prepare import PreparedData, raw_pca, rescaled
from bench.quality.variants import RAW_PCA, RAW_PCA_RESCALED
from bench.value.cold_split import choose_cold, cold_split
from bench.value.design import (
    COLD,
    DIM,
    FORMULATIONS,
    MAIN,
    PROBED_ONLY,
    SERVED_PCA,
    WINDOW,
    Formulation,
)
from trainer_client.interactions import build_sequences
from trainer_client.recbole_data import read_catalog, read_interactions
from trainer_client.sequences import LeaveOneOutSplit, leave_one_out


def dataset_files(data_dir: Path) -> tuple[Path, Path]:
    """``<dir>/<name>.item`` and ``<dir>/<name>.inter`` of a RecBole atomic folder."""
    item, inter = (data_dir / f"{data_dir.name}.{suffix}" for suffix in ("item", "inter"))
    for path in (item, inter):
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (a RecBole atomic folder holds "
                             f"<name>.item and <name>.inter)")
    return item, inter


def prepare(data_dir: Path, work: Path, cold_fraction: float, cold_seed: int = 0,
            store_url: str | None = None) -> None:
    """Run stage 1 against a fresh in-process server; writes ``work/main`` and ``work/cold``."""
    from server.background import BackgroundServer

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        url = store_url or str(Path(scratch) / "value.db")
        with BackgroundServer(store_url=url, version_cache_size=2) as service:
            session = _Session(service.address, data_dir, Path(scratch))
            main = session.main()
            main.meta["prepare_seconds"] = time.perf_counter() - started
            main.save(work / MAIN)
            cold = session.cold(cold_fraction, cold_seed)
            cold.meta["prepare_seconds"] = time.perf_counter() - started
            cold.save(work / COLD)


class _Session:
    def __init__(self, address: str, data_dir: Path, scratch: Path) -> None:
        from trainer_client.client import EmbeddingClient

        self.address, self.scratch = address, scratch
        self.name = data_dir.name
        item_file, inter_file = dataset_files(data_dir)
        catalog = read_catalog(item_file)
        self.items = list(zip(catalog.item_ids, catalog.texts, strict=True))
        self.interactions = list(read_interactions(inter_file))
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.client = EmbeddingClient(address, deadline_s=3600)

    def main(self) -> PreparedData:
        catalog = f"{self.name}-value-main-{self.run_id}"
        print(f"\n=== {catalog}: ingest all {len(self.items)} items", flush=True)
        self._ingest(catalog, self.items, "main")
        raw = self.client.fetch_embeddings(catalog, kind="raw")
        row_of = {item: int(row) for item, row in zip(raw.item_ids, raw.rows, strict=True)}
        sequences, dropped = build_sequences(self.interactions, row_of)
        split = leave_one_out(sequences)
        self._push(catalog, split)
        tables = {RAW_PCA: raw_pca(raw.vectors, DIM)}
        tables[RAW_PCA_RESCALED] = rescaled(tables[RAW_PCA])
        versions = self._fit_all(catalog)
        tables |= {key: self.client.fetch_embeddings(catalog, version=v["version"]).vectors
                   for key, v in versions.items()}
        return PreparedData(self.name, split, tables, {
            "split": MAIN, "n_items": len(raw.item_ids), "users": len(split.train),
            "dropped": dropped, "catalog": catalog, "versions": versions,
            "item_ids": raw.item_ids})

    def cold(self, fraction: float, seed: int) -> PreparedData:
        catalog = f"{self.name}-value-cold-{self.run_id}"
        cold_ids = choose_cold([item for item, _ in self.items], fraction, seed)
        warm = [pair for pair in self.items if pair[0] not in cold_ids]
        held = [pair for pair in self.items if pair[0] in cold_ids]
        # Rows are append-only in ingest order: warm items first, then the cold ones.
        row_of = {item: row for row, (item, _) in enumerate(warm + held)}
        sequences, dropped = build_sequences(self.interactions, row_of)
        is_cold = np.zeros(len(row_of), dtype=bool)
        is_cold[len(warm):] = True
        split = cold_split(leave_one_out(sequences), is_cold)
        print(f"\n=== {catalog}: {len(warm)} warm items; {len(held)} cold items held back "
              f"until every version is fitted", flush=True)
        self._ingest(catalog, warm, "warm")
        self._check_rows(catalog, row_of, len(warm))
        self._push(catalog, split)
        versions = self._fit_all(catalog)
        self._ingest(catalog, held, "cold")
        self._check_rows(catalog, row_of, len(row_of))
        tables = {key: self.client.fetch_embeddings(catalog, version=v["version"]).vectors
                  for key, v in versions.items()}
        test_cold = is_cold[split.test_targets[split.test_targets >= 0]]
        return PreparedData(self.name, split, tables, {
            "split": COLD, "n_items": len(row_of), "users": len(split.train),
            "dropped": dropped, "catalog": catalog, "versions": versions,
            "cold_fraction": fraction, "cold_seed": seed, "cold_rows": [len(warm), len(row_of)],
            "test_users_with_cold_target": int(test_cold.sum())})

    def _ingest(self, catalog: str, items: list[tuple[str, str]], label: str) -> None:
        from trainer_client import admin

        path = self.scratch / f"{catalog}-{label}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            writer.writerows(items)
        if admin.main(["ingest", "--catalog", catalog, "--csv", str(path),
                       "--server", self.address]):
            raise SystemExit(f"ingest of {catalog} ({label}) failed")

    def _check_rows(self, catalog: str, row_of: dict[str, int], count: int) -> None:
        raw = self.client.fetch_embeddings(catalog, kind="raw", dtype="float16")
        if len(raw.item_ids) != count or any(
                row_of[item] != int(row) for item, row in zip(raw.item_ids, raw.rows,
                                                              strict=True)):
            raise RuntimeError(f"{catalog}: rows are not in ingest order")

    def _push(self, catalog: str, split: LeaveOneOutSplit) -> None:
        from trainer_client.pusher import CooccurrencePusher

        pusher = CooccurrencePusher(self.client, catalog, "value",
                                    self.scratch / f"{catalog}.json")
        pushed = pusher.push_sequences(split.train, WINDOW)
        print(f"pushed {pushed.pairs_added:,} pair entries (window {WINDOW})", flush=True)

    def _fit_all(self, catalog: str) -> dict[str, Any]:
        versions = {SERVED_PCA: self._fit(catalog, None)}
        for formulation in FORMULATIONS + PROBED_ONLY:
            versions[formulation.key] = self._fit(catalog, formulation)
        return versions

    def _fit(self, catalog: str, formulation: Formulation | None) -> dict[str, Any]:
        """Stage one version (each is pinned by number) and return its diagnostics."""
        from google.protobuf.json_format import MessageToDict

        from bench.service_calls import refit
        from protos.enums import TRANSFORM
        from protos.tfllmer.v1 import embedding_service_pb2 as pb

        if formulation is None:
            parameters = pb.FitParameters(dim=DIM, lam=0.0)
        else:
            parameters = pb.FitParameters(
                dim=DIM, retention_budget=formulation.retention,
                graph=pb.GraphOptions(transform=TRANSFORM.number(formulation.transform)),
                whitening=formulation.whitening)
        version = refit(self.address, catalog, parameters, activate=False)
        diagnostics = MessageToDict(version.diagnostics, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
        return {"catalog": catalog, "version": version.version, **diagnostics}
