"""The trainer's typed client of the embedding service (ARCHITECTURE.md §7, §8).

Retries happen in two layers. The channel carries gRPC's own retry policy (service config),
which transparently retries a call that failed with UNAVAILABLE or DEADLINE_EXCEEDED before
it committed. gRPC commits a server stream once its first message arrives, and a client
stream once its requests outgrow the retry buffer, so a catalog pull that dies mid-stream
or a large push would not be retried; an explicit loop with exponential backoff and full
jitter retries the whole operation for those. Both are safe: reads change nothing, and the
server counts a pushed batch once however often it is sent.

A pull is pinned: the version named by the first header is requested explicitly by every
retry, and the item count by that header bounds the result, so a pull that restarted after
an interruption returns the same matrix, bit for bit, even if the active version changed or
items were added meanwhile.

The bearer token travels only as call metadata; it never appears in logs, reprs or errors.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from protos.codecs import decode_vectors, wire_pairs
from protos.connection import Connection, Pem
from protos.enums import DTYPE, KIND
from protos.metadata import SERVICE
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# (batch_id, rows, cols, weights) of one PushCooccurrence batch.
PairBatch = tuple[str, np.ndarray, np.ndarray, np.ndarray]
# Called after every chunk of a pull with (items received so far, items in the pull).
ChunkCallback = Callable[[int, int], None]
T = TypeVar("T")


class ServiceError(Exception):
    """A call the service refused, or one that still failed when the retries ran out."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of both retry layers.

    ``max_attempts`` bounds gRPC's own retries of one call (gRPC caps it at 5);
    ``budget_s`` bounds the explicit loop: it retries while the next attempt would start
    within that many seconds of the first, so set it above a server's restart time.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    budget_s: float = 120.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be 2 to 5 (gRPC's retry limits)")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if not 1 <= self.multiplier <= 10 or self.budget_s < 0:
            raise ValueError("need 1 <= multiplier <= 10 and budget_s >= 0")

    def service_config(self) -> str:
        """gRPC's retry policy for every method of the service, as channel JSON."""
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": sorted(code.name for code in RETRYABLE),
        }
        return json.dumps(
            {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]}
        )

    def backoff_s(self, retry: int) -> float:
        """Full jitter: uniform in [0, capped exponential), so restarted workers spread out."""
        growth = self.multiplier ** min(retry, 64)  # the cap is reached long before 64
        cap = min(self.max_backoff_s, self.initial_backoff_s * growth)
        return random.uniform(0, cap)


@dataclass(frozen=True, eq=False)
class EmbeddingTable:
    """A whole pull: ``vectors[i]`` is the vector of catalog row ``rows[i]``, id
    ``item_ids[i]``, decoded to float32 whatever the wire dtype was."""

    version: int
    dim: int
    dtype: str
    kind: str
    item_ids: list[str]
    rows: np.ndarray
    vectors: np.ndarray

    def as_torch(self) -> torch.Tensor:
        """The vectors as a float32 tensor sharing their memory (torch imported lazily)."""
        import torch

        return torch.from_numpy(self.vectors)


def _pair_request(catalog: str, worker_id: str, batch: PairBatch) -> pb.PushCooccurrenceRequest:
    batch_id, *arrays = batch
    rows, cols, weights = wire_pairs(*arrays)
    return pb.PushCooccurrenceRequest(
        catalog=catalog, worker_id=worker_id, batch_id=batch_id,
        rows=rows.tobytes(), cols=cols.tobytes(), weights=weights.tobytes(),
    )  # fmt: skip


