"""WatchCatalog across replicas: two real ``python -m server`` processes on one Redis; a
trainer watches one of them while an operator writes and activates versions through the
other, the watched server is killed and restarted, and finally shut down."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from harness.server_process import ServerProcess, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import LocalStore, RedisStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread
from trainer_client.client import EmbeddingClient, ServiceError
from trainer_client.worker import resolve_version

CATALOG = "watched"
KIND = {pb.CATALOG_EVENT_KIND_SNAPSHOT: "snapshot",
        pb.CATALOG_EVENT_KIND_VERSION_CREATED: "created",
        pb.CATALOG_EVENT_KIND_ACTIVATED: "activated"}


@pytest.fixture(scope="module")
def replicas(redis_server, tmp_path_factory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with redis_server.client() as client:
        client.flushall()
    synthetic_catalog(RedisStore(redis_server.url), CATALOG, 500)
    folder = tmp_path_factory.mktemp("watch")
    watched = ServerProcess(redis_server.url, folder / "watched.log")
    other = ServerProcess(redis_server.url, folder / "other.log")
    with watched, other:
        yield watched, other


def refit(server: ServerProcess, activate: bool) -> int:
    with server.channel() as channel:
        reply = server.stub(channel).RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=activate, parameters=pb.FitParameters(dim=8, lam=0)),
            timeout=120)
    return reply.version.version


def activate(server: ServerProcess, version: int) -> None:
    with server.channel() as channel:
        server.stub(channel).ActivateVersion(
            pb.ActivateVersionRequest(catalog=CATALOG, version=version), timeout=30)


class Watcher:
    """Collects (kind, version, active, seconds since start) of a watch in a thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.channel = server.channel()
        self.stream = server.stub(self.channel).WatchCatalog(
            pb.WatchCatalogRequest(catalog=CATALOG), timeout=300)
        self.events: list[tuple[str, int, int]] = []
        self.snapshot: pb.WatchCatalogResponse | None = None
        self.ended: grpc.RpcError | None = None
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                if event.kind == pb.CATALOG_EVENT_KIND_SNAPSHOT:
                    self.snapshot = event
                else:
                    self.events.append((KIND[event.kind], event.version.version,
                                        event.active_version))
        except grpc.RpcError as error:
            self.ended, self.ended_at = error, time.monotonic()

    def wait(self, count: int, timeout: float = 30) -> float:
        started = time.monotonic()
        while len(self.events) < count:
            assert time.monotonic() - started < timeout, f"saw only {self.events}"
            time.sleep(0.02)
        return time.monotonic() - started

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(10)
        self.channel.close()


def test_a_watch_sees_what_another_replica_writes_and_activates(replicas) -> None:
    watched, other = replicas
    watcher = Watcher(watched)
    try:
        while watcher.snapshot is None:
            time.sleep(0.02)
        before = watcher.snapshot.active_version
        staged = refit(other, activate=False)
        lag = watcher.wait(1)
        activate(other, staged)
        watcher.wait(2)
        fresh = refit(other, activate=True)
        watcher.wait(4)
        activate(other, staged)  # rollback
        watcher.wait(5)
    finally:
        watcher.close()
    assert watcher.events == [
        ("created", staged, before), ("activated", staged, staged),
        ("created", fresh, fresh), ("activated", fresh, fresh),
        ("activated", staged, staged)]
    print(f"a version staged through the other replica was seen after {lag:.2f} s")
    assert lag < 5


def test_wait_for_version_outlives_a_restart_of_the_watched_server(replicas) -> None:
    watched, other = replicas
    with EmbeddingClient(watched.address, token="") as client:
        target = max(v.version for v in client.describe(CATALOG).versions) + 1
        done: list[int | BaseException] = []

        def wait() -> None:
            try:
                done.append(client.wait_for_version(CATALOG, target, timeout_s=120))
            except BaseException as error:  # reported by the assertion below
                done.append(error)

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(1.0)
        watched.kill()  # the watch breaks with UNAVAILABLE; the client reconnects
        written = refit(other, activate=True)  # while the watched server is down
        watched.start()
        thread.join(120)
    assert done == [written] and written == target


def test_wait_for_version_times_out_and_refuses_unknown_catalogs(replicas) -> None:
    watched, _ = replicas
    with EmbeddingClient(watched.address, token="") as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait_for_version(CATALOG, 10_000, timeout_s=1.5)
        assert time.monotonic() - started < 10
        with pytest.raises(ServiceError) as refused:
            client.wait_for_version("no-such-catalog", 1, timeout_s=10)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


def test_watches_do_not_take_the_slots_of_embedding_pulls(tmp_path) -> None:
    with ServerThread(LocalStore(tmp_path / "store.db"), HashEncoder(16),
                      max_open_pulls=2) as server, server.channel() as channel:
        stub = server.stub(channel)
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog="w", items=[
            pb.Item(id=str(i), text=f"item {i}") for i in range(40)])]), timeout=60)
        stub.RefitProjection(pb.RefitProjectionRequest(
            catalog="w", activate=True, parameters=pb.FitParameters(dim=4, lam=0)), timeout=60)
        watches = [stub.WatchCatalog(pb.WatchCatalogRequest(catalog="w"), timeout=60)
                   for _ in range(4)]
        try:
            assert all(next(watch).active_version == 1 for watch in watches)
            pulled = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(catalog="w"),
                                                 timeout=60))
        finally:
            for watch in watches:
                watch.cancel()
    assert sum(len(m.rows) // 4 for m in pulled) == 40


def test_the_worker_pins_the_active_version_or_waits_for_one(tmp_path) -> None:
    with ServerThread(LocalStore(tmp_path / "store.db"), HashEncoder(16)) as server, \
            server.channel() as channel, EmbeddingClient(server.address, token="") as client:
        stub = server.stub(channel)
        stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog="w", items=[
            pb.Item(id=str(i), text=f"item {i}") for i in range(40)])]), timeout=60)

        def args(**given) -> argparse.Namespace:
            return argparse.Namespace(**{"catalog": "w", "version": 0, "wait_version": 0,
                                         "wait_timeout": 60.0, "pin_active": False, **given})

        with pytest.raises(SystemExit, match="no active version"):
            resolve_version(client, args(pin_active=True), 0, None)
        fit = pb.RefitProjectionRequest(catalog="w", activate=True,
                                        parameters=pb.FitParameters(dim=4, lam=0))
        threading.Timer(1.0, lambda: stub.RefitProjection(fit, timeout=60)).start()
        assert resolve_version(client, args(wait_version=1), 0, None) == 1
        stub.RefitProjection(fit, timeout=60)
        assert resolve_version(client, args(pin_active=True), 0, None) == 2
        assert resolve_version(client, args(version=1, pin_active=True), 0, None) == 1
        assert resolve_version(client, args(), 0, None) == 0  # the active one at pull time


def test_shutdown_ends_open_watches_at_once_with_unavailable(replicas) -> None:
    watched, _ = replicas
    watcher = Watcher(watched)
    while watcher.snapshot is None:
        time.sleep(0.02)
    stopping = time.monotonic()
    code = watched.stop()  # SIGTERM; the grace period is 30 s
    watcher.thread.join(30)
    assert code == 0 and watcher.ended is not None
    assert watcher.ended.code() == grpc.StatusCode.UNAVAILABLE
    assert watcher.ended_at - stopping < 10
    watcher.channel.close()  # the last test of the module: the replica stays down
