"""Server side of co-occurrence: pushed pair batches as one symmetric count matrix.

Workers count their own shards and push unordered pairs; the stores turn a catalog's batches
into one symmetric matrix for a refit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