class _Pull:
    """One catalog pull across attempts: pins version and item count from the first header
    and assembles each attempt into preallocated arrays, one slice copy per chunk."""

    def __init__(self, request: pb.GetItemEmbeddingsRequest, on_chunk: ChunkCallback | None):
        self.request = request
        self.on_chunk = on_chunk
        self.item_count: int | None = None

    def attempt(self, stream: Any) -> EmbeddingTable:
        """Assemble one stream; it is cancelled if anything interrupts the assembly."""
        try:
            return self._assemble(stream)
        finally:
            stream.cancel()  # a no-op once the call has completed

    def _assemble(self, stream: Iterable[pb.GetItemEmbeddingsResponse]) -> EmbeddingTable:
        table, received, served = None, 0, 0
        for message in stream:
            if table is None:
                table, served = self._allocate(message.header), message.header.item_count
            if message.start != received:  # a gap would leave uninitialized rows
                raise ValueError(f"chunk starts at {message.start}, expected {received}")
            received = _copy_chunk(message, table, received)
            if self.on_chunk is not None:
                self.on_chunk(received, len(table.rows))
            if received == len(table.rows) < served:  # the catalog grew since the pin
                break
        if table is None or received != len(table.rows):
            raise ValueError(f"the stream ended after {received} items")
        return table

    def _allocate(self, header: pb.EmbeddingHeader) -> EmbeddingTable:
        if self.item_count is None:  # first header: pin the version and the item count
            self.item_count = header.item_count
            if header.kind == pb.EMBEDDING_KIND_REDUCED:
                self.request.version = header.version
        n = min(self.item_count, header.item_count)
        dtype, kind = DTYPE.name(header.dtype), KIND.name(header.kind)
        if dtype is None or kind is None:
            raise ValueError(f"unknown dtype {header.dtype} or kind {header.kind} in the header")
        return EmbeddingTable(
            version=header.version, dim=header.dim, dtype=dtype, kind=kind, item_ids=[""] * n,
            rows=np.empty(n, np.int64), vectors=np.empty((n, header.dim), np.float32),
        )  # fmt: skip


