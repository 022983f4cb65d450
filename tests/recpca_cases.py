"""Small synthetic Rec-PCA problems for the property tests, and the spec written out densely.

``dense_reference`` is §4 of ARCHITECTURE.md transcribed literally (full matrices, no
streaming, no tricks), so the streamed engine is checked against the specification itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from hypothesis import strategies as st


@dataclass(frozen=True)
class Case:
    raw: np.ndarray
    counts: sp.csr_matrix
    dim: int


def random_counts(rng: np.random.Generator, n: int, pairs: int, isolated: int) -> sp.csr_matrix:
    """Symmetric integer counts with a zero diagonal; the first ``isolated`` items get none."""
    rows = rng.integers(isolated, n, pairs)
    cols = rng.integers(isolated, n, pairs)
    keep = rows != cols
    upper = sp.coo_matrix(
        (np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n)
    ).tocsr()
    return (upper + upper.T).tocsr()


def make_case(seed: int, n: int, raw_dim: int, dim: int, isolated: int = 2) -> Case:
    """Raw vectors with a decaying spectrum, an offset (so centering matters) and varied
    norms (so normalization matters)."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.arange(1, raw_dim + 1)
    raw = rng.standard_normal((n, raw_dim)) * scales + rng.standard_normal(raw_dim)
    raw *= rng.uniform(0.5, 5.0, size=(n, 1))
    counts = random_counts(rng, n, pairs=4 * n, isolated=min(isolated, n - 2))
    return Case(raw, counts, dim)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    raw_dim = draw(st.integers(2, 10))
    n = draw(st.integers(raw_dim + 3, 40))
    dim = draw(st.integers(1, raw_dim))
    return make_case(draw(st.integers(0, 2**32 - 1)), n, raw_dim, dim)


def dense_reference(raw: np.ndarray, counts: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """``S`` and ``G`` exactly as the specification writes them."""
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    centered = unit - unit.mean(axis=0)
    adjacency = counts.toarray()
    degrees = adjacency.sum(axis=1)
    connected = degrees > 0
    inv_sqrt = np.where(connected, 1.0 / np.sqrt(np.where(connected, degrees, 1.0)), 0.0)
    laplacian = np.diag(connected.astype(float)) - inv_sqrt[:, None] * adjacency * inv_sqrt
    return centered.T @ centered, centered.T @ laplacian @ centered


def largest_principal_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Largest angle (radians) between the column spaces of two orthonormal bases, via its
    sine ``||(I − aaᵀ)b||₂`` (accurate for tiny angles, unlike an arccos of cosines)."""
    residual = b - a @ (a.T @ b)
    return float(np.arcsin(min(1.0, np.linalg.norm(residual, 2))))
