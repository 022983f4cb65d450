"""Promise: a batch is identified by the pair (worker_id, batch_id), exactly: two different
pairs never share an exactly-once key, whatever bytes the ids hold.

Broken before on Redis: the key was ``worker_id + "\\0" + batch_id``, so ("w\\0x", "b") and
("w", "x\\0b") collided and the second batch's pairs were silently dropped as a duplicate.
Also checked: a retry of a batch applied under the old key format, before an upgrade, is
still a duplicate (ids without NUL, whose old key was unambiguous)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.server_process import synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import PairBatch, RedisStore
from tests.promise_servers import STORES, served

# Pairs of ids that a separator-joined key cannot tell apart.
COLLIDING = [
    (("w\0x", "b"), ("w", "x\0b")),
    (("a", "\0"), ("a\0", "")),  # the second is invalid (empty batch id): only the first
    (("job\0", "\0rank"), ("job", "\0\0rank")),
    (("1", "23"), ("12", "3")),  # what plain concatenation would confuse
]


def _push(stub, worker: str, batch: str, pairs: int = 3) -> pb.PushCooccurrenceResponse:
    rows = np.arange(pairs, dtype="<u4")
    message = pb.PushCooccurrenceRequest(
        catalog="keys", worker_id=worker, batch_id=batch, rows=rows.tobytes(),
        cols=(rows + 1).tobytes(), weights=np.ones(pairs, "<f4").tobytes())
    return stub.PushCooccurrence(iter([message]), timeout=30)


@pytest.mark.parametrize("kind", STORES)
def test_batches_whose_joined_ids_collide_are_both_applied(kind: str, tmp_path: Path,
                                                           record_property) -> None:
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, "keys", 20)  # type: ignore[arg-type]
        stub = env.stub
        applied = dropped = 0
        for first, second in COLLIDING:
            assert _push(stub, *first).batches_applied == 1
            if not second[1]:
                continue
            reply = _push(stub, *second)
            applied += reply.batches_applied
            dropped += reply.duplicates_ignored
            # ... and each is still exactly-once on its own.
            assert _push(stub, *first).duplicates_ignored == 1
            assert _push(stub, *second).duplicates_ignored == 1
        totals = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="keys")).cooccurrence
    record_property("colliding_batches_dropped", dropped)
    assert dropped == 0
    assert applied == 3
    assert totals.batches == 7 and totals.pairs == 21


def test_a_batch_applied_under_the_old_redis_key_is_still_a_duplicate(redis_server) -> None:
    """Exactly-once across the upgrade: sets written by the old code hold "worker\\0batch"."""
    with redis_server.client() as client:
        client.flushall()
    store = RedisStore(redis_server.url)
    synthetic_catalog(store, "keys", 20)
    with redis_server.client() as client:
        client.sadd("tfllmer:{keys}:batches", b"old-worker\0old-batch")
    one = np.array([0], np.uint32), np.array([1], np.uint32), np.ones(1, np.float32)
    outcome = store.apply_pair_batches("keys", [PairBatch("old-worker", "old-batch", *one),
                                                PairBatch("old-worker", "new-batch", *one)])
    assert (outcome.applied, outcome.duplicates) == (1, 1)
    store.close()
