"""The moments of ``compute_moments`` as independent tasks over row blocks.

``compute_moments`` holds the whole raw matrix, because the graph term ``Z_bᵀ (U X̂)_b`` needs
random access to every row. Here every quantity is a sum over tasks that each read their own
blocks through a ``RowBlocks`` source, so the matrix is never held in one place and the tasks
can run on any engine (``run``): in this process, one after the other (the default), or on a
cluster (``server.fit_engines``).

* Pass 1, one task per block ``b``: ``1/||x_i||`` (validating every row) and ``Σ x̂_i``.
* Pass 2, one task per block ``b``: ``Z_bᵀZ_b``, the isolated rows' ``Z_bᵀZ_b``, and the graph
  term of the block pairs the task owns. ``X̄ᵀA_nX̄ = T + Tᵀ`` with ``T = X̄ᵀUX̄`` and ``U`` the
  strict upper triangle, so an unordered pair ``{b, c}`` is needed once, as ``Z_bᵀU_bcZ_c``
  or, read from the other side, as its transpose ``Z_cᵀU_bcᵀZ_b``: both add the same to
  ``T + Tᵀ``. Pair ``{b, c}`` is owned by whichever block reaches the other within half the
  cycle of blocks, so every task reads about ``n_blocks / 2`` other blocks instead of block
  0 reading all of them; pairs without a non-zero of ``U`` are never read.

A task holds its block, its centered copy, one other block, the running ``U_b·X̂`` (rows of
b × D) and its slice of ``U``: memory is O(D² + a few blocks + the slice). The D × D sums are
reduced in float64 by the caller of ``run``; the products run in the compute precision of
``compute_moments`` (float32 for float16/float32 input, float64 for float64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from server.recpca.graph import NormalizedGraph, strict_upper_triangle
from server.recpca.moments import DEFAULT_BLOCK_ROWS, Moments, ProgressCallback, row_norms
from server.recpca.row_blocks import CoarserRowBlocks, RowBlocks

Task = TypeVar("Task")
Result = TypeVar("Result")
# An execution engine: maps ``function(source, task)`` over ``tasks`` and yields the results,
# in any order. ``source`` is the same for every task (an engine ships it once).
Run = Callable[[Callable[[RowBlocks, Any], Any], RowBlocks, Sequence[Any]], Iterable[Any]]


def run_locally(
    function: Callable[[RowBlocks, Task], Result], source: RowBlocks, tasks: Sequence[Task]
) -> Iterator[Result]:
    """The default engine: every task in this process, in order."""
    for task in tasks:
        yield function(source, task)


@dataclass(frozen=True)
class NormTask:
    index: int  # block
    start: int
    stop: int
    dim: int
    compute_dtype: np.dtype


@dataclass(frozen=True)
class NormResult:
    index: int
    inv_norms: np.ndarray  # float64, (rows of the block,)
    total: np.ndarray  # Σ x̂ over the block, float64 (D,)


@dataclass(frozen=True)
class PairSlice:
    """The part of ``U`` (or its transpose) between the task's block and block ``other``:
    rows local to the task's block; column ``j`` stands for row ``rows[j]`` of ``other`` (all
    its rows in order when ``rows`` is None) and is already scaled by that row's ``1/||x||``.
    A sparse pair converts only the rows it uses to the compute dtype."""

    other: int
    matrix: sp.csr_matrix
    rows: np.ndarray | None


@dataclass(frozen=True)
class ProductTask:
    index: int
    start: int
    stop: int
    dim: int
    compute_dtype: np.dtype
    inv_norms: np.ndarray  # of the block's rows, float64
    mean: np.ndarray  # μ, float64
    isolated: np.ndarray | None  # rows of the block without a neighbour (graph only)
    pairs: tuple[PairSlice, ...]  # the block pairs this task owns (graph only)
    pair_row_sums: np.ndarray | None  # Σ over pairs of the unscaled slices' row sums
    other_bounds: dict[int, tuple[int, int]]  # [start, stop) of each other block it reads


@dataclass(frozen=True)
class ProductResult:
    index: int
    rows: int
    scatter: np.ndarray  # Z_bᵀZ_b, float64
    isolated: np.ndarray | None  # Z_bᵀZ_b over isolated rows
    cross: np.ndarray | None  # Σ_pairs Z_bᵀ S diag(1/||x||) X_other
    mean_weight: np.ndarray | None  # Σ_pairs Z_bᵀ (S 1), (D,)


def _read(source: RowBlocks, index: int, start: int, stop: int, dim: int) -> np.ndarray:
    block = source.read_block(index)
    if block.shape != (stop - start, dim):
        raise ValueError(
            f"row block {index} has shape {block.shape}, expected ({stop - start}, {dim})"
        )
    return block


def _summed(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``leftᵀ right`` in float64, from products over at most ``DEFAULT_BLOCK_ROWS`` rows at a
    time in the compute precision: the rounding of ``compute_moments``, whatever the size of
    a task's block (one float32 product over 10⁵+ rows loses digits the eigensolve needs)."""
    total = np.zeros((left.shape[1],) + right.shape[1:], dtype=np.float64)
    for start in range(0, len(left), DEFAULT_BLOCK_ROWS):
        stop = start + DEFAULT_BLOCK_ROWS
        total += left[start:stop].T @ right[start:stop]
    return total


