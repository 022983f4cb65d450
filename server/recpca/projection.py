"""A fitted projection and the served embedding ``e_i = normalize(Tᵀ Wᵀ(x̂_i − μ))``.

``T`` is the whitening of the retained subspace (identity unless a whitening exponent
``p > 0`` was asked for; see ``server.recpca.solve.whitener``). The formula needs only the
served map ``W T`` and ``μ``, so items added after a fit are served by the same formula
without refitting (cold start), whitened alike. Stores keep the served map, so a projection
read back from a store has ``components = W T`` and no separate whitener.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.recpca.moments import DEFAULT_BLOCK_ROWS, compute_dtype, row_norms
from server.recpca.row_blocks import RowBlocks


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

    def transform(self, raw: Any, block_rows: int = DEFAULT_BLOCK_ROWS,
                  first_row: int = 0) -> np.ndarray:
        """Unit-norm float32 served vectors for any raw rows (n × D); ``first_row`` is the
        row number of ``raw[0]`` in error messages."""
        return transform_together(raw, [self], block_rows, first_row)[0]

    def transform_blocks(self, blocks: RowBlocks) -> Iterator[np.ndarray]:
        """``transform`` of each row block in order (one block of raw rows held at a time)."""
        for index, (start, _) in enumerate(blocks.block_bounds()):
            yield self.transform(blocks.read_block(index), first_row=start)

    def transform_all(self, blocks: RowBlocks) -> np.ndarray:
        """The served vectors of every row of ``blocks``, read block by block."""
        out = np.empty((blocks.n_rows, self.output_dim), dtype=np.float32)
        for (start, stop), reduced in zip(blocks.block_bounds(), self.transform_blocks(blocks),
                                          strict=True):
            out[start:stop] = reduced
        return out


def transform_together(raw: Any, projections: Sequence[Projection],
                       block_rows: int = DEFAULT_BLOCK_ROWS, first_row: int = 0
                       ) -> list[np.ndarray]:
    """Served vectors of ``raw`` under several projections of the same fit (one μ), in one
    pass: the block conversion and row norms, which cost more than the small product, are
    paid once (a refit serves one projection and scores plain PCA's beside it)."""
    if not projections:
        return []
    first = projections[0]
    if any(p.input_dim != first.input_dim or not np.array_equal(p.mean, first.mean)
           for p in projections):
        raise ValueError("projections transformed together must share their input and mean")
    if getattr(raw, "ndim", None) != 2 or raw.shape[1] != first.input_dim:
        raise ValueError(
            f"raw vectors must be a 2-D array with {first.input_dim} columns, "
            f"got shape {getattr(raw, 'shape', None)}"
        )
    dtype = compute_dtype(raw)
    maps = np.hstack([p.served_map for p in projections]).astype(dtype)
    cuts = np.cumsum([0, *(p.output_dim for p in projections)])
    mean = first.mean.astype(dtype)
    outs = [np.empty((raw.shape[0], p.output_dim), dtype=np.float32) for p in projections]
    for start in range(0, raw.shape[0], block_rows):
        block = np.asarray(raw[start : start + block_rows], dtype=dtype)
        unit = block * (1.0 / row_norms(block, first_row + start)).astype(dtype)[:, None]
        combined = (unit - mean) @ maps
        for out, lo, hi in zip(outs, cuts[:-1], cuts[1:], strict=True):
            reduced = combined[:, lo:hi]
            norms = np.linalg.norm(reduced, axis=1, keepdims=True)
            # An item exactly at the mean has no direction; it is served as the zero vector.
            np.divide(reduced, norms, out=reduced, where=norms > 0)
            reduced[(norms == 0).ravel()] = 0
            out[start : start + len(block)] = reduced
    return outs
