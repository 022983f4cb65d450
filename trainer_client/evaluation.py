"""Leave-one-out evaluation with full ranking over all items: HR@K and NDCG@K.

Validation ranks the second-last item given the training prefix; test ranks the last item
given the training prefix plus the validation item. Every item of the catalog is a candidate
(no negative sampling, whose metrics disagree with full ranking).

Already-seen items are NOT masked by default (``mask_seen=False``): this is RecBole's
full-sort protocol for sequential models, repeat consumption is legitimate in general, and it
is the setting the TF-LLMER comparison uses. ``mask_seen=True`` removes the user's whole
history (not only the model's truncated input) from the candidates, except the target.

Ties: the target's rank is taken uniformly at random among the items with its score, and the
metrics are the exact expectation of that. Counting only strictly greater scores would reward
a constant scorer with HR = 1, counting ties against the target would punish the popularity
baseline (integer counts, many ties) for an arbitrary order; without ties (float scores of a
trained model) it is the ordinary rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from trainer_client.models.base import SequentialRecommender, right_aligned
from trainer_client.sequences import LeaveOneOutSplit, UserSequences

DEFAULT_KS: tuple[int, ...] = (10, 20)
Stage = Literal["valid", "test"]
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalSet:
    """Per user: the input history and the item to rank (-1: user not evaluated)."""

    histories: UserSequences
    targets: np.ndarray

    def users(self) -> np.ndarray:
        """Users with a target and a non-empty history to condition on."""
        return np.flatnonzero((self.targets >= 0) & (self.histories.lengths > 0))


@dataclass(frozen=True)
class RankingMetrics:
    """Mean metrics over ``n_users``, keyed ``"HR@10"``, ``"NDCG@10"``, ...; with
    ``per_user``, also each evaluated user's values (this rank's users under DDP), for
    bootstrap intervals and per-bucket means."""

    values: dict[str, float]
    n_users: int
    users: np.ndarray | None = None
    per_user: dict[str, np.ndarray] | None = None

    def __getitem__(self, name: str) -> float:
        return self.values[name]


def eval_set(split: LeaveOneOutSplit, stage: Stage) -> EvalSet:
    if stage == "valid":
        return EvalSet(split.train, split.valid_targets)
    if stage == "test":
        return EvalSet(append_items(split.train, split.valid_targets), split.test_targets)
    raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def append_items(sequences: UserSequences, items: np.ndarray) -> UserSequences:
    """Each user's sequence followed by ``items[u]`` (nothing where it is -1)."""
    add = (np.asarray(items) >= 0).astype(np.int64)
    offsets = sequences.offsets + np.concatenate(([0], np.cumsum(add)))
    merged = np.empty(offsets[-1], dtype=np.int64)
    is_new = np.zeros(offsets[-1], dtype=bool)
    is_new[offsets[1:][add == 1] - 1] = True
    merged[is_new] = items[add == 1]
    merged[~is_new] = sequences.items
    return UserSequences(sequences.users, merged, offsets)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many items score strictly higher than the target, and how many other
    items tie with it. ``scores`` is ``(B, n_items)``, ``targets`` ``(B,)``."""
    target_scores = scores.gather(1, targets[:, None])
    greater = (scores > target_scores).sum(1)
    ties = (scores == target_scores).sum(1) - 1
    return greater, ties


def per_user_metrics(
    greater: torch.Tensor, ties: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, torch.Tensor]:
    """HR@K and NDCG@K per user, in expectation over a uniformly random order among ties:
    the 0-based rank is uniform on ``greater .. greater + ties``."""
    top = max(ks)
    positions = torch.arange(top, dtype=torch.float64, device=greater.device)
    discounts = 1.0 / torch.log2(positions + 2.0)
    cumulative = torch.cat([discounts.new_zeros(1), discounts.cumsum(0)])  # sum over r < m
    count = (ties + 1).double()
    first, after_last = greater, greater + ties + 1
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        lo, hi = first.clamp(max=k), after_last.clamp(max=k)
        out[f"HR@{k}"] = (hi - lo).double() / count
        out[f"NDCG@{k}"] = (cumulative[hi] - cumulative[lo]) / count
    return out


def evaluate(
    scorer: Scorer,
    data: EvalSet,
    *,
    max_len: int,
    pad: int,
    ks: Sequence[int] = DEFAULT_KS,
    mask_seen: bool = False,
    batch_size: int = 1024,
    process_group: dist.ProcessGroup | None = None,
    per_user: bool = False,
) -> RankingMetrics:
    """Rank each user's target among all items by ``scorer`` (right-aligned ``(B, max_len)``
    inputs padded with ``pad`` -> ``(B, n_items)`` scores). Under ``torch.distributed`` each
    rank scores every world-size-th user and the sums are all-reduced, so all ranks return
    the same metrics."""
    rank, world = _rank_and_world(process_group)
    users = data.users()[rank::world]
    sums: dict[str, torch.Tensor] = {}
    pieces: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        inputs = torch.from_numpy(right_aligned(data.histories, batch, max_len, pad))
        scores = scorer(inputs).float()  # ranked where they were computed (CPU or GPU)
        targets = torch.from_numpy(data.targets[batch]).to(scores.device)
        if mask_seen:
            scores = _mask_history(scores, data.histories, batch, targets)
        for name, values in per_user_metrics(*target_ranks(scores, targets), ks).items():
            sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64)) + values.sum().cpu()
            if per_user:
                pieces.setdefault(name, []).append(values.cpu().numpy())
    names = [f"{metric}@{k}" for k in ks for metric in ("HR", "NDCG")]
    totals = torch.stack([sums.get(name, torch.zeros((), dtype=torch.float64)) for name in names])
    totals = torch.cat([totals, torch.tensor([float(len(users))], dtype=torch.float64)])
    if world > 1:
        dist.all_reduce(totals, group=process_group)
    n_users = int(totals[-1])
    means = {name: float(totals[i]) / max(n_users, 1) for i, name in enumerate(names)}
    if not per_user:
        return RankingMetrics(means, n_users)
    arrays = {name: np.concatenate(pieces[name]) if pieces.get(name) else np.zeros(0)
              for name in names}
    return RankingMetrics(means, n_users, users, arrays)


def evaluate_model(
    model: SequentialRecommender,
    data: EvalSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    mask_seen: bool = False,
    batch_size: int = 1024,
    process_group: dist.ProcessGroup | None = None,
    per_user: bool = False,
) -> RankingMetrics:
    """``evaluate`` with the model's next-item scores (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        return evaluate(
            model.score_next, data, max_len=model.max_len, pad=model.padding_idx, ks=ks,
            mask_seen=mask_seen, batch_size=batch_size, process_group=process_group,
            per_user=per_user,
        )
    finally:
        model.train(was_training)


