"""Promise: PushCooccurrence's ``pairs_added`` / ``weight_added`` are this call's own new
pairs and weight, decided in the same atomic step that applies its batches, however many
pushers write to the same catalog at once (a pusher sums them to know what it delivered).

Broken before: they were the catalog's totals after the call minus before it, so
concurrent pushes reported each other's pairs."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from harness.server_process import synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from tests.promise_servers import STORES, served

N_ITEMS = 200
PUSHERS = 8
CALLS = 12


def _batch(worker: str, batch: str, rng: np.random.Generator, n: int
           ) -> tuple[pb.PushCooccurrenceRequest, float]:
    rows = rng.integers(0, N_ITEMS - 1, n).astype("<u4")
    cols = (rows + 1 + rng.integers(0, N_ITEMS - 2, n).astype("<u4")) % N_ITEMS
    cols = np.where(cols == rows, (rows + 1) % N_ITEMS, cols).astype("<u4")
    weights = rng.integers(1, 5, n).astype("<f4")
    message = pb.PushCooccurrenceRequest(
        catalog="cooc", worker_id=worker, batch_id=batch, rows=rows.tobytes(),
        cols=cols.tobytes(), weights=weights.tobytes())
    return message, float(weights.sum(dtype=np.float64))


@pytest.mark.parametrize("kind", STORES)
def test_concurrent_pushers_are_each_told_their_own_pairs(kind: str, tmp_path: Path,
                                                          record_property) -> None:
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, "cooc", N_ITEMS)  # type: ignore[arg-type]
        # Every call carries batches of its own and one batch that every pusher also sends
        # (same ids, same pairs): exactly one call applies it, the others count a duplicate.
        shared, shared_weight = _batch("shared", "b", np.random.default_rng(99), 50)
        wrong: list[str] = []
        reports: list[tuple[int, int, float]] = []
        start = threading.Barrier(PUSHERS)

        def push(pusher: int) -> None:
            rng = np.random.default_rng(pusher)
            with env.server.channel() as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                start.wait()
                for call in range(CALLS):
                    own = [_batch(f"w{pusher}", f"{call}-{k}", rng, int(rng.integers(20, 400)))
                           for k in range(3)]
                    pairs = sum(len(m.rows) // 4 for m, _ in own)
                    weight = sum(w for _, w in own)
                    shared_copy = pb.PushCooccurrenceRequest()
                    shared_copy.CopyFrom(shared)
                    shared_copy.batch_id = f"b{call}"
                    reply = stub.PushCooccurrence(iter([*(m for m, _ in own), shared_copy]),
                                                  timeout=60)
                    took_shared = reply.batches_applied - len(own)
                    expected = (pairs + 50 * took_shared, weight + shared_weight * took_shared)
                    reports.append((reply.batches_applied, reply.pairs_added,
                                    reply.weight_added))
                    if (took_shared not in (0, 1)
                            or (reply.pairs_added, reply.weight_added) != expected):
                        wrong.append(f"pusher {pusher} call {call}: told "
                                     f"{reply.pairs_added} pairs / {reply.weight_added}, "
                                     f"sent {expected}")

        threads = [threading.Thread(target=push, args=(p,)) for p in range(PUSHERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        totals = env.stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="cooc"),
                                          timeout=30).cooccurrence
    record_property("calls", len(reports))
    record_property("calls_told_wrong_counts", len(wrong))
    assert len(reports) == PUSHERS * CALLS
    assert wrong == []
    # What the callers were told adds up to the catalog's totals, batch for batch.
    assert sum(r[0] for r in reports) == totals.batches == PUSHERS * CALLS * 3 + CALLS
    assert sum(r[1] for r in reports) == totals.pairs
    assert sum(r[2] for r in reports) == pytest.approx(totals.total_weight, rel=1e-12)
