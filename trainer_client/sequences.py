"""Ragged user sequences stored flat, and the leave-one-out split.

One flat item array plus offsets keeps millions of interactions in two numpy arrays, so
counting and batching stay vectorized instead of looping over Python lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UserSequences:
    """``items[offsets[u]:offsets[u + 1]]`` is user ``u``'s time-ordered item rows."""

    users: list[str]
    items: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) != len(self.users) + 1:
            raise ValueError("offsets must have one entry per user plus one")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.items):
            raise ValueError("offsets must start at 0 and end at len(items)")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def truncated(self, drop_last: int) -> UserSequences:
        """Each sequence without its last ``drop_last`` items (empty if it is shorter)."""
        if drop_last < 0:
            raise ValueError("drop_last must be >= 0")
        lengths = np.maximum(self.lengths - drop_last, 0)
        keep = np.repeat(self.offsets[:-1], lengths) + _ranks_within(lengths)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        return UserSequences(self.users, self.items[keep], offsets)

    def last(self, from_end: int) -> np.ndarray:
        """Per user, the item ``from_end`` positions from the end (1 = last); -1 if too short."""
        lengths = self.lengths
        out = np.full(len(self), -1, dtype=np.int64)
        ok = lengths >= from_end
        out[ok] = self.items[self.offsets[1:][ok] - from_end]
        return out


def _ranks_within(lengths: np.ndarray) -> np.ndarray:
    """``[0..l0-1, 0..l1-1, ...]`` for the given segment lengths."""
    total = int(lengths.sum())
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Last item of each user is the test target, the second last the validation target;
    only ``train`` may feed co-occurrence counts or training."""

    train: UserSequences
    valid_targets: np.ndarray
    test_targets: np.ndarray


def leave_one_out(sequences: UserSequences) -> LeaveOneOutSplit:
    return LeaveOneOutSplit(
        train=sequences.truncated(2),
        valid_targets=sequences.last(2),
        test_targets=sequences.last(1),
    )
