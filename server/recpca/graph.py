"""The item–item graph of Rec-PCA: validated counts, a transform, the normalized adjacency.

``A = f(C)`` with ``f`` the identity, ``log1p``, or "top-k neighbours per row, then
symmetrize". Degrees ``d_i = Σ_j A_ij``; ``A_n = D^{-1/2} A D^{-1/2}`` on connected items.
Isolated items (``d_i = 0``) get zero rows and are left out of the Laplacian's identity part
``Π_V``, so they contribute nothing to the graph total variation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

Transform = Literal["identity", "log1p", "topk"]
TRANSFORMS: tuple[str, ...] = ("identity", "log1p", "topk")


@dataclass(frozen=True)
class GraphOptions:
    """How co-occurrence counts become graph weights."""

    transform: Transform = "identity"
    top_k: int = 50  # neighbours kept per item by the "topk" transform

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"graph transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True)
class NormalizedGraph:
    """``A_n`` (symmetric CSR, float64) and which items have at least one neighbour."""

    adjacency: sp.csr_matrix
    connected: np.ndarray

    @property
    def n_edges(self) -> int:
        return self.adjacency.nnz // 2


def validate_counts(counts: sp.spmatrix | sp.sparray, n_items: int) -> sp.csr_matrix:
    """Canonical float64 CSR copy of ``counts``; raises ``ValueError`` on anything that is
    not an ``n_items × n_items`` symmetric, non-negative, finite matrix with a zero diagonal."""
    if not sp.issparse(counts):
        raise ValueError("co-occurrence counts must be a scipy sparse matrix")
    if counts.shape != (n_items, n_items):
        raise ValueError(
            f"co-occurrence counts have shape {counts.shape}, expected ({n_items}, {n_items}): "
            "an index is out of range for the catalog"
        )
    matrix = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    data = matrix.data
    if not np.all(np.isfinite(data)):
        raise ValueError("co-occurrence counts contain NaN or Inf")
    if np.any(data < 0):
        raise ValueError("co-occurrence counts must be non-negative")
    if np.any(matrix.diagonal() != 0):
        raise ValueError("co-occurrence counts must have a zero diagonal (no self-pairs)")
    transpose = matrix.T.tocsr()
    transpose.sort_indices()
    same_pattern = np.array_equal(matrix.indptr, transpose.indptr) and np.array_equal(
        matrix.indices, transpose.indices
    )
    # Counts built as U + Uᵀ are exactly symmetric; the tolerant check (which allocates
    # several temporaries of nnz floats) only runs for weights summed in different orders.
    if not same_pattern or not (
        np.array_equal(matrix.data, transpose.data)
        or np.allclose(matrix.data, transpose.data, rtol=1e-9, atol=0.0)
    ):
        raise ValueError("co-occurrence counts must be symmetric (C[i, j] == C[j, i])")
    return matrix


def strict_upper_triangle(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Entries with column > row, straight from the CSR arrays (``scipy.sparse.triu`` goes
    through a full COO copy with 64-bit indices)."""
    per_row = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0], dtype=matrix.indices.dtype), per_row)
    keep = matrix.indices > rows
    kept_per_row = np.bincount(rows[keep], minlength=matrix.shape[0])
    del rows
    indptr = np.concatenate(([0], np.cumsum(kept_per_row))).astype(matrix.indptr.dtype)
    return sp.csr_matrix(
        (matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape
    )


def transform_counts(counts: sp.csr_matrix, options: GraphOptions) -> sp.csr_matrix:
    """``A = f(C)``; the result stays symmetric with a zero diagonal."""
    if options.transform == "identity":
        return counts
    if options.transform == "log1p":
        weights = counts.copy()
        weights.data = np.log1p(weights.data)
        return weights
    return _symmetric_top_k(counts, options.top_k)


def _symmetric_top_k(counts: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's ``k`` largest weights (ties: lower column first), then keep an edge
    if either endpoint kept it."""
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    # Within each row: descending weight, then ascending column; lexsort's last key is primary.
    order = np.lexsort((counts.indices, -counts.data, rows))
    rank = np.arange(counts.nnz) - np.repeat(counts.indptr[:-1], np.diff(counts.indptr))
    keep = order[rank < k]
    kept = sp.csr_matrix(
        (counts.data[keep], (rows[keep], counts.indices[keep])), shape=counts.shape
    )
    return kept.maximum(kept.T).tocsr()


def normalized_adjacency(weights: sp.csr_matrix, *, in_place: bool = False) -> NormalizedGraph:
    """Scales ``weights`` (a copy, or itself when ``in_place``) entry by entry rather than by
    two sparse products, which would build two more matrices of the same size."""
    degrees = np.asarray(weights.sum(axis=1)).ravel()
    connected = degrees > 0
    inv_sqrt = np.zeros_like(degrees)
    inv_sqrt[connected] = 1.0 / np.sqrt(degrees[connected])
    adjacency = weights if in_place else weights.copy()
    adjacency.data *= np.repeat(inv_sqrt, np.diff(adjacency.indptr))
    adjacency.data *= inv_sqrt[adjacency.indices]
    adjacency.sort_indices()
    return NormalizedGraph(adjacency, connected)


def build_graph(
    counts: sp.spmatrix | sp.sparray, n_items: int, options: GraphOptions | None = None
) -> NormalizedGraph:
    """Validate, transform and normalize co-occurrence counts in one call."""
    weights = transform_counts(validate_counts(counts, n_items), options or GraphOptions())
    return normalized_adjacency(weights, in_place=True)  # weights is our own copy
