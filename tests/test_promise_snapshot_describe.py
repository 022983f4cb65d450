"""Promise: DescribeCatalog describes one state of the catalog. Its ``active_version`` is
the version its list marks ACTIVE, and its item count and co-occurrence totals are from the
same moment, even while operators switch versions and trainers push.

Broken before: the catalog row, the version list and the totals were three reads, so a
describe racing an activation said ``active_version`` 7 while its list marked 8 ACTIVE."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness.server_process import refit, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from tests.promise_servers import STORES, served

SECONDS = 4.0


@pytest.mark.parametrize("kind", STORES)
def test_describe_is_one_snapshot_while_versions_switch(kind: str, tmp_path: Path,
                                                        record_property) -> None:
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, "snap", 300)  # type: ignore[arg-type]
        versions = [refit(env.stub, "snap", dim=4) for _ in range(2)]
        stop = threading.Event()
        switches = [0]

        def switch() -> None:  # an operator flipping between the two versions
            with env.server.channel() as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                while not stop.is_set():
                    stub.ActivateVersion(pb.ActivateVersionRequest(
                        catalog="snap", version=versions[switches[0] % 2]), timeout=30)
                    switches[0] += 1

        def push() -> None:  # a trainer pushing one pair per batch
            with env.server.channel() as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                one = np.array([1], "<u4").tobytes()
                batch = 0
                while not stop.is_set():
                    stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
                        catalog="snap", worker_id="w", batch_id=str(batch),
                        rows=np.array([0], "<u4").tobytes(), cols=one,
                        weights=np.ones(1, "<f4").tobytes())]), timeout=30)
                    batch += 1

        threads = [threading.Thread(target=switch), threading.Thread(target=push)]
        for thread in threads:
            thread.start()
        torn, describes = [], 0
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            reply = env.stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="snap"),
                                             timeout=30)
            describes += 1
            active = [v.version for v in reply.versions
                      if v.status == pb.VERSION_STATUS_ACTIVE]
            totals = reply.cooccurrence
            if active != [reply.active_version] or totals.pairs != totals.batches:
                torn.append((reply.active_version, active, totals.pairs, totals.batches))
        stop.set()
        for thread in threads:
            thread.join(60)
    record_property("describes", describes)
    record_property("activations_meanwhile", switches[0])
    record_property("torn_describes", len(torn))
    assert switches[0] > 20 and describes > 20
    assert torn == []
