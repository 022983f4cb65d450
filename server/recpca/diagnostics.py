"""How well a served space agrees with behaviour: alignment@k against co-occurrence.

alignment@k is the mean, over items with at least one co-occurrence neighbour, of
``|kNN_served(i) ∩ topk_counts(i)| / min(k, deg(i))``: the share of an item's strongest
co-occurrence neighbours that are also its nearest neighbours in the served space (cosine,
exact faiss search, the item itself excluded; count ties broken by lower row). Large
catalogs are scored on a fixed random sample of query items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_neighbours_by_count(counts: sp.csr_matrix, rows: np.ndarray, k: int) -> list[np.ndarray]:
    tops = []
    for row in rows:
        start, stop = counts.indptr[row], counts.indptr[row + 1]
        columns, weights = counts.indices[start:stop], counts.data[start:stop]
        order = np.lexsort((columns, -weights))[:k]
        tops.append(columns[order])
    return tops


def alignment_at_k(
    embeddings: np.ndarray,
    counts: sp.csr_matrix,
    k: int = 10,
    sample_size: int | None = 2000,
    seed: int = 0,
) -> float | None:
    """Mean overlap of served-space and co-occurrence neighbours; None without counts."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.flatnonzero(np.diff(counts.indptr) > 0)
    if len(queries) == 0:
        return None
    if sample_size is not None and len(queries) > sample_size:
        queries = np.sort(np.random.default_rng(seed).choice(queries, sample_size, replace=False))
    import faiss  # lazy: fitting alone should not load faiss

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    # knn searches the vectors in place (an index would copy all n of them first).
    _, found = faiss.knn(vectors[queries], vectors, min(k + 1, len(vectors)),
                         metric=faiss.METRIC_INNER_PRODUCT)
    overlaps = np.empty(len(queries))
    for i, (query, expected) in enumerate(
        zip(queries, top_neighbours_by_count(counts, queries, k), strict=True)
    ):
        nearest = found[i][found[i] != query][:k]
        overlaps[i] = len(np.intersect1d(nearest, expected)) / min(k, len(expected))
    return float(overlaps.mean())
