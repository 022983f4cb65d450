"""One streamed pass over the raw vectors that yields everything a Rec-PCA fit needs.

With ``x̂_i = x_i/||x_i||``, ``μ = mean x̂_i`` and ``X̄ = X̂ − 1μᵀ``:

* ``S = X̄ᵀX̄`` — semantic scatter;
* ``G = X̄ᵀ L X̄`` with ``L = Π_V − A_n`` — graph total variation.

Both are D×D, so a fit at any λ (and the bisection for a retention budget) reuses them
without touching the vectors again. The raw matrix is read in row blocks: a first cheap pass
for the row norms and ``μ`` (it also validates every row), a second for the products. The
graph part uses only the strict upper triangle ``U`` of ``A_n`` (``A_n = U + Uᵀ``), because
``X̄ᵀA_nX̄ = X̄ᵀUX̄ + (X̄ᵀUX̄)ᵀ``: half the sparse work of the textbook ``A_n X̄``.

Per-block products run in the input precision (float32 inputs → float32 BLAS; float64 stays
float64) and are accumulated across blocks in float64. numpy/scipy run on the CPU; the torch
backend runs the same pass on CUDA when present.

A narrower input (float16, as a catalog may store its raw vectors) is never converted whole:
blocks are converted as they are used, and the sparse product, which needs every row, runs
over column strips of at most ``STRIP_BYTES`` converted at a time (each column of ``U X`` is
independent of the others), so memory stays about the size of the float16 matrix.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from server.recpca.graph import NormalizedGraph, strict_upper_triangle

Backend = Literal["auto", "numpy", "torch"]
ProgressCallback = Callable[[int], None]
DEFAULT_BLOCK_ROWS = 8192
STRIP_BYTES = 512 * 2**20  # 1M × 384 float16: 3 strips, each pass a conversion of X


@dataclass(frozen=True)
class Moments:
    n_items: int
    mean: np.ndarray  # μ, (D,)
    scatter: np.ndarray  # S, (D, D)
    graph_variation: np.ndarray  # G, (D, D); zero when there is no graph

    @property
    def dim(self) -> int:
        return len(self.mean)

    @property
    def trace_scatter(self) -> float:
        return float(np.trace(self.scatter))

    @property
    def trace_graph(self) -> float:
        return float(np.trace(self.graph_variation))

    @property
    def has_graph(self) -> bool:
        return self.trace_graph > 0.0


def compute_dtype(raw: Any) -> np.dtype:
    """float64 inputs are kept; anything narrower is computed in float32."""
    return np.dtype(np.float64) if raw.dtype == np.float64 else np.dtype(np.float32)


def validate_raw(raw: Any) -> None:
    if getattr(raw, "ndim", None) != 2:
        raise ValueError("raw vectors must be a 2-D array (items × dim)")
    if raw.shape[0] < 2:
        raise ValueError(f"a fit needs at least 2 items, got {raw.shape[0]}")
    if raw.shape[1] < 1:
        raise ValueError("raw vectors must have at least one dimension")
    if not np.issubdtype(raw.dtype, np.floating):
        raise ValueError(f"raw vectors must be floating point, got {raw.dtype}")


def row_norms(block: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Euclidean norms of a block's rows in float64, raising on NaN/Inf or all-zero rows.

    Squares are summed in the block's precision; rows whose sum under- or overflowed are
    recomputed with max-abs scaling, so tiny and huge vectors both normalize correctly.
    """
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        row = first_row + int(np.argmin(finite))
        raise ValueError(f"raw vector at row {row} contains NaN or Inf")
    norms = np.sqrt(np.einsum("ij,ij->i", block, block)).astype(np.float64)
    suspect = np.flatnonzero((norms == 0) | ~np.isfinite(norms))
    for i in suspect:
        row = block[i].astype(np.float64)
        peak = np.abs(row).max()
        if peak == 0:
            raise ValueError(
                f"raw vector at row {first_row + i} is all zeros and cannot be normalized"
            )
        norms[i] = peak * np.linalg.norm(row / peak)
    return norms


