"""A real ``python -m server`` process on either store, for the promise tests
(``tests/test_promise_*.py``): the same scenario runs against the embedded SQLite store and
a real ``redis-server`` of its own, with a direct store handle for setting up catalogs and
inspecting what was written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from harness.redis_server import RedisServer
from harness.server_process import ServerProcess
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.stores import CatalogStore, LocalStore, RedisStore

STORES = ("local", "redis")


@dataclass
class Served:
    kind: str
    url: str
    store: CatalogStore  # a direct handle on the server's store, in this process
    server: ServerProcess
    channel: grpc.Channel
    redis: RedisServer | None

    @property
    def stub(self) -> pb_grpc.EmbeddingServiceStub:
        return pb_grpc.EmbeddingServiceStub(self.channel)


@contextlib.contextmanager
def store_url(kind: str, directory: Path) -> Iterator[tuple[str, RedisServer | None]]:
    """A store of ``kind``: a SQLite file in ``directory``, or a redis-server of its own."""
    if kind == "local":
        yield str(directory / "store.sqlite3"), None
        return
    with RedisServer() as redis_server:
        yield redis_server.url, redis_server


def open_direct(kind: str, url: str) -> CatalogStore:
    return LocalStore(url) if kind == "local" else RedisStore(url)


@contextlib.contextmanager
def served(kind: str, directory: Path, args: Sequence[str] = ()) -> Iterator[Served]:
    """A server process on a fresh store of ``kind``; everything is stopped on exit."""
    with store_url(kind, directory) as (url, redis_server):
        store = open_direct(kind, url)
        server = ServerProcess(url, directory / f"server-{kind}.log", args=args)
        try:
            with server, server.channel() as channel:
                yield Served(kind, url, store, server, channel, redis_server)
        finally:
            store.close()
