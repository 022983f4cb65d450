"""A production-sized ``RefitProjection``: end-to-end seconds and the server's peak memory.

Set-up (not timed): a private ``redis-server``; a catalog of ``--items`` items whose raw
vectors (dim ``--dim``) are stored as float16, written straight through the store API
(``RedisStore.commit_items``, what ``UpsertItems`` ends in) with synthetic vectors (shared
offset, uneven norms), because encoding a million texts would take an hour on a CPU; then
``--nnz`` co-occurrence non-zeros (``nnz / 2`` distinct unordered pairs, geometric counts)
pushed through the ``PushCooccurrence`` RPC by the real ``CooccurrencePusher``.

Measured: ``RefitProjection`` (d = 64, the default retention budget, activate) through the
real server (``python -m server``, its own process): the seconds from request to reply, and
the server process's peak RSS during the call (``VmHWM``, reset before each call; the
server's idle RSS, with the encoder model loaded, is reported beside it). After each refit,
the floor on the same data in this process: covariance PCA (float32 conversion, centering,
``XᵀX``, ``eigh``) plus one scipy ``A @ X`` with the full symmetric count matrix, the least
work any Rec-PCA fit of this matrix does. Targets: peak RSS ≤ the raw matrix's size + 2 GiB;
median refit ÷ median floor ≤ 1.5.

    python -m bench.refit [--items 1000000 --dim 384 --nnz 20000000 --repeats 3]

Prints a table and writes ``bench/results/refit.{json,md}``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import scipy.sparse as sp

from bench.harness import (
    MB,
    config_from,
    config_parser,
    load_synthetic_catalog,
    median_of,
    server_process,
)
from bench.harness import progress as _progress
from bench.report import RESULTS_DIR, Target, machine_info, write_results
from harness.redis_server import RedisServer
from harness.server_process import ServerProcess
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.stores.base import EncoderIdentity
from server.stores.redis_store import RedisStore
from trainer_client.client import EmbeddingClient
from trainer_client.pusher import CooccurrencePusher

NAME = "refit"
CATALOG = "bench-refit"
HEADROOM_MB = 2048
FLOOR_RATIO = 1.5


@dataclass(frozen=True)
class Config:
    items: int = 1_000_000
    dim: int = 384
    nnz: int = 20_000_000
    components: int = 64
    repeats: int = 3
    seed: int = 0


def progress(message: str) -> None:
    _progress(NAME, message)


def random_pairs(n: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pairs`` distinct unordered pairs ``lo < hi`` with geometric counts ≥ 1."""
    if pairs > n * (n - 1) // 2:
        raise ValueError(f"{n} items have fewer than {pairs} distinct pairs")
    rng = np.random.default_rng(seed)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < pairs:
        i, j = rng.integers(0, n, size=(2, pairs - len(keys) + 1024), dtype=np.int64)
        keep = i != j
        lo, hi = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
        keys = np.unique(np.concatenate([keys, lo * n + hi]))
    keys = keys[rng.permutation(len(keys))[:pairs]]
    weights = rng.geometric(0.5, size=pairs).astype(np.float32)
    return keys // n, keys % n, weights


