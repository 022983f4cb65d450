"""A fitted projection and the served embedding ``e_i = normalize(Tᵀ Wᵀ(x̂_i − μ))``.

``T`` is the whitening of the retained subspace (identity unless a whitening exponent
``p > 0`` was asked for; see ``server.recpca.solve.whitener``). The formula needs only the
served map ``W T`` and ``μ``, so items added after a fit are served by the same formula
without refitting (cold start), whitened alike. Stores keep the served map, so a projection
read back from a store has ``components = W T`` and no separate whitener.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from server.recpca.moments import DEFAULT_BLOCK_ROWS, compute_dtype, row_norms


@dataclass(frozen=True)
class Projection:
    components: np.ndarray  # W, (D, d), orthonormal columns (or W T when read from a store)
    mean: np.ndarray  # μ, (D,)
    lam: float
    whitener: np.ndarray | None = None  # T, (d, d), symmetric; None = identity (p = 0)

    @property
    def served_map(self) -> np.ndarray:
        """``W T``, (D, d): the linear map applied before the final normalization."""
        return self.components if self.whitener is None else self.components @ self.whitener

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
        components = self.served_map.astype(dtype)
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
