"""Promise: the store is the truth. When the store under a running server loses or replaces
its data (Redis FLUSHALL, Redis restarted without persistence, the SQLite file replaced),
the server says so: calls on the catalogs it knew answer DATA_LOSS (never OK with 0 items,
never an empty pinned version), an upsert does not write items without their catalog's
settings, health turns NOT_SERVING, and the loss is logged. A replica that never saw the
catalog answers NOT_FOUND. No process serves from a cached copy of what the store lost.

Broken before: each process trusted its cached catalog settings, so after a FLUSHALL
DescribeCatalog was OK with 0 items, a pinned pull of the vanished version was OK with 0
items, upserts wrote items without settings, health stayed SERVING and nothing was logged."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from harness.server_process import ServerProcess, refit, status_of, synthetic_catalog, wait_for
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import LocalStore
from tests.promise_servers import served

# Real servers, each scenario tens of seconds: with the reliability runs.
pytestmark = pytest.mark.reliability

CATALOG = "lost"
LOST = (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.NOT_FOUND)


def _lose_data(env, how: str) -> None:
    if how == "flushall":
        with env.redis.client() as client:
            client.flushall()
    elif how == "restarted-empty":  # no AOF, no RDB: it comes back with nothing
        env.redis.kill()
        env.redis.start()
    else:  # another (empty) database file put where the server's was
        path = Path(env.url)
        LocalStore(path.with_suffix(".new")).close()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(path.with_suffix(".new"), path)


def _pull(stub, version: int = 0, ids: tuple[str, ...] = ()
          ) -> list[pb.GetItemEmbeddingsResponse]:
    return list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
        catalog=CATALOG, version=version, item_ids=ids), timeout=30))


LOOKED_UP = (f"{CATALOG}-3", f"{CATALOG}-150")  # served from memory once warm


@pytest.mark.parametrize(("kind", "how"), [("redis", "flushall"), ("redis", "restarted-empty"),
                                           ("local", "file-replaced")])
def test_a_store_that_lost_its_data_is_detected(kind: str, how: str, tmp_path: Path,
                                                record_property) -> None:
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, CATALOG, 200)  # type: ignore[arg-type]
        stub = env.stub
        version = refit(stub, CATALOG, dim=4)
        assert sum(len(m.rows) // 4 for m in _pull(stub, version)) == 200
        for _ in range(2):  # the second look-up is answered from the row cache and the view
            assert sum(len(m.rows) // 4 for m in _pull(stub, ids=LOOKED_UP)) == 2
        _lose_data(env, how)

        describe = status_of(lambda: stub.DescribeCatalog(
            pb.DescribeCatalogRequest(catalog=CATALOG), timeout=30))
        pinned = status_of(lambda: _pull(stub, version))
        active = status_of(lambda: _pull(stub))
        looked_up = status_of(lambda: _pull(stub, ids=LOOKED_UP))
        push = status_of(lambda: stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
            catalog=CATALOG, worker_id="w", batch_id="b", rows=b"\0\0\0\0",
            cols=b"\1\0\0\0", weights=b"\0\0\x80?")]), timeout=30))
        upsert = status_of(lambda: stub.UpsertItems(iter([pb.UpsertItemsRequest(
            catalog=CATALOG, items=[pb.Item(id="new", text="a new item")])]), timeout=60))
        refitted = status_of(lambda: refit(stub, CATALOG, dim=4))
        record_property("statuses", json.dumps({
            "describe": describe.name, "pinned_pull": pinned.name, "active_pull": active.name,
            "warm_lookup": looked_up.name,
            "push": push.name, "upsert": upsert.name, "refit": refitted.name}))
        assert describe is grpc.StatusCode.DATA_LOSS
        assert pinned is grpc.StatusCode.DATA_LOSS and active is grpc.StatusCode.DATA_LOSS
        assert looked_up is grpc.StatusCode.DATA_LOSS
        assert push is grpc.StatusCode.DATA_LOSS and refitted is grpc.StatusCode.DATA_LOSS
        assert upsert is grpc.StatusCode.DATA_LOSS
        # Nothing was written in place of the lost catalog.
        if kind == "redis":
            with env.redis.client() as client:
                assert [k for k in client.keys("tfllmer:{lost}:*")] == []
        else:
            with sqlite3.connect(env.url) as conn:
                assert conn.execute("SELECT COUNT(*) FROM items").fetchone() == (0,)

        took = wait_for(lambda: env.server.health() == health_pb2.HealthCheckResponse.NOT_SERVING,
                        30, 0.2, "health NOT_SERVING")
        record_property("seconds_to_not_serving", round(took, 2))
        errors = [json.loads(line) for line in env.server.log_text().splitlines()
                  if line.startswith("{")]
        assert any(e.get("level") == "error" and "lost" in e.get("message", "")
                   for e in errors), env.server.log_tail()

        # A replica started after the loss never knew the catalog: NOT_FOUND, and serving.
        other = ServerProcess(env.url, tmp_path / "other.log")
        with other, other.channel() as channel:
            assert status_of(lambda: other.stub(channel).DescribeCatalog(
                pb.DescribeCatalogRequest(catalog=CATALOG), timeout=30)) in LOST
