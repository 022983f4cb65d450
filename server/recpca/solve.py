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
# Whitening never scales a direction up by more than 1/sqrt(this) relative to the largest:
# a retained direction with (near) zero variance holds rounding noise, not signal.
MIN_VARIANCE_RATIO = 1e-6


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
    kept = np.sum(components * (moments.scatter @ components))  # tr(WᵀSW)
    graph_tv = None
    if moments.has_graph:
        tv = np.sum(components * (moments.graph_variation @ components))
        graph_tv = float(tv / moments.trace_graph)
    return SubspaceScores(float(kept / moments.trace_scatter), graph_tv)


def lambda_for_retention(
    moments: Moments, dim: int, retention: float, rel_tol: float = 1e-3
) -> float:
    """The largest λ whose subspace keeps ``retention`` × plain PCA's retained variance.

    Retained variance is non-increasing in λ, so the answer is bracketed by doubling and
    then narrowed with the Illinois variant of false position: it keeps a bracket
    ``[meets, fails]`` like bisection but needs about half the steps on the smooth curves
    seen in practice, and each step is one D×D eigensolve. Returns 0 without a graph.
    """
    if not 0 < retention <= 1:
        raise ValueError(f"retention budget must be in (0, 1], got {retention}")
    validate_dim(moments, dim)
    if not moments.has_graph:
        return 0.0
    pca_retained = scores(moments, solve(moments, dim, 0.0)).retained_variance
    target = retention * pca_retained

    def surplus(lam: float) -> float:
        """Retained variance above the target: >= 0 means λ meets the budget."""
        return scores(moments, solve(moments, dim, lam)).retained_variance - target

    low, high = 0.0, 1.0
    low_surplus, high_surplus = pca_retained - target, surplus(high)
    while high_surplus >= 0:
        if high >= MAX_LAMBDA:
            return high
        low, low_surplus = high, high_surplus
        high *= 2
        high_surplus = surplus(high)
    kept_side = 0  # +1: low moved last time, -1: high moved last time
    while high - low > rel_tol * high:
        step = high_surplus * (high - low) / (high_surplus - low_surplus)
        # Stay strictly inside the bracket so that every step shrinks it.
        guard = 0.25 * rel_tol * high
        middle = min(max(high - step, low + guard), high - guard)
        value = surplus(middle)
        if value >= 0:
            low, low_surplus = middle, value
            if kept_side == 1:
                high_surplus /= 2  # Illinois: stop the stale end from pinning the secant
            kept_side = 1
        else:
            high, high_surplus = middle, value
            if kept_side == -1:
                low_surplus /= 2
            kept_side = -1
    return low


def whitener(moments: Moments, components: np.ndarray, power: float) -> np.ndarray | None:
    """``T = (C/c_max)^(-p/2)`` with ``C = WᵀSW/n``, the covariance of the retained
    coordinates (``c_max`` its largest eigenvalue; None for ``p = 0``).

    ``p = 1`` is full (ZCA) whitening of the subspace, as in WhitenRec (Zhang et al., 2024):
    every retained direction gets the same variance, so the few directions where LLM
    vectors of all items agree no longer dominate cosine similarities. ``0 < p < 1``
    interpolates (faiss's ``eigen_power = -p/2``). The symmetric power, rather than one
    scale per column, keeps the result independent of the basis of the subspace: Rec-PCA's
    ``W`` does not diagonalize ``S``.
    """
    if not 0 <= power <= 1 or not np.isfinite(power):
        raise ValueError(f"whitening exponent must be in [0, 1], got {power}")
    if power == 0:
        return None
    covariance = components.T @ moments.scatter @ components / moments.n_items
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    values = np.maximum(values / values.max(), MIN_VARIANCE_RATIO)
    return (vectors * values ** (-power / 2)) @ vectors.T
