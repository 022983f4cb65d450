"""The refit's block-by-block pieces against their whole-matrix originals: the served
vectors of ``Projection.transform_all``, the alignment diagnostic over blocks, and the whole
``fit_recpca_streamed`` against ``fit_recpca`` on the same float16 matrix (pure numerics: a
file store's blocks are an ``ArrayRowBlocks`` here)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

from server.cooccurrence_merge import counts_from_pairs
from server.recpca import FitSettings, fit_recpca, fit_recpca_streamed
from server.recpca.diagnostics import alignment_at_k, alignment_over_blocks
from server.recpca.row_blocks import ArrayRowBlocks


def catalog(n: int, dim: int, seed: int) -> tuple[np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((6, dim))
    raw = (rng.standard_normal((n, 6)) @ basis + 0.3 * rng.standard_normal((n, dim))
           + 0.7).astype(np.float16)
    rows, cols = rng.integers(0, n, size=(2, 6 * n))
    keep = rows != cols
    counts = counts_from_pairs(rows[keep].astype(np.uint32), cols[keep].astype(np.uint32),
                               rng.integers(1, 4, keep.sum()).astype(np.float32), n)
    return raw, counts


@pytest.mark.parametrize("block_rows", [1, 7, 250, 999])
def test_alignment_over_blocks_equals_alignment_over_the_whole_matrix(block_rows):
    rng = np.random.default_rng(block_rows)
    embeddings = rng.standard_normal((999, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    _, counts = catalog(999, 8, 1)
    for sample in (None, 100):
        whole = alignment_at_k(embeddings, counts, 10, sample)

        def blocks():
            return (embeddings[s : s + block_rows] for s in range(0, 999, block_rows))

        assert alignment_over_blocks(blocks, counts, 10, sample) == whole


def test_served_vectors_block_by_block_equal_the_whole_matrix_transform():
    raw, counts = catalog(1200, 24, 2)
    projection = fit_recpca(raw, counts, FitSettings(dim=5)).projection
    whole = projection.transform(raw)
    for block_rows in (2, 100, 4096):  # bit for bit: the same products row by row
        np.testing.assert_array_equal(projection.transform_all(ArrayRowBlocks(raw, block_rows)),
                                      whole)
    # One-row blocks take BLAS's matrix-vector path: equal to float32 rounding.
    np.testing.assert_allclose(projection.transform_all(ArrayRowBlocks(raw, 1)), whole,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("settings", [FitSettings(dim=5), FitSettings(dim=4, lam=0.0),
                                      FitSettings(dim=6, whitening=0.5)])
def test_the_streamed_fit_equals_the_in_memory_fit(settings):
    raw, counts = catalog(1500, 24, 3)
    memory = fit_recpca(raw, counts, settings)
    streamed = fit_recpca_streamed(ArrayRowBlocks(raw, 173), counts, settings)
    sines = np.sin(scipy.linalg.subspace_angles(memory.projection.components,
                                                streamed.projection.components))
    assert sines.max() <= 1e-5
    assert streamed.projection.lam == pytest.approx(memory.projection.lam, rel=1e-6)
    expected = memory.projection.transform(raw)
    np.testing.assert_allclose(np.abs(np.sum(streamed.served * expected, axis=1)), 1, atol=1e-5)
    ours, theirs = streamed.diagnostics.to_dict(), memory.diagnostics.to_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, float):
            assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
        else:
            assert ours[key] == value, key
