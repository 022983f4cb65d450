"""The gRPC servicer: protobuf in, ``CatalogService`` call in a worker thread, protobuf out.

It holds no logic of its own beyond reading streams, sizing response chunks and mapping
errors to status codes in one place (``_run``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from protos.codecs import bytes_per_value, field_header, varint, vector_buffer
from protos.enums import DTYPE, KIND, TRANSFORM, VERSION_STATUS
from protos.metadata import SERVICE
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.call_lifetime import CallEnded
from server.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from server.service.call_limits import CallGuard
from server.service.catalog_service import CatalogService, Selection
from server.service.chunk_cache import ChunkCache, Messages
from server.service.dim_prefix import prefix, served_dim
from server.service.metrics import ServiceMetrics
from server.service.operations import OperationState, RefitOperations
from server.service.refit_progress import PHASE_NAMES, RefitProgress
from server.service.watch import (
    ACTIVATED,
    CREATED,
    SNAPSHOT,
    CatalogEvent,
    CatalogWatches,
    WatchClosed,
    active_record,
)
from server.stores.base import (
    CatalogState,
    CooccurrenceTotals,
    DataLostError,
    EncoderIdentity,
    IdField,
    StoreUnavailableError,
    VersionRecord,
)
from server.validation import (
    FitRequest,
    PairBlock,
    verify_item,
    verify_item_count,
    verify_not_empty,
    verify_pair_block,
    verify_pair_count,
    verify_pull,
    verify_request_id,
    verify_same_catalog,
    verify_same_request_id,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every kind of ``server.errors`` and the status it ends a call with (details: prefix +
# message). An exception of no kind here is a bug: INTERNAL, with an incident id in the log.
STATUS: dict[type[ServiceError], tuple[grpc.StatusCode, str]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, ""),
    NotFound: (grpc.StatusCode.NOT_FOUND, ""),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, ""),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    Aborted: (grpc.StatusCode.ABORTED, ""),
    StoreUnavailableError: (grpc.StatusCode.UNAVAILABLE, "store unavailable: "),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, ""),
    DataLoss: (grpc.StatusCode.DATA_LOSS, "stored data is corrupt: "),
    DataLostError: (grpc.StatusCode.DATA_LOSS, ""),
}
# Room for the header, field tags and the chunk's id strings beyond its vector bytes.
CHUNK_OVERHEAD = 1024
PREFETCH_GROUPS = 1  # groups prepared ahead of the one being sent
# Look-ups of at most this many ids are served on the event loop when their rows and version
# are in memory (microseconds of work); larger ones go to a worker thread, so one call never
# holds the loop for long.
LOOP_LOOKUP_IDS = 4096
OPERATION_POLL_SECONDS = 0.1  # WatchRefitOperation looks at its operation this often


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    def __init__(
        self, service: CatalogService, metrics: ServiceMetrics, default_chunk_bytes: int,
        max_send_bytes: int, guard: CallGuard, pull_buffer_bytes: int = 8 * 2**20,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.default_chunk_bytes = default_chunk_bytes
        self.max_send_bytes = max_send_bytes
        self.guard = guard
        # A worker-thread call reads and serializes about this many bytes of chunks at once;
        # a pull holds at most two such groups (one sent, one prefetched).
        self.pull_buffer_bytes = pull_buffer_bytes
        limits = service.limits
        self.chunk_cache = ChunkCache(limits.chunk_cache_bytes if limits.version_cache_size else 0)
        self.watches = CatalogWatches(
            service.describe, lambda found: self._record_catalog(found.state, found.versions))
        self.operations = RefitOperations(service, self._record_refit_progress,
                                          self._refit_done)

    def close(self) -> None:
        """Shutdown: end the endless streams (watches) so the grace period is not spent on
        them."""
        self.watches.close()
        self.operations.stop()

    async def _run(self, context: grpc.aio.ServicerContext, function: Callable[..., T],
                   *args: Any) -> T:
        """Run a service call off the event loop; map every expected failure to a status.
        The worker thread inherits the call's lifetime (a context variable) and is counted
        until it returns, so shutdown can wait for it."""
        call = asyncio.to_thread(self.guard.live.tracked(function), *args)
        return await self._outcome(context, call, function)

    async def _outcome(self, context: grpc.aio.ServicerContext, call: Awaitable[T],
                       function: Callable[..., Any]) -> T:
        """Await ``call`` (started from ``function``); map every expected failure to a status."""
        try:
            return await call
        except grpc.aio.AbortError:
            raise  # the call already has its status
        except CallEnded as error:  # the call died first: the status its caller already sees
            await context.abort(grpc.StatusCode[error.code], error.message)
        except ServiceError as error:
            await self._abort(context, error, getattr(function, "__name__", "call"))
        except Exception:  # a bug: never the caller's fault, never shown to the caller
            incident = uuid.uuid4().hex[:12]
            log.exception("incident %s: %s failed unexpectedly", incident,
                          getattr(function, "__name__", "call"))
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error (incident {incident}); the server log has it")
        raise AssertionError("context.abort always raises")

    async def _abort(self, context: grpc.aio.ServicerContext, error: ServiceError,
                     name: str) -> None:
        """End the call with the status ``STATUS`` gives the error's kind."""
        kind = next(k for k in type(error).__mro__ if k in STATUS)
        code, prefix = STATUS[kind]
        if kind in (StoreUnavailableError, DataLoss, DataLostError):
            self.metrics.record_store_error(name)
        if kind is DataLoss:  # damaged stored data, not the caller's mistake
            log.error("stored data does not decode: %s", error.message)
        if kind is DataLostError:  # the store lost what this server served: say so
            log.error("%s", error.message)
        await context.abort(code, prefix + error.message)

    async def _check(self, context: grpc.aio.ServicerContext, check: Callable[..., T],
                     *args: Any) -> T:
        """Run a ``server.validation`` rule on the event loop (cheap checks of what a stream
        has delivered so far); its error ends the call like any other."""
        try:
            return check(*args)
        except ServiceError as error:
            await self._abort(context, error, getattr(check, "__name__", "check"))
        raise AssertionError("context.abort always raises")

    async def UpsertItems(self, request_iterator: AsyncIterator[pb.UpsertItemsRequest],
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        ids: list[str] = []
        texts: list[str] = []
        try:
            return await self._upsert(request_iterator, context, ids, texts)
        finally:  # a failed call's frame outlives it in its traceback: free what it read now
            ids.clear()
            texts.clear()

    async def _upsert(self, request_iterator: AsyncIterator[pb.UpsertItemsRequest],
                      context: grpc.aio.ServicerContext, ids: list[str], texts: list[str]
                      ) -> pb.UpsertItemsResponse:
        catalog: str | None = None
        request_id = ""
        limits = self.service.limits
        async for message in request_iterator:
            first = catalog is None
            catalog = await self._check(context, verify_same_catalog, catalog, message.catalog)
            if first:
                request_id = await self._check(context, verify_request_id, message.request_id)
            else:
                await self._check(context, verify_same_request_id, request_id,
                                  message.request_id)
            for item in message.items:  # each message is checked as it arrives
                await self._check(context, verify_item, item.id, item.text,
                                  limits.max_text_chars)
            ids.extend(item.id for item in message.items)
            texts.extend(item.text for item in message.items)
            # Stop reading early: memory stays bounded.
            await self._check(context, verify_item_count, len(ids), limits.max_items_per_upsert)
        await _ensure_half_closed(context)
        catalog = await self._check(context, verify_not_empty, catalog)
        result = await self._run(context, self.service.upsert_items, catalog, ids, texts,
                                 request_id)
        self.metrics.record_encoded(result.added + result.changed, result.encode_seconds)
        return pb.UpsertItemsResponse(added=result.added, changed=result.changed,
                                      unchanged=result.unchanged, item_count=result.item_count)

    async def DescribeCatalog(self, request: pb.DescribeCatalogRequest,
                              context: grpc.aio.ServicerContext) -> pb.DescribeCatalogResponse:
        found = await self._run(context, self.service.describe, request.catalog)
        self._record_catalog(found.state, found.versions)
        return pb.DescribeCatalogResponse(
            catalog=found.state.name, item_count=found.state.item_count,
            encoder=_encoder(found.state.encoder), active_version=found.state.active_version,
            versions=[_version(record) for record in found.versions],
            cooccurrence=_totals(found.totals),
        )

    def _record_catalog(self, state: CatalogState, versions: list[VersionRecord]) -> None:
        active = next((v for v in versions if v.version == state.active_version), None)
        self.metrics.record_catalog(state.name, state.item_count, state.active_version,
                                    active.activated_at if active is not None else None)

    async def GetItemEmbeddings(self, request: pb.GetItemEmbeddingsRequest,
                                context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[pb.GetItemEmbeddingsResponse | bytes]:
        dtype, kind = DTYPE.name(request.dtype), KIND.name(request.kind)
        await self._check(context, verify_pull, dtype, kind, request.max_chunk_bytes)
        assert dtype is not None and kind is not None  # verify_pull refused None
        # A look-up whose rows and version this process holds is served on the event loop
        # after one awaited header read; otherwise one worker-thread hop resolves the
        # selection and prepares its first chunk. Later chunks are prefetched.
        pull = None
        if kind == "reduced" and 0 < len(request.item_ids) <= LOOP_LOOKUP_IDS:
            pull = await self._outcome(context, self._open_in_memory(request, dtype),
                                       self._open)
        if pull is None:
            pull = await self._run(context, self._open, request, kind, dtype)
        selection = pull.selection
        header = pb.EmbeddingHeader(
            version=selection.version, dim=pull.dim, dtype=DTYPE.number(dtype),
            kind=KIND.number(kind),
            item_count=selection.item_count, encoder=_encoder(selection.encoder),
        )
        if selection.item_count == 0:
            yield pb.GetItemEmbeddingsResponse(header=header)
            return
        # Serialized messages concatenate like merged messages: the first one is the header
        # field followed by the first chunk's fields.
        first: bytes | None = pb.GetItemEmbeddingsResponse(header=header).SerializeToString()
        messages = pull.first_group
        # The next groups are read and serialized in worker threads while one is sent.
        pending: deque[asyncio.Future[Messages]] = deque()
        inflight, held = self.metrics.stream_inflight_bytes, 0
        try:
            for group in range(pull.groups):
                for ahead in range(group + 1 + len(pending),
                                   min(group + 1 + PREFETCH_GROUPS, pull.groups)):
                    pending.append(self._prefetch(pull, ahead))
                held = sum(len(data) for data, _, _ in messages)
                inflight.inc(held)
                for data, items, vector_bytes in messages:
                    size = len(data)
                    if first is not None:
                        data, first = first + data, None
                    self.metrics.record_served(kind, dtype, items, vector_bytes)
                    yield data
                    inflight.dec(size)
                    held -= size
                if pending:
                    messages = await self._outcome(context, pending.popleft(), self._group)
        finally:
            inflight.dec(max(held, 0))
            for future in pending:
                future.cancel()

    def _open(self, request: pb.GetItemEmbeddingsRequest, kind: str, dtype: str) -> _Pull:
        """The selection, its chunking and its first group's messages (worker thread)."""
        selection = self.service.select(request.catalog, request.version,
                                        list(request.item_ids), kind)
        return self._pull(request, selection, kind, dtype)

    async def _open_in_memory(self, request: pb.GetItemEmbeddingsRequest, dtype: str
                              ) -> _Pull | None:
        """``_open`` on the event loop for a look-up served from memory, or ``None``."""
        selection = await self.service.select_in_memory(request.catalog, request.version,
                                                        list(request.item_ids))
        return None if selection is None else self._pull(request, selection, "reduced", dtype)

    def _pull(self, request: pb.GetItemEmbeddingsRequest, selection: Selection, kind: str,
              dtype: str) -> _Pull:
        """A selection's chunking and its first group's messages."""
        dim = served_dim(request.dim, selection.dim, kind)
        budget = min(request.max_chunk_bytes or self.default_chunk_bytes, self.max_send_bytes)
        row_bytes = dim * bytes_per_value(dtype) + 8
        rows_per_chunk = max(1, (budget - CHUNK_OVERHEAD) // (row_bytes + 40))
        pull = _Pull(request, selection, dtype, budget, rows_per_chunk,
                     max(1, self.pull_buffer_bytes // budget), dim)
        if selection.item_count:
            pull.first_group = self._group(pull, 0)
        return pull

    def _prefetch(self, pull: _Pull, group: int) -> asyncio.Future[Messages]:
        cached = self._cached_group(pull, group)
        if cached is not None:  # no thread hop for what is already serialized
            done: asyncio.Future[Messages] = asyncio.get_running_loop().create_future()
            done.set_result(cached)
            return done
        return asyncio.ensure_future(asyncio.to_thread(self._group, pull, group))

    def _cached_group(self, pull: _Pull, group: int) -> Messages | None:
        keys = [pull.cache_key(start, stop) for start, stop in pull.spans(group)]
        if any(key is None for key in keys):
            return None
        messages: Messages = []
        for key in keys:
            cached = self.chunk_cache.get(key)
            if cached is None:
                return None
            messages += cached
        return messages

    def _group(self, pull: _Pull, group: int) -> Messages:
        """The serialized messages of one group of chunks (run in a worker thread): one
        store read of its vectors and one of its ids, then a message per chunk."""
        cached = self._cached_group(pull, group)
        if cached is not None:
            return cached
        spans = pull.spans(group)
        chunks = self._stored_chunks(pull, spans)
        if chunks is None:
            chunks = self._read_chunks(pull, spans)
        messages: Messages = []
        for (start, stop), chunk in zip(spans, chunks, strict=True):
            key = pull.cache_key(start, stop)
            if key is not None:
                self.chunk_cache.put(key, chunk)
            messages += chunk
        return messages

    def _read_chunks(self, pull: _Pull, spans: list[tuple[int, int]]) -> list[Messages]:
        """The chunks of ``spans`` from float32 vectors and id strings (any selection)."""
        request, selection = pull.request, pull.selection
        first, last = spans[0][0], spans[-1][1]
        rows, vectors = self.service.chunk(request.catalog, selection, first, last)
        vectors = prefix(vectors, pull.dim)
        if request.omit_item_ids:
            ids = []
        elif selection.rows is None:  # the whole catalog: one range read of its ids
            ids = self.service.store.item_ids(request.catalog, first, last)
        else:  # the caller named the ids; these rows were resolved from them in order
            ids = list(request.item_ids[first:last])
        chunks = []
        for start, stop in spans:
            part = slice(start - first, stop - first)
            chunks.append(self._messages(start, rows[part], ids[part] if ids else [],
                                         vectors[part], pull.dtype, pull.budget))
        return chunks

    def _stored_chunks(self, pull: _Pull, spans: list[tuple[int, int]]
                       ) -> list[Messages] | None:
        """The chunks of ``spans`` of a whole-catalog pull of a version not in memory, from
        the bytes the store keeps: vectors as stored in the pulled dtype, ids as their wire
        entries (no numpy round trip, no protobuf string serialization). None where
        ``_read_chunks`` serves them: a dim prefix, rows past the fit, a cached view."""
        request, selection = pull.request, pull.selection
        first, last = spans[0][0], spans[-1][1]
        if pull.dim != selection.dim:
            return None
        vectors = self.service.stored_vectors(request.catalog, selection, first, last,
                                              pull.dtype)
        if vectors is None:
            return None
        ids = (None if request.omit_item_ids
               else self.service.store.item_id_field(request.catalog, first, last))
        block, row_bytes = memoryview(vectors), pull.dim * bytes_per_value(pull.dtype)
        return [self._stored_messages(
                    start, ids.part(start - first, stop - first) if ids is not None else None,
                    block[(start - first) * row_bytes : (stop - first) * row_bytes],
                    stop - start, pull.budget)
                for start, stop in spans]

    @staticmethod
    def _messages(start: int, rows: np.ndarray, ids: list[str], vectors: np.ndarray,
                  dtype: str, budget: int) -> Messages:
        """One serialized message, or halves of it until each fits the byte budget (long
        ids). The vector block is appended to the serialized other fields as field 5 (field
        order does not matter on the wire), so its bytes are copied once, not three times."""
        message = pb.GetItemEmbeddingsResponse(
            start=start, rows=rows.astype("<u4").tobytes(), item_ids=ids)
        block = vector_buffer(vectors, dtype)
        field = field_header(VECTORS_FIELD, len(block)) if len(block) else b""
        size = message.ByteSize() + len(field) + len(block)
        if _fits(size, len(rows), budget):
            data = b"".join((message.SerializeToString(), field, block))
            return [(data, len(rows), len(block))]
        half = len(rows) // 2
        split = EmbeddingServicer._messages
        return (split(start, rows[:half], ids[:half], vectors[:half], dtype, budget)
                + split(start + half, rows[half:], ids[half:], vectors[half:], dtype, budget))

    @staticmethod
    def _stored_messages(start: int, ids: IdField | None, vectors: memoryview, count: int,
                         budget: int) -> Messages:
        """``_messages`` of catalog rows ``[start, start + count)`` from their ids' wire
        entries and vector bytes, byte for byte what protobuf writes for them (its fields
        in order: start, rows, item_ids, then the vector block), split the same way."""
        rows = np.arange(start, start + count, dtype="<u4").tobytes()
        parts = (_START_TAG + varint(start) if start else b"", field_header(ROWS_FIELD, len(rows)),
                 rows, ids.data if ids is not None else b"",
                 field_header(VECTORS_FIELD, len(vectors)) if len(vectors) else b"", vectors)
        if _fits(sum(len(part) for part in parts), count, budget):
            return [(b"".join(parts), count, len(vectors))]
        half, row_bytes = count // 2, len(vectors) // count
        split = EmbeddingServicer._stored_messages
        return (split(start, ids.part(0, half) if ids is not None else None,
                      vectors[: half * row_bytes], half, budget)
                + split(start + half, ids.part(half, count) if ids is not None else None,
                        vectors[half * row_bytes :], count - half, budget))

    async def PushCooccurrence(self, request_iterator: AsyncIterator[pb.PushCooccurrenceRequest],
                               context: grpc.aio.ServicerContext) -> pb.PushCooccurrenceResponse:
        blocks: list[PairBlock] = []
        try:
            return await self._push(request_iterator, context, blocks)
        finally:  # a failed call's frame outlives it in its traceback: free what it read now
            blocks.clear()

    async def _push(self, request_iterator: AsyncIterator[pb.PushCooccurrenceRequest],
                    context: grpc.aio.ServicerContext, blocks: list[PairBlock]
                    ) -> pb.PushCooccurrenceResponse:
        catalog: str | None = None
        pairs, limit = 0, self.service.limits.max_pairs_per_push
        async for message in request_iterator:
            catalog = await self._check(context, verify_same_catalog, catalog, message.catalog)
            block = PairBlock(message.worker_id, message.batch_id, message.rows,
                              message.cols, message.weights)
            # Ids and the three blocks' lengths, as each message arrives.
            pairs += await self._check(context, verify_pair_block, block)
            blocks.append(block)
            await self._check(context, verify_pair_count, pairs, limit)
        await _ensure_half_closed(context)
        catalog = await self._check(context, verify_not_empty, catalog)
        result = await self._run(context, self.service.push, catalog, blocks)
        return pb.PushCooccurrenceResponse(
            batches_applied=result.applied, duplicates_ignored=result.duplicates,
            pairs_added=result.pairs_added, weight_added=result.weight_added,
            totals=_totals(result.totals),
        )

    @staticmethod
    def _fit_request(request: pb.RefitProjectionRequest) -> FitRequest:
        """The fit a request asks for (checked by the service, like every rule)."""
        params = request.parameters
        strength = params.WhichOneof("strength")
        transform = TRANSFORM.name(params.graph.transform)
        return FitRequest(
            dim=params.dim,
            lam=params.lam if strength == "lam" else None,
            retention=params.retention_budget if strength == "retention_budget" else None,
            transform=transform,
            top_k=params.graph.top_k,
            whitening=params.whitening if params.HasField("whitening") else None,
        )

    async def RefitProjection(self, request: pb.RefitProjectionRequest,
                              context: grpc.aio.ServicerContext) -> pb.RefitProjectionResponse:
        fit = self._fit_request(request)
        progress = RefitProgress(self._refit_listener(request.catalog))
        record, previous = await self._run(
            context, self.service.refit, request.catalog, fit, request.activate,
            request.request_id, progress)
        self._refit_done(record)
        return pb.RefitProjectionResponse(version=_version(record),
                                          previous_active_version=previous)

    def _record_refit_progress(self, catalog: str, phase: str, fraction: float) -> None:
        self.metrics.record_refit_progress(catalog, phase, fraction, PHASE_NAMES)

    def _refit_listener(self, catalog: str) -> Callable[[str, float], None]:
        return functools.partial(self._record_refit_progress, catalog)

    def _refit_done(self, record: VersionRecord) -> None:
        self.metrics.record_refit(record.fit_seconds)

    async def StartRefit(self, request: pb.StartRefitRequest,
                         context: grpc.aio.ServicerContext) -> pb.StartRefitResponse:
        refit = request.refit
        fit = self._fit_request(refit)
        state = await self._run(context, self.operations.start, refit.catalog, fit,
                                refit.activate, refit)
        return pb.StartRefitResponse(operation=_operation(state))

    async def GetRefitOperation(self, request: pb.GetRefitOperationRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.GetRefitOperationResponse:
        state = await self._outcome(context, _returned(self.operations.get, request.name),
                                    self.operations.get)
        return pb.GetRefitOperationResponse(operation=_operation(state))

    async def WatchRefitOperation(self, request: pb.WatchRefitOperationRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[pb.WatchRefitOperationResponse]:
        last: tuple[str, float] | None = None
        while True:
            state = await self._outcome(context, _returned(self.operations.get, request.name),
                                        self.operations.get)
            seen = (state.phase, round(state.fraction, 3))
            if seen != last or state.done:
                yield pb.WatchRefitOperationResponse(operation=_operation(state))
                last = seen
            if state.done:
                return
            await asyncio.sleep(OPERATION_POLL_SECONDS)

    async def ActivateVersion(self, request: pb.ActivateVersionRequest,
                              context: grpc.aio.ServicerContext) -> pb.ActivateVersionResponse:
        previous, active = await self._run(
            context, self.service.activate, request.catalog, request.version)
        return pb.ActivateVersionResponse(previous_active_version=previous, active_version=active)

    async def SimilarItems(self, request: pb.SimilarItemsRequest,
                           context: grpc.aio.ServicerContext) -> pb.SimilarItemsResponse:
        query = request.WhichOneof("query")
        if query is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give an item_id or a vector")
        version, hits = await self._run(
            context, self.service.similar, request.catalog, request.version,
            request.item_id if query == "item_id" else None,
            request.vector if query == "vector" else None, request.k, request.dim,
            request.include_texts,
        )
        return pb.SimilarItemsResponse(version=version, items=[
            pb.SimilarItem(item_id=hit.item_id, row=hit.row, score=hit.score, text=hit.text)
            for hit in hits
        ])


    async def WatchCatalog(self, request: pb.WatchCatalogRequest,
                           context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[pb.WatchCatalogResponse]:
        found = await self._run(context, self.service.describe, request.catalog)
        self._record_catalog(found.state, found.versions)
        yield _event(CatalogEvent(SNAPSHOT, found, active_record(found)))
        try:
            async for event in self.watches.follow(request.catalog, found):
                yield _event(event)
        except WatchClosed as closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{closed}; reconnect")
        except Exception as error:  # a poll failed: end with the status it maps to
            await self._outcome(context, _raised(error), self.service.describe)


class _Pull:
    """One GetItemEmbeddings call's chunking: chunks of ``rows_per_chunk`` positions, read
    from the store ``group`` chunks at a time."""

    def __init__(self, request: pb.GetItemEmbeddingsRequest, selection: Selection, dtype: str,
                 budget: int, rows_per_chunk: int, group: int, dim: int) -> None:
        self.request, self.selection, self.dtype, self.dim = request, selection, dtype, dim
        self.budget, self.rows_per_chunk, self.group = budget, rows_per_chunk, group
        chunks = -(-selection.item_count // rows_per_chunk)
        self.groups = -(-chunks // group)
        self.first_group: Messages = []

    def spans(self, group: int) -> list[tuple[int, int]]:
        count, size = self.selection.item_count, self.rows_per_chunk
        first = group * self.group * size
        return [(start, min(start + size, count))
                for start in range(first, min(first + self.group * size, count), size)]

    def cache_key(self, start: int, stop: int) -> tuple | None:
        """Chunks of whole-catalog pulls of rows a version covers never change: cacheable."""
        selection = self.selection
        if selection.rows is not None or selection.kind != "reduced" or stop > selection.fitted:
            return None
        return (self.request.catalog, selection.epoch, selection.version, self.dtype, self.dim,
                self.budget,
                self.request.omit_item_ids, start, stop)


# GetItemEmbeddingsResponse's fields that the servicer writes itself (field numbers).
ROWS_FIELD, VECTORS_FIELD = 3, 5
_START_TAG = varint(2 << 3)  # start: field 2, varint


def _fits(size: int, rows: int, budget: int) -> bool:
    """Whether a message of ``size`` bytes is sent whole: it fits the budget with room for
    the header, or holds one row (which can not be split)."""
    return rows == 1 or size + CHUNK_OVERHEAD <= budget


def _serialize_response(message: pb.GetItemEmbeddingsResponse | bytes) -> bytes:
    """GetItemEmbeddings handlers yield serialized messages (cached or prefetched) as bytes."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(servicer: EmbeddingServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_EmbeddingServiceServicer_to_server``,
    except that GetItemEmbeddings responses may already be serialized and that every
    method is bounded by the servicer's ``CallGuard`` (see ``call_limits``)."""

    class _Capture:
        handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, _handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, _service: str, handlers: dict) -> None:
            self.handlers = handlers

    capture = _Capture()
    pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, capture)
    handlers = dict(capture.handlers)
    original = handlers["GetItemEmbeddings"]
    assert original.unary_stream is not None  # GetItemEmbeddings is a server stream
    handlers["GetItemEmbeddings"] = grpc.unary_stream_rpc_method_handler(
        original.unary_stream, request_deserializer=original.request_deserializer,
        response_serializer=_serialize_response)
    descriptor = pb.DESCRIPTOR.services_by_name["EmbeddingService"]
    request_types = {method.name: getattr(pb, method.input_type.name)
                     for method in descriptor.methods}
    handlers = servicer.guard.handlers(handlers, request_types)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def _ensure_half_closed(context: grpc.aio.ServicerContext) -> None:
    """Make sure a request stream ended because the client half-closed it.

    grpc.aio ends the request iterator the same way when the stream fails: a message over
    the receive limit (the client already got RESOURCE_EXHAUSTED), a cancelled call or a
    passed deadline. Committing what was read would then apply part of a call its client was
    told failed. Any operation on such a dead call raises ``asyncio.CancelledError``, so this
    one (sending the empty initial metadata now rather than with the response) stops the
    handler before it commits."""
    await context.send_initial_metadata(())


async def _raised(error: BaseException) -> None:
    raise error


async def _returned(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` as an awaitable (quick in-memory calls, no thread hop)."""
    return function(*args)


PHASE_ENUM = {name: getattr(pb, f"REFIT_PHASE_{name.upper()}") for name in PHASE_NAMES}


def _operation(state: OperationState) -> pb.RefitOperation:
    message = pb.RefitOperation(
        name=state.name, catalog=state.catalog, phase=PHASE_ENUM[state.phase],
        fraction=state.fraction, done=state.done, create_time=_timestamp(state.created_at),
        update_time=_timestamp(state.updated_at), request=state.request)
    if state.result is not None:
        record, previous = state.result
        message.response.CopyFrom(pb.RefitProjectionResponse(
            version=_version(record), previous_active_version=previous))
    elif state.error is not None:
        kind = next((k for k in type(state.error).__mro__ if k in STATUS), None)
        code, prefix = STATUS[kind] if kind is not None else (grpc.StatusCode.INTERNAL, "")
        message.error.CopyFrom(pb.OperationError(code=code.value[0],
                                                 message=prefix + state.error.message))
    return message


EVENT_KINDS = {SNAPSHOT: pb.CATALOG_EVENT_KIND_SNAPSHOT,
               CREATED: pb.CATALOG_EVENT_KIND_VERSION_CREATED,
               ACTIVATED: pb.CATALOG_EVENT_KIND_ACTIVATED}


def _event(event: CatalogEvent) -> pb.WatchCatalogResponse:
    state = event.description.state
    message = pb.WatchCatalogResponse(
        kind=EVENT_KINDS[event.kind], active_version=state.active_version,
        item_count=state.item_count)
    if event.version is not None:
        message.version.CopyFrom(_version(event.version))
    if event.kind == SNAPSHOT:
        message.versions.extend(_version(record) for record in event.description.versions)
    return message


def _encoder(identity: EncoderIdentity) -> pb.EncoderInfo:
    return pb.EncoderInfo(name=identity.name, dim=identity.dim)


def _totals(totals: CooccurrenceTotals) -> pb.CooccurrenceTotals:
    return pb.CooccurrenceTotals(pairs=totals.pairs, total_weight=totals.weight,
                                 batches=totals.batches)


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _version(record: VersionRecord) -> pb.CatalogVersion:
    params = record.parameters
    graph = params.get("graph", {})
    fit = pb.FitParameters(
        dim=record.dim,
        graph=pb.GraphOptions(
            transform=TRANSFORM.number(graph.get("transform", "identity")),
            top_k=graph.get("top_k", 0) if graph.get("transform") == "topk" else 0,
        ),
        whitening=params.get("whitening", 0.0),
    )
    if params.get("lam") is not None:
        fit.lam = params["lam"]
    else:
        fit.retention_budget = record.diagnostics.get("retention_budget") or 0.0
    diagnostics = pb.FitDiagnostics(**{
        key: value for key, value in record.diagnostics.items()
        if value is not None and key in pb.FitDiagnostics.DESCRIPTOR.fields_by_name
    })
    return pb.CatalogVersion(
        version=record.version, status=VERSION_STATUS.number(record.status),
        item_count=record.item_count,
        encoder=_encoder(record.encoder), parameters=fit, diagnostics=diagnostics,
        cooccurrence=_totals(record.counts), create_time=_timestamp(record.created_at),
        activate_time=_timestamp(record.activated_at), fit_seconds=record.fit_seconds,
    )
