"""Worker-side counting and server-side merging of co-occurrence counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.cooccurrence_merge import counts_from_pairs
from trainer_client.cooccurrence import count_cooccurrences
from trainer_client.sequences import UserSequences


def sequences_of(lists: list[list[int]]) -> UserSequences:
    lengths = [len(items) for items in lists]
    return UserSequences(
        users=[f"u{i}" for i in range(len(lists))],
        items=np.asarray([item for items in lists for item in items], dtype=np.int64),
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
    )


def naive_counts(lists: list[list[int]], n: int, window: int, inverse: bool) -> np.ndarray:
    dense = np.zeros((n, n))
    for items in lists:
        for i, left in enumerate(items):
            for distance in range(1, window + 1):
                if i + distance < len(items) and items[i + distance] != left:
                    weight = 1.0 / distance if inverse else 1.0
                    dense[left, items[i + distance]] += weight
                    dense[items[i + distance], left] += weight
    return dense


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 7), max_size=12), max_size=6),
    st.integers(1, 5),
    st.booleans(),
)
def test_counts_equal_a_naive_double_loop(
    lists: list[list[int]], window: int, inverse: bool
) -> None:
    weighting = "inverse_distance" if inverse else "count"
    counts = count_cooccurrences(sequences_of(lists), 8, window, weighting)
    np.testing.assert_allclose(counts.toarray(), naive_counts(lists, 8, window, inverse))


def test_pairs_never_cross_user_boundaries() -> None:
    counts = count_cooccurrences(sequences_of([[0, 1], [2, 3]]), 4, window=3)
    assert counts[1, 2] == 0 and counts[0, 3] == 0
    assert counts[0, 1] == 1 and counts[2, 3] == 1


def test_counting_rejects_item_rows_outside_the_catalog() -> None:
    with pytest.raises(ValueError, match="item row 9 out of range for a catalog of 5"):
        count_cooccurrences(sequences_of([[0, 9]]), 5)


def test_counting_rejects_a_window_below_one() -> None:
    with pytest.raises(ValueError, match="window must be >= 1"):
        count_cooccurrences(sequences_of([[0, 1]]), 2, window=0)


def test_shard_counts_merge_to_the_whole() -> None:
    lists = [[0, 1, 2, 3], [3, 2, 4], [1, 4, 0, 2], [2, 2, 1]]
    whole = count_cooccurrences(sequences_of(lists), 5)
    shards = [count_cooccurrences(sequences_of(part), 5) for part in (lists[:1], lists[1:])]
    assert ((shards[0] + shards[1]) != whole).nnz == 0


def test_pairs_become_symmetric_counts() -> None:
    rows, cols = np.array([0, 0, 2]), np.array([1, 1, 0])
    counts = counts_from_pairs(rows, cols, np.array([1.0, 2.0, 0.5]), 3)
    assert counts[0, 1] == counts[1, 0] == 3.0
    assert counts[0, 2] == counts[2, 0] == 0.5


@pytest.mark.parametrize(
    ("rows", "cols", "weights", "message"),
    [
        ([0, 5], [1, 2], [1.0, 1.0], "an item row is outside the catalog's 3"),
        ([0, 1], [-1, 2], [1.0, 1.0], "an item row is outside the catalog's 3"),
        ([1], [1], [1.0], "a pair joins an item to itself"),
        ([0], [1], [np.nan], "weights must be finite and positive"),
        ([0], [1], [-2.0], "weights must be finite and positive"),
        ([0.5], [1], [1.0], "integer item rows"),
        ([0, 1], [1], [1.0], "equally long"),
    ],
)
def test_bad_pairs_are_rejected(rows, cols, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        counts_from_pairs(np.array(rows), np.array(cols), np.array(weights), 3)
