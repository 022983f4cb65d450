"""Bad inputs to the Rec-PCA engine raise ValueError with a message that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from server.recpca import FitSettings, GraphOptions, build_graph, compute_moments, fit_recpca
from server.recpca.solve import lambda_for_retention, solve
from tests.recpca_cases import make_case

CASE = make_case(seed=0, n=30, raw_dim=6, dim=3)


def with_row(value: float, row: int = 4) -> np.ndarray:
    raw = CASE.raw.copy()
    raw[row, 2] = value
    return raw


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_raw_vector_is_rejected_with_its_row(value: float) -> None:
    with pytest.raises(ValueError, match="row 4 contains NaN or Inf"):
        fit_recpca(with_row(value), CASE.counts, FitSettings(dim=3))


def test_zero_raw_vector_is_rejected_with_its_row() -> None:
    raw = CASE.raw.copy()
    raw[9] = 0.0
    with pytest.raises(ValueError, match="row 9 is all zeros"):
        compute_moments(raw, None, block_rows=4)


def test_tiny_and_huge_raw_vectors_still_normalize() -> None:
    raw = CASE.raw.astype(np.float32)
    raw[0] *= 1e-30  # squares underflow in float32
    raw[1] *= 1e30  # squares overflow in float32
    moments = compute_moments(raw, None)
    assert np.all(np.isfinite(moments.scatter))


@pytest.mark.parametrize("dim", [0, -1, 7])
def test_dim_outside_one_to_raw_dim_is_rejected(dim: int) -> None:
    with pytest.raises(ValueError, match="dim must be between 1 and the raw dimension 6"):
        fit_recpca(CASE.raw, CASE.counts, FitSettings(dim=dim))


def test_negative_counts_are_rejected() -> None:
    counts = CASE.counts.copy()
    counts.data[:] = -counts.data
    with pytest.raises(ValueError, match="non-negative"):
        build_graph(counts, 30)


def test_asymmetric_counts_are_rejected() -> None:
    counts = CASE.counts.tolil()
    counts[3, 8] = counts[8, 3] + 1
    with pytest.raises(ValueError, match="symmetric"):
        build_graph(counts.tocsr(), 30)


def test_counts_with_a_diagonal_are_rejected() -> None:
    counts = CASE.counts + sp.identity(30, format="csr")
    with pytest.raises(ValueError, match="zero diagonal"):
        build_graph(counts, 30)


def test_non_finite_counts_are_rejected() -> None:
    counts = CASE.counts.copy()
    counts.data[:] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        build_graph(counts, 30)


def test_counts_indexing_items_beyond_the_catalog_are_rejected() -> None:
    bigger = sp.csr_matrix((31, 31))
    with pytest.raises(ValueError, match="index is out of range"):
        build_graph(bigger, 30)


def test_dense_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="scipy sparse"):
        build_graph(CASE.counts.toarray(), 30)


def test_lambda_and_retention_together_are_rejected() -> None:
    with pytest.raises(ValueError, match="either lambda or a retention budget"):
        FitSettings(dim=3, lam=1.0, retention=0.9)


@pytest.mark.parametrize("lam", [-0.1, np.nan, np.inf])
def test_invalid_lambda_is_rejected(lam: float) -> None:
    moments = compute_moments(CASE.raw, build_graph(CASE.counts, 30))
    with pytest.raises(ValueError, match="lambda must be a finite number >= 0"):
        solve(moments, 3, lam)


def test_positive_lambda_without_counts_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs co-occurrence counts"):
        solve(compute_moments(CASE.raw, None), 3, 0.5)


@pytest.mark.parametrize("retention", [0.0, -0.5, 1.01])
def test_retention_outside_zero_one_is_rejected(retention: float) -> None:
    moments = compute_moments(CASE.raw, build_graph(CASE.counts, 30))
    with pytest.raises(ValueError, match=r"retention budget must be in \(0, 1\]"):
        lambda_for_retention(moments, 3, retention)


def test_unknown_graph_transform_is_rejected() -> None:
    with pytest.raises(ValueError, match="graph transform must be one of"):
        GraphOptions(transform="pagerank")  # type: ignore[arg-type]


def test_raw_vectors_that_are_not_a_float_matrix_are_rejected() -> None:
    with pytest.raises(ValueError, match="2-D array"):
        compute_moments(CASE.raw[0], None)
    with pytest.raises(ValueError, match="floating point"):
        compute_moments(CASE.raw.astype(np.int64), None)
    with pytest.raises(ValueError, match="at least 2 items"):
        compute_moments(CASE.raw[:1], None)


def test_identical_directions_have_no_variance_to_fit() -> None:
    raw = np.tile(CASE.raw[:1], (10, 1)) * np.arange(1, 11)[:, None]
    with pytest.raises(ValueError, match="no variance"):
        fit_recpca(raw, None, FitSettings(dim=2))


def test_served_rows_of_the_wrong_width_are_rejected() -> None:
    result = fit_recpca(CASE.raw, CASE.counts, FitSettings(dim=3))
    with pytest.raises(ValueError, match="6 columns"):
        result.projection.transform(np.ones((2, 5)))
