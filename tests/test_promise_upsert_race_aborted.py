"""Promise: when concurrent UpsertItems calls race on one catalog, the loser is ABORTED
(nothing stored, safe to retry), never INVALID_ARGUMENT, which tells a client its request
is wrong and must not be retried.

Broken before on Redis: a commit that read the item count before the winner committed and
its ids after saw "item id … already has a row" and answered INVALID_ARGUMENT (3 of 40
rounds)."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from tests.promise_servers import STORES, served

# Real servers, each scenario tens of seconds: with the reliability runs.
pytestmark = pytest.mark.reliability

ROUNDS = 30
RACERS = 4


@pytest.mark.parametrize("kind", STORES)
def test_a_lost_upsert_race_is_aborted(kind: str, tmp_path: Path, record_property) -> None:
    outcomes: dict[str, int] = {}
    with served(kind, tmp_path) as env:
        channels = [env.server.channel() for _ in range(RACERS)]
        stubs = [pb_grpc.EmbeddingServiceStub(channel) for channel in channels]
        for round_ in range(ROUNDS):
            items = [pb.Item(id=f"r{round_}-{i}", text=f"item {i} of round {round_}")
                     for i in range(20)]
            start = threading.Barrier(RACERS)
            codes: list[grpc.StatusCode] = []

            def upsert(stub, items=items, start=start, codes=codes) -> None:
                start.wait()
                try:
                    stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog="race", items=items)]),
                                     timeout=120)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())

            threads = [threading.Thread(target=upsert, args=(stub,)) for stub in stubs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(180)
            for code in codes:
                outcomes[code.name] = outcomes.get(code.name, 0) + 1
            assert grpc.StatusCode.OK in codes
        described = env.stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="race"))
        for channel in channels:
            channel.close()
    record_property("outcomes", str(outcomes))
    assert set(outcomes) <= {"OK", "ABORTED"}, outcomes
    assert described.item_count == 20 * ROUNDS
