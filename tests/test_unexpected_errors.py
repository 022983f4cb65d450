"""A bug is INTERNAL, never a caller's mistake: an exception outside ``server.errors`` ends
the call with INTERNAL and an incident id, shows the caller nothing of the exception, and
logs its traceback once under that id. A store's own ``ValueError`` is such a bug (before,
every ``ValueError`` became INVALID_ARGUMENT)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.errors import InvalidArgument
from server.stores import LocalStore
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

SECRET = "internal detail 5f3a"


class BrokenStore(LocalStore):
    """A store whose describe snapshot (DescribeCatalog's one read) fails the way ``failure``
    says."""

    failure: Exception = ValueError(SECRET)

    def describe(self, name: str):  # type: ignore[override]
        raise self.failure


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[tuple[BrokenStore, Any]]:
    store = BrokenStore(tmp_path / "store.db")
    with ServerThread(store, HashEncoder()) as server, server.channel() as channel:
        stub = server.stub(channel)
        stub.UpsertItems(iter([pb.UpsertItemsRequest(
            catalog="c", items=[pb.Item(id="a", text="alpha")])]), timeout=30)
        yield store, stub


@pytest.mark.parametrize("failure", [ValueError(SECRET), KeyError(SECRET),
                                     RuntimeError(SECRET)], ids=["ValueError", "KeyError",
                                                                 "RuntimeError"])
def test_an_unexpected_exception_is_internal_with_an_incident_id(broken, failure, caplog
                                                                  ) -> None:
    store, stub = broken
    store.failure = failure
    with caplog.at_level(logging.ERROR, logger="server.service.servicer"), \
            pytest.raises(grpc.RpcError) as error:
        stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="c"), timeout=30)
    assert error.value.code() is grpc.StatusCode.INTERNAL
    details = error.value.details()
    assert SECRET not in details
    incident = re.search(r"incident ([0-9a-f]{12})", details)
    assert incident, details
    logged = [r for r in caplog.records if incident.group(1) in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])


def test_a_rule_of_the_contract_stays_invalid_argument(broken) -> None:
    store, stub = broken
    store.failure = InvalidArgument("what the rule says")
    with pytest.raises(grpc.RpcError) as error:
        stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog="c"), timeout=30)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "what the rule says"
