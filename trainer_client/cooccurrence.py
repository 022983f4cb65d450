"""Count item co-occurrences inside a sliding window over training sequences.

Two items co-occur when they appear at most ``window`` positions apart in one user's
sequence; each such pair adds 1 (or ``1/distance``) to ``C[i, j]`` and ``C[j, i]``. The
counting is vectorized per offset (no Python loop over users or positions), so a worker
counts its shard at millions of pairs per second. Feed it training prefixes only: counting
validation or test items would leak the targets into the projection.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from trainer_client.sequences import UserSequences

Weighting = Literal["count", "inverse_distance"]


def window_pairs(
    sequences: UserSequences, window: int, weighting: Weighting = "count"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All within-window position pairs as ``(lo, hi, weight)`` with ``lo < hi`` item rows.

    Pairs of an item with itself (a repeated consumption) are skipped: the graph has no
    self-loops.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if weighting not in ("count", "inverse_distance"):
        raise ValueError(f"weighting must be 'count' or 'inverse_distance', got {weighting!r}")
    items = sequences.items
    owner = np.repeat(np.arange(len(sequences), dtype=np.int64), sequences.lengths)
    los, his, weights = [], [], []
    for offset in range(1, window + 1):
        if offset >= len(items):
            break
        left, right = items[:-offset], items[offset:]
        keep = (owner[:-offset] == owner[offset:]) & (left != right)
        left, right = left[keep], right[keep]
        los.append(np.minimum(left, right))
        his.append(np.maximum(left, right))
        weight = 1.0 if weighting == "count" else 1.0 / offset
        weights.append(np.full(len(left), weight))
    if not los:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    return np.concatenate(los), np.concatenate(his), np.concatenate(weights)


def count_cooccurrences(
    sequences: UserSequences,
    n_items: int,
    window: int = 3,
    weighting: Weighting = "count",
) -> sp.csr_matrix:
    """Symmetric ``n_items × n_items`` float64 counts with a zero diagonal."""
    items = sequences.items
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        bad = items[(items < 0) | (items >= n_items)][0]
        raise ValueError(f"item row {bad} out of range for a catalog of {n_items} items")
    lo, hi, weight = window_pairs(sequences, window, weighting)
    upper = sp.csr_matrix((weight, (lo, hi)), shape=(n_items, n_items))
    upper.sum_duplicates()
    return (upper + upper.T).tocsr()
