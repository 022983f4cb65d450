"""A fitted projection and the served embedding ``e_i = normalize(Wᵀ(x̂_i − μ))``.

The formula needs only ``W`` and ``μ``, so items added after a fit are served without
refitting (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from server.recpca.moments import DEFAULT_BLOCK_ROWS, compute_dtype, row_norms


@dataclass(frozen=True)
class Projection:
    components: np.ndarray  # W, (D, d), orthonormal columns
    mean: np.ndarray  # μ, (D,)
    lam: float

    @property
    def input_dim(self) -> int:
        return self.components.shape[0]

    @property
    def output_dim(self) -> int:
        return self.components.shape[1]

    def transform(self, raw: Any, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
        """Unit-norm float32 served vectors for any raw rows (n × D)."""
        if getattr(raw, "ndim", None) != 2 or raw.shape[1] != self.input_dim:
            raise ValueError(
                f"raw vectors must be a 2-D array with {self.input_dim} columns, "
                f"got shape {getattr(raw, 'shape', None)}"
            )
        dtype = compute_dtype(raw)
        components = self.components.astype(dtype)
        mean = self.mean.astype(dtype)
        out = np.empty((raw.shape[0], self.output_dim), dtype=np.float32)
        for start in range(0, raw.shape[0], block_rows):
            block = np.asarray(raw[start : start + block_rows], dtype=dtype)
            unit = block * (1.0 / row_norms(block, start)).astype(dtype)[:, None]
            reduced = (unit - mean) @ components
            norms = np.linalg.norm(reduced, axis=1, keepdims=True)
            # An item exactly at the mean has no direction; it is served as the zero vector.
            np.divide(reduced, norms, out=reduced, where=norms > 0)
            reduced[(norms == 0).ravel()] = 0
            out[start : start + len(block)] = reduced
        return out
