"""How much a Rec-PCA fit costs next to plain PCA, and how fast trainers count co-occurrences.

Measured in one run, on one synthetic catalog (defaults: n = 100,000 items, D = 768,
d = 64, a random symmetric count graph with 5M non-zeros, float32 vectors with low-rank
structure, a shared mean direction and uneven norms, like LLM embeddings):

* ``recpca`` — the Rec-PCA fit the server runs: ``build_graph`` + ``compute_moments``
  (numpy backend) + ``fit_projection`` (λ by the default retention budget); no diagnostics.
  The three stages are also timed separately.
* ``cov_pca`` — plain covariance PCA: ``XᵀX − n·μμᵀ`` (no centered copy of X), ``eigh``,
  top d.
* ``sklearn_pca`` — ``sklearn.decomposition.PCA(n_components=d).fit(X)`` (its default
  solver, which scikit-learn ≥ 1.5 resolves to ``covariance_eigh`` for tall X);
  ``sklearn_pca_randomized`` — the same with ``svd_solver="randomized"``, for context.
* ``sparse_ax`` — one ``A @ X`` with the float32 CSR graph: the pass over the graph that
  Rec-PCA needs beyond PCA, so ``cov_pca + sparse_ax`` is the floor to compare it with.

Each method runs in its own fresh subprocess, which first builds X and the counts. Before
each repeat it trims the heap (glibc ``malloc_trim``, so freed temporaries do not sit in RSS),
takes the baseline RSS and resets the peak (``/proc/self/clear_refs`` ← 5 resets ``VmHWM``;
Linux only); after it, it reads ``VmHWM``. "Peak above baseline" (max over repeats) is the
method's own working memory; the child's total peak is what a process holding X and the
counts needs. Children never import torch (it would inflate RSS). Times are medians of the
repeats.

Co-occurrence counting is timed on MovieLens-1M training prefixes (leave-one-out, window 3)
in another child pinned to one core with single-threaded BLAS; pairs/s = window pairs / s.

    python -m bench.recpca_fit [--n 100000 --dim 768 --nnz 5000000 --repeats 3]

Prints a table and writes ``bench/results/recpca_fit.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.report import Target, machine_info, write_results

NAME = "recpca_fit"
METHODS = ("recpca", "cov_pca", "sklearn_pca", "sklearn_pca_randomized", "sparse_ax")
COOCCURRENCE = "cooccurrence"
COOCCURRENCE_DATASET = "ml-1m"
COOCCURRENCE_WINDOW = 3
REPO_ROOT = Path(__file__).resolve().parents[1]
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MB = 2**20

Runner = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Config:
    n: int = 100_000
    dim: int = 768
    components: int = 64
    nnz: int = 5_000_000
    repeats: int = 3
    seed: int = 0

    def cli_args(self) -> list[str]:
        """The same configuration as flags, for the child processes."""
        return [arg for key, value in asdict(self).items() for arg in (f"--{key}", str(value))]


def progress(message: str) -> None:
    print(f"[{NAME}] {message}", file=sys.stderr, flush=True)


# --- synthetic inputs ----------------------------------------------------------------------


def make_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """float32 ``n × dim``: rank-32 signal with decaying spectrum + isotropic noise, a shared
    offset and log-normal norms, so PCA has a real subspace to find and normalization matters."""
    rng = np.random.default_rng(seed)
    rank = min(32, dim)
    basis = rng.standard_normal((rank, dim), dtype=np.float32)
    basis *= (1.0 / np.sqrt(np.arange(1, rank + 1, dtype=np.float32)))[:, None]
    x = rng.standard_normal((n, rank), dtype=np.float32) @ basis
    x += 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    x += rng.standard_normal(dim, dtype=np.float32)
    x *= rng.lognormal(0.0, 0.5, size=(n, 1)).astype(np.float32)
    return x


def make_counts(n: int, nnz: int, seed: int) -> sp.csr_matrix:
    """Symmetric float64 CSR with exactly ``nnz // 2`` distinct off-diagonal pairs (so ``nnz``
    stored entries when even), zero diagonal, and geometric (heavy-ish tailed) counts ≥ 1."""
    pairs = nnz // 2
    if pairs > n * (n - 1) // 2:
        raise ValueError(f"{n} items have fewer than {pairs} distinct pairs")
    rng = np.random.default_rng(seed + 1)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < pairs:  # redraw until enough distinct pairs; duplicates are rare
        i, j = rng.integers(0, n, size=(2, pairs), dtype=np.int64)
        off_diagonal = i != j
        lo, hi = np.minimum(i, j)[off_diagonal], np.maximum(i, j)[off_diagonal]
        keys = np.unique(np.concatenate([keys, lo * n + hi]))
    keys = keys[rng.permutation(len(keys))[:pairs]]
    weights = rng.geometric(0.5, size=pairs).astype(np.float64)
    upper = sp.csr_matrix((weights, (keys // n, keys % n)), shape=(n, n))
    return (upper + upper.T).tocsr()


# --- memory --------------------------------------------------------------------------------


def status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def release_free_heap() -> None:
    """Hand freed malloc memory back to the OS (glibc ``malloc_trim``). Without it, freed
    temporaries (input generation, earlier repeats) stay resident, RSS overstates the live
    data, and the next allocations reuse those pages without raising the peak."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure untrimmed
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> None:
    """Set ``VmHWM`` back to the current RSS, so the peak covers only what runs next."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


# --- the methods ---------------------------------------------------------------------------


def prepare(method: str, x: np.ndarray, counts: sp.csr_matrix, components: int) -> Runner:
    """Imports and untimed set-up for ``method``, done before the baseline is taken; the
    returned runner does the timed work and returns small extras (never the big result, so
    one repeat's output is freed before the next starts)."""
    if method == "recpca":
        from server.recpca.fit import FitSettings, fit_projection
        from server.recpca.graph import GraphOptions, build_graph
        from server.recpca.moments import compute_moments

        settings, options = FitSettings(dim=components), GraphOptions()

        def recpca() -> dict[str, Any]:
            start = time.perf_counter()
            graph = build_graph(counts, len(x), options)
            built = time.perf_counter()
            moments = compute_moments(x, graph, backend="numpy")
            summed = time.perf_counter()
            projection = fit_projection(moments, settings)
            solved = time.perf_counter()
            return {
                "build_graph_s": built - start,
                "compute_moments_s": summed - built,
                "fit_projection_s": solved - summed,
                "lam": projection.lam,
            }

        return recpca
    if method == "cov_pca":

        def cov_pca() -> dict[str, Any]:
            mean = x.mean(axis=0, dtype=np.float64)
            scatter = (x.T @ x).astype(np.float64) - len(x) * np.outer(mean, mean)
            values, vectors = np.linalg.eigh(scatter)
            np.ascontiguousarray(vectors[:, : -components - 1 : -1])  # top d, largest first
            return {"explained_variance_ratio": float(values[-components:].sum() / values.sum())}

        return cov_pca
    if method in ("sklearn_pca", "sklearn_pca_randomized"):
        from sklearn.decomposition import PCA

        solver = "randomized" if method.endswith("randomized") else "auto"

        def sklearn_pca() -> dict[str, Any]:
            pca = PCA(n_components=components, svd_solver=solver, random_state=0).fit(x)
            return {
                "explained_variance_ratio": float(pca.explained_variance_ratio_.sum()),
                "svd_solver": pca._fit_svd_solver,  # what "auto" resolved to
            }

        return sklearn_pca
    if method == "sparse_ax":
        adjacency = counts.astype(np.float32)

        def sparse_ax() -> dict[str, Any]:
            adjacency @ x
            return {}

        return sparse_ax
    raise ValueError(f"unknown method {method!r}")


def summarize_extras(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric extra across repeats; other values from the first repeat."""
    summary: dict[str, Any] = {}
    for key, first in extras[0].items():
        numeric = isinstance(first, int | float) and not isinstance(first, bool)
        summary[key] = median(e[key] for e in extras) if numeric else first
    return summary


def method_child(method: str, config: Config) -> dict[str, Any]:
    """Build the inputs, then time ``method`` and measure its peak memory in this process.

    Every repeat starts from a trimmed heap with a fresh baseline and peak, so the first
    repeat's freed buffers cannot hide the next one's allocations."""
    progress(f"{method}: building X ({config.n}×{config.dim}) and the graph ({config.nnz} nnz)")
    x = make_vectors(config.n, config.dim, config.seed)
    counts = make_counts(config.n, config.nnz, config.seed)
    runner = prepare(method, x, counts, config.components)
    times, baselines, peaks, extras = [], [], [], []
    for repeat in range(config.repeats):
        gc.collect()
        release_free_heap()
        baselines.append(status_mb("VmRSS"))
        reset_peak_rss()
        progress(f"{method}: repeat {repeat + 1}/{config.repeats}")
        start = time.perf_counter()
        extras.append(runner())
        times.append(time.perf_counter() - start)
        peaks.append(status_mb("VmHWM"))
    overheads = [peak - base for peak, base in zip(peaks, baselines, strict=True)]
    return {
        "median_s": median(times),
        "times_s": times,
        "baseline_rss_mb": min(baselines),
        "peak_rss_mb": max(peaks),
        "peak_over_baseline_mb": max(overheads),
        "x_mb": x.nbytes / MB,
        "counts_nnz": counts.nnz,
        **summarize_extras(extras),
    }


def cooccurrence_child(repeats: int) -> dict[str, Any]:
    """Time ``count_cooccurrences`` on MovieLens-1M training prefixes on a single core."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from trainer_client.cooccurrence import count_cooccurrences, window_pairs
    from trainer_client.datasets import fetch
    from trainer_client.recbole_data import load_recbole
    from trainer_client.sequences import leave_one_out

    progress(f"{COOCCURRENCE}: loading {COOCCURRENCE_DATASET}")
    data = load_recbole(fetch(COOCCURRENCE_DATASET))
    train = leave_one_out(data.sequences).train
    n_items = len(data.catalog)
    pairs = len(window_pairs(train, COOCCURRENCE_WINDOW)[0])
    times = []
    for repeat in range(repeats):
        progress(f"{COOCCURRENCE}: repeat {repeat + 1}/{repeats}")
        start = time.perf_counter()
        count_cooccurrences(train, n_items, window=COOCCURRENCE_WINDOW)
        times.append(time.perf_counter() - start)
    return {
        "dataset": COOCCURRENCE_DATASET,
        "window": COOCCURRENCE_WINDOW,
        "users": len(train),
        "items": n_items,
        "train_interactions": len(train.items),
        "pairs": pairs,
        "cores": len(os.sched_getaffinity(0)),
        "median_s": median(times),
        "times_s": times,
        "pairs_per_s": pairs / median(times),
    }


# --- the parent ----------------------------------------------------------------------------


def spawn(child: str, config: Config, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one child in a fresh interpreter; its last stdout line is its JSON result."""
    progress(f"{child}: starting child process")
    command = [sys.executable, "-m", "bench.recpca_fit", "--_child", child, *config.cli_args()]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def targets(methods: dict[str, dict[str, Any]], cooccurrence: dict[str, Any]) -> list[Target]:
    recpca = methods["recpca"]
    floor = methods["cov_pca"]["median_s"] + methods["sparse_ax"]["median_s"]
    return [
        Target("time_vs_pca_plus_sparse", "recpca / (cov_pca + sparse_ax) time",
               recpca["median_s"] / floor, 1.1, at_most=True),
        Target("time_vs_sklearn", "recpca / sklearn_pca time",
               recpca["median_s"] / methods["sklearn_pca"]["median_s"], 1.5, at_most=True),
        Target("peak_total_vs_x", "recpca child's total peak RSS / size of X",
               recpca["peak_rss_mb"] / recpca["x_mb"], 1.5, at_most=True),
        Target("peak_overhead_vs_x", "recpca peak RSS above baseline / size of X",
               recpca["peak_over_baseline_mb"] / recpca["x_mb"], 1.5, at_most=True),
        Target("cooccurrence_pairs_per_s", "co-occurrence pairs/s on one core",
               cooccurrence["pairs_per_s"], 1e7, at_most=False),
    ]


def report(
    config: Config, methods: dict[str, dict[str, Any]], cooccurrence: dict[str, Any]
) -> None:
    checks = targets(methods, cooccurrence)
    payload = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": machine_info(),
        "methods": methods,
        "targets": {check.key: check.to_dict() for check in checks},
        COOCCURRENCE: cooccurrence,
    }
    rows = [{"method": name, **result} for name, result in methods.items()]
    columns = ["method", "median_s", "times_s", "peak_rss_mb", "peak_over_baseline_mb", "x_mb"]
    recpca = methods["recpca"]
    notes = [
        f"n={config.n}, D={config.dim}, d={config.components}, nnz={config.nnz}, "
        f"repeats={config.repeats}, {payload['machine']['nproc']} cores "
        f"({payload['machine']['cpu_model']})",
        "recpca stages (median s): "
        + ", ".join(f"{stage} {recpca[f'{stage}_s']:.3g}"
                    for stage in ("build_graph", "compute_moments", "fit_projection"))
        + f"; λ = {recpca['lam']:.4g}",
        f"sklearn PCA solver: {methods['sklearn_pca']['svd_solver']}",
        f"co-occurrence ({cooccurrence['dataset']}, window {cooccurrence['window']}, one core): "
        f"{cooccurrence['pairs']} pairs in {cooccurrence['median_s']:.3g} s (median)",
        *(check.note() for check in checks),
    ]
    json_path, md_path = write_results(NAME, payload, rows, columns, notes)
    progress(f"wrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None) -> tuple[Config, str | None]:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m bench.recpca_fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=defaults.n, help="items (rows of X)")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="raw dimension D")
    parser.add_argument("--components", type=int, default=defaults.components,
                        help="reduced dimension d")
    parser.add_argument("--nnz", type=int, default=defaults.nnz,
                        help="stored non-zeros of the symmetric count graph")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="timed repeats per method (the median is reported)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--_child", choices=(*METHODS, COOCCURRENCE), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    config = Config(args.n, args.dim, args.components, args.nnz, args.repeats, args.seed)
    return config, args._child


def main(argv: list[str] | None = None) -> None:
    config, child = parse_args(argv)
    if child == COOCCURRENCE:
        print(json.dumps(cooccurrence_child(config.repeats)))
    elif child is not None:
        print(json.dumps(method_child(child, config)))
    else:
        methods = {method: spawn(method, config) for method in METHODS}
        cooccurrence = spawn(COOCCURRENCE, config, SINGLE_THREAD_ENV)
        report(config, methods, cooccurrence)


if __name__ == "__main__":
    main()
