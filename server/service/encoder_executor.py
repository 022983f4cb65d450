"""All encoding of a server process goes through one executor with a bounded queue.

Encoders (a torch model, a vLLM engine, an HTTP client) are not made for concurrent calls
from many worker threads, and unbounded queuing turns a burst of ingests into unbounded
memory and latency. ``EncoderExecutor`` runs one encode at a time on its own thread, refuses
work beyond ``queue_limit`` waiting calls (RESOURCE_EXHAUSTED, retry with backoff), stops a
call's encoding between batches once the call is dead (``call_lifetime``), and reports an
encoder failure as UNAVAILABLE, logged once per outage, with ``healthy`` for grpc.health.v1.
It implements the ``Encoder`` protocol, so the service does not know it is there.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from server.call_lifetime import CallEnded, check_alive
from server.encoders.base import Encoder, ProgressCallback
from server.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


class EncoderExecutor:
    def __init__(self, encoder: Encoder, queue_limit: int) -> None:
        self.encoder = encoder
        self.queue_limit = queue_limit
        self.healthy = True
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: Sequence[str], progress: ProgressCallback | None = None
               ) -> np.ndarray:
        with self._lock:
            if self._waiting >= self.queue_limit:
                raise ResourceExhausted(
                    f"the encoder has {self.queue_limit} calls queued, the server's limit; "
                    "retry with backoff")
            self._waiting += 1
        try:
            # The worker runs in this call's context, so it sees the call's lifetime.
            context = contextvars.copy_context()
            return self._pool.submit(context.run, self._run, texts, progress).result()
        finally:
            with self._lock:
                self._waiting -= 1

    def _run(self, texts: Sequence[str], progress: ProgressCallback | None) -> np.ndarray:
        check_alive()  # the call may have ended while it waited

        def step(encoded: int) -> None:
            if progress is not None:
                progress(encoded)
            check_alive()  # a dead call's remaining batches are not encoded

        try:
            vectors = self.encoder.encode(texts, progress=step)
        except CallEnded:
            raise
        except Exception as error:  # the model, the GPU or the remote server failed
            if self.healthy:
                log.error("the encoder failed: %s: %s", type(error).__name__, str(error)[:200])
            self.healthy = False
            raise Unavailable(f"the encoder failed ({type(error).__name__}); retry later"
                              ) from error
        if not self.healthy:
            log.warning("the encoder works again")
        self.healthy = True
        return vectors

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
