"""The item–item graph of Rec-PCA: validated counts, a transform, the normalized adjacency.

``A = f(C)`` with ``f`` the identity, ``log1p``, "top-k neighbours per row, then
symmetrize", or PPMI (positive pointwise mutual information). Degrees
``d_i = Σ_j A_ij``; ``A_n = D^{-1/2} A D^{-1/2}`` on connected items.
Isolated items (``d_i = 0``) get zero rows and are left out of the Laplacian's identity part
``Π_V``, so they contribute nothing to the graph total variation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

Transform = Literal["identity", "log1p", "topk", "ppmi"]
TRANSFORMS: tuple[str, ...] = ("identity", "log1p", "topk", "ppmi")


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
    if options.transform == "ppmi":
        return positive_pmi(counts)
    return _symmetric_top_k(counts, options.top_k)


def positive_pmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """``A_ij = max(0, log(C_ij · T / (r_i · r_j)))`` with ``r_i = Σ_j C_ij``, ``T = Σ r_i``.

    Raw and log1p counts grow with both items' popularity, so a blockbuster is "close" to
    everything; PMI divides out what independent consumption would give (Church & Hanks
    1990; as a graph for embeddings: Levy & Goldberg 2014), and clipping at 0 drops the
    pairs seen less often than chance. Invariant to scaling all counts; pairs that end at
    exactly 0 are removed, so an item may lose all its edges.
    """
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    total = row_sums.sum()
    weights = counts.copy()
    if total <= 0:
        return weights
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    expected = row_sums[rows] * row_sums[counts.indices] / total
    weights.data = np.maximum(np.log(counts.data / expected), 0.0)
    weights.eliminate_zeros()
    return weights


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
