"""The cold-start split (pure): a seeded share of the catalog leaves training entirely.

Cold items are removed from every training sequence, so they feed neither the backbone nor
the pushed co-occurrence counts, and they are ingested into the service only after every
version was fitted, so the served projection never saw their raw vectors either: they are
served exactly as a new item would be. Validation and test targets are kept as they are;
cold-start quality is NDCG@10 over the users whose test target is cold.
"""

from __future__ import annotations

import numpy as np

from trainer_client.sequences import LeaveOneOutSplit, UserSequences

DEFAULT_COLD_FRACTION = 0.15


def choose_cold(item_ids: list[str], fraction: float, seed: int) -> set[str]:
    """``round(fraction × n)`` ids drawn without replacement by a seeded generator."""
    if not 0 < fraction < 1:
        raise ValueError(f"cold fraction must be in (0, 1), got {fraction}")
    count = int(round(fraction * len(item_ids)))
    picked = np.random.default_rng(seed).choice(len(item_ids), count, replace=False)
    return {item_ids[i] for i in picked}


def without_items(sequences: UserSequences, drop: np.ndarray) -> UserSequences:
    """Each sequence with the items of the ``drop`` mask (over rows) removed, order kept."""
    keep = ~drop[sequences.items]
    kept_before = np.concatenate(([0], np.cumsum(keep))).astype(np.int64)
    offsets = kept_before[sequences.offsets]
    return UserSequences(sequences.users, sequences.items[keep], offsets)


def cold_split(split: LeaveOneOutSplit, cold: np.ndarray) -> LeaveOneOutSplit:
    """``split`` with the cold rows removed from training; targets unchanged."""
    return LeaveOneOutSplit(without_items(split.train, cold), split.valid_targets,
                            split.test_targets)
