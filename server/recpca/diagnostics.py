"""How well a served space agrees with behaviour: alignment@k against co-occurrence.

alignment@k is the mean, over items with at least one co-occurrence neighbour, of
``|kNN_served(i) ∩ topk_counts(i)| / min(k, deg(i))``: the share of an item's strongest
co-occurrence neighbours that are also its nearest neighbours in the served space (cosine,
exact faiss search, the item itself excluded; count ties broken by lower row). Large
catalogs are scored on a fixed random sample of query items.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    return alignment_over_blocks([embeddings], counts, k, sample_size, seed)


def alignment_over_blocks(
    embedding_blocks: Iterable[np.ndarray],
    counts: sp.csr_matrix,
    k: int = 10,
    sample_size: int | None = 2000,
    seed: int = 0,
) -> float | None:
    """``alignment_at_k`` of the embeddings that ``embedding_blocks`` yields in row order:
    the index takes one block at a time, so no full array beside it is needed (a refit of a
    catalog larger than memory); the same index and search, so the same value."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.flatnonzero(np.diff(counts.indptr) > 0)
    if len(queries) == 0:
        return None
    if sample_size is not None and len(queries) > sample_size:
        queries = np.sort(np.random.default_rng(seed).choice(queries, sample_size, replace=False))
    import faiss  # lazy: fitting alone should not load faiss

    index = None
    picked: list[np.ndarray] = []
    first = 0
    for block in embedding_blocks:
        vectors = np.ascontiguousarray(block, dtype=np.float32)
        if index is None:
            index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        lo, hi = np.searchsorted(queries, [first, first + len(vectors)])
        picked.append(vectors[queries[lo:hi] - first])
        first += len(vectors)
    if index is None:
        raise ValueError("alignment needs embeddings")
    _, found = index.search(np.concatenate(picked), min(k + 1, index.ntotal))
    overlaps = np.empty(len(queries))
    for i, (query, expected) in enumerate(
        zip(queries, top_neighbours_by_count(counts, queries, k), strict=True)
    ):
        nearest = found[i][found[i] != query][:k]
        overlaps[i] = len(np.intersect1d(nearest, expected)) / min(k, len(expected))
    return float(overlaps.mean())
