"""Served vectors of fewer dimensions: the first ``dim`` components, renormalized.

Rec-PCA's components are the eigenvectors of ``M`` ordered by eigenvalue, so the first ``d``
columns of a version's ``W`` are exactly what a fresh fit of dim ``d`` at the same λ
returns. A served vector is ``normalize(Wᵀ(x̂ − μ))``; normalization only rescales, so the
prefix of a served vector, renormalized, is ``normalize(W[:, :d]ᵀ(x̂ − μ))``: the fresh
fit's served vector, without refitting (what TEI, vLLM and NIM call dimensions/truncation).
"""

from __future__ import annotations

import numpy as np

from server.errors import InvalidArgument


def served_dim(requested: int, version_dim: int, kind: str = "reduced") -> int:
    """The dim to serve: 0 means the version's own; else 1 to the version's dim."""
    if requested < 0:
        raise InvalidArgument(f"dim must be >= 0 (0 = the version's dim), got {requested}")
    if requested and kind == "raw":
        raise InvalidArgument("dim applies to reduced vectors only: leave it 0 for raw ones")
    if requested > version_dim:
        raise InvalidArgument(
            f"dim {requested} is above the version's dim {version_dim}: ask for 1 to "
            f"{version_dim}, or refit with a larger dim")
    return requested or version_dim


def prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` columns of unit rows, each renormalized (float32). Rows whose
    prefix is zero stay zero. ``dim`` equal to the width returns ``vectors`` untouched, so
    full-width pulls stay bit for bit what the version stored."""
    if dim == vectors.shape[1]:
        return vectors
    part = np.asarray(vectors[:, :dim], dtype=np.float64)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    np.divide(part, norms, out=part, where=norms > 0)
    return part.astype(np.float32)
