"""Server side of co-occurrence: pushed pair batches as one symmetric count matrix.

Workers count their own shards and push unordered pairs; the stores turn a catalog's batches
into one symmetric matrix for a refit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from server.validation import verify_pairs


def counts_from_pairs(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_items: int
) -> sp.csr_matrix:
    """A symmetric count matrix from unordered pairs (each pair adds to both directions)."""
    verify_pairs("pairs", rows, cols, weights, n_items)
    rows, cols = np.asarray(rows), np.asarray(cols)
    weights = np.asarray(weights, np.float64)
    upper = sp.csr_matrix((weights, (rows, cols)), shape=(n_items, n_items))
    upper.sum_duplicates()
    return (upper + upper.T).tocsr()
