"""Server memory of a ``RefitProjection`` streamed from a raw file store (issue 17).

Set-up (not measured): the embedded SQLite store with ``--raw-store-url`` on a local
directory; a catalog of ``--items`` × ``--dim`` float16 raw vectors written straight through
the store API (``LocalStore.commit_items`` with a ``RawFileStore``, what ``UpsertItems`` ends
in: block files first, then the manifest in the commit) from synthetic vectors (shared
offset, uneven norms), because encoding a million texts would take an hour on a CPU; then
``--nnz`` co-occurrence non-zeros (``nnz / 2`` distinct unordered pairs, geometric counts)
pushed through the ``PushCooccurrence`` RPC by the real ``CooccurrencePusher``.

Measured: the real server (``python -m server``, its own process) serving one
``RefitProjection`` (d = 64, the default retention budget): its resident memory before the
call (idle: encoder model loaded, catalog created, counts pushed), and its peak during the
call (``VmHWM``, reset right before it, plus ``VmRSS`` sampled every 0.1 s for the profile).
With ``--baseline`` the same catalog is also refitted with its raw vectors kept in the store
(the in-memory fit, the default), same run, for comparison.

Target ``refit_peak_rss_file_store``: peak − idle ≤ 1 GiB (the raw matrix is streamed, never
held: at 1M × 384 float16 it alone is 732 MiB).

    python -m bench.scale_refit_memory [--items 1000000 --dim 384 --nnz 20000000]

Prints a table and writes ``bench/results/scale_refit_memory.{json,md}``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.harness import MB, config_from, config_parser, load_synthetic_catalog, server_process
from bench.harness import progress as _progress
from bench.refit import RssSampler, random_pairs
from bench.report import RESULTS_DIR, Target, machine_info, write_results
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.stores import LocalStore, RawFileStore
from server.stores.base import EncoderIdentity
from trainer_client.client import EmbeddingClient
from trainer_client.pusher import CooccurrencePusher

NAME = "scale_refit_memory"
CATALOG = "bench-scale"
BOUND_MB = 1024.0


@dataclass(frozen=True)
class Config:
    items: int = 1_000_000
    dim: int = 384
    nnz: int = 20_000_000
    components: int = 64
    baseline: int = 0  # 1: also refit with the raw vectors in the store
    seed: int = 0


def progress(message: str) -> None:
    _progress(NAME, message)


def measure(config: Config, directory: Path, raw_store: bool) -> dict[str, Any]:
    """Load the catalog into a fresh store (raw vectors in block files or in the store),
    start the server on it, push the counts, and measure one RefitProjection."""
    where = "block files" if raw_store else "the store"
    path, raw_dir = directory / "store.db", directory / "raw"
    files = RawFileStore(str(raw_dir)) if raw_store else None
    store = LocalStore(path, raw_files=files)
    progress(f"writing {config.items} × {config.dim} float16 raw vectors to {where}")
    started = time.perf_counter()
    load_synthetic_catalog(store, CATALOG, config.items, EncoderIdentity("synthetic", config.dim),
                           "<f2", config.seed)
    load_s = time.perf_counter() - started
    blocks = len(store.raw_blocks(CATALOG, config.items).block_bounds())
    store.close()
    flags = ["--raw-store-url", str(raw_dir)] if raw_store else []
    with server_process(str(path), directory / "server.log", *flags) as server:
        rows, cols, weights = random_pairs(config.items, config.nnz // 2, config.seed + 1)
        progress(f"pushing {len(rows)} pairs ({config.nnz} non-zeros) through the RPC")
        with EmbeddingClient(server.address, token="", deadline_s=3600) as client:
            CooccurrencePusher(client, CATALOG, "bench", directory / "push.json").push(
                rows, cols, weights)
        del rows, cols, weights
        time.sleep(1.0)
        idle_mb = server.rss_bytes() / MB
        progress(f"RefitProjection with raw vectors in {where} ({blocks} blocks)")
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            server.reset_peak()
            with RssSampler(server, interval=0.1) as sampler:
                started = time.perf_counter()
                reply = stub.RefitProjection(pb.RefitProjectionRequest(
                    catalog=CATALOG, activate=True,
                    parameters=pb.FitParameters(dim=config.components)), timeout=3600)
                seconds = time.perf_counter() - started
            peak_mb = server.peak_rss_bytes() / MB
    return {
        "raw_in": where, "blocks": blocks, "load_s": load_s, "idle_rss_mb": idle_mb,
        "peak_rss_mb": peak_mb, "above_idle_mb": peak_mb - idle_mb, "refit_s": seconds,
        "lam": reply.version.diagnostics.lam,
        "alignment": reply.version.diagnostics.alignment,
        "rss_samples": [(round(t, 2), round(m, 1)) for t, m in sampler.samples],
    }


def run(config: Config) -> dict[str, Any]:
    runs = []
    for raw_store in [True, *([False] if config.baseline else [])]:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            runs.append(measure(config, Path(tmp), raw_store))
    return {"raw_mb": config.items * config.dim * 2 / MB, "runs": runs}


def report(config: Config, raw: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    streamed = raw["runs"][0]
    checks = [Target(
        "refit_peak_rss_file_store",
        f"server peak RSS − idle RSS during RefitProjection of {config.items} × {config.dim} "
        "float16 from a local raw file store (MiB)", streamed["above_idle_mb"], BOUND_MB,
        at_most=True)]
    rows = [{"raw vectors in": r["raw_in"], "blocks": r["blocks"], "refit_s": r["refit_s"],
             "idle_rss_mb": r["idle_rss_mb"], "peak_rss_mb": r["peak_rss_mb"],
             "above_idle_mb": r["above_idle_mb"], "raw_mb": raw["raw_mb"], "lam": r["lam"],
             "alignment": r["alignment"]} for r in raw["runs"]]
    machine = machine_info()
    payload = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": machine,
        "data": "synthetic raw vectors written through the store API as float16 (block files "
                "of a local RawFileStore); random co-occurrence pairs pushed through "
                "PushCooccurrence",
        "raw": raw,
        "targets": {check.key: check.to_dict() for check in checks},
    }
    notes = [
        f"{config.items} items × D = {config.dim} raw float16 ({raw['raw_mb']:.0f} MiB), "
        f"{config.nnz} co-occurrence non-zeros ({config.nnz // 2} pairs), d = "
        f"{config.components}, default retention budget; {machine['nproc']} cores "
        f"({machine['cpu_model']}); idle RSS is the server's before the call (encoder model "
        "loaded, counts pushed)",
        *(check.note() for check in checks),
    ]
    columns = ["raw vectors in", "blocks", "refit_s", "idle_rss_mb", "peak_rss_mb",
               "above_idle_mb", "raw_mb", "lam", "alignment"]
    json_path, md_path = write_results(NAME, payload, rows, columns, notes, results_dir)
    progress(f"wrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = config_parser("python -m bench.scale_refit_memory", __doc__, Config(), {
        "nnz": "stored non-zeros of the symmetric count matrix (nnz/2 pairs) [%(default)s]",
        "baseline": "1: also refit with raw vectors in the store (in-memory fit) [%(default)s]"})
    args = parser.parse_args(argv)
    if args.items <= args.components or args.nnz < 0:
        parser.error("need --items > --components and --nnz >= 0")
    return config_from(args, Config), args.results_dir


def main(argv: list[str] | None = None) -> None:
    config, results_dir = parse_args(argv)
    report(config, run(config), results_dir)


if __name__ == "__main__":
    main()
