"""Refits as long-running operations (StartRefit, GetRefitOperation, WatchRefitOperation)
against the real server and store over real channels: progress through the phases on a
200,000-item catalog, a caller that goes away, re-attaching, errors reported up front or in
the operation, and the refit lock shared with the blocking form."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import EncoderIdentity, ItemChanges, LocalStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

BIG, SMALL, FLAT, DIM = "big", "small", "flat", 64
BIG_ITEMS = 200_000
WORK = {pb.REFIT_PHASE_READING, pb.REFIT_PHASE_MOMENTS, pb.REFIT_PHASE_SOLVE,
        pb.REFIT_PHASE_DIAGNOSTICS, pb.REFIT_PHASE_WRITING}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    encoder = HashEncoder(DIM)
    identity = EncoderIdentity(encoder.name, encoder.dim)
    store = LocalStore(tmp_path_factory.mktemp("operations") / "store.db")
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((16, DIM)).astype(np.float32)
    store.create_catalog(BIG, identity)
    for start in range(0, BIG_ITEMS, 50_000):
        ids = [f"i{row}" for row in range(start, start + 50_000)]
        raw = (rng.standard_normal((50_000, 16)).astype(np.float32) @ basis
               + 0.3 * rng.standard_normal((50_000, DIM)).astype(np.float32) + 1.0)
        store.commit_items(BIG, ItemChanges(start, ids, ids, raw))
    store.create_catalog(SMALL, identity)
    store.commit_items(SMALL, ItemChanges(0, [f"s{i}" for i in range(3000)],
                                          [f"s{i}" for i in range(3000)],
                                          rng.standard_normal((3000, DIM)).astype(np.float32)))
    store.create_catalog(FLAT, identity)  # every item the same vector: no variance to fit
    store.commit_items(FLAT, ItemChanges(0, [f"f{i}" for i in range(50)],
                                         [f"f{i}" for i in range(50)],
                                         np.ones((50, DIM), np.float32)))
    with ServerThread(store, encoder) as running:
        rows = rng.integers(0, BIG_ITEMS, 1_000_000).astype("<u4")
        cols = ((rows + rng.integers(1, 100, rows.size)) % BIG_ITEMS).astype("<u4")
        with running.channel() as channel:
            running.stub(channel).PushCooccurrence(iter([pb.PushCooccurrenceRequest(
                catalog=BIG, worker_id="w", batch_id=f"b{part}",
                rows=rows[part::4].tobytes(), cols=cols[part::4].tobytes(),
                weights=np.ones(rows.size // 4, "<f4").tobytes()) for part in range(4)]),
                timeout=120)
        yield running


def start(stub, catalog: str = BIG, dim: int = 32, **strength) -> pb.RefitOperation:
    request = pb.RefitProjectionRequest(catalog=catalog, activate=True, parameters=pb.FitParameters(
        dim=dim, **(strength or {"retention_budget": 0.8})))
    return stub.StartRefit(pb.StartRefitRequest(refit=request), timeout=60).operation


def wait_done(stub, name: str, timeout: float = 300) -> pb.RefitOperation:
    deadline = time.monotonic() + timeout
    while True:
        operation = stub.GetRefitOperation(pb.GetRefitOperationRequest(name=name),
                                           timeout=30).operation
        if operation.done or time.monotonic() > deadline:
            return operation
        time.sleep(0.1)


def test_an_async_refit_of_200k_items_reports_its_phases_as_it_goes(server) -> None:
    with server.channel() as channel:
        began = time.monotonic()
        operation = start(server.stub(channel), lam=0.5)
        returned_after = time.monotonic() - began
    assert operation.name.startswith("refits/") and not operation.done
    with server.channel() as channel:  # a new connection: re-attaching is just watching
        stub = server.stub(channel)
        seen, refused = [], None
        for message in stub.WatchRefitOperation(
                pb.WatchRefitOperationRequest(name=operation.name), timeout=300):
            seen.append((message.operation.phase, message.operation.fraction,
                         time.monotonic() - began))
            if refused is None and not message.operation.done:
                try:  # the running operation holds the catalog's refit lock
                    stub.RefitProjection(pb.RefitProjectionRequest(catalog=BIG), timeout=60)
                except grpc.RpcError as error:
                    refused = error.code()
        final = stub.GetRefitOperation(pb.GetRefitOperationRequest(name=operation.name),
                                       timeout=30).operation
        described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=BIG), timeout=30)
    phases = [pb.RefitPhase.Name(phase).removeprefix("REFIT_PHASE_").lower()
              for phase, _, _ in seen]
    print(f"StartRefit returned after {returned_after:.3f} s; the refit took "
          f"{seen[-1][2]:.1f} s; {len(seen)} updates:")
    print("  " + ", ".join(f"{p} {f:.3f} @{t:.1f}s" for p, (_, f, t) in zip(phases, seen,
                                                                             strict=True)))
    before_end = [phase for phase, _, _ in seen[:-1]]
    assert len(set(before_end) & WORK) >= 3
    fractions = [fraction for _, fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-2] < 1 == fractions[-1]
    assert len({round(f, 3) for f in fractions[:-1]}) >= 3
    assert final.done and final.phase == pb.REFIT_PHASE_DONE
    assert final.WhichOneof("result") == "response"
    version = final.response.version
    assert version.status == pb.VERSION_STATUS_ACTIVE and version.item_count == BIG_ITEMS
    assert described.active_version == version.version
    assert final.request.parameters.lam == 0.5  # the request it ran, echoed
    assert returned_after < seen[-1][2] / 3
    assert refused == grpc.StatusCode.ABORTED


def test_the_refit_goes_on_after_its_caller_disconnects(server) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        before = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=SMALL), timeout=30)
    channel = server.channel()
    name = start(server.stub(channel), catalog=SMALL, dim=8, lam=0.0).name
    channel.close()  # the caller goes away at once
    with server.channel() as channel:
        stub = server.stub(channel)
        final = wait_done(stub, name)
        after = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=SMALL), timeout=30)
    assert final.WhichOneof("result") == "response"
    assert len(after.versions) == len(before.versions) + 1
    assert after.active_version == final.response.version.version
    assert final.response.previous_active_version == before.active_version


def test_the_refit_lock_is_shared_with_other_replicas_and_the_blocking_form(server) -> None:
    store = server.server._store  # the store every replica shares
    assert store.acquire_refit_lock(SMALL, "another-replica", 60)
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            with pytest.raises(grpc.RpcError) as started:
                start(stub, catalog=SMALL, dim=16, lam=0.0)
            with pytest.raises(grpc.RpcError) as blocking:
                stub.RefitProjection(pb.RefitProjectionRequest(
                    catalog=SMALL, parameters=pb.FitParameters(dim=16, lam=0.0)), timeout=60)
    finally:
        store.release_refit_lock(SMALL, "another-replica")
    assert started.value.code() == blocking.value.code() == grpc.StatusCode.ABORTED
    with server.channel() as channel:
        final = wait_done(server.stub(channel), start(server.stub(channel), catalog=SMALL,
                                                      dim=4, lam=0.0).name)
    assert final.WhichOneof("result") == "response"
    assert store.acquire_refit_lock(SMALL, "after", 60)  # the operation released it
    store.release_refit_lock(SMALL, "after")


@pytest.mark.parametrize("catalog, dim, code", [
    ("no-such-catalog", 8, grpc.StatusCode.NOT_FOUND),
    ("Bad Name!", 8, grpc.StatusCode.INVALID_ARGUMENT),
    (BIG, DIM + 1, grpc.StatusCode.INVALID_ARGUMENT),
    (FLAT, 50, grpc.StatusCode.FAILED_PRECONDITION),  # 50 items: too few for dim 50
])
def test_a_bad_request_is_refused_by_start_refit_itself(server, catalog, dim, code) -> None:
    with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        start(server.stub(channel), catalog=catalog, dim=dim, lam=0.0)
    assert refused.value.code() == code


def test_a_fit_that_fails_reports_its_error_in_the_operation(server) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        before = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=FLAT), timeout=30)
        final = wait_done(stub, start(stub, catalog=FLAT, dim=4, lam=0.0).name)
        after = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=FLAT), timeout=30)
    assert final.done and final.WhichOneof("result") == "error"
    assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "no variance" in final.error.message
    assert after.versions == before.versions  # nothing was written


def test_operation_names_are_checked(server) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        codes = []
        for name in ("", "refits/../x", "refits/000000000000/" + "0" * 32):
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetRefitOperation(pb.GetRefitOperationRequest(name=name), timeout=10)
            codes.append(refused.value.code())
        with pytest.raises(grpc.RpcError) as watched:
            list(stub.WatchRefitOperation(pb.WatchRefitOperationRequest(name="x"), timeout=10))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2 + [grpc.StatusCode.NOT_FOUND]
    assert watched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another server replica" in refused.value.details()
