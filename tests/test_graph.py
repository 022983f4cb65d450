"""Graph transforms and the normalized Laplacian's handling of isolated items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from server.recpca import GraphOptions, build_graph
from tests.recpca_cases import random_counts


def counts_of(dense: list[list[float]]) -> sp.csr_matrix:
    return sp.csr_matrix(np.asarray(dense, dtype=float))


def test_normalized_adjacency_is_d_to_the_minus_half_a_d_to_the_minus_half() -> None:
    counts = counts_of([[0, 2, 0], [2, 0, 6], [0, 6, 0]])
    graph = build_graph(counts, 3)
    degrees = np.array([2.0, 8.0, 6.0])
    expected = counts.toarray() / np.sqrt(np.outer(degrees, degrees))
    np.testing.assert_allclose(graph.adjacency.toarray(), expected)
    assert graph.connected.all()
    assert graph.n_edges == 2


def test_isolated_items_get_zero_rows_and_are_marked_disconnected() -> None:
    counts = counts_of([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    graph = build_graph(counts, 4)
    assert graph.connected.tolist() == [True, True, False, False]
    assert graph.adjacency[2].nnz == 0 and graph.adjacency[3].nnz == 0


def test_log1p_transform_compresses_counts() -> None:
    counts = counts_of([[0, 1, 99], [1, 0, 0], [99, 0, 0]])
    raw_graph = build_graph(counts, 3)
    log_graph = build_graph(counts, 3, GraphOptions("log1p"))
    # With log1p the heavy pair no longer dominates item 0's neighbourhood as much.
    assert log_graph.adjacency[0, 1] > raw_graph.adjacency[0, 1]


def test_top_k_keeps_each_rows_strongest_then_symmetrizes() -> None:
    counts = counts_of([
        [0, 5, 4, 1],
        [5, 0, 0, 0],
        [4, 0, 0, 3],
        [1, 0, 3, 0],
    ])
    graph = build_graph(counts, 4, GraphOptions("topk", top_k=1))
    kept = graph.adjacency.toarray() > 0
    # Row tops: 0→1, 1→0, 2→0, 3→2; union keeps {0-1, 0-2, 2-3}, drops 0-3.
    expected = np.zeros((4, 4), dtype=bool)
    for i, j in [(0, 1), (0, 2), (2, 3)]:
        expected[i, j] = expected[j, i] = True
    assert np.array_equal(kept, expected)


def test_top_k_ties_keep_the_lower_column() -> None:
    counts = counts_of([[0, 2, 2], [2, 0, 0], [2, 0, 0]])
    graph = build_graph(counts, 3, GraphOptions("topk", top_k=1))
    # Row 0 keeps column 1 (the tie goes to the lower index); rows 1 and 2 keep item 0.
    assert graph.adjacency[0, 1] > 0 and graph.adjacency[0, 2] > 0
    assert graph.n_edges == 2


def test_every_transform_yields_a_symmetric_graph() -> None:
    counts = random_counts(np.random.default_rng(0), 60, 400, isolated=3)
    for options in (GraphOptions(), GraphOptions("log1p"), GraphOptions("topk", top_k=3)):
        adjacency = build_graph(counts, 60, options).adjacency
        assert abs(adjacency - adjacency.T).max() < 1e-15
        assert adjacency.diagonal().sum() == 0
