"""A float16 raw matrix (how a catalog may store its vectors) gives the moments of its float32
conversion, computed without converting the whole matrix (column strips for the graph term)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import server.recpca.moments as moments
from server.recpca.graph import build_graph
from server.recpca.moments import compute_moments


def test_float16_input_matches_its_float32_conversion(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    n, dim = 3000, 24
    raw = (rng.standard_normal((n, dim)) + 0.5).astype(np.float16)
    pairs = rng.integers(0, n, size=(2, 20_000))
    pairs = pairs[:, pairs[0] != pairs[1]]
    upper = sp.csr_matrix((np.ones(pairs.shape[1]), (pairs.min(0), pairs.max(0))), shape=(n, n))
    upper.sum_duplicates()
    graph = build_graph((upper + upper.T).tocsr(), n)
    # Strips of 5 columns: several strips and a ragged last one.
    monkeypatch.setattr(moments, "STRIP_BYTES", 5 * n * 4)
    narrow = compute_moments(raw, graph, block_rows=700, backend="numpy")
    wide = compute_moments(raw.astype(np.float32), graph, block_rows=700, backend="numpy")
    np.testing.assert_allclose(narrow.mean, wide.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(narrow.scatter, wide.scatter, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(narrow.graph_variation, wide.graph_variation, rtol=1e-4, atol=1e-3)
    assert narrow.trace_graph > 0
