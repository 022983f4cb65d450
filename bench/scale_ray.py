"""The Rec-PCA fit on Ray over a raw file store: agreement, 2 workers vs 1, per-block costs.

An ``items × dim`` float16 catalog is written to a raw file store in a temporary directory
on this machine (``server.stores.raw_files``: Arrow IPC block files of ``block_mb``, CRC-checked
on every read), with a random co-occurrence graph of ``nnz`` stored non-zeros. Then:

* the single-process fit (every block read into memory, ``compute_moments`` +
  ``fit_projection``) is the reference;
* the Ray fit (``streamed_moments`` on ``RayEngine`` over the file store's ``RowBlocks``, in
  task blocks of at least ``task_rows`` rows: each task reads its own blocks from the
  files) runs on one local Ray of 2 CPUs with at most 1 and at most 2 tasks in flight
  (``max_in_flight``: 1 and 2 workers busy), alternating, ``repeats`` times each. Its wall
  time is the moments plus ``fit_projection``, the driver's pair slicing and reductions
  included; Ray's start is not (a cluster is started once, not per refit);
* per-block costs are measured in this process on one BLAS thread (what one Ray worker
  gets) on a few task blocks: block read, norm pass, Gram, graph pairs (per block read and
  per non-zero), driver reduction and pair slicing, and the eigensolve at several D. The
  README's sizing model is computed from them (``sizing`` in the JSON).

Targets: ``ray_fit_agreement`` (max principal-angle sine, Ray vs single process, ≤ 1e-5) and
``ray_fit_2_workers_vs_1`` (median wall time, 2 workers ÷ 1 worker, ≤ 0.75).
``python -m bench.scale_ray [--items 2000000 --dim 256 ...]``
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from bench.harness import config_from, config_parser, median_of
from bench.harness import progress as say_to
from bench.recpca_fit import make_counts
from bench.report import RESULTS_DIR, Target, machine_info, markdown_table, write_results
from server.fit_engines.ray_engine import RayEngine
from server.recpca import FitSettings, build_graph, compute_moments, fit_projection
from server.recpca.graph import NormalizedGraph, strict_upper_triangle
from server.recpca.moments import row_norms
from server.recpca.row_blocks import CoarserRowBlocks, RowBlocks
from server.recpca.solve import top_eigenvectors
from server.recpca.streamed import (
    NormTask,
    ProductTask,
    norm_task,
    pair_slices,
    product_task,
    streamed_moments,
)
from server.stores.raw_files import RawFileStore

NAME = "scale_ray"
CATALOG, EPOCH, DTYPE = "scale", "e0", "<f2"
MiB = 2**20


@dataclass(frozen=True)
class Config:
    items: int = 2_000_000
    dim: int = 256
    nnz: int = 20_000_000  # stored non-zeros of the symmetric counts (10 per item)
    block_mb: int = 16  # the file store's block files (its default)
    task_rows: int = 262_144  # task blocks: 8 for 2M items
    # At λ ≈ 1 the Rec-PCA objective of these vectors has near-equal eigenvalues past ~20:
    # at 32, float32 rounding alone moves the subspace by ~2e-5 (the control below shows it)
    fit_dim: int = 16
    repeats: int = 3
    cost_blocks: int = 3  # task blocks whose costs are measured one by one
    eig_dims: str = "256,512,1024"
    seed: int = 0


def say(message: str) -> None:
    say_to(NAME, message)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = function()
    return time.perf_counter() - began, value


def max_principal_sine(a: np.ndarray, b: np.ndarray) -> float:
    """``||(I − aaᵀ)b||₂`` for orthonormal bases: the sine of the largest principal angle."""
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    return float(min(1.0, np.linalg.norm(qb - qa @ (qa.T @ qb), 2)))


# --- the catalog ----------------------------------------------------------------------------


def write_catalog(config: Config, root: Path) -> tuple[RowBlocks, float]:
    """The float16 vectors (a rank-32 signal with decaying spectrum over noise, an offset and
    log-normal norms, as ``bench.recpca_fit.make_vectors``) written block by block."""
    files = RawFileStore(str(root), block_bytes=config.block_mb * MiB)
    rows = files.block_rows(config.dim, DTYPE)
    rng = np.random.default_rng(config.seed)
    rank = min(32, config.dim)
    basis = rng.standard_normal((rank, config.dim), dtype=np.float32)
    basis *= (1.0 / np.sqrt(np.arange(1, rank + 1, dtype=np.float32)))[:, None]
    offset = rng.standard_normal(config.dim, dtype=np.float32)
    began, entries = time.perf_counter(), []
    for start in range(0, config.items, rows):
        count = min(rows, config.items - start)
        local = np.random.default_rng([config.seed, start])
        block = local.standard_normal((count, rank), dtype=np.float32) @ basis
        block += 0.3 * local.standard_normal((count, config.dim), dtype=np.float32) + offset
        block *= local.lognormal(0.0, 0.5, size=(count, 1)).astype(np.float32)
        entries.append(files.write_block(CATALOG, EPOCH, start, block, DTYPE))
    seconds = time.perf_counter() - began
    return files.row_blocks(CATALOG, EPOCH, entries, config.items, config.dim, DTYPE), seconds


# --- per-block costs ------------------------------------------------------------------------


def block_costs(config: Config, blocks: CoarserRowBlocks, graph: NormalizedGraph,
                inv_norms: np.ndarray, mean: np.ndarray) -> dict[str, Any]:
    """Costs of the task kinds on the first ``cost_blocks`` task blocks, one BLAS thread."""
    bounds = blocks.block_bounds()
    upper = strict_upper_triangle(graph.adjacency)
    slicing, (owned, row_sums) = timed(
        lambda: pair_slices(upper, bounds, inv_norms, np.dtype(np.float32)))
    per: dict[str, list[float]] = {key: [] for key in (
        "read_s", "norm_s", "gram_s", "pairs_s", "pair_reads", "pair_nnz", "rows")}
    for index in range(min(config.cost_blocks, len(bounds))):
        start, stop = bounds[index]
        common = dict(index=index, start=start, stop=stop, dim=config.dim,
                      compute_dtype=np.dtype(np.float32), inv_norms=inv_norms[start:stop],
                      mean=mean)
        read, _ = timed(lambda index=index: blocks.read_block(index))
        norm, _ = timed(lambda index=index, start=start, stop=stop: norm_task(
            blocks, NormTask(index, start, stop, config.dim, np.dtype(np.float32))))
        alone = ProductTask(**common, isolated=None, pairs=(), pair_row_sums=None,
                            other_bounds={})
        full = ProductTask(**common, isolated=~graph.connected[start:stop],
                           pairs=tuple(owned[index]), pair_row_sums=row_sums[index],
                           other_bounds={pair.other: bounds[pair.other]
                                         for pair in owned[index]})
        gram, _ = timed(lambda alone=alone: product_task(blocks, alone))
        with_pairs, _ = timed(lambda full=full: product_task(blocks, full))
        others = sum(pair.other != index for pair in owned[index])
        per["read_s"].append(read)
        per["norm_s"].append(norm - read)
        per["gram_s"].append(gram - read)
        per["pairs_s"].append(with_pairs - gram)
        per["pair_reads"].append(others)
        per["pair_nnz"].append(sum(pair.matrix.nnz for pair in owned[index]))
        per["rows"].append(stop - start)
    rows = np.array(per["rows"], float)
    read_per_row = float(np.sum(per["read_s"]) / rows.sum())
    # The pair part of a task: its other blocks' reads, the Z_bᵀ·(U X̂) GEMM (the Gram's
    # shape) and the sparse products; what is left after the first two is per non-zero.
    sparse = [pairs - reads * read_per_row * (stop_rows) - gram
              for pairs, reads, stop_rows, gram in zip(per["pairs_s"], per["pair_reads"],
                                                        per["rows"], per["gram_s"], strict=True)]
    dim = config.dim
    reduction, _ = timed(lambda: [np.add(np.zeros((dim, dim)), np.ones((dim, dim)))
                                  for _ in range(30)])
    return {
        "measured_at": {"dim": dim, "rows_per_task_block": per["rows"],
                        "file_block_mb": config.block_mb, "dtype": "float16"},
        "per_block": per,
        "read_s_per_row": read_per_row,
        "norm_s_per_row_dim": float(np.sum(per["norm_s"]) / rows.sum() / dim),
        "gram_s_per_row_dim2": float(np.sum(per["gram_s"]) / rows.sum() / dim**2),
        "pair_sparse_s_per_nnz_dim": float(max(0.0, np.sum(sparse))
                                           / max(1, np.sum(per["pair_nnz"])) / dim),
        "driver_pair_slicing_s_per_nnz": slicing / max(1, upper.nnz),
        # one product result: 3 D×D float64 additions (scatter, isolated, cross)
        "driver_reduction_s_per_task_dim2": 3 * reduction / 30 / dim**2,
    }


def eigensolve_costs(config: Config) -> dict[str, float]:
    """Seconds of one top-``fit_dim`` eigensolve of a symmetric D × D matrix, per D."""
    rng = np.random.default_rng(config.seed)
    seconds = {}
    for dim in (int(d) for d in config.eig_dims.split(",")):
        half = rng.standard_normal((dim, dim))
        matrix = half @ half.T
        seconds[str(dim)] = min(timed(lambda m=matrix, d=dim:
                                      top_eigenvectors(m, min(config.fit_dim, d)))[0]
                                for _ in range(2))
    return seconds


# --- the run --------------------------------------------------------------------------------


def run(config: Config, workdir: Path) -> dict[str, Any]:
    raw_out: dict[str, Any] = {"load_average_before": load_average()}
    say(f"writing {config.items} × {config.dim} float16 to a raw file store in {workdir}")
    blocks, raw_out["write_seconds"] = write_catalog(config, workdir / "raw")
    say(f"{len(blocks.block_bounds())} block files; building {config.nnz} counts")
    graph = build_graph(make_counts(config.items, config.nnz, config.seed), config.items)
    settings = FitSettings(dim=config.fit_dim)
    controller = ThreadpoolController()

    say("single-process reference (all blocks in memory)")
    began = time.perf_counter()
    matrix = np.concatenate([blocks.read_block(i) for i in range(len(blocks.block_bounds()))])
    read_all = time.perf_counter() - began
    moments = compute_moments(matrix, graph, backend="numpy")
    moments_s = time.perf_counter() - began - read_all
    solve_s, single = timed(lambda: fit_projection(moments, settings))
    # The float32 floor: the single-process fit with another block split, and plain PCA.
    control = fit_projection(compute_moments(matrix, graph, backend="numpy", block_rows=5000),
                             settings)
    raw_out["control_sine_single_process_other_blocks"] = max_principal_sine(
        single.components, control.components)
    pca = fit_projection(moments, FitSettings(dim=config.fit_dim, lam=0.0))
    raw_out["single_process"] = {"read_seconds": read_all, "moments_seconds": moments_s,
                                 "fit_projection_seconds": solve_s,
                                 "fit_seconds": moments_s + solve_s}
    task_blocks = CoarserRowBlocks(blocks, config.task_rows)
    with controller.limit(limits=1, user_api="blas"):
        inv_norms = np.concatenate([1.0 / row_norms(matrix[a:b].astype(np.float32), a)
                                    for a, b in task_blocks.block_bounds()])
        del matrix
        say("per-block costs")
        costs = block_costs(config, task_blocks, graph, inv_norms, moments.mean)
        costs["eigensolve_s"] = eigensolve_costs(config)
    one_solve = costs["eigensolve_s"].get(str(config.dim))
    # fit_projection = the retention search's eigensolves (+ small D × D products)
    costs["eigensolves_per_fit"] = solve_s / one_solve if one_solve else None
    raw_out["costs"] = costs

    say("Ray: one local cluster of 2 CPUs")
    engine = RayEngine(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start_s, _ = timed(engine.ensure_started)
    engines = {1: RayEngine(max_in_flight=1), 2: RayEngine(max_in_flight=2)}
    warm = CoarserRowBlocks(blocks, config.items)  # one task per pass: starts the workers
    for chosen in engines.values():
        streamed_moments(warm, None, run=chosen)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    sines: list[float] = []
    pca_sines: list[float] = []
    for repeat in range(config.repeats):
        for workers in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            load = load_average()
            began = time.perf_counter()
            streamed = streamed_moments(blocks, graph, run=engines[workers],
                                        task_rows=config.task_rows)
            projection = fit_projection(streamed, settings)
            seconds[workers].append(time.perf_counter() - began)
            took = seconds[workers][-1]
            sines.append(max_principal_sine(single.components, projection.components))
            pca_sines.append(max_principal_sine(pca.components, fit_projection(
                streamed, FitSettings(dim=config.fit_dim, lam=0.0)).components))
            say(f"repeat {repeat}: {workers} worker(s) {took:.1f} s (load {load[0]}), "
                f"sine {sines[-1]:.2e}")
    import ray

    ray.shutdown()
    raw_out.update({
        "ray_start_seconds": start_s, "ray_seconds": {str(k): v for k, v in seconds.items()},
        "sines": sines, "pca_sines": pca_sines, "lam": single.lam,
        "load_average_after": load_average(),
        "task_blocks": len(task_blocks.block_bounds()), "file_blocks": len(blocks.block_bounds()),
        "graph_stored_nnz": int(graph.adjacency.nnz),
    })
    return raw_out


def sizing(costs: dict[str, Any], workers: tuple[int, ...], shapes: tuple[tuple[int, int], ...],
           nnz_per_item: float, task_block_gb: float) -> list[dict[str, Any]]:
    """Time and memory of a Ray fit extrapolated from the measured per-unit costs.

    Worker work scales as measured per row·D (reads, norm pass), row·D² (the Gram and the
    Zᵀ(UX̂) GEMM: two per block) and non-zero·D (sparse pairs), spread over ``workers``;
    the driver's pair slicing (per non-zero), reductions (per task, D²) and eigensolves (D³
    from the largest D measured, as many as the fit measured here used) are serial. A
    random graph leaves no block pair empty, so with whole-block reads (what ``RowBlocks``
    does today) pass 2 reads about ``n_blocks / 2`` times the matrix; with row reads (a
    store that serves row ranges: not built) it would read only the rows a pair uses.
    Reads run at the rate measured here (page cache, CRC-checked); an object store is
    slower, so the read terms scale with its throughput instead."""
    eig = costs["eigensolve_s"]
    largest = max(int(d) for d in eig)
    solves = costs["eigensolves_per_fit"] or 12
    rows: list[dict[str, Any]] = []
    for items, dim in shapes:
        for count in workers:
            # task blocks of at most task_block_gb (float16), and at least 2 per worker
            n_blocks = max(-(-items * dim * 2 // int(task_block_gb * 2**30)), 2 * count)
            block_rows = -(-items // n_blocks)
            rows.append(_sized(costs, items, dim, count, n_blocks, block_rows, nnz_per_item,
                               solves, eig[str(largest)] * (dim / largest) ** 3))
    return rows


def _sized(costs: dict[str, Any], items: int, dim: int, workers: int, n_blocks: int,
           block_rows: int, nnz_per_item: float, solves: float, eig_s: float) -> dict[str, Any]:
    nnz_upper = items * nnz_per_item / 2
    pairs = min(n_blocks * (n_blocks + 1) / 2, nnz_upper)  # block pairs with non-zeros
    read_rows = {"whole_blocks": items + (pairs - n_blocks) * block_rows,
                 "row_reads": items + min(nnz_upper, (pairs - n_blocks) * block_rows)}
    read_per_row = costs["read_s_per_row"] * dim / costs["measured_at"]["dim"]
    compute_s = (items * dim * costs["norm_s_per_row_dim"]
                 + 2 * items * dim**2 * costs["gram_s_per_row_dim2"]
                 + nnz_upper * dim * costs["pair_sparse_s_per_nnz_dim"])
    driver_s = (nnz_upper * costs["driver_pair_slicing_s_per_nnz"]
                + n_blocks * dim**2 * costs["driver_reduction_s_per_task_dim2"]
                + solves * eig_s)
    # stored block, centered and U·X̂ (float32), one other block, a gathered copy, D × D
    task_gb = (block_rows * dim * (2 + 4 + 4 + 2 + 4) + 3 * dim**2 * 8
               + nnz_upper / n_blocks * 16) / 2**30
    # counts, A_n and U (CSR, 12 B per stored entry), the pair slices, 1/||x||, D × D sums
    driver_gb = (items * nnz_per_item * 12 * 3 + nnz_upper * 16 + items * 8
                 + 6 * dim**2 * 8) / 2**30
    row: dict[str, Any] = {"items": items, "dim": dim, "workers": workers,
                           "task_blocks": n_blocks, "driver_seconds": driver_s,
                           "task_memory_gb": task_gb, "driver_memory_gb": driver_gb}
    for mode, rows_read in read_rows.items():
        worker_s = compute_s + (items + rows_read) * read_per_row  # both passes
        row[f"matrix_reads_{mode}"] = (items + rows_read) / items
        row[f"fit_seconds_{mode}"] = worker_s / workers + driver_s
    return row


def report(config: Config, raw: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    one, two = (median_of(raw["ray_seconds"][k]) for k in ("1", "2"))
    sine = max(raw["sines"])
    targets = [
        Target("ray_fit_agreement",
               "max principal-angle sine, Ray fit vs single process (float16 store, float32 "
               "compute)", sine, 1e-5, at_most=True),
        Target("ray_fit_2_workers_vs_1",
               f"median wall time of the Ray fit, 2 workers ÷ 1 worker, {config.items} × "
               f"{config.dim} from a raw file store", two / one, 0.75, at_most=True),
    ]
    model = sizing(raw["costs"], (1, 8, 64), ((10_000_000, 1024), (100_000_000, 4096)),
                   config.nnz / config.items, task_block_gb=1.0)
    rows = [{"fit": "single process (in memory)", "seconds": raw["single_process"]["fit_seconds"]},
            {"fit": "Ray, 1 worker", "seconds": one, "all": raw["ray_seconds"]["1"]},
            {"fit": "Ray, 2 workers", "seconds": two, "all": raw["ray_seconds"]["2"]}]
    payload = {"benchmark": NAME, "config": asdict(config), "machine": machine_info(),
               "targets": {t.key: t.to_dict() for t in targets}, "raw": raw,
               "sizing": model}
    columns = ["items", "dim", "workers", "task_blocks", "matrix_reads_whole_blocks",
               "fit_seconds_whole_blocks", "matrix_reads_row_reads", "fit_seconds_row_reads",
               "driver_seconds", "task_memory_gb", "driver_memory_gb"]
    sizing_md = ("## Sizing model (extrapolated from the measured costs; 1 GB float16 task "
                 "blocks, the same non-zeros per item)\n\n" + markdown_table(model, columns))
    notes = [t.note() for t in targets] + [
        f"float32 floor: the single-process fit with another block split differs by sine "
        f"{raw['control_sine_single_process_other_blocks']:.2e}; plain PCA (λ = 0) Ray vs single "
        f"process {max(raw['pca_sines']):.2e} (fit dim {config.fit_dim}, λ = {raw['lam']:.4g})",
        f"load average before {raw['load_average_before']}, after {raw['load_average_after']} "
        f"(2 cores shared with other engineers' runs)",
        f"{raw['file_blocks']} block files of {config.block_mb} MiB, {raw['task_blocks']} task "
        f"blocks of ≥ {config.task_rows} rows; {raw['graph_stored_nnz']} stored non-zeros; "
        f"Ray start {raw['ray_start_seconds']:.1f} s (not timed in the fits)",
    ]
    write_results(NAME, payload, rows, ["fit", "seconds", "all"], notes, results_dir,
                  more_markdown=sizing_md)


def main(argv: list[str] | None = None) -> None:
    parser = config_parser("python -m bench.scale_ray", __doc__, Config())
    parser.add_argument("--report-from", type=Path, default=None,
                        help="re-render the tables and the sizing model of a saved JSON")
    args = parser.parse_args(argv)
    if args.report_from is not None:
        saved = json.loads(args.report_from.read_text())
        report(Config(**saved["config"]), saved["raw"], args.results_dir)
        return
    config = config_from(args, Config)
    workdir = Path(tempfile.mkdtemp(prefix="scale_ray-"))
    try:
        report(config, run(config, workdir), args.results_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
