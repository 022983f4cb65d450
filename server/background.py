"""Run an ``EmbeddingServer`` on its own event loop in a background thread.

For programs that host the service next to other work in one process (the demo, tests):
callers keep using ordinary blocking gRPC clients against ``address``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from server.app import EmbeddingServer
from server.config import config_from_dict
from server.encoders.base import Encoder
from server.stores import CatalogStore


class BackgroundServer:
    """Context manager: starts the server on a free loopback port (unless ``port`` is
    given), stops it gracefully on exit."""

    def __init__(self, store: CatalogStore | None = None, encoder: Encoder | None = None,
                 **settings: Any) -> None:
        config = config_from_dict({"port": 0, **settings})
        self.server = EmbeddingServer(config, store=store, encoder=encoder)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=600)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"
