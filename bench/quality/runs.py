"""Stage 2 of the quality benchmark: training runs, in a pool of worker processes.

A run is one (variant, item table, lr, τ, seed) setting of SASRec trained with early stopping
on validation NDCG@10 (``trainer_client.training``). Finished runs are appended to a JSONL
log, so an interrupted benchmark resumes where it stopped and partial results survive a
time limit. Several runs share one GPU well (each is small), so the pool size is a flag.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.quality.prepare import DIM, PreparedData
from bench.quality.variants import BY_NAME


@dataclass(frozen=True)
class RunSpec:
    variant: str
    table: str | None  # prepared table key; None for the ID variants
    lr: float
    temperature: float | None  # None: normalization off
    seed: int
    phase: str  # "tune" (selection on validation) or "final" (reported seeds)

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class TrainingBudget:
    epochs: int
    patience: int
    backbone: str = "sasrec"
    max_len: int = 50


_worker_state: dict[str, Any] = {}


def _init_worker(prepared_dir: str, device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker_state["data"] = PreparedData.load(Path(prepared_dir))
    _worker_state["device"] = device


def train_one(spec: RunSpec, budget: TrainingBudget) -> dict[str, Any]:
    """Train one run in this worker process; returns the spec and its TrainResult fields."""
    from trainer_client.models.item_table import ItemTableConfig
    from trainer_client.models.registry import build_model
    from trainer_client.training import TrainConfig, seed_everything, train

    data: PreparedData = _worker_state["data"]
    variant = BY_NAME[spec.variant]
    seed_everything(spec.seed)
    model = build_model(
        budget.backbone, data.n_items, DIM, {"max_len": budget.max_len},
        table=ItemTableConfig("id" if spec.table is None else "init", variant.normalize,
                              spec.temperature or 0.1),
        item_vectors=None if spec.table is None else data.tables[spec.table],
    ).to(_worker_state["device"])
    config = TrainConfig(epochs=budget.epochs, patience=budget.patience, lr=spec.lr,
                         seed=spec.seed, progress=False)
    result = train(model, data.split, config)
    return {"spec": asdict(spec), "budget": asdict(budget), **asdict(result)}


class RunPool:
    """Runs specs in ``jobs`` processes, skipping those the log holds for the same budget."""

    def __init__(self, prepared_dir: Path, log_path: Path, budget: TrainingBudget,
                 device: str, jobs: int) -> None:
        self.log_path = log_path
        self.budget = budget
        self.done: dict[str, dict[str, Any]] = {
            key: record for key, record in _read_log(log_path)
            if record.get("budget") == asdict(budget)
        }
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self._executor = ProcessPoolExecutor(
            jobs, mp_context=get_context("spawn"), initializer=_init_worker,
            initargs=(str(prepared_dir), device, threads),
        )  # fmt: skip

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor.shutdown(cancel_futures=True)

    def run(self, specs: Iterable[RunSpec]) -> dict[str, dict[str, Any]]:
        """Results of ``specs`` keyed by spec key, training those not logged yet."""
        specs = list(dict.fromkeys(specs))
        pending: dict[Future, RunSpec] = {
            self._executor.submit(train_one, spec, self.budget): spec
            for spec in specs if spec.key not in self.done
        }
        total, finished = len(pending), 0
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                spec = pending.pop(future)
                record = future.result()
                self.done[spec.key] = record
                with self.log_path.open("a") as log:
                    log.write(json.dumps(record) + "\n")
                finished += 1
                print(f"[{finished}/{total}] {_describe(spec)}: best epoch "
                      f"{record['best_epoch']}, valid NDCG@10 "
                      f"{record['best_valid'].get('NDCG@10', 0):.4f}, "
                      f"{record['wall_time_s']:.0f} s", flush=True)
        return {spec.key: self.done[spec.key] for spec in specs}


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL run log (none if it does not exist yet)."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: that run trains again
            continue


def _read_log(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for record in read_records(path):
        yield RunSpec(**record["spec"]).key, record


def _describe(spec: RunSpec) -> str:
    tau = "" if spec.temperature is None else f" τ={spec.temperature:g}"
    table = f" [{spec.table}]" if spec.table and spec.table.startswith("recpca") else ""
    return f"{spec.phase} {spec.variant}{table} lr={spec.lr:g}{tau} seed={spec.seed}"
