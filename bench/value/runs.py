"""Stage 2 of the value benchmark: training runs in this process, one after another, each
appended to a JSONL log as it finishes, so an interrupted benchmark resumes where it stopped
and a time limit leaves every finished run usable.

The log lives beside the results (``bench/results/value_<name>_runs.jsonl``, committed), so
runs add up across sessions and machines: each record carries the fingerprint of the prepared
split it trained on, and only records whose fingerprint matches the prepared data of this run
count (stage ``prepare`` is deterministic: the same data, encoder and fits give the same bytes,
and anything else starts over instead of mixing runs of different tables)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.prepare import PreparedData
from bench.quality.runs import read_records
from bench.quality.variants import BY_NAME
from bench.value.design import COLD, DIM, MAIN


@dataclass(frozen=True)
class RunSpec:
    variant: str
    split: str  # design.MAIN or design.COLD
    table: str | None  # prepared table key; None for the ID variants
    lr: float
    temperature: float | None  # None: normalization off
    seed: int
    phase: str  # "tune" (a choice on validation) or "final" (reported)

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        table = f" [{self.table}]" if self.table and self.table.startswith("recpca") else ""
        return f"{self.phase} {self.split} {self.variant}{table} seed={self.seed}"


@dataclass(frozen=True)
class Budget:
    epochs: int
    patience: int
    max_len: int = 50


def fingerprint(data: PreparedData) -> str:
    """What a run trained on: the split's sequences and targets and every item table."""
    digest = hashlib.sha256()
    split = data.split
    for array in (split.train.items, split.train.offsets, split.valid_targets,
                  split.test_targets, *(data.tables[key] for key in sorted(data.tables))):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(sorted(data.tables)).encode())
    return digest.hexdigest()[:16]


def prepared_splits(work: Path) -> dict[str, PreparedData]:
    return {split: PreparedData.load(work / split) for split in (MAIN, COLD)
            if (work / split).is_dir()}


def fingerprints(data: dict[str, PreparedData]) -> dict[str, str]:
    return {split: fingerprint(prepared) for split, prepared in data.items()}


def matching_records(log_path: Path, budget: Budget, prints: dict[str, str]
                     ) -> dict[str, dict[str, Any]]:
    """The log's records of this budget that trained on the prepared splits whose
    fingerprints are ``prints``, by spec key."""
    return {key: record for key, record in read_log(log_path)
            if record["budget"] == asdict(budget)
            and record.get("prepared") == prints.get(record["spec"]["split"])}


class Runner:
    """Trains specs not yet in the log (for the same budget and prepared data), one thread
    per run."""

    def __init__(self, work: Path, log_path: Path, budget: Budget, device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(1)  # measured: on 2 shared cores one thread per run is fastest
        self.work, self.log_path, self.budget, self.device = work, log_path, budget, device
        self._data = prepared_splits(work)
        self._prints = fingerprints(self._data)
        self.done = matching_records(log_path, budget, self._prints)

    def data(self, split: str) -> PreparedData:
        return self._data[split]

    def run(self, spec: RunSpec) -> dict[str, Any]:
        if spec.key in self.done:
            return self.done[spec.key]
        started = time.strftime("%H:%M:%S")
        print(f"{started} start {spec.describe()}", flush=True)
        record = {"spec": asdict(spec), "budget": asdict(self.budget),
                  "prepared": self._prints[spec.split], **self._train(spec)}
        self.done[spec.key] = record
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        print(f"{time.strftime('%H:%M:%S')} done  {spec.describe()}: best epoch "
              f"{record['best_epoch']}/{len(record['losses'])}, valid NDCG@10 "
              f"{record['best_valid']['NDCG@10']:.4f}, test {record['test']['NDCG@10']:.4f}, "
              f"{record['wall_time_s']:.0f} s", flush=True)
        return record

    def _train(self, spec: RunSpec) -> dict[str, Any]:
        from trainer_client.models.item_table import ItemTableConfig
        from trainer_client.models.registry import build_model
        from trainer_client.training import TrainConfig, seed_everything, train

        data = self.data(spec.split)
        variant = BY_NAME[spec.variant]
        seed_everything(spec.seed)
        model = build_model(
            "sasrec", data.n_items, DIM, {"max_len": self.budget.max_len},
            table=ItemTableConfig("id" if spec.table is None else "init", variant.normalize,
                                  spec.temperature or 0.1),
            item_vectors=None if spec.table is None else data.tables[spec.table],
        ).to(self.device)
        config = TrainConfig(epochs=self.budget.epochs, patience=self.budget.patience,
                             lr=spec.lr, seed=spec.seed, progress=False)
        return asdict(train(model, data.split, config))


def read_log(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for record in read_records(path):
        yield RunSpec(**record["spec"]).key, record
