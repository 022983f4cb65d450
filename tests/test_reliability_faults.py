"""Faults (issue 8, item 1), each with real processes on free ports: a ``redis-server`` this
test starts (AOF on, ``appendfsync always``), ``python -m server`` processes, the real
trainer client over a real gRPC channel, and SIGKILL.

* Redis killed during GetItemEmbeddings: the stream fails with UNAVAILABLE, new calls too,
  health turns NOT_SERVING; the client's retried pull succeeds once Redis is back, with the
  same matrix bit for bit.
* Redis SIGKILLed and restarted from its AOF: no version, projection, served vector, raw
  vector, count or applied batch id is lost; re-pushing old batches adds nothing.
* The server SIGKILLed in the middle of a refit, at an exact point: it reaches Redis through
  a proxy that freezes its traffic at the SET of the new version's third block of served
  vectors (W, μ and two blocks written; the rest and the publish never arrive), then it is
  killed: the active version is unchanged,
  the half-written version is never visible (not described, not servable, not activatable),
  and the next refit after the lease collects its arrays.
* Two concurrent refits of one catalog: exactly one runs, the other gets ABORTED.
* A trainer process SIGKILLed mid-push three times and restarted: totals and the count
  matrix are exact.

Run with ``pytest -m reliability tests/test_reliability_faults.py`` (about 2 minutes).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from harness.redis_server import RedisServer
from harness.server_process import (
    FreezingProxy,
    ServerProcess,
    refit,
    status_of,
    synthetic_catalog,
    wait_for,
)
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.cooccurrence_merge import counts_from_pairs
from server.stores import RedisStore
from tests.push_worker import worker_pairs
from trainer_client.client import EmbeddingClient, RetryPolicy

pytestmark = pytest.mark.reliability
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
ABORTED = grpc.StatusCode.ABORTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SERVING, NOT_SERVING = 1, 2
PATIENT = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, budget_s=90)
LEASE = 4.0


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True, appendfsync="always") as server:
        yield server


# ---------------------------------------------------------------- Redis dies during a pull


def test_redis_killed_during_a_pull_is_unavailable_and_the_retried_pull_succeeds(
        aof_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    catalog, n_items = "pull-faults", 20_000
    synthetic_catalog(RedisStore(aof_redis.url), catalog, n_items)
    with ServerProcess(aof_redis.url, tmp_path / "server.log") as server, \
            server.channel() as channel:
        stub = server.stub(channel)
        refit(stub, catalog, dim=32)
        with EmbeddingClient(server.address, token="", retry=PATIENT) as client:
            reference = client.fetch_embeddings(catalog, kind="raw")

        # A raw stream (30 MB, read from Redis chunk by chunk) loses Redis after its first
        # message: it ends with UNAVAILABLE, never INTERNAL or a silent short stream.
        stream = stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=catalog, kind=pb.EMBEDDING_KIND_RAW, max_chunk_bytes=64 * 1024), timeout=60)
        first = next(stream)
        aof_redis.kill()
        with pytest.raises(grpc.RpcError) as broken:
            for _ in stream:
                pass
        assert first.header.item_count == n_items
        assert broken.value.code() is UNAVAILABLE
        assert "store unavailable" in broken.value.details()
        describe = lambda: stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))  # noqa: E731
        assert status_of(describe) is UNAVAILABLE
        wait_for(lambda: server.health() == NOT_SERVING, 20, 0.2, "health NOT_SERVING")
        aof_redis.start()
        wait_for(lambda: server.health() == SERVING, 20, 0.2, "health SERVING")

        # The trainer's client (a raw pull, as mode-id workers make; a reduced pull of a
        # version this server holds in memory reads Redis only for ids, in 8 MiB groups, and
        # can finish without it): Redis dies after the third chunk and is back 1.5 s later.
        progress: list[int] = []
        restarter = threading.Timer(1.5, aof_redis.start)

        def kill_after_three_chunks(received: int, _total: int) -> None:
            progress.append(received)
            if len(progress) == 3:
                aof_redis.kill()
                restarter.start()

        with EmbeddingClient(server.address, token="", retry=PATIENT, deadline_s=120) as client, \
                caplog.at_level(logging.WARNING, logger="trainer_client.client"):
            table = client.fetch_embeddings(catalog, kind="raw", max_chunk_bytes=64 * 1024,
                                            on_chunk=kill_after_three_chunks)
        restarter.join()
    retries = [r.getMessage() for r in caplog.records if "UNAVAILABLE" in r.getMessage()]
    assert retries, "the pull never saw UNAVAILABLE"
    # Killed mid-way, and restarted from the start after the kill (the server may have sent
    # a few chunks ahead of the client before it needed Redis again).
    assert progress[2] < n_items
    assert any(b < a for a, b in zip(progress[2:], progress[3:], strict=False))
    assert progress[-1] == n_items
    assert table.version == reference.version
    assert table.item_ids == reference.item_ids
    assert table.vectors.tobytes() == reference.vectors.tobytes()


# ---------------------------------------------------------------- Redis restarted from AOF


def snapshot(url: str, catalog: str) -> dict:
    """Everything a Redis restart could lose, as comparable values."""
    store = RedisStore(url)
    state = store.get_catalog(catalog)
    versions = store.versions(catalog)
    out = {"state": state, "versions": versions, "totals": store.cooccurrence_totals(catalog),
           "raw": store.read_raw(catalog, 0, state.item_count).tobytes(),
           "ids": store.item_ids(catalog, 0, state.item_count)}
    for record in versions:
        components, mean = store.read_projection(catalog, record.version)
        reduced = store.read_reduced(catalog, record.version, 0, record.item_count)
        out[f"v{record.version}"] = (components.tobytes(), mean.tobytes(), reduced.tobytes())
    counts = store.read_counts(catalog, state.item_count)
    out["counts"] = (counts.indptr.tobytes(), counts.indices.tobytes(), counts.data.tobytes())
    client = store._client
    out["batches"] = sorted(client.smembers(store._key(catalog, "batches")))
    out["vseq"] = client.get(store._key(catalog, "vseq"))
    store.close()
    return out


def test_redis_killed_and_restarted_with_aof_loses_no_version_projection_or_count(
        aof_redis: RedisServer, tmp_path: Path) -> None:
    catalog, n_items = "aof", 3_000
    synthetic_catalog(RedisStore(aof_redis.url), catalog, n_items)
    rows, cols, weights = worker_pairs("aof-worker", n_items, 20_000)
    batches = [(f"{k:04d}", rows[k::20], cols[k::20], weights[k::20]) for k in range(20)]
    with ServerProcess(aof_redis.url, tmp_path / "server.log") as server, \
            server.channel() as channel, \
            EmbeddingClient(server.address, token="", retry=PATIENT) as client:
        stub = server.stub(channel)
        client.push_pairs(catalog, "aof-worker", batches)
        first = refit(stub, catalog, dim=16)
        second = refit(stub, catalog, dim=8, activate=False, retention_budget=0.8)
        stub.ActivateVersion(pb.ActivateVersionRequest(catalog=catalog, version=second))
        stub.ActivateVersion(pb.ActivateVersionRequest(catalog=catalog, version=first))
        before, described = snapshot(aof_redis.url, catalog), MessageToDict(
            client.describe(catalog))
        pulled = client.fetch_embeddings(catalog, version=second).vectors.tobytes()

        aof_redis.kill()  # SIGKILL: no shutdown save, only the append-only file
        aof_redis.start()

        assert snapshot(aof_redis.url, catalog) == before
        assert MessageToDict(client.describe(catalog)) == described  # retried through the gap
        assert client.fetch_embeddings(catalog, version=second).vectors.tobytes() == pulled
        again = client.push_pairs(catalog, "aof-worker", batches)  # batch ids survived
        assert (again.batches_applied, again.duplicates_ignored) == (0, 20)
        assert refit(stub, catalog, dim=4) == second + 1  # no version number reused
    assert before["totals"].pairs == 20_000 and before["totals"].batches == 20
    assert before["totals"].weight == float(weights.sum(dtype=np.float64))


# ---------------------------------------------------------------- refits: crash and contention


@pytest.fixture(scope="module")
def big_catalog(tmp_path_factory) -> Iterator[tuple[RedisServer, str]]:
    """A fresh Redis with a 100,000-item catalog (D = 384, 154 MB of raw vectors): a refit
    takes seconds, and a dim-128 version writes 51 MB in 25 blocks."""
    with RedisServer() as redis_server:
        synthetic_catalog(RedisStore(redis_server.url), "big", 100_000)
        yield redis_server, "big"


def test_two_concurrent_refits_of_one_catalog_one_runs_the_other_is_aborted(
        big_catalog, tmp_path: Path) -> None:
    redis_server, catalog = big_catalog
    with ServerProcess(redis_server.url, tmp_path / "server.log") as server, \
            server.channel() as channel:
        stub = server.stub(channel)
        before = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))
        barrier = threading.Barrier(2)
        outcomes: list[tuple[grpc.StatusCode, str]] = []

        def one_refit() -> None:
            barrier.wait()
            try:
                refit(stub, catalog, dim=16)
                outcomes.append((grpc.StatusCode.OK, ""))
            except grpc.RpcError as error:
                outcomes.append((error.code(), error.details()))

        threads = [threading.Thread(target=one_refit) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        after = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))
    codes = sorted(code.name for code, _ in outcomes)
    assert codes == ["ABORTED", "OK"], outcomes
    assert "already running" in next(d for c, d in outcomes if c is ABORTED)
    assert len(after.versions) == len(before.versions) + 1


def test_a_server_killed_mid_refit_keeps_the_active_version_and_hides_the_half_written_one(
        big_catalog, tmp_path: Path) -> None:
    redis_server, catalog = big_catalog
    watcher = redis_server.client()
    key = lambda suffix: f"tfllmer:{{{catalog}}}:{suffix}"  # noqa: E731
    args = ["--refit-lock-lease-seconds", str(LEASE)]
    # The dying server reaches Redis through a proxy that freezes its traffic at the SET of
    # the third block of served vectors of the new version: W, μ and two blocks are written,
    # the rest (and the publish) never arrive. The crash point is exact, not a timing race.
    proxy = FreezingProxy(redis_server.port)
    dying = ServerProcess(proxy.url, tmp_path / "dying.log", args=args)
    with dying, dying.channel() as channel:
        stub = dying.stub(channel)
        active = refit(stub, catalog, dim=16)
        published = sorted(int(v) for v in watcher.hkeys(key("versions")))
        served = b"".join(m.vectors for m in stub.GetItemEmbeddings(
            pb.GetItemEmbeddingsRequest(catalog=catalog, omit_item_ids=True)))
        half = int(watcher.get(key("vseq"))) + 1
        proxy.arm(rb"\$3\r\nSET\r\n\$\d+\r\n[^\r\n]*:v:%d:red:\d+\r\n" % half, after=3)
        doomed: list[grpc.StatusCode] = []
        caller = threading.Thread(target=lambda: doomed.append(status_of(
            lambda: refit(stub, catalog, dim=128))))
        caller.start()
        assert proxy.tripped.wait(120), "the refit never wrote its third block"
        dying.kill()
        caller.join(60)
    proxy.close()
    written = sorted(k.decode().rsplit(":", 1)[-1] for k in watcher.keys(key(f"v:{half}:*")))
    lock_ttl = watcher.pttl(key("refit_lock"))

    assert doomed == [UNAVAILABLE]  # the caller saw its server go away
    assert written == ["0", "1", "W", "mean"]  # half-written: 2 of 25 blocks
    assert watcher.hexists(key("pending"), str(half))  # allocated, never published
    assert sorted(int(v) for v in watcher.hkeys(key("versions"))) == published
    assert int(watcher.get(key("active"))) == active
    # The dead refit's lock frees with its lease: it has one (never -1, persistent), at most
    # LEASE long, and may already have run out (-2) if the host stalled since the freeze.
    assert lock_ttl == -2 or 0 < lock_ttl <= LEASE * 1000

    with ServerProcess(redis_server.url, tmp_path / "server.log", args=args) as server, \
            server.channel() as channel:  # a new process on the same store
        stub = server.stub(channel)
        described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=catalog))
        assert described.active_version == active
        assert [v.version for v in described.versions] == published
        assert status_of(lambda: list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=catalog, version=half)))) is NOT_FOUND
        assert status_of(lambda: stub.ActivateVersion(pb.ActivateVersionRequest(
            catalog=catalog, version=half))) is NOT_FOUND
        assert b"".join(m.vectors for m in stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=catalog, omit_item_ids=True))) == served

        # Once the lease has passed, the next refit runs and collects the orphaned arrays.
        wait_for(lambda: not watcher.exists(key("refit_lock")), 2 * LEASE, 0.1, "lock expiry")
        started = json.loads(watcher.hget(key("pending"), str(half)))["started"]
        time.sleep(max(0.0, started + LEASE - time.time()))
        assert refit(stub, catalog, dim=8) == half + 1
        assert watcher.keys(key(f"v:{half}:*")) == []
        assert watcher.hkeys(key("pending")) == []
    watcher.close()


# ---------------------------------------------------------------- a trainer dies mid-push


def test_a_trainer_killed_mid_push_and_restarted_leaves_exact_totals(
        aof_redis: RedisServer, tmp_path: Path) -> None:
    catalog, n_items, n_pairs, batch_pairs = "push-faults", 5_000, 400_000, 2_000
    n_batches = n_pairs // batch_pairs
    store = RedisStore(aof_redis.url)
    synthetic_catalog(store, catalog, n_items)
    state = tmp_path / "push-state.json"
    with ServerProcess(aof_redis.url, tmp_path / "server.log") as server:
        argv = [sys.executable, "-m", "tests.push_worker", server.address, catalog,
                "worker-7", str(state), str(n_items), str(n_pairs), str(batch_pairs)]

        def acked() -> int:
            try:
                return int(json.loads(state.read_text())["last_acked"])
            except (FileNotFoundError, ValueError):
                return -1

        kills = []
        for stop_after in (20, 80, 140):
            worker = subprocess.Popen(argv, stdout=subprocess.PIPE)
            wait_for(lambda stop=stop_after, w=worker: acked() >= stop or w.poll() is not None,
                     120, 0.005, "push progress")
            worker.kill()  # SIGKILL, possibly with a call in flight
            worker.wait(30)
            kills.append(acked())
        finished = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
        summary = json.loads(finished.stdout.splitlines()[-1])
        with EmbeddingClient(server.address, token="", retry=PATIENT) as client:
            totals = client.describe(catalog).cooccurrence
    assert all(k < n_batches - 1 for k in kills), f"a kill came too late: {kills}"
    rows, cols, weights = worker_pairs("worker-7", n_items, n_pairs)
    assert summary["skipped"] == kills[-1] + 1
    assert summary["skipped"] + summary["applied"] + summary["duplicates"] == n_batches
    assert (totals.pairs, totals.batches) == (n_pairs, n_batches)
    assert totals.total_weight == float(weights.sum(dtype=np.float64))  # integer weights
    expected = counts_from_pairs(rows.astype(np.uint32), cols.astype(np.uint32),
                                 weights.astype(np.float64), n_items)
    assert (store.read_counts(catalog, n_items) != expected).nnz == 0
