"""Sustained mixed load on a running server (issue 8, item 4): ``clients`` threads, each with
its own channel and the real trainer client, mixing full catalog pulls, id look-ups and
co-occurrence pushes for ``seconds``. Reports requests, errors (and client-side retries),
latency percentiles per operation, throughput, and the server's resident memory after a
warm-up and at the end; then checks that every acknowledged push is in the totals.

Used by tests/test_reliability_load.py and ``python -m bench.reliability``."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trainer_client.client import EmbeddingClient, RetryPolicy

OPERATIONS = ("full_pull", "abandoned_pull", "id_lookup", "push")
# An abandoned pull is a trainer that stops reading after the first chunk (it died or gave
# up): the client cancels the stream, and the server must shrug it off.
DEFAULT_MIX = (0.12, 0.05, 0.53, 0.30)
PAIRS_PER_PUSH = 500


class _Abandoned(Exception):
    pass


def _abandon(received: int, total: int) -> None:
    raise _Abandoned()


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


def run_load(address: str, catalog: str, *, clients: int = 32, seconds: float = 60.0,
             warmup_s: float = 5.0, rss: Callable[[], int] | None = None, token: str = "",
             mix: tuple[float, ...] = DEFAULT_MIX, seed: int = 0) -> dict[str, Any]:
    """Run the load; ``rss`` reads the server's resident memory in bytes."""
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=1.0, budget_s=30)
    probe = EmbeddingClient(address, token=token, retry=policy)
    described = probe.describe(catalog)
    n_items, totals_before = described.item_count, described.cooccurrence
    ids = probe.fetch_embeddings(catalog).item_ids
    dim = probe.fetch_embeddings(catalog, ids=ids[:1]).dim

    retries = _RetryCounter()
    client_log = logging.getLogger("trainer_client.client")
    client_log.addHandler(retries)
    latencies: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    errors: list[str] = []
    pushed = {"pairs": 0, "weight": 0.0, "batches": 0}
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        nprng = np.random.default_rng(seed * 1000 + index)
        sequence = 0
        with EmbeddingClient(address, token=token, retry=policy, deadline_s=120) as client:
            start_barrier.wait()
            while time.monotonic() < deadline[0]:
                op = rng.choices(OPERATIONS, weights=mix)[0]
                started = time.perf_counter()
                try:
                    if op == "full_pull":
                        table = client.fetch_embeddings(catalog)
                        if table.vectors.shape != (n_items, dim):
                            raise AssertionError(f"pulled {table.vectors.shape}")
                    elif op == "abandoned_pull":
                        try:
                            client.fetch_embeddings(catalog, max_chunk_bytes=64 * 1024,
                                                    on_chunk=_abandon)
                        except _Abandoned:
                            pass
                        else:
                            raise AssertionError("the pull was not abandoned")
                    elif op == "id_lookup":
                        wanted = rng.sample(ids, 32)
                        table = client.fetch_embeddings(catalog, ids=wanted)
                        if table.item_ids != wanted:
                            raise AssertionError("look-up returned other items")
                    else:
                        rows = nprng.integers(0, n_items, PAIRS_PER_PUSH)
                        cols = (rows + nprng.integers(1, n_items, PAIRS_PER_PUSH)) % n_items
                        weights = nprng.integers(1, 4, PAIRS_PER_PUSH).astype(np.float32)
                        reply = client.push_pairs(catalog, f"load-{seed}-{index}", [
                            (f"{sequence:08d}", rows, cols, weights)])
                        sequence += 1
                        if reply.batches_applied != 1:
                            raise AssertionError(f"push applied {reply.batches_applied}")
                        with lock:
                            pushed["pairs"] += PAIRS_PER_PUSH
                            pushed["weight"] += float(weights.sum(dtype=np.float64))
                            pushed["batches"] += 1
                except Exception as error:  # noqa: BLE001 - every failure is counted
                    with lock:
                        errors.append(f"{op}: {type(error).__name__}: {error}"[:300])
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies[op].append(elapsed)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    rss_samples: list[tuple[float, int]] = []
    deadline[0] = time.monotonic() + warmup_s + seconds
    start_barrier.wait()
    began = time.monotonic()
    warm_rss = None
    while any(thread.is_alive() for thread in threads):
        if rss is not None:
            rss_samples.append((time.monotonic() - began, rss()))
            if warm_rss is None and time.monotonic() - began >= warmup_s:
                warm_rss = rss_samples[-1][1]
        time.sleep(0.5)
    wall = time.monotonic() - began
    for thread in threads:
        thread.join()
    client_log.removeHandler(retries)

    after = probe.describe(catalog).cooccurrence
    probe.close()
    lost = {
        "pairs": pushed["pairs"] - (after.pairs - totals_before.pairs),
        "batches": pushed["batches"] - (after.batches - totals_before.batches),
        "weight": pushed["weight"] - (after.total_weight - totals_before.total_weight),
    }
    everything = [value for values in latencies.values() for value in values]
    end_rss = rss_samples[-1][1] if rss_samples else None
    result: dict[str, Any] = {
        "clients": clients, "seconds": round(wall, 1), "warmup_s": warmup_s,
        "catalog_items": n_items, "dim": dim, "mix": dict(zip(OPERATIONS, mix, strict=True)),
        "requests": len(everything) + len(errors), "errors": len(errors),
        "client_retries": retries.count, "error_examples": errors[:5],
        "requests_per_s": round(len(everything) / wall, 1),
        "p50_ms": _percentile(everything, 50), "p99_ms": _percentile(everything, 99),
        "max_ms": max(everything) * 1000 if everything else None,
        "by_operation": {op: {"requests": len(values), "p50_ms": _percentile(values, 50),
                              "p99_ms": _percentile(values, 99),
                              "max_ms": max(values) * 1000 if values else None}
                         for op, values in latencies.items()},
        "pushed": pushed, "lost_after_load": lost,
    }
    if rss_samples and warm_rss:
        result.update({
            "rss_start_mb": round(rss_samples[0][1] / 2**20, 1),
            "rss_after_warmup_mb": round(warm_rss / 2**20, 1),
            "rss_end_mb": round(end_rss / 2**20, 1),
            "rss_peak_mb": round(max(v for _, v in rss_samples) / 2**20, 1),
            "rss_growth_pct": round(100 * (end_rss - warm_rss) / warm_rss, 2),
        })
    return result
