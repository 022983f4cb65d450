"""The co-occurrence pusher: ML-100K training pairs pushed to the real server (real Redis,
real encoder) add up to the local counts exactly, through crashes, lost acknowledgements
and a lost state file."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from tests.service_harness import ServerThread
from trainer_client.client import EmbeddingClient, PairBatch, RetryPolicy
from trainer_client.cooccurrence import count_cooccurrences, window_pairs
from trainer_client.pusher import CooccurrencePusher, PushSummary
from trainer_client.sequences import UserSequences, leave_one_out

N_ITEMS = 1682
BATCH_PAIRS = 40_000
PER_CALL = 2


class Crash(Exception):
    """The worker process dying."""


class RecordingClient:
    """Stands in for the service where only what the pusher sends matters."""

    def __init__(self) -> None:
        self.calls: list[list[PairBatch]] = []

    def push_pairs(self, catalog: str, worker_id: str, batches: Iterable[PairBatch]
                   ) -> pb.PushCooccurrenceResponse:
        self.calls.append(list(batches))
        return pb.PushCooccurrenceResponse(batches_applied=len(self.calls[-1]))


class CrashingClient:
    """Delegates to a real client, then dies at call ``crash_at``: before sending it, or
    after the server applied it but before the acknowledgement reached the worker."""

    def __init__(self, client: EmbeddingClient, crash_at: int, ack_lost: bool) -> None:
        self.client, self.crash_at, self.ack_lost, self.calls = client, crash_at, ack_lost, 0

    def push_pairs(self, catalog: str, worker_id: str, batches: Iterable[PairBatch]
                   ) -> pb.PushCooccurrenceResponse:
        self.calls += 1
        if self.calls == self.crash_at:
            if self.ack_lost:
                self.client.push_pairs(catalog, worker_id, batches)
            raise Crash()
        return self.client.push_pairs(catalog, worker_id, batches)


# ---------------------------------------------------------------- batching, no server


def test_batches_are_cut_deterministically_and_resumed_from_the_state_file(tmp_path) -> None:
    rows, cols = np.arange(0, 25), np.arange(100, 125)
    weights = np.ones(25)
    client = RecordingClient()
    pusher = CooccurrencePusher(client, "c", "w", tmp_path / "state.json",  # type: ignore[arg-type]
                                batch_pairs=10, batches_per_call=2)
    assert pusher.push(rows, cols, weights) == PushSummary(3, 0, 3, 0, 0)
    sent = [batch for call in client.calls for batch in call]
    assert [len(call) for call in client.calls] == [2, 1]
    assert [batch_id for batch_id, *_ in sent] == ["00000000", "00000001", "00000002"]
    np.testing.assert_array_equal(np.concatenate([r for _, r, _, _ in sent]), rows)
    assert all(r.dtype == "<u4" and c.dtype == "<u4" and w.dtype == "<f4"
               for _, r, c, w in sent)
    assert json.loads((tmp_path / "state.json").read_text())["last_acked"] == 2

    assert pusher.push(rows, cols, weights) == PushSummary(3, 3, 0, 0, 0)  # all acknowledged
    assert len(client.calls) == 2


def test_a_state_file_of_another_input_or_cut_is_refused(tmp_path) -> None:
    rows, cols, weights = np.arange(5), np.arange(5, 10), np.ones(5)
    state = tmp_path / "state.json"
    client = RecordingClient()
    CooccurrencePusher(client, "c", "w", state, batch_pairs=2).push(  # type: ignore[arg-type]
        rows, cols, weights)
    with pytest.raises(ValueError, match="different push"):
        CooccurrencePusher(client, "c", "w", state, batch_pairs=3).push(  # type: ignore[arg-type]
            rows, cols, weights)
    with pytest.raises(ValueError, match="different push"):
        CooccurrencePusher(client, "c", "w", state, batch_pairs=2).push(  # type: ignore[arg-type]
            rows, cols, weights * 2)


def test_rows_that_would_wrap_in_uint32_are_refused(tmp_path) -> None:
    pusher = CooccurrencePusher(RecordingClient(), "c", "w",  # type: ignore[arg-type]
                                tmp_path / "state.json")
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        pusher.push(np.array([-1]), np.array([3]), np.ones(1))


# ---------------------------------------------------------------- against the real server


@pytest.fixture(scope="module")
def service(redis_server, pooled_encoder) -> Iterator[tuple[ServerThread, RedisStore]]:
    store = RedisStore(redis_server.url, key_prefix=f"pusher-test-{secrets.token_hex(4)}")
    with ServerThread(store, pooled_encoder) as server:
        yield server, store


@pytest.fixture(scope="module")
def train(movielens_100k) -> UserSequences:
    return leave_one_out(movielens_100k.sequences).train


@pytest.fixture(scope="module")
def catalog(service, movielens_100k) -> str:
    """One catalog for the module: each test pushes as its own worker and checks what its
    push added."""
    name = "ml-100k"
    items = [pb.Item(id=item_id, text=text) for item_id, text in
             zip(movielens_100k.catalog.item_ids, movielens_100k.catalog.texts, strict=True)]
    server, _ = service
    with server.channel() as channel:
        server.stub(channel).UpsertItems(iter([pb.UpsertItemsRequest(catalog=name, items=items)]))
    return name


@pytest.fixture
def client(service) -> Iterator[EmbeddingClient]:
    server, _ = service
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, budget_s=10)
    with EmbeddingClient(server.address, token="", retry=policy) as client:
        yield client


def assert_added_exactly(store: RedisStore, catalog: str, before: sp.csr_matrix,
                         train: UserSequences) -> None:
    """The counts grew by the local counts of ``train``, entry by entry (integer counts
    are exact in float64)."""
    added = store.read_counts(catalog, N_ITEMS) - before
    expected = count_cooccurrences(train, N_ITEMS, window=3)
    assert (added != expected).nnz == 0 and expected.nnz > 0


def totals(client: EmbeddingClient, catalog: str) -> tuple[int, float, int]:
    reply = client.describe(catalog).cooccurrence
    return reply.pairs, reply.total_weight, reply.batches


@pytest.mark.slow
def test_pushed_counts_equal_local_counts_and_a_repush_is_all_duplicates(
        service, client: EmbeddingClient, catalog: str, train: UserSequences,
        tmp_path: Path) -> None:
    _, store = service
    lo, _, weights = window_pairs(train, window=3)
    n_batches = -(-len(lo) // BATCH_PAIRS)
    state = tmp_path / "state.json"
    pusher = CooccurrencePusher(client, catalog, "worker-0", state, BATCH_PAIRS, PER_CALL)
    counts_before, (pairs, weight, batches) = store.read_counts(catalog, N_ITEMS), totals(
        client, catalog)

    assert pusher.push_sequences(train, window=3) == PushSummary(
        n_batches, 0, n_batches, 0, len(lo))
    assert_added_exactly(store, catalog, counts_before, train)
    after = totals(client, catalog)
    assert after == (pairs + len(lo), weight + weights.sum(), batches + n_batches)

    state.unlink()  # the worker lost its state: everything is sent again
    assert pusher.push_sequences(train, window=3) == PushSummary(
        n_batches, 0, 0, n_batches, 0)
    assert_added_exactly(store, catalog, counts_before, train)
    assert totals(client, catalog) == after


@pytest.mark.slow
@pytest.mark.parametrize("ack_lost", [False, True], ids=["crash-before-send", "ack-lost"])
def test_a_push_resumed_after_a_crash_counts_every_pair_once(
        service, client: EmbeddingClient, catalog: str, train: UserSequences,
        tmp_path: Path, ack_lost: bool) -> None:
    _, store = service
    lo, _, _ = window_pairs(train, window=3)
    n_batches = -(-len(lo) // BATCH_PAIRS)
    crash_at = 3  # two calls acknowledged, the third one dies
    assert n_batches > crash_at * PER_CALL
    state, worker = tmp_path / "state.json", f"worker-{secrets.token_hex(4)}"
    counts_before, (pairs, _, batches) = store.read_counts(catalog, N_ITEMS), totals(
        client, catalog)

    crashing = CrashingClient(client, crash_at, ack_lost)
    with pytest.raises(Crash):
        CooccurrencePusher(crashing, catalog, worker, state,  # type: ignore[arg-type]
                           BATCH_PAIRS, PER_CALL).push_sequences(train, window=3)
    acked = (crash_at - 1) * PER_CALL
    assert json.loads(state.read_text())["last_acked"] == acked - 1

    resumed = CooccurrencePusher(client, catalog, worker, state, BATCH_PAIRS, PER_CALL)
    summary = resumed.push_sequences(train, window=3)
    lost = PER_CALL if ack_lost else 0
    assert (summary.skipped, summary.duplicates) == (acked, lost)
    assert summary.applied == n_batches - acked - lost
    assert_added_exactly(store, catalog, counts_before, train)
    after_pairs, _, after_batches = totals(client, catalog)
    assert (after_pairs, after_batches) == (pairs + len(lo), batches + n_batches)
