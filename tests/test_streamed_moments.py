"""The streamed, block-task moments equal the single-process ones (``compute_moments``), and a
fit on them spans the same subspace; the task split (blocks, pair owners) changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.recpca_fit import make_counts, make_vectors
from server.recpca import FitSettings, build_graph, compute_moments, fit_projection
from server.recpca.graph import strict_upper_triangle
from server.recpca.row_blocks import ArrayRowBlocks, CoarserRowBlocks, RowBlocks
from server.recpca.streamed import owner, pair_slices, streamed_moments
from tests.recpca_cases import largest_principal_angle, make_case, random_counts


def assert_same_moments(streamed: Any, reference: Any, rtol: float) -> None:
    scale = np.abs(reference.scatter).max()
    assert streamed.n_items == reference.n_items
    np.testing.assert_allclose(streamed.mean, reference.mean, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(streamed.scatter, reference.scatter, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(streamed.graph_variation, reference.graph_variation,
                               rtol=rtol, atol=rtol * scale)


class UnevenBlocks:
    """Blocks of the given sizes, in order, over an array (a file store's blocks need not be
    of one size)."""

    def __init__(self, array: np.ndarray, sizes: Sequence[int]) -> None:
        self.array, self.cuts = array, np.concatenate(([0], np.cumsum(sizes)))
        assert self.cuts[-1] == len(array)

    n_rows = property(lambda self: len(self.array))
    dim = property(lambda self: self.array.shape[1])
    dtype = property(lambda self: self.array.dtype)

    def block_bounds(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in zip(self.cuts[:-1], self.cuts[1:], strict=True)]

    def read_block(self, index: int) -> np.ndarray:
        start, stop = self.block_bounds()[index]
        return self.array[start:stop]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("with_graph", [True, False])
def test_streamed_moments_equal_single_process(dtype: type, with_graph: bool) -> None:
    case = make_case(seed=3, n=1500, raw_dim=20, dim=5, isolated=40)
    raw = case.raw.astype(dtype)
    graph = build_graph(case.counts, len(raw)) if with_graph else None
    reference = compute_moments(raw, graph, backend="numpy")
    streamed = streamed_moments(ArrayRowBlocks(raw, 128), graph)
    assert_same_moments(streamed, reference, rtol=1e-12 if dtype == np.float64 else 2e-5)
    assert streamed.has_graph == with_graph


def test_isolated_items_and_uneven_blocks_match() -> None:
    case = make_case(seed=5, n=900, raw_dim=12, dim=4, isolated=300)  # a third isolated
    graph = build_graph(case.counts, 900)
    assert (~graph.connected).sum() >= 300
    blocks = UnevenBlocks(case.raw, [1, 400, 37, 2, 300, 160])
    assert_same_moments(streamed_moments(blocks, graph),
                        compute_moments(case.raw, graph, backend="numpy"), rtol=1e-12)


def test_fit_on_streamed_float32_moments_spans_the_single_process_subspace() -> None:
    """On data whose top-16 subspace is determined (a rank-32 signal over noise: the bench's
    vectors); at a vanishing eigengap float32 rounding alone moves the subspace, whichever
    path sums the blocks."""
    raw = make_vectors(4000, 64, seed=0)
    graph = build_graph(make_counts(4000, 40_000, seed=0), len(raw))
    fit = FitSettings(dim=16)
    single = fit_projection(compute_moments(raw, graph, backend="numpy"), fit)
    streamed = fit_projection(streamed_moments(ArrayRowBlocks(raw, 333), graph), fit)
    assert np.sin(largest_principal_angle(single.components, streamed.components)) <= 1e-5


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=12), seed=st.integers(0, 2**16))
def test_any_block_split_gives_the_same_moments(sizes: list[int], seed: int) -> None:
    n = sum(sizes)
    if n < 3:
        sizes, n = sizes + [3], n + 3
    case = make_case(seed, n, raw_dim=6, dim=2, isolated=min(3, n - 2))
    graph = build_graph(case.counts, n)
    assert_same_moments(streamed_moments(UnevenBlocks(case.raw, sizes), graph),
                        compute_moments(case.raw, graph, backend="numpy"), rtol=1e-10)


@pytest.mark.parametrize("n_blocks", [1, 2, 5, 8])
def test_every_block_pair_has_one_owner_and_owners_share_the_pairs(n_blocks: int) -> None:
    owned = [0] * n_blocks
    for b in range(n_blocks):
        for c in range(b, n_blocks):
            who = owner(b, c, n_blocks)
            assert who in (b, c)
            owned[who] += 1
    assert sum(owned) == n_blocks * (n_blocks + 1) // 2
    assert max(owned) - min(owned) <= 1  # block 0 does not read every other block


def test_tasks_read_only_blocks_that_share_an_edge() -> None:
    """Pairs without a non-zero of U are never read: a graph whose edges stay inside blocks
    makes every task read its own block only (once per pass)."""
    n, size = 400, 100
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((n, 8))
    rows = rng.integers(0, size, 2000) + size * rng.integers(0, n // size, 2000)
    cols = rows - rows % size + rng.integers(0, size, 2000)  # same block as the row
    keep = rows != cols
    upper = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    graph = build_graph((upper + upper.T).tocsr(), n)
    reads: list[int] = []

    class Counting(ArrayRowBlocks):
        def read_block(self, index: int) -> np.ndarray:
            reads.append(index)
            return super().read_block(index)

    streamed = streamed_moments(Counting(raw, size), graph)
    assert sorted(reads) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert_same_moments(streamed, compute_moments(raw, graph, backend="numpy"), rtol=1e-12)


def test_the_engine_runs_every_task_and_progress_counts_rows() -> None:
    case = make_case(seed=1, n=500, raw_dim=6, dim=2)
    graph = build_graph(case.counts, 500)
    calls: list[int] = []

    def reversed_run(function: Callable[[RowBlocks, Any], Any], source: RowBlocks,
                     tasks: Sequence[Any]) -> list[Any]:
        calls.append(len(tasks))
        return [function(source, task) for task in reversed(tasks)]  # any order will do

    seen: list[int] = []
    streamed = streamed_moments(ArrayRowBlocks(case.raw, 64), graph, run=reversed_run,
                                progress=seen.append)
    assert calls == [8, 8]  # the norm pass, then the product pass
    assert seen == sorted(seen) and seen[-1] == 500 and len(seen) == 8
    assert_same_moments(streamed, compute_moments(case.raw, graph, backend="numpy"), rtol=1e-12)


def test_bad_rows_and_bad_blocks_are_refused_with_the_row() -> None:
    raw = np.ones((50, 4))
    raw[:, 0] = np.arange(50)
    raw[33] = np.nan
    with pytest.raises(ValueError, match="row 33 contains NaN"):
        streamed_moments(ArrayRowBlocks(raw, 10))
    raw[33] = 0.0
    with pytest.raises(ValueError, match="row 33 is all zeros"):
        streamed_moments(ArrayRowBlocks(raw, 10))
    with pytest.raises(ValueError, match="cover 0..50"):
        streamed_moments(UnevenBlocks(np.ones((50, 4)), [20, 0, 30]))

    class Short(ArrayRowBlocks):
        def read_block(self, index: int) -> np.ndarray:
            return super().read_block(index)[:-1]

    with pytest.raises(ValueError, match="row block 0 has shape"):
        streamed_moments(Short(np.random.default_rng(0).standard_normal((50, 4)), 10))
    with pytest.raises(ValueError, match="graph covers 7 items"):
        streamed_moments(ArrayRowBlocks(np.ones((50, 4)), 10),
                         build_graph(sp.csr_matrix((7, 7)), 7))


def test_sparse_pairs_gather_their_rows_and_dense_pairs_take_the_block() -> None:
    """Both ways of reading the other block of a pair give the single-process moments."""
    n = 1200
    case = make_case(seed=9, n=n, raw_dim=10, dim=3)
    sparse = random_counts(np.random.default_rng(1), n, pairs=n, isolated=0)
    dense = random_counts(np.random.default_rng(1), n, pairs=60 * n, isolated=0)
    for counts in (sparse, dense):
        graph = build_graph(counts, n)
        bounds = ArrayRowBlocks(case.raw, 100).block_bounds()
        owned, _ = pair_slices(strict_upper_triangle(graph.adjacency), bounds,
                               np.ones(n), np.dtype(np.float64))
        kinds = {pair.rows is None for pairs in owned for pair in pairs}
        assert kinds == ({False} if counts is sparse else {True})
        assert_same_moments(streamed_moments(ArrayRowBlocks(case.raw, 100), graph),
                            compute_moments(case.raw, graph, backend="numpy"), rtol=1e-12)


@pytest.mark.parametrize("task_rows", [1, 150, 401, 10_000])
def test_coarser_task_blocks_give_the_same_moments_with_fewer_reads(task_rows: int) -> None:
    case = make_case(seed=11, n=1000, raw_dim=8, dim=3)
    graph = build_graph(case.counts, 1000)
    source = UnevenBlocks(case.raw, [100] * 7 + [50, 250])
    coarse = CoarserRowBlocks(source, task_rows)
    sizes = [stop - start for start, stop in coarse.block_bounds()]
    assert sum(sizes) == 1000 and all(size >= min(task_rows, 100) for size in sizes[:-1])
    assert len(sizes) == {1: 9, 150: 5, 401: 2, 10_000: 1}[task_rows]
    assert_same_moments(streamed_moments(source, graph, task_rows=task_rows),
                        compute_moments(case.raw, graph, backend="numpy"), rtol=1e-12)


def test_one_large_task_block_keeps_the_precision_of_small_blocks() -> None:
    """A float32 product over a whole 120k-row task block would round like one long sum;
    the task sums 8192-row products in float64, as compute_moments does."""
    raw = make_vectors(120_000, 16, seed=3)
    exact = compute_moments(raw.astype(np.float64), None, backend="numpy").scatter
    single = compute_moments(raw, None, backend="numpy").scatter
    one_block = streamed_moments(ArrayRowBlocks(raw, 120_000), None).scatter
    floor = np.abs(single - exact).max()
    assert np.abs(one_block - exact).max() <= 2 * floor
