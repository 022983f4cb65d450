"""A trainer's push as its own process, to be SIGKILLed and restarted by the fault tests:
``python -m tests.push_worker ADDRESS CATALOG WORKER STATE N_ITEMS N_PAIRS BATCH_PAIRS``.

The pairs are a deterministic function of the arguments (seeded by the worker id), so a
restarted process pushes the same input and resumes from its state file. Prints the push
summary as one JSON line."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict

import numpy as np

from trainer_client.client import EmbeddingClient, RetryPolicy
from trainer_client.pusher import CooccurrencePusher


def worker_pairs(worker: str, n_items: int, n_pairs: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct items with small integer weights (sums are exact in float64)."""
    seed = int.from_bytes(hashlib.sha256(worker.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_items, n_pairs)
    cols = (rows + rng.integers(1, n_items, n_pairs)) % n_items
    weights = rng.integers(1, 6, n_pairs).astype(np.float32)
    return rows, cols, weights


def main(argv: list[str]) -> None:
    address, catalog, worker, state, n_items, n_pairs, batch_pairs = argv
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=1.0, budget_s=120)
    with EmbeddingClient(address, token="", retry=policy) as client:
        pusher = CooccurrencePusher(client, catalog, worker, state,
                                    batch_pairs=int(batch_pairs), batches_per_call=1)
        summary = pusher.push(*worker_pairs(worker, int(n_items), int(n_pairs)))
    print(json.dumps(asdict(summary)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
