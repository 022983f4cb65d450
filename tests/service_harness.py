"""Run the real ``EmbeddingServer`` on a free loopback port from a background thread.

The server gets its own asyncio loop, so tests talk to it over a real gRPC channel with the
plain synchronous stub, exactly as a trainer or an operator would.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc

from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.app import EmbeddingServer
from server.config import config_from_dict
from server.encoders.base import Encoder
from server.stores import CatalogStore


class ServerThread:
    def __init__(self, store: CatalogStore, encoder: Encoder, **settings: Any) -> None:
        config = config_from_dict({"port": 0, **settings})
        self.server = EmbeddingServer(config, store=store, encoder=encoder)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self, channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
        return pb_grpc.EmbeddingServiceStub(channel)
