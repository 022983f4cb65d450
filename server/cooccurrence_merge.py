"""Server side of co-occurrence: validated pair batches and merged count matrices.

Workers count their own shards (``trainer_client.cooccurrence``) and push unordered pairs;
the server turns each batch into a symmetric matrix and adds it to the catalog's total.
Catalogs only grow, so a total from an older, smaller catalog is padded, never truncated.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from server.recpca.graph import validate_counts


def counts_from_pairs(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_items: int
) -> sp.csr_matrix:
    """A symmetric count matrix from unordered pairs (each pair adds to both directions)."""
    rows, cols, weights = (np.asarray(a) for a in (rows, cols, weights))
    if not (rows.shape == cols.shape == weights.shape) or rows.ndim != 1:
        raise ValueError("rows, cols and weights must be 1-D arrays of the same length")
    integer = np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)
    if len(rows) and not integer:
        raise ValueError("rows and cols must be integer item rows")
    for name, index in (("row", rows), ("col", cols)):
        bad = (index < 0) | (index >= n_items)
        if bad.any():
            raise ValueError(
                f"{name} index {int(index[bad][0])} out of range for a catalog of {n_items} items"
            )
    if np.any(rows == cols):
        raise ValueError("a pair must join two different items (no self-pairs)")
    weights = weights.astype(np.float64)
    if not np.all(np.isfinite(weights)):
        raise ValueError("pair weights contain NaN or Inf")
    if np.any(weights <= 0):
        raise ValueError("pair weights must be positive")
    upper = sp.csr_matrix((weights, (rows, cols)), shape=(n_items, n_items))
    upper.sum_duplicates()
    return (upper + upper.T).tocsr()


def resize_counts(counts: sp.csr_matrix, n_items: int) -> sp.csr_matrix:
    """Pad ``counts`` to ``n_items`` (the catalog grew since they were counted)."""
    if counts.shape[0] > n_items:
        raise ValueError(
            f"counts cover {counts.shape[0]} items, more than the catalog's {n_items}"
        )
    padded = counts.copy()
    padded.resize((n_items, n_items))
    return padded


def merge_counts(matrices: Iterable[sp.spmatrix | sp.sparray], n_items: int) -> sp.csr_matrix:
    """Sum of validated count matrices, each padded to ``n_items``."""
    total = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    for matrix in matrices:
        size = matrix.shape[0]
        total = total + resize_counts(validate_counts(matrix, size), n_items)
    return total.tocsr()