def popularity_scores(train: UserSequences, n_items: int) -> torch.Tensor:
    """Training interaction count of each item: the non-personalized reference."""
    return torch.from_numpy(np.bincount(train.items, minlength=n_items).astype(np.float32))


def evaluate_popularity(
    split: LeaveOneOutSplit,
    n_items: int,
    stage: Stage,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    mask_seen: bool = False,
) -> RankingMetrics:
    counts = popularity_scores(split.train, n_items)
    return evaluate(
        lambda inputs: counts.expand(len(inputs), -1),
        eval_set(split, stage),
        max_len=1,
        pad=n_items,
        ks=ks,
        mask_seen=mask_seen,
    )


ZERO_SHOT_HISTORY = 5


def evaluate_zero_shot(
    vectors: np.ndarray,
    split: LeaveOneOutSplit,
    stage: Stage,
    *,
    last: int = ZERO_SHOT_HISTORY,
    ks: Sequence[int] = DEFAULT_KS,
    per_user: bool = False,
) -> RankingMetrics:
    """Next-item ranking with no training at all: candidates by cosine to the mean of the
    unit vectors of the user's ``last`` most recent history items (the history of the
    stage, as for a trained model). ``last = 1`` is what ``SimilarItems`` of the item a user
    just consumed returns. The user's history is masked (a retrieval probe would otherwise
    return the items it was given)."""
    unit = torch.nn.functional.normalize(torch.from_numpy(np.asarray(vectors, np.float32)), dim=1)
    padded = torch.cat([unit, unit.new_zeros(1, unit.shape[1])])  # pad row: zero vector

    def scorer(inputs: torch.Tensor) -> torch.Tensor:
        query = torch.nn.functional.normalize(padded[inputs].sum(1), dim=1)
        return query @ unit.T

    return evaluate(scorer, eval_set(split, stage), max_len=last, pad=len(unit), ks=ks,
                    mask_seen=True, per_user=per_user)


def tail_items(train: UserSequences, n_items: int, share: float = 0.5) -> np.ndarray:
    """Mask of the least popular ``share`` of items by training count (ties: lower row
    first counts as less popular), the "tail"; the rest is the "head"."""
    counts = np.bincount(train.items, minlength=n_items)[:n_items]
    order = np.lexsort((np.arange(n_items), counts))
    tail = np.zeros(n_items, dtype=bool)
    tail[order[: int(round(share * n_items))]] = True
    return tail


def subset_mean(metrics: RankingMetrics, targets: np.ndarray, items: np.ndarray,
                name: str = "NDCG@10") -> tuple[float, int]:
    """Mean of a per-user metric over users whose target lies in the ``items`` mask, and
    how many such users there are (NaN, 0 when none)."""
    if metrics.users is None or metrics.per_user is None:
        raise ValueError("subset means need metrics evaluated with per_user=True")
    chosen = items[targets[metrics.users]]
    if not chosen.any():
        return float("nan"), 0
    return float(metrics.per_user[name][chosen].mean()), int(chosen.sum())


def epochs_to_quality(valid_curve: Sequence[dict[str, float]], seconds: Sequence[float],
                      threshold: float, metric: str = "NDCG@10"
                      ) -> tuple[int | None, float | None]:
    """The first validated epoch whose ``metric`` reaches ``threshold`` and the wall seconds
    until then (``seconds`` runs parallel to ``valid_curve``); (None, None) if none does."""
    for point, elapsed in zip(valid_curve, seconds, strict=True):
        if point[metric] >= threshold:
            return int(point["epoch"]), float(elapsed)
    return None, None


def _mask_history(
    scores: torch.Tensor, histories: UserSequences, batch: np.ndarray, targets: torch.Tensor
) -> torch.Tensor:
    lengths = histories.lengths[batch]
    first_in_concat = np.cumsum(lengths) - lengths
    flat = np.arange(lengths.sum()) + np.repeat(histories.offsets[batch] - first_in_concat, lengths)
    rows = torch.from_numpy(np.repeat(np.arange(len(batch)), lengths)).to(scores.device)
    items = torch.from_numpy(histories.items[flat]).to(scores.device)
    target_scores = scores.gather(1, targets[:, None])
    scores = scores.index_put((rows, items), scores.new_tensor(-torch.inf))
    return scores.scatter(1, targets[:, None], target_scores)


def _rank_and_world(process_group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(process_group), dist.get_world_size(process_group)