def symmetric_counts(n: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray
                     ) -> sp.csr_matrix:
    return sp.csr_matrix((np.concatenate([weights, weights]),
                          (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                         shape=(n, n))


def floor_seconds(raw: np.ndarray, adjacency: sp.csr_matrix) -> float:
    """Covariance PCA of ``raw`` plus one sparse product ``A @ X``, timed together."""
    start = time.perf_counter()
    x = raw.astype(np.float32)
    x -= x.mean(axis=0)
    np.linalg.eigh(x.T @ x)
    adjacency @ x
    return time.perf_counter() - start


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds while running (a profile of when
    memory is taken; the peak itself comes from ``VmHWM``)."""

    def __init__(self, server: ServerProcess, interval: float = 0.25) -> None:
        self.server, self.interval = server, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter() - start, self.server.rss_bytes() / MB))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(config: Config) -> dict[str, Any]:
    encoder = EncoderIdentity("synthetic", config.dim)
    runs: list[dict[str, Any]] = []
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="bench-refit-") as tmp:
        store = RedisStore(redis.url)
        progress(f"writing {config.items} × {config.dim} float16 raw vectors through the store")
        load_synthetic_catalog(store, CATALOG, config.items, encoder, "<f2", config.seed)
        rows, cols, weights = random_pairs(config.items, config.nnz // 2, config.seed + 1)
        with server_process(redis.url, Path(tmp) / "server.log") as server:
            progress(f"pushing {len(rows)} pairs ({config.nnz} non-zeros) through the RPC")
            with EmbeddingClient(server.address, token="", deadline_s=3600) as client:
                start = time.perf_counter()
                CooccurrencePusher(client, CATALOG, "bench", Path(tmp) / "push.json").push(
                    rows, cols, weights)
                push_s = time.perf_counter() - start
            adjacency = symmetric_counts(config.items, rows, cols, weights)
            del rows, cols, weights
            raw_matrix = store.read_raw_stored(CATALOG, 0, config.items)
            idle_mb = server.rss_bytes() / MB
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                for repeat in range(config.repeats):
                    progress(f"repeat {repeat + 1}/{config.repeats}: RefitProjection")
                    baseline = server.rss_bytes() / MB
                    server.reset_peak()
                    with RssSampler(server) as sampler:
                        start = time.perf_counter()
                        reply = stub.RefitProjection(pb.RefitProjectionRequest(
                            catalog=CATALOG, activate=True,
                            parameters=pb.FitParameters(dim=config.components)), timeout=3600)
                        seconds = time.perf_counter() - start
                    runs.append({
                        "seconds": seconds, "fit_seconds": reply.version.fit_seconds,
                        "baseline_rss_mb": baseline, "peak_rss_mb": server.peak_rss_bytes() / MB,
                        "version": reply.version.version,
                        "lam": reply.version.diagnostics.lam,
                        "rss_samples": [(round(t, 2), round(m, 1)) for t, m in sampler.samples],
                    })
                    progress(f"repeat {repeat + 1}/{config.repeats}: the floor in this process")
                    runs[-1]["floor_seconds"] = floor_seconds(raw_matrix, adjacency)
        totals = store.cooccurrence_totals(CATALOG)
        store.close()
    return {"idle_rss_mb": idle_mb, "push_s": push_s, "pairs": totals.pairs,
            "raw_mb": config.items * config.dim * 2 / MB, "runs": runs}


def report(config: Config, raw: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    runs = raw["runs"]
    seconds = median_of([r["seconds"] for r in runs])
    floor = median_of([r["floor_seconds"] for r in runs])
    peak = max(r["peak_rss_mb"] for r in runs)
    bound = raw["raw_mb"] + HEADROOM_MB
    checks = [Target("peak_rss", "server peak RSS during RefitProjection (MiB)", peak, bound,
                     at_most=True),
              Target("refit_vs_floor", "median RefitProjection s ÷ median floor s (covariance "
                     "PCA + one A·X on the same matrix, same run)", seconds / floor,
                     FLOOR_RATIO, at_most=True)]
    rows = [{"repeat": i + 1, "refit_s": r["seconds"], "floor_s": r["floor_seconds"],
             "fit_s (server)": r["fit_seconds"],
             "rss_before_mb": r["baseline_rss_mb"], "peak_rss_mb": r["peak_rss_mb"],
             "raw_mb": raw["raw_mb"], "bound_mb": bound, "lam": r["lam"]}
            for i, r in enumerate(runs)]
    machine = machine_info()
    payload = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": machine,
        "data": "synthetic raw vectors written through the store API as float16; random "
                "co-occurrence pairs pushed through PushCooccurrence",
        "median_refit_s": seconds,
        "median_floor_s": floor,
        "peak_rss_mb": peak,
        "raw": raw,
        "targets": {check.key: check.to_dict() for check in checks},
    }
    notes = [
        f"{config.items} items × D = {config.dim} raw float16 ({raw['raw_mb']:.0f} MiB), "
        f"{config.nnz} co-occurrence non-zeros ({raw['pairs']} pairs, pushed in "
        f"{raw['push_s']:.3g} s), d = {config.components}; {machine['nproc']} cores "
        f"({machine['cpu_model']}); server idle RSS {raw['idle_rss_mb']:.0f} MiB (encoder "
        f"model loaded); median refit {seconds:.3g} s, median floor {floor:.3g} s over "
        f"{config.repeats} repeats",
        *(check.note() for check in checks),
    ]
    columns = ["repeat", "refit_s", "floor_s", "fit_s (server)", "rss_before_mb",
               "peak_rss_mb", "raw_mb", "bound_mb", "lam"]
    json_path, md_path = write_results(NAME, payload, rows, columns, notes, results_dir)
    progress(f"wrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = config_parser("python -m bench.refit", __doc__, Config(), {
        "nnz": "stored non-zeros of the symmetric count matrix (nnz/2 pairs) [%(default)s]"})
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.items <= args.components:
        parser.error("need --repeats >= 1 and --items > --components")
    return config_from(args, Config), args.results_dir


def main(argv: list[str] | None = None) -> None:
    config, results_dir = parse_args(argv)
    report(config, run(config), results_dir)


if __name__ == "__main__":
    main()
