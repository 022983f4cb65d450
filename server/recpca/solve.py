"""From moments to a projection: the eigenproblem, λ by retention budget, subspace scores.

``M(λ) = S/tr(S) − λ·G/tr(G)``; ``W`` holds the eigenvectors of its ``d`` largest
eigenvalues, each column's sign fixed so that its largest-magnitude entry is positive
(deterministic across runs and machines). Everything here is D×D work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from server.recpca.moments import Moments

MAX_LAMBDA = 2.0**20


@dataclass(frozen=True)
class SubspaceScores:
    """Shares of ``tr(S)`` and ``tr(G)`` that a subspace keeps (``graph_tv`` is None
    without a graph)."""

    retained_variance: float
    graph_tv: float | None


def validate_dim(moments: Moments, dim: int) -> None:
    if not 1 <= dim <= moments.dim:
        raise ValueError(f"dim must be between 1 and the raw dimension {moments.dim}, got {dim}")
    # Unit rows give tr(S) = n(1 − ||μ||²); anything near zero is rounding, not variance.
    if moments.trace_scatter <= 1e-10 * moments.n_items:
        raise ValueError(
            "the normalized raw vectors have no variance (all items point the same way)"
        )


def objective(moments: Moments, lam: float) -> np.ndarray:
    matrix = moments.scatter / moments.trace_scatter
    if lam and moments.has_graph:
        matrix = matrix - (lam / moments.trace_graph) * moments.graph_variation
    return matrix


def top_eigenvectors(matrix: np.ndarray, dim: int) -> np.ndarray:
    """Orthonormal eigenvectors of the ``dim`` largest eigenvalues, largest first, signs fixed."""
    size = matrix.shape[0]
    _, vectors = scipy.linalg.eigh(matrix, subset_by_index=[size - dim, size - 1])
    vectors = vectors[:, ::-1]
    peaks = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[peaks, np.arange(dim)])
    return np.ascontiguousarray(vectors * signs)


def solve(moments: Moments, dim: int, lam: float) -> np.ndarray:
    validate_dim(moments, dim)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
    if lam > 0 and not moments.has_graph:
        raise ValueError("lambda > 0 needs co-occurrence counts, and there are none")
    return top_eigenvectors(objective(moments, lam), dim)


def scores(moments: Moments, components: np.ndarray) -> SubspaceScores:
    kept = np.einsum("ij,ik,kj->", components, moments.scatter, components)
    graph_tv = None
    if moments.has_graph:
        tv = np.einsum("ij,ik,kj->", components, moments.graph_variation, components)
        graph_tv = float(tv / moments.trace_graph)
    return SubspaceScores(float(kept / moments.trace_scatter), graph_tv)


def lambda_for_retention(
    moments: Moments, dim: int, retention: float, rel_tol: float = 1e-3
) -> float:
    """The largest λ whose subspace keeps ``retention`` × plain PCA's retained variance.

    Retained variance is non-increasing in λ, so bisection on a bracket found by doubling
    works; each step is one D×D eigensolve. Returns 0 without a graph.
    """
    if not 0 < retention <= 1:
        raise ValueError(f"retention budget must be in (0, 1], got {retention}")
    validate_dim(moments, dim)
    if not moments.has_graph:
        return 0.0
    target = retention * scores(moments, solve(moments, dim, 0.0)).retained_variance

    def meets(lam: float) -> bool:
        return scores(moments, solve(moments, dim, lam)).retained_variance >= target

    low, high = 0.0, 1.0
    while meets(high):
        if high >= MAX_LAMBDA:
            return high
        low, high = high, high * 2
    while high - low > rel_tol * high:
        middle = (low + high) / 2
        low, high = (middle, high) if meets(middle) else (low, middle)
    return low