def _copy_chunk(message: pb.GetItemEmbeddingsResponse, table: EmbeddingTable, start: int
                ) -> int:
    """Copy a chunk's items into ``table`` from ``start`` (at most up to its end); returns
    where the next chunk starts."""
    stop = min(start + len(message.rows) // 4, len(table.rows))
    take = stop - start
    table.vectors[start:stop] = decode_vectors(message.vectors, table.dtype, table.dim)[:take]
    table.rows[start:stop] = np.frombuffer(message.rows, "<u4")[:take]
    table.item_ids[start:stop] = message.item_ids[:take]
    return stop


class EmbeddingClient:
    """Typed calls of the trainer RPCs. ``address`` and ``token`` default to
    ``$TFLLMER_SERVER`` and ``$TFLLMER_TOKEN`` as in every CLI (``protos.connection``); pass
    ``token=""`` for none. TLS is on when ``tls`` (the system's public CA roots), any
    certificate or ``server_name`` is given (mutual with cert and key).
    ``deadline_s`` bounds each attempt of a call, a whole catalog pull included."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        tls: bool = False,
        ca_cert: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        server_name: str | None = None,
        deadline_s: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        connection = Connection.resolve(
            address, token, tls=tls, ca_cert=ca_cert, client_cert=client_cert,
            client_key=client_key, server_name=server_name)
        self.address = connection.server
        self._metadata = connection.metadata()
        self._deadline_s = deadline_s
        self._retry = retry or RetryPolicy()
        self._tls = connection.tls
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self._retry.service_config()),
            # Reconnect about as eagerly as calls retry, so a restarted server is found soon.
            ("grpc.initial_reconnect_backoff_ms", int(self._retry.initial_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self._retry.max_backoff_s * 1000)),
        ]
        self._channel = connection.channel(options)
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)

    @classmethod
    def from_connection(cls, target: Connection, **options: Any) -> EmbeddingClient:
        """A client of ``target`` (a CLI's parsed connection flags); ``options`` as above."""
        return cls(
            target.server, token=target.token, tls=target.tls, ca_cert=target.ca_cert,
            client_cert=target.client_cert, client_key=target.client_key,
            server_name=target.server_name, **options,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"EmbeddingClient(address={self.address!r}, tls={self._tls})"

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def describe(self, catalog: str) -> pb.DescribeCatalogResponse:
        request = pb.DescribeCatalogRequest(catalog=catalog)
        return self._retrying("DescribeCatalog",
                              lambda: self._stub.DescribeCatalog(request, **self._options()))

    def fetch_embeddings(
        self,
        catalog: str,
        *,
        version: int = 0,
        ids: Sequence[str] | None = None,
        dtype: str = "float32",
        kind: str = "reduced",
        max_chunk_bytes: int = 0,
        on_chunk: ChunkCallback | None = None,
    ) -> EmbeddingTable:
        """Pull ``ids`` (None: every item, in row order) of a catalog version (0: the active
        one) into one float32 matrix. ``on_chunk`` reports progress; it restarts from 0 when
        an interrupted pull is retried."""
        if dtype not in DTYPE.names or kind not in KIND.names:
            raise ValueError(f"dtype must be one of {DTYPE.names}, kind one of {KIND.names}")
        request = pb.GetItemEmbeddingsRequest(
            catalog=catalog, version=version, item_ids=list(ids or ()),
            dtype=DTYPE.number(dtype), kind=KIND.number(kind), max_chunk_bytes=max_chunk_bytes,
        )  # fmt: skip
        pull = _Pull(request, on_chunk)
        return self._retrying("GetItemEmbeddings", lambda: pull.attempt(
            self._stub.GetItemEmbeddings(pull.request, **self._options())))

    def push_pairs(
        self, catalog: str, worker_id: str, batches: Iterable[PairBatch]
    ) -> pb.PushCooccurrenceResponse:
        """Push batches of unordered pairs in one call; the server applies them together or
        not at all, and ignores batches this worker already pushed, so a retry is safe."""
        requests = [_pair_request(catalog, worker_id, batch) for batch in batches]
        return self._retrying("PushCooccurrence", lambda: self._stub.PushCooccurrence(
            iter(requests), **self._options()))

    def watch_catalog(self, catalog: str, timeout_s: float | None = None
                      ) -> Iterator[pb.WatchCatalogResponse]:
        """The catalog's version events: a snapshot, then every new version and activation,
        until ``timeout_s`` (None: forever) or the caller stops iterating. The stream is not
        resumed after a failure: ``wait_for_version`` is the resuming form."""
        stream = self._stub.WatchCatalog(pb.WatchCatalogRequest(catalog=catalog),
                                         timeout=timeout_s, metadata=self._metadata)
        try:
            yield from stream
        finally:
            stream.cancel()

    def wait_for_version(self, catalog: str, version: int, timeout_s: float = 3600.0) -> int:
        """Block until the catalog's active version is ``version`` or a later one, and return
        it. Follows WatchCatalog, reconnecting with backoff when the server is unavailable
        (a restart, a rolling update). ``TimeoutError`` after ``timeout_s``; ``ServiceError``
        for a refusal (an unknown catalog, a bad token)."""
        give_up = time.monotonic() + timeout_s
        retry = 0
        while (left := give_up - time.monotonic()) > 0:
            try:
                for event in self.watch_catalog(catalog, timeout_s=left):
                    retry = 0
                    if event.active_version >= version:
                        return event.active_version
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and (
                        give_up - time.monotonic() < 1.0):
                    break  # our own timeout (the server also ends watches after its maximum
                    # call duration: then reconnect)
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise ServiceError("WatchCatalog", code, error.details() or "") from error
                delay = min(self._retry.backoff_s(retry), max(give_up - time.monotonic(), 0))
                log.warning("WatchCatalog unavailable (%s); reconnecting in %.2f s",
                            error.details(), delay)
                time.sleep(delay)
                retry += 1
        raise TimeoutError(f"{catalog}: version {version} was not active within {timeout_s} s")

    def _options(self) -> dict[str, Any]:
        return {"timeout": self._deadline_s, "metadata": self._metadata}

    def _retrying(self, method: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, fails with a non-retryable status, or the next
        retry would start after the policy's budget."""
        give_up = time.monotonic() + self._retry.budget_s
        retry = 0
        while True:
            try:
                return attempt()
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
                delay = self._retry.backoff_s(retry)
                if code not in RETRYABLE or time.monotonic() + delay > give_up:
                    raise ServiceError(method, code, details) from error
            retry += 1
            log.warning("%s failed with %s: %s; retry %d in %.2f s",
                        method, code.name, details, retry, delay)
            time.sleep(delay)
