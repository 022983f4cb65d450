"""The backbone training loop: full-softmax next-item training, early stopping on validation
NDCG@10, test on the best state; results as JSON and loss curves as PNG.

Each epoch visits every user once with their most recent ``max_len + 1`` training items
(right-aligned): inputs are items ``0..L-1``, targets items ``1..L``, and every position is a
next-item prediction. Under ``torch.distributed`` (``torchrun``; gloo on CPU, NCCL on GPU)
each rank trains on every world-size-th user of the shuffled order and DDP averages the
gradients, so the global batch is ``batch_size x world_size``; validation is sharded and
all-reduced, so every rank takes the same early-stopping decisions. Batches go to the device
the model lives on (``model.to("cuda")`` before ``train`` trains on the GPU).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from trainer_client.cold_start import seen_items
from trainer_client.evaluation import DEFAULT_KS, eval_set, evaluate_model
from trainer_client.models.base import SequentialRecommender, right_aligned
from trainer_client.sequences import LeaveOneOutSplit

SELECTION_METRIC = "NDCG@10"


@dataclass(frozen=True)
class TrainConfig:
    # An upper bound: early stopping usually ends a run well before it.
    epochs: int = 200
    # Users per step and rank; lr and batch as in the SASRec paper (Adam, 1e-3, 128).
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Validate every k epochs; stop after `patience` validations without a new best NDCG@10.
    eval_every: int = 1
    patience: int = 10
    seed: int = 0
    ks: tuple[int, ...] = DEFAULT_KS
    # See trainer_client.evaluation: seen items stay candidates by default (RecBole sequential).
    mask_seen: bool = False
    eval_batch_size: int = 1024
    progress: bool = True
    # Items that never occur in training (new in the catalog, or only in valid/test):
    # "auto" turns the cold-start path on when there are any (excluded from the training
    # softmax, scored through a map from served vectors; see models.item_table), "off"
    # trains them as plain negatives.
    cold_start: Literal["auto", "off"] = "auto"

    def verify(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.cold_start not in ("auto", "off"):
            raise ValueError(f"cold_start must be 'auto' or 'off', got {self.cold_start!r}")
        if 10 not in self.ks:
            raise ValueError(f"ks must contain 10 (model selection uses {SELECTION_METRIC})")


@dataclass
class TrainResult:
    """One run: mean training loss per epoch, validation metrics per evaluated epoch, the best
    epoch by validation NDCG@10 and the test metrics of that state."""

    losses: list[float] = field(default_factory=list)
    valid_curve: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    train_time_per_epoch_s: float = 0.0
    # Wall seconds from the start of ``train`` to each point of ``valid_curve``.
    valid_seconds: list[float] = field(default_factory=list)
    # Items the cold-start path scored from served vectors (0: path off or not needed).
    cold_items: int = 0
    # Per test user (row index): HR@10 and NDCG@10, for intervals and bucket means (not
    # under DDP, where each rank evaluates a share of the users).
    test_users: list[int] = field(default_factory=list)
    test_per_user: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(dataclasses.asdict(self), indent=indent)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; call it before building the model for equal inits."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: SequentialRecommender,
    split: LeaveOneOutSplit,
    config: TrainConfig | None = None,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``split.train``; it ends holding its best validation state."""
    config = config or TrainConfig()
    config.verify()
    started = time.perf_counter()
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(process_group) if distributed else 0
    world = dist.get_world_size(process_group) if distributed else 1
    torch.manual_seed(config.seed + rank)  # dropout masks differ per rank, reproducibly
    module: SequentialRecommender | DistributedDataParallel = model
    if world > 1:  # DDP broadcasts rank 0's weights; no buffer changes during training
        module = DistributedDataParallel(model, process_group=process_group,
                                         broadcast_buffers=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    users = np.flatnonzero(split.train.lengths >= 2)  # at least one (input, target) pair
    valid = eval_set(split, "valid")
    eval_options: dict[str, Any] = dict(ks=config.ks, mask_seen=config.mask_seen,
                        batch_size=config.eval_batch_size, process_group=process_group)
    result = TrainResult()
    seen = seen_items(split.train.items, model.n_items)
    if config.cold_start == "auto" and not seen.all():
        model.item_table.restrict_to_seen(seen)
        result.cold_items = int((~seen).sum())
    best_score, best_state, stale, train_seconds = -1.0, _snapshot(model), 0, 0.0
    epochs = tqdm(range(1, config.epochs + 1), desc=type(model).__name__, unit="epoch",
                  disable=not config.progress or rank != 0)
    for epoch in epochs:
        epoch_start = time.perf_counter()
        order = _shard(np.random.default_rng([config.seed, epoch]).permutation(users), rank, world)
        result.losses.append(_train_epoch(module, model, split, order, optimizer, config,
                                          world, process_group))
        train_seconds += time.perf_counter() - epoch_start
        if epoch % config.eval_every and epoch != config.epochs:
            epochs.set_postfix(loss=f"{result.losses[-1]:.4f}")
            continue
        metrics = evaluate_model(model, valid, **eval_options).values
        result.valid_curve.append({"epoch": epoch, **metrics})
        result.valid_seconds.append(time.perf_counter() - started)
        epochs.set_postfix(loss=f"{result.losses[-1]:.4f}",
                           ndcg10=f"{metrics[SELECTION_METRIC]:.4f}")
        if metrics[SELECTION_METRIC] > best_score:
            best_score, best_state, stale = metrics[SELECTION_METRIC], _snapshot(model), 0
            result.best_epoch, result.best_valid = epoch, metrics
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    test = evaluate_model(model, eval_set(split, "test"), **eval_options,
                          per_user=world == 1)  # under DDP each rank holds only its users
    result.test = test.values
    if test.users is not None and test.per_user is not None:
        result.test_users = test.users.tolist()
        result.test_per_user = {name: test.per_user[name].tolist()
                                for name in ("HR@10", "NDCG@10")}
    result.train_time_per_epoch_s = train_seconds / len(result.losses)
    result.wall_time_s = time.perf_counter() - started
    return result


def _train_epoch(
    module: torch.nn.Module,
    model: SequentialRecommender,
    split: LeaveOneOutSplit,
    order: np.ndarray,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    world: int,
    process_group: dist.ProcessGroup | None,
) -> float:
    """One pass over ``order``; returns the mean loss per predicted position (all ranks)."""
    model.train()
    total = torch.zeros(2, dtype=torch.float64)  # loss x positions, positions
    for start in range(0, len(order), config.batch_size):
        window = torch.from_numpy(right_aligned(
            split.train, order[start : start + config.batch_size], model.max_len + 1,
            model.padding_idx,
        )).to(model.device)
        inputs, targets = window[:, :-1], window[:, 1:]
        loss = module(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        positions = int((targets != model.padding_idx).sum())
        total += torch.tensor([loss.item() * positions, positions], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(total, group=process_group)
    return float(total[0] / total[1])


def _shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Every world-size-th user from ``rank``; wraps around so that all ranks get the same
    number of users, since DDP needs the same number of steps on every rank."""
    if world == 1:
        return order
    padded = np.concatenate([order, order[: (-len(order)) % world]])
    return padded[rank::world]


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def save_loss_curve(results: Mapping[str, TrainResult], path: str | Path) -> Path:
    """PNG with the training loss per epoch (left) and validation NDCG@10 (right), one curve
    per labelled run."""
    import matplotlib

    matplotlib.use("Agg")  # headless workers; no display needed
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (loss_axis, valid_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for label, result in results.items():
        loss_axis.plot(range(1, len(result.losses) + 1), result.losses, label=label)
        valid_axis.plot([point["epoch"] for point in result.valid_curve],
                        [point[SELECTION_METRIC] for point in result.valid_curve], label=label)
    loss_axis.set(xlabel="epoch", ylabel="mean training loss (full-softmax CE)",
                  title="Training loss")
    valid_axis.set(xlabel="epoch", ylabel=f"validation {SELECTION_METRIC}", title="Validation")
    for axis in (loss_axis, valid_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