def normalized_mean(
    raw: Any, block_rows: int = DEFAULT_BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """First pass: ``1/||x_i||`` for every row and ``μ = mean x̂_i`` (both float64)."""
    n, dim = raw.shape
    dtype = compute_dtype(raw)
    inv_norms = np.empty(n, dtype=np.float64)
    total = np.zeros(dim, dtype=np.float64)
    for start in range(0, n, block_rows):
        block = np.asarray(raw[start : start + block_rows], dtype=dtype)
        inv = 1.0 / row_norms(block, start)
        inv_norms[start : start + len(block)] = inv
        total += inv.astype(dtype) @ block
    return inv_norms, total / n


class _NumpyOps:
    """Products on the CPU; the sparse rows are split over a thread pool (scipy releases
    the GIL), the dense ones go to multi-threaded BLAS."""

    def __init__(self, dense: np.ndarray, threads: int, dtype: np.dtype | None = None) -> None:
        self.dense = dense
        self.dtype = dtype or dense.dtype  # blocks are converted to it when narrower
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.threads = threads

    def asarray(self, host: np.ndarray) -> np.ndarray:
        return host

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.dense[start:stop], dtype=self.dtype)

    def accumulate(self, total: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
        total += left.T @ right

    def accumulate_graph(self, total: np.ndarray, left: np.ndarray, rows: sp.csr_matrix,
                         dense: np.ndarray | None = None) -> None:
        """``total += leftᵀ (rows @ X)`` (or ``@ dense``, a column strip of X), one row slice
        per thread; each slice's product goes straight into the sum, so no block-sized
        result is ever concatenated."""
        right = self.dense if dense is None else dense
        cuts = np.linspace(0, rows.shape[0], self.threads + 1).astype(int)
        spans = list(zip(cuts[:-1], cuts[1:], strict=True))
        parts = self.pool.map(lambda span: rows[span[0] : span[1]] @ right, spans)
        for (start, stop), part in zip(spans, parts, strict=True):
            total += left[start:stop].T @ part

    def zeros(self, rows: int, cols: int) -> np.ndarray:
        return np.zeros((rows, cols), dtype=np.float64)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def close(self) -> None:
        self.pool.shutdown()


class _TorchOps:
    """The same products with torch on ``device`` (CUDA on a GPU host)."""

    def __init__(self, dense: np.ndarray, device: str) -> None:
        import torch  # lazy: the numpy path never pays for importing torch

        self.torch = torch
        self.device = torch.device(device)
        self.dense = torch.from_numpy(dense).to(self.device)

    def asarray(self, host: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    def rows(self, start: int, stop: int) -> Any:
        return self.dense[start:stop]

    def accumulate_graph(self, total: Any, left: Any, rows: sp.csr_matrix) -> None:
        torch = self.torch
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(
                torch.from_numpy(rows.indptr.astype(np.int64)),
                torch.from_numpy(rows.indices.astype(np.int64)),
                torch.from_numpy(rows.data),
                size=rows.shape,
                check_invariants=False,  # scipy already guarantees a valid CSR
            ).to(self.device)
        total += (left.T @ (matrix @ self.dense)).double()

    def accumulate(self, total: Any, left: Any, right: Any) -> None:
        total += (left.T @ right).double()

    def zeros(self, rows: int, cols: int) -> Any:
        return self.torch.zeros((rows, cols), dtype=self.torch.float64, device=self.device)

    def to_host(self, array: Any) -> np.ndarray:
        return array.cpu().numpy()

    def close(self) -> None:
        pass


def _resolve_backend(backend: Backend, device: str | None) -> tuple[str, str]:
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy":
        return "numpy", "cpu"
    try:
        import torch
    except ImportError:
        if backend == "torch":
            raise
        return "numpy", "cpu"
    cuda = torch.cuda.is_available()
    if backend == "auto":
        return ("torch", "cuda") if cuda else ("numpy", "cpu")
    return "torch", device or ("cuda" if cuda else "cpu")


def compute_moments(
    raw: Any,
    graph: NormalizedGraph | None = None,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    backend: Backend = "auto",
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> Moments:
    """``S`` and ``G`` of the row-normalized, centered ``raw`` (n × D array or memmap).

    ``graph`` is the normalized adjacency over the same n items; ``None`` (no counts yet)
    gives ``G = 0``, which makes every fit plain PCA. ``progress`` is called with the
    number of rows finished after each block of the product pass.
    """
    validate_raw(raw)
    n, dim = raw.shape
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    if graph is not None and graph.adjacency.shape != (n, n):
        raise ValueError(
            f"graph covers {graph.adjacency.shape[0]} items but there are {n} raw vectors"
        )
    dtype = compute_dtype(raw)
    inv_norms, mean = normalized_mean(raw, block_rows)
    kind, where = _resolve_backend(backend, device)
    # The sparse product needs random access to all rows: keep X as it is when it already
    # has the compute precision (no copy); on the CPU a narrower array is kept too and
    # converted block by block and strip by strip; anything else is converted once.
    same = isinstance(raw, np.ndarray) and raw.dtype == dtype
    narrow = kind == "numpy" and isinstance(raw, np.ndarray) and not same
    dense = raw if same or narrow else np.asarray(raw, dtype)
    if kind == "numpy":
        ops: Any = _NumpyOps(dense, os.cpu_count() or 1, dtype)
    else:
        ops = _TorchOps(dense, where)
    try:
        inv_dev = ops.asarray(inv_norms.astype(dtype))
        mean_dev = ops.asarray(mean.astype(dtype))
        scatter, upper_cross, isolated = (ops.zeros(dim, dim) for _ in range(3))
        mean_weight = ops.zeros(dim, 1)  # Σ_b Z_bᵀ (U1)_b, for the μ part of (U X̄)
        if graph is not None and graph.n_edges:
            upper = strict_upper_triangle(graph.adjacency)
            upper_row_sums = ops.asarray(np.asarray(upper.sum(axis=1)).astype(dtype))  # (n, 1)
            upper.data = (upper.data * inv_norms[upper.indices]).astype(dtype)  # U·diag(1/||x||)
            isolated_rows = ~graph.connected
        else:
            upper = None
            isolated_rows = np.zeros(n, dtype=bool)
        # A narrower X is converted one column strip at a time for the sparse product, and
        # the per-block sums ride along with the first strip: one pass over the blocks per
        # strip (without a graph, one strip of zero width: just the sums).
        if upper is not None and narrow:
            width = max(1, min(dim, STRIP_BYTES // max(1, n * dtype.itemsize)))
            strips = [(first, min(first + width, dim)) for first in range(0, dim, width)]
        else:
            strips = [(0, dim if upper is not None else 0)]
        for index, (first, last) in enumerate(strips):
            strip = (np.ascontiguousarray(ops.dense[:, first:last], dtype=dtype)
                     if narrow and upper is not None else None)
            for start in range(0, n, block_rows):
                stop = min(start + block_rows, n)
                centered = ops.rows(start, stop) * inv_dev[start:stop, None]
                centered -= mean_dev
                if upper is not None:
                    # Z_bᵀ(U X̄)_b = Z_bᵀ(U diag(1/||x||))_b X − Z_bᵀ(U1)_b μᵀ; the second
                    # term is a D-vector times μᵀ, applied once after the pass.
                    if strip is None:
                        ops.accumulate_graph(upper_cross, centered, upper[start:stop])
                    else:
                        ops.accumulate_graph(upper_cross[:, first:last], centered,
                                             upper[start:stop], strip)
                if index == 0:
                    ops.accumulate(scatter, centered, centered)
                    iso = isolated_rows[start:stop]
                    if iso.any():
                        alone = centered[ops.asarray(iso)]
                        ops.accumulate(isolated, alone, alone)
                    if upper is not None:
                        ops.accumulate(mean_weight, centered, upper_row_sums[start:stop])
                if progress is not None:  # rows' worth of the whole pass, all strips
                    progress((index * n + stop) // len(strips))
            del strip
        scatter_h, cross_h, isolated_h, mean_weight_h = (
            ops.to_host(m) for m in (scatter, upper_cross, isolated, mean_weight)
        )
    finally:
        ops.close()
    scatter_h = (scatter_h + scatter_h.T) / 2  # exact symmetry for eigh
    if upper is None:
        graph_variation = np.zeros_like(scatter_h)
    else:
        connected_scatter = scatter_h - (isolated_h + isolated_h.T) / 2  # X̄ᵀ Π_V X̄
        cross_h = cross_h - mean_weight_h @ mean[None, :]  # X̄ᵀ U X̄
        graph_variation = connected_scatter - (cross_h + cross_h.T)  # − X̄ᵀ A_n X̄
    return Moments(n, mean, scatter_h, graph_variation)
