"""The GPU paths against the CPU paths of the same machine, in one run (issue: performance).

* ``encode`` — the sentence-transformers encoder (pooled all-MiniLM-L6-v2, the service's
  default) on CUDA in float16 with a GPU-sized token budget, against the same encoder on the
  CPU in float32, on MovieLens-1M item texts (cycled to ``--texts``; the CPU encodes the first
  ``--cpu-texts``). Reports texts/s and the minimum cosine between the two outputs.
* ``recpca`` — the Rec-PCA fit the server runs (``build_graph`` + ``compute_moments`` +
  ``fit_projection``, λ by the default retention budget) with the torch backend on CUDA
  against the numpy backend on all CPU cores, on the synthetic catalog of
  ``bench.recpca_fit`` (low-rank float32 vectors with uneven norms, a random symmetric count
  graph). Reports seconds (median of ``--repeats``; the GPU time includes moving X to the
  device) and the largest principal-angle sine between the two fitted subspaces.

    python -m bench.gpu --model DIR [--n 1000000 --dim 768 --nnz 20000000]

``--model`` is a sentence-transformers directory (a float16 copy of all-MiniLM-L6-v2 is
44 MB, small enough to carry to a GPU host). Writes ``bench/results/gpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from bench.report import RESULTS_DIR, machine_info, write_results

NAME = "gpu"
COLUMNS = ("part", "path", "size", "seconds (median)", "throughput", "GPU speed-up",
           "agreement")


def timed(work: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls (after ``sync``) and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = work()
        sync()
        seconds.append(time.perf_counter() - start)
    return median(seconds), result


def movielens_texts(count: int) -> list[str]:
    """ML-1M item texts ("Title (year). Genres: ..."), cycled and numbered up to ``count``."""
    from trainer_client.datasets import dataset_dir
    from trainer_client.recbole_data import read_catalog

    texts = read_catalog(dataset_dir("ml-1m") / "ml-1m.item").texts
    return [f"{text} #{k // len(texts)}" if k >= len(texts) else text
            for k, text in zip(range(count), itertools.cycle(texts))]


def encode_part(args: argparse.Namespace, sync: Callable[[], None]) -> list[dict[str, Any]]:
    from server.encoders.sentence_transformer import SentenceTransformerEncoder

    texts = movielens_texts(args.texts)
    gpu = SentenceTransformerEncoder(args.model, device=args.device,
                                     token_budget=args.gpu_tokens, max_batch=1024)
    cpu = SentenceTransformerEncoder(args.model, device="cpu")
    gpu.encode(texts[:512])  # warm-up: CUDA context, kernels, allocator
    cpu.encode(texts[:64])
    gpu_s, gpu_vectors = timed(lambda: gpu.encode(texts), args.repeats, sync)
    cpu_s, cpu_vectors = timed(lambda: cpu.encode(texts[: args.cpu_texts]), args.repeats, sync)
    a, b = gpu_vectors[: args.cpu_texts].astype(np.float64), cpu_vectors.astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    gpu_rate, cpu_rate = len(texts) / gpu_s, args.cpu_texts / cpu_s
    agreement = f"min cosine {cosine.min():.6f}"
    return [
        {"part": "encode", "path": "CUDA float16", "size": f"{len(texts):,} texts",
         "seconds (median)": gpu_s, "throughput": f"{gpu_rate:,.0f} texts/s",
         "GPU speed-up": gpu_rate / cpu_rate, "agreement": agreement,
         "texts_per_s": gpu_rate, "min_cosine": float(cosine.min())},
        {"part": "encode", "path": "CPU float32", "size": f"{args.cpu_texts:,} texts",
         "seconds (median)": cpu_s, "throughput": f"{cpu_rate:,.0f} texts/s",
         "texts_per_s": cpu_rate},
    ]


def recpca_part(args: argparse.Namespace, sync: Callable[[], None]) -> list[dict[str, Any]]:
    from bench.recpca_fit import make_counts, make_vectors
    from server.recpca import FitSettings, build_graph, compute_moments, fit_projection

    x, counts = make_vectors(args.n, args.dim, 0), make_counts(args.n, args.nnz, 0)
    settings = FitSettings(dim=64)

    def fit(backend: str, device: str) -> np.ndarray:
        graph = build_graph(counts, args.n, settings.graph)
        moments = compute_moments(x, graph, backend=backend, device=device)
        return fit_projection(moments, settings).components

    gpu_s, gpu_w = timed(lambda: fit("torch", args.device), args.repeats, sync)
    cpu_s, cpu_w = timed(lambda: fit("numpy", "cpu"), args.repeats, sync)
    sines = np.sqrt(np.clip(1 - np.linalg.svd(gpu_w.T @ cpu_w, compute_uv=False) ** 2, 0, 1))
    size = f"n {args.n:,}, D {args.dim}, {args.nnz / 1e6:g}M nnz"
    rate = args.n * args.dim * 4 / 1e9  # GB of float32 X per fit
    return [
        {"part": "recpca fit", "path": "torch CUDA", "size": size, "seconds (median)": gpu_s,
         "throughput": f"{rate / gpu_s:.1f} GB of X/s", "GPU speed-up": cpu_s / gpu_s,
         "agreement": f"max sin(angle) {sines.max():.2e}", "max_sine": float(sines.max())},
        {"part": "recpca fit", "path": "numpy CPU", "size": size, "seconds (median)": cpu_s,
         "throughput": f"{rate / cpu_s:.1f} GB of X/s"},
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="sentence-transformers directory [the installed default model]")
    parser.add_argument("--texts", type=int, default=100_000, help="texts encoded on the GPU")
    parser.add_argument("--cpu-texts", type=int, default=5_000, help="texts encoded on the CPU")
    parser.add_argument("--gpu-tokens", type=int, default=65_536,
                        help="token budget per GPU batch [65536]")
    parser.add_argument("--n", type=int, default=1_000_000, help="items of the Rec-PCA fit")
    parser.add_argument("--dim", type=int, default=768, help="raw dimension D")
    parser.add_argument("--nnz", type=int, default=20_000_000, help="count non-zeros")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="encode,recpca", help="parts to run, comma-separated")
    parser.add_argument("--name", default=NAME, help="results name [gpu]")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON and Markdown go [bench/results]")
    parser.add_argument("--device", default="cuda",
                        help="device of the GPU paths [cuda]; cpu only to smoke-test the script")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA device")
    sync = torch.cuda.synchronize if cuda else lambda: None
    parts = {"encode": encode_part, "recpca": recpca_part}
    rows: list[dict[str, Any]] = []
    for part in args.parts.split(","):
        print(f"[gpu] {part} ...", flush=True)
        rows += parts[part](args, sync)
    payload = {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()},
               "gpu": torch.cuda.get_device_name(0) if cuda else "none (smoke test)",
               "torch": torch.__version__, "machine": machine_info()}
    write_results(args.name, payload, rows, COLUMNS, results_dir=args.results_dir,
                  notes=[f"{payload['gpu']}, torch {torch.__version__}; CPU paths on the same "
                         f"host ({payload['machine']['nproc']} cores)."])
    return payload


if __name__ == "__main__":
    main()
