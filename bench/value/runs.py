"""Stage 2 of the value benchmark: training runs in this process, one after another, each
appended to a JSONL log as it finishes, so an interrupted benchmark resumes where it stopped
and a time limit leaves every finished run usable."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.quality.prepare import PreparedData
from bench.quality.runs import read_records
from bench.quality.variants import BY_NAME
from bench.value.design import DIM


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


class Runner:
    """Trains specs not yet in the log (for the same budget), one thread per run."""

    def __init__(self, work: Path, budget: Budget, device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(1)  # measured: on 2 shared cores one thread per run is fastest
        self.work, self.budget, self.device = work, budget, device
        self.log_path = work / "runs.jsonl"
        self.done = {key: record for key, record in read_log(self.log_path)
                     if record["budget"] == asdict(budget)}
        self._data: dict[str, PreparedData] = {}

    def data(self, split: str) -> PreparedData:
        if split not in self._data:
            self._data[split] = PreparedData.load(self.work / split)
        return self._data[split]

    def run(self, spec: RunSpec) -> dict[str, Any]:
        if spec.key in self.done:
            return self.done[spec.key]
        started = time.strftime("%H:%M:%S")
        print(f"{started} start {spec.describe()}", flush=True)
        record = {"spec": asdict(spec), "budget": asdict(self.budget),
                  **self._train(spec)}
        self.done[spec.key] = record
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