def norm_task(source: RowBlocks, task: NormTask) -> NormResult:
    """Pass 1 on one block (the arithmetic of ``normalized_mean``)."""
    block = np.asarray(_read(source, task.index, task.start, task.stop, task.dim),
                       dtype=task.compute_dtype)
    inv = 1.0 / row_norms(block, task.start)
    total = _summed(inv.astype(task.compute_dtype)[:, None], block)[0]
    return NormResult(task.index, inv, total)


def product_task(source: RowBlocks, task: ProductTask) -> ProductResult:
    """Pass 2 on one block: its scatter and the graph term of the pairs it owns."""
    dtype = task.compute_dtype
    raw = _read(source, task.index, task.start, task.stop, task.dim)
    centered = np.asarray(raw, dtype=dtype) * task.inv_norms.astype(dtype)[:, None]
    centered -= task.mean.astype(dtype)
    scatter = _summed(centered, centered)
    isolated = None
    if task.isolated is not None:
        alone = centered[task.isolated]
        isolated = _summed(alone, alone)
    cross = mean_weight = None
    if task.pairs:
        assert task.pair_row_sums is not None
        reached = np.zeros_like(centered)  # Σ_pairs S diag(1/||x||) X_other
        for pair in task.pairs:
            if pair.other == task.index:
                other = raw
            else:
                start, stop = task.other_bounds[pair.other]
                other = _read(source, pair.other, start, stop, task.dim)
            used = other if pair.rows is None else other[pair.rows]
            reached += pair.matrix @ np.asarray(used, dtype=dtype)
            del other, used
        cross = _summed(centered, reached)
        mean_weight = _summed(centered, task.pair_row_sums.astype(dtype))
    return ProductResult(task.index, task.stop - task.start, scatter, isolated, cross,
                         mean_weight)


def validate_blocks(blocks: RowBlocks) -> list[tuple[int, int]]:
    """The checks of ``validate_raw`` on a block source, plus gap-free block bounds."""
    n, dim, dtype = blocks.n_rows, blocks.dim, np.dtype(blocks.dtype)
    if n < 2:
        raise ValueError(f"a fit needs at least 2 items, got {n}")
    if dim < 1:
        raise ValueError("raw vectors must have at least one dimension")
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"raw vectors must be floating point, got {dtype}")
    bounds = [(int(start), int(stop)) for start, stop in blocks.block_bounds()]
    expected = 0
    for start, stop in bounds:
        if start != expected or stop <= start:
            raise ValueError(f"row blocks must cover 0..{n} in order without gaps or empty "
                             f"blocks; found [{start}, {stop}) after row {expected}")
        expected = stop
    if expected != n:
        raise ValueError(f"row blocks end at row {expected}, but there are {n} rows")
    return bounds


def owner(row_block: int, column_block: int, n_blocks: int) -> int:
    """Which task computes pair ``{row_block < column_block}``: the one that reaches the
    other within half the cycle of blocks (ties at exactly half go to the row block)."""
    if column_block - row_block <= n_blocks // 2:
        return row_block
    return column_block


