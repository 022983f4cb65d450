"""Promise: a refit publishes only while it still owns the catalog's refit lock, checked in
the atomic publish step itself (a fencing token); and what RefitProjection reports as
``previous_active_version`` is the active version that step replaced.

Broken before: the publish never looked at the lock, so a refit whose lease had run out (a
long GC pause, a partitioned replica) still published over the refit that took the lock
after it; and ``previous_active_version`` was read before the payload was written, so an
activation landing meanwhile made it name the wrong roll-back target.

The crash points are exact: the server reaches Redis through a proxy that holds back its
publish script while the test changes the store underneath, then lets it through. The same
two promises at the store level, on every store (SQLite, Redis, Redis Cluster), are in
tests/test_store_contract.py (``test_a_publish_is_fenced_by_the_refit_lock``,
``test_a_publish_reports_the_active_version_it_replaced``)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import grpc

from harness.redis_server import RedisServer
from harness.server_process import FreezingProxy, ServerProcess, refit, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import RedisStore
from server.stores.redis_store import _PUBLISH

CATALOG = "fence"
PUBLISH_CALL = rb"EVALSHA\r\n\$40\r\n" + hashlib.sha1(_PUBLISH.encode()).hexdigest().encode()


def _key(suffix: str) -> str:
    return f"tfllmer:{{{CATALOG}}}:{suffix}"


def _held_refit(tmp_path: Path, change_underneath, *, activate: bool = True):
    """Run a refit on a server whose publish is held back; ``change_underneath(client,
    store)`` runs while it is held. Returns (outcome, reply or None, published versions
    before, published versions after, active before, active after)."""
    with RedisServer() as redis_server:
        direct = RedisStore(redis_server.url)
        synthetic_catalog(direct, CATALOG, 400)
        proxy = FreezingProxy(redis_server.port)
        try:
            with ServerProcess(proxy.url, tmp_path / "server.log") as server, \
                    server.channel() as channel:
                stub = server.stub(channel)
                first = refit(stub, CATALOG, dim=4)
                refit(stub, CATALOG, dim=4, activate=False)
                before = [r.version for r in direct.versions(CATALOG)]
                active_before = direct.get_catalog(CATALOG).active_version
                proxy.arm(PUBLISH_CALL)
                result: list = []

                def call() -> None:
                    try:
                        result.append(stub.RefitProjection(pb.RefitProjectionRequest(
                            catalog=CATALOG, activate=activate,
                            parameters=pb.FitParameters(dim=4, lam=0.0)), timeout=120))
                    except grpc.RpcError as error:
                        result.append(error)

                caller = threading.Thread(target=call)
                caller.start()
                assert proxy.tripped.wait(120), "the refit never reached its publish"
                with redis_server.client() as client:
                    change_underneath(client, direct)
                proxy.release()
                caller.join(120)
                after = [r.version for r in direct.versions(CATALOG)]
                active_after = direct.get_catalog(CATALOG).active_version
        finally:
            proxy.close()
            direct.close()
    assert first == 1 and len(result) == 1
    return result[0], before, after, active_before, active_after


def test_a_refit_that_lost_its_lock_publishes_nothing(tmp_path: Path, record_property) -> None:
    def lease_lost(client, _store) -> None:
        # The lease ran out while the refit was paused, and another refit took the lock.
        client.set(_key("refit_lock"), "another-refit", px=60_000)

    outcome, before, after, active_before, active_after = _held_refit(tmp_path, lease_lost)
    code = outcome.code() if isinstance(outcome, grpc.RpcError) else grpc.StatusCode.OK
    record_property("stale_refit_status", code.name)
    assert code is grpc.StatusCode.ABORTED, outcome
    assert "lock" in outcome.details()
    assert after == before and active_after == active_before  # nothing published


def test_previous_active_version_is_what_the_publish_replaced(tmp_path: Path) -> None:
    def operator_rolls_forward(_client, store) -> None:
        store.activate(CATALOG, 2)  # lands between the refit's read and its publish

    reply, before, after, active_before, active_after = _held_refit(
        tmp_path, operator_rolls_forward)
    assert not isinstance(reply, grpc.RpcError), reply
    assert active_before == 1 and before == [1, 2]
    assert reply.previous_active_version == 2  # the roll-back target, not the stale 1
    assert active_after == reply.version.version == 3
