"""Token-budget batching: group texts so that each batch's padded size stays under a budget.

A batch costs about ``len(batch) × longest text in it`` tokens once padded. Sorting by length
and cutting greedily keeps short titles in large batches and long descriptions in small
ones, so one long text never forces a whole batch of padding or an out-of-memory error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray, budget: int, max_batch: int | None = None
) -> list[np.ndarray]:
    """Indices of the texts per batch, longest texts first; every text is in exactly one
    batch, and a text longer than the budget gets a batch of its own."""
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]  # sorted descending: the first is the longest
        size = max(1, budget // longest)
        if max_batch is not None:
            size = min(size, max_batch)
        batches.append(order[start : start + size])
        start += size
    return batches


def estimate_tokens(text: str) -> int:
    """Rough token count for backends whose tokenizer is remote (about 4 characters each)."""
    return len(text) // 4 + 1
