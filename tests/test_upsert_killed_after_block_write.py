"""A server SIGKILLed between writing an upsert's block files and its commit (raw vectors in
a raw file store, ``--raw-store-url``) loses nothing and shows nothing of that upsert: the
catalog reads exactly what was committed before, the retried upsert commits, and the block
file the dead upsert left is collected once it is older than the age guard.

The crash point is exact: the server reaches Redis through a proxy that freezes its traffic
at the commit's EXEC-bound manifest write (``HSET …:rawfiles``), which the store sends only
after every block file of the upsert is on disk."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from harness.server_process import FreezingProxy, ServerProcess, status_of
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RawFileStore, RedisStore

CATALOG = "killed"
LEASE_S = 8.0  # the refit lock's lease: the collection's age guard (renewals on a busy host)


def upsert(stub, first: int, count: int):
    items = [pb.Item(id=f"i{k}", text=f"item number {k}") for k in range(first, first + count)]
    return stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=items)]),
                            timeout=120)


def raw_of(stub, count: int) -> np.ndarray:
    chunks = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
        catalog=CATALOG, kind=pb.EMBEDDING_KIND_RAW), timeout=60))
    data = b"".join(chunk.vectors for chunk in chunks)
    return np.frombuffer(data, dtype="<f4").reshape(count, -1)


def test_an_upsert_killed_between_its_block_write_and_its_commit_loses_nothing(
        redis_server, tmp_path: Path) -> None:
    with redis_server.client() as client:
        client.flushall()
    raw_dir = tmp_path / "raw"
    args = ["--raw-store-url", str(raw_dir)]
    env = {"TFLLMER_REFIT_LOCK_LEASE_SECONDS": str(LEASE_S)}
    proxy = FreezingProxy(redis_server.port)
    dying = ServerProcess(proxy.url, tmp_path / "dying.log", args=args, env=env)
    try:
        with dying, dying.channel() as channel:
            stub = dying.stub(channel)
            assert upsert(stub, 0, 20).item_count == 20
            before = raw_of(stub, 20)
            files_before = {path.name for path in raw_dir.rglob("*.arrow")}
            proxy.arm(rb"HSET\r\n\$\d+\r\ntfllmer:\{killed\}:rawfiles")
            caller = threading.Thread(target=lambda: status_of(lambda: upsert(stub, 20, 20)))
            caller.start()
            assert proxy.tripped.wait(120), "the upsert never reached its commit"
            dying.kill()
            caller.join(60)
    finally:
        proxy.close()
    left = {path.name for path in raw_dir.rglob("*.arrow")} - files_before
    assert left, "the dead upsert wrote its block file before the commit"
    store = RedisStore(redis_server.url, raw_files=RawFileStore(str(raw_dir)))
    assert store.get_catalog(CATALOG).item_count == 20  # nothing of the dead upsert
    with ServerProcess(redis_server.url, tmp_path / "server.log", args=args, env=env) as server, \
            server.channel() as channel:
        stub = server.stub(channel)
        np.testing.assert_array_equal(raw_of(stub, 20), before)
        assert upsert(stub, 20, 20).item_count == 40  # the retry commits
        raw = raw_of(stub, 40)
        np.testing.assert_array_equal(raw[:20], before)
        time.sleep(LEASE_S + 0.5)  # the dead upsert's file is now older than the age guard
        assert status_of(lambda: stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, parameters=pb.FitParameters(dim=4, lam=0)), timeout=120)).name == "OK"
        on_disk = {path.name for path in raw_dir.rglob("*.arrow")}
        assert not on_disk & left  # collected
        blocks = store.raw_blocks(CATALOG, 40)
        assert on_disk == {entry.file for entry in blocks.entries}  # only live blocks remain
        np.testing.assert_array_equal(raw_of(stub, 40), raw)
    store.close()
