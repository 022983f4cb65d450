"""Rec-PCA end to end: counts and raw vectors in, a projection and its diagnostics out.

The project's formulation of TF-LLMER's Rec-PCA (see the README's "Rec-PCA" section):

1. ``x̂_i = x_i/||x_i||``; 2. ``μ = mean x̂_i``, ``X̄ = X̂ − 1μᵀ``;
3. ``A = f(C)``, ``A_n = D^{-1/2} A D^{-1/2}``, ``L = Π_V − A_n``;
4. ``S = X̄ᵀX̄``, ``G = X̄ᵀLX̄``; 5. ``M = S/tr(S) − λ·G/tr(G)``, ``W`` = top-d eigenvectors;
6. served ``e_i = normalize(Tᵀ Wᵀ(x̂_i − μ))``, ``T = (WᵀSW/n)^(-p/2)`` (whitening
   exponent ``p``, default 0: ``T = I``, the reference formulation).

λ is given directly or chosen by a retention budget ρ (the default): the largest λ whose
retained variance is at least ρ × plain PCA's. A fixed λ does not transfer between catalogs
because the scales of ``S`` and ``G`` differ; ρ does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from server.recpca.diagnostics import alignment_over_blocks
from server.recpca.graph import GraphOptions, build_graph
from server.recpca.moments import (
    DEFAULT_BLOCK_ROWS,
    Backend,
    Moments,
    ProgressCallback,
    compute_moments,
    validate_raw,
)
from server.recpca.projection import Projection, transform_together
from server.recpca.row_blocks import ArrayRowBlocks, RowBlocks
from server.recpca.solve import lambda_for_retention, scores, solve, whitener
from server.recpca.streamed import Run, run_locally, streamed_moments

DEFAULT_RETENTION = 0.8
DEFAULT_WHITENING = 0.0  # chosen on validation by bench.value (README, "What TF-LLMER buys")


@dataclass(frozen=True)
class FitSettings:
    dim: int = 64
    lam: float | None = None  # set λ directly, or
    retention: float | None = None  # choose λ by this budget (DEFAULT_RETENTION if neither)
    graph: GraphOptions = GraphOptions()
    whitening: float = DEFAULT_WHITENING  # exponent p in [0, 1]; 0 = none (the reference)

    def __post_init__(self) -> None:
        if self.lam is not None and self.retention is not None:
            raise ValueError("give either lambda or a retention budget, not both")
        if not 0 <= self.whitening <= 1:
            raise ValueError(f"whitening exponent must be in [0, 1], got {self.whitening}")

    @property
    def effective_retention(self) -> float | None:
        if self.lam is not None:
            return None
        return DEFAULT_RETENTION if self.retention is None else self.retention


@dataclass(frozen=True)
class FitDiagnostics:
    """Recorded next to every version; the ``pca_*`` fields are plain PCA (λ = 0) on the
    same normalized vectors, for comparison."""

    lam: float
    retention_budget: float | None
    retained_variance: float
    graph_tv: float | None
    alignment: float | None
    pca_retained_variance: float
    pca_graph_tv: float | None
    pca_alignment: float | None
    alignment_k: int
    n_items: int
    n_edges: int
    graph_to_scatter_trace: float | None  # tr(G)/tr(S): where λ starts to bite (≈ 1)
    whitening: float = 0.0  # the exponent p the served map was whitened with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FitResult:
    projection: Projection
    moments: Moments
    diagnostics: FitDiagnostics
    served: np.ndarray  # every fitted item's served vector (n × d float32), what is published


@cache
def _thread_pools() -> ThreadpoolController:
    """Scanning the loaded BLAS libraries takes milliseconds: do it once per process."""
    return ThreadpoolController()


def fit_projection(moments: Moments, settings: FitSettings) -> Projection:
    """Solve for ``W`` from precomputed moments (cheap: D×D work only).

    The D×D eigensolves run on one BLAS thread: at this size a second thread only
    contends (measured 2× faster single-threaded at D = 768 on 2 cores).
    """
    with _thread_pools().limit(limits=1, user_api="blas"):
        retention = settings.effective_retention
        if retention is None:  # only when λ is given directly
            assert settings.lam is not None
            lam = float(settings.lam)
        else:
            lam = lambda_for_retention(moments, settings.dim, retention)
        components = solve(moments, settings.dim, lam)
        return Projection(components, moments.mean, lam,
                          whitener(moments, components, settings.whitening))


def plain_pca(moments: Moments, settings: FitSettings) -> Projection:
    """λ = 0 with the same dim and whitening: what a fit is compared with, so only λ differs."""
    components = solve(moments, settings.dim, 0.0)
    return Projection(components, moments.mean, 0.0,
                      whitener(moments, components, settings.whitening))


# A served space's vectors of every item, yielded in row blocks in order; callable again
# for a second pass (a streamed fit recomputes them rather than hold them).
EmbeddingBlocks = Callable[[], Iterable[np.ndarray]]


def diagnose(
    moments: Moments,
    projection: Projection,
    pca_projection: Projection,
    spaces: tuple[EmbeddingBlocks, EmbeddingBlocks] | None,
    counts: sp.csr_matrix | None,
    settings: FitSettings,
    alignment_k: int = 10,
    alignment_sample: int | None = 2000,
    n_edges: int = 0,
) -> FitDiagnostics:
    """``spaces`` yields every item's vectors under ``projection`` and ``pca_projection``
    (read for alignment only, so None without counts)."""
    fitted = scores(moments, projection.components)
    pca = scores(moments, pca_projection.components)
    if counts is not None and counts.nnz and spaces is not None:
        alignment, pca_alignment = (
            alignment_over_blocks(space, counts, alignment_k, alignment_sample)
            for space in spaces)
    else:
        alignment = pca_alignment = None
    return FitDiagnostics(
        lam=projection.lam,
        retention_budget=settings.effective_retention,
        retained_variance=fitted.retained_variance,
        graph_tv=fitted.graph_tv,
        alignment=alignment,
        pca_retained_variance=pca.retained_variance,
        pca_graph_tv=pca.graph_tv,
        pca_alignment=pca_alignment,
        alignment_k=alignment_k,
        n_items=moments.n_items,
        n_edges=n_edges,
        graph_to_scatter_trace=(
            moments.trace_graph / moments.trace_scatter if moments.has_graph else None
        ),
        whitening=settings.whitening,
    )


def fit_recpca(
    raw: Any,
    counts: sp.spmatrix | sp.sparray | None,
    settings: FitSettings = FitSettings(),
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    backend: Backend = "auto",
    device: str | None = None,
    progress: ProgressCallback | None = None,
    alignment_k: int = 10,
    alignment_sample: int | None = 2000,
    phase: Callable[[str], None] | None = None,
    run: Run | None = None,
) -> FitResult:
    """Fit Rec-PCA on ``raw`` (n × D) and co-occurrence ``counts`` (n × n, or None).
    ``phase`` hears "solve" and "diagnostics" as those steps start (after the moments).
    ``run`` computes the moments as block tasks on that engine (``streamed_moments``, blocks
    of ``block_rows``) instead of in this process."""
    n_items = getattr(raw, "shape", (0,))[0]
    graph = build_graph(counts, n_items, settings.graph) if counts is not None else None
    n_edges = graph.n_edges if graph is not None else 0
    if run is None:
        moments = compute_moments(
            raw, graph, block_rows=block_rows, backend=backend, device=device,
            progress=progress,
        )
    else:
        validate_raw(raw)
        moments = streamed_moments(ArrayRowBlocks(raw, block_rows), graph, run=run,
                                   progress=progress)
    if phase is not None:
        phase("solve")
    projection = fit_projection(moments, settings)
    if phase is not None:
        phase("diagnostics")
    validated = sp.csr_matrix(counts) if counts is not None else None
    pca_projection = plain_pca(moments, settings)
    if validated is not None and validated.nnz:  # alignment scores both spaces: one pass
        vectors, pca_vectors = transform_together(raw, [projection, pca_projection], block_rows)
        spaces = (lambda: [vectors], lambda: [pca_vectors])
        diagnostics = diagnose(moments, projection, pca_projection, spaces, validated,
                               settings, alignment_k, alignment_sample, n_edges)
        del spaces, pca_vectors
    else:
        vectors = projection.transform(raw, block_rows)
        diagnostics = diagnose(moments, projection, pca_projection, None, validated, settings,
                               alignment_k, alignment_sample, n_edges)
    return FitResult(projection, moments, diagnostics, vectors)


def fit_recpca_streamed(
    blocks: RowBlocks,
    counts: sp.spmatrix | sp.sparray | None,
    settings: FitSettings = FitSettings(),
    *,
    run: Run = run_locally,
    progress: ProgressCallback | None = None,
    alignment_k: int = 10,
    alignment_sample: int | None = 2000,
    phase: Callable[[str], None] | None = None,
) -> FitResult:
    """``fit_recpca`` over a ``RowBlocks`` source that is never held whole: the moments as
    block tasks (``streamed_moments`` on ``run``), then the served vectors and the
    diagnostics block by block (plain PCA's vectors are recomputed per pass, never held).
    Besides ``counts`` and the graph, memory is a few blocks plus the n × d served vectors
    it returns (which a version stores anyway)."""
    graph = build_graph(counts, blocks.n_rows, settings.graph) if counts is not None else None
    n_edges = graph.n_edges if graph is not None else 0
    moments = streamed_moments(blocks, graph, run=run, progress=progress)
    del graph  # the diagnostics need the counts only
    if phase is not None:
        phase("solve")
    projection = fit_projection(moments, settings)
    if phase is not None:
        phase("diagnostics")
    vectors = projection.transform_all(blocks)
    validated = sp.csr_matrix(counts) if counts is not None else None
    pca_projection = plain_pca(moments, settings)
    spaces = (lambda: (vectors[start:stop] for start, stop in blocks.block_bounds()),
              lambda: pca_projection.transform_blocks(blocks))
    diagnostics = diagnose(moments, projection, pca_projection, spaces, validated, settings,
                           alignment_k, alignment_sample, n_edges)
    return FitResult(projection, moments, diagnostics, vectors)