def pair_slices(
    upper: sp.csr_matrix, bounds: Sequence[tuple[int, int]], inv_norms: np.ndarray,
    dtype: np.dtype,
) -> tuple[list[list[PairSlice]], list[np.ndarray]]:
    """Cut ``U`` into the block pairs with non-zeros, each given to its owner: per block, its
    pair slices and the row sums of their unscaled values (compute dtype)."""
    n_blocks = len(bounds)
    starts = np.array([start for start, _ in bounds])
    owned: list[list[PairSlice]] = [[] for _ in range(n_blocks)]
    row_sums = [np.zeros(stop - start, dtype=np.float64) for start, stop in bounds]
    for b, (start, stop) in enumerate(bounds):
        rows_b = upper[start:stop].tocoo()
        if rows_b.nnz == 0:
            continue
        column_block = np.searchsorted(starts, rows_b.col, side="right") - 1
        order = np.argsort(column_block, kind="stable")
        cuts = np.searchsorted(column_block[order], np.arange(n_blocks + 1))
        for c in range(b, n_blocks):
            picked = order[cuts[c] : cuts[c + 1]]
            if len(picked) == 0:
                continue
            c_start = bounds[c][0]
            local_rows, columns = rows_b.row[picked], rows_b.col[picked]
            values = rows_b.data[picked]
            if owner(b, c, n_blocks) == b:  # U_bc: rows in b, columns in c
                target, other = b, c
                mine, theirs, scaled_by = local_rows, columns - c_start, columns
            else:  # U_bcᵀ: rows in c, columns in b
                target, other = c, b
                mine, theirs, scaled_by = columns - c_start, local_rows, start + local_rows
            row_sums[target] += np.bincount(mine, weights=values,
                                            minlength=len(row_sums[target]))
            scaled = (values * inv_norms[scaled_by]).astype(dtype)
            other_rows = bounds[other][1] - bounds[other][0]
            used, position = np.unique(theirs, return_inverse=True)
            if len(used) > other_rows // 2:  # dense enough: convert the whole block
                matrix = sp.csr_matrix((scaled, (mine, theirs)),
                                       shape=(len(row_sums[target]), other_rows))
                owned[target].append(PairSlice(other, matrix, None))
            else:
                matrix = sp.csr_matrix((scaled, (mine, position)),
                                       shape=(len(row_sums[target]), len(used)))
                owned[target].append(PairSlice(other, matrix, used))
    return owned, [sums.astype(dtype) for sums in row_sums]


def streamed_moments(
    blocks: RowBlocks,
    graph: NormalizedGraph | None = None,
    *,
    run: Run = run_locally,
    progress: ProgressCallback | None = None,
    task_rows: int | None = None,
) -> Moments:
    """``compute_moments`` of the matrix ``blocks`` stands for, computed as block tasks on
    ``run``. ``progress`` hears the number of rows finished after each product task.
    ``task_rows`` joins consecutive blocks into task blocks of at least that many rows
    (``CoarserRowBlocks``): fewer, larger blocks mean fewer reads in the graph pass."""
    if task_rows is not None:
        blocks = CoarserRowBlocks(blocks, task_rows)
    bounds = validate_blocks(blocks)
    n, dim = blocks.n_rows, blocks.dim
    if graph is not None and graph.adjacency.shape != (n, n):
        raise ValueError(
            f"graph covers {graph.adjacency.shape[0]} items but there are {n} raw vectors"
        )
    dtype = np.dtype(np.float64) if np.dtype(blocks.dtype) == np.float64 else np.dtype(np.float32)

    inv_norms = np.empty(n, dtype=np.float64)
    total = np.zeros(dim, dtype=np.float64)
    norm_tasks = [NormTask(i, start, stop, dim, dtype) for i, (start, stop) in enumerate(bounds)]
    for norm in run(norm_task, blocks, norm_tasks):
        start, stop = bounds[norm.index]
        inv_norms[start:stop] = norm.inv_norms
        total += norm.total
    mean = total / n

    with_graph = graph is not None and graph.n_edges > 0
    if with_graph:
        assert graph is not None
        owned, row_sums = pair_slices(strict_upper_triangle(graph.adjacency), bounds,
                                      inv_norms, dtype)
        isolated_rows = ~graph.connected
    product_tasks = [
        ProductTask(
            i, start, stop, dim, dtype, inv_norms[start:stop], mean,
            isolated_rows[start:stop] if with_graph else None,
            tuple(owned[i]) if with_graph else (),
            row_sums[i] if with_graph else None,
            {pair.other: bounds[pair.other] for pair in owned[i]} if with_graph else {},
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    scatter = np.zeros((dim, dim))
    isolated = np.zeros((dim, dim))
    cross = np.zeros((dim, dim))
    mean_weight = np.zeros(dim)
    done = 0
    for part in run(product_task, blocks, product_tasks):
        scatter += part.scatter
        if part.isolated is not None:
            isolated += part.isolated
        if part.cross is not None:
            assert part.mean_weight is not None
            cross += part.cross
            mean_weight += part.mean_weight
        done += part.rows
        if progress is not None:
            progress(done)

    scatter = (scatter + scatter.T) / 2  # exact symmetry for eigh
    if not with_graph:
        return Moments(n, mean, scatter, np.zeros_like(scatter))
    connected_scatter = scatter - (isolated + isolated.T) / 2  # X̄ᵀ Π_V X̄
    cross -= mean_weight[:, None] @ mean[None, :]  # pieces of X̄ᵀ U X̄ (some transposed)
    return Moments(n, mean, scatter, connected_scatter - (cross + cross.T))
