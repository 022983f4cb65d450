"""Prometheus metrics of one server, and the interceptor that times and counts every RPC.

Each ``ServiceMetrics`` registers its metrics on its own ``CollectorRegistry`` rather than the
process-wide default, so tests can run several servers in one process without duplicate
timeseries errors; the registry is passed to ``start_metrics_server`` explicitly.

Encode throughput is ``rate(tfllmer_items_encoded_total) / rate(tfllmer_encode_seconds_total)``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.service.handlers import Behavior, Continuation, behavior_of, with_behavior
from server.service.logging_setup import log_rpc

# From 1 ms to 10 min: full pulls of large catalogs and refits take minutes.
RPC_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
REFIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

access_log = logging.getLogger("tfllmer.access")


class ServiceMetrics:
    """Every metric of one server. The servicer reports through the ``record_*`` methods.

    RPC metrics follow the grpc-ecosystem (go-grpc-prometheus) convention that ready-made
    dashboards expect: ``grpc_server_started_total``, ``grpc_server_handled_total`` and the
    ``grpc_server_handling_seconds`` histogram, labelled ``grpc_service``, ``grpc_method``,
    ``grpc_type`` (and ``grpc_code``). The ``tfllmer_*`` metrics are the service's own.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        rpc_labels = ("grpc_service", "grpc_method", "grpc_type")
        self.rpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.", rpc_labels,
            registry=self.registry,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            (*rpc_labels, "grpc_code"),
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Seconds from the start of an RPC until the server finished it (streams: until "
            "the stream ends).",
            rpc_labels,
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.vectors_served = Counter(
            "tfllmer_vectors_served",
            "Item vectors sent by GetItemEmbeddings.",
            ("kind", "dtype"),
            registry=self.registry,
        )
        self.bytes_served = Counter(
            "tfllmer_served_bytes",
            "Bytes of packed vectors sent by GetItemEmbeddings.",
            ("kind", "dtype"),
            registry=self.registry,
        )
        self.stream_inflight_bytes = Gauge(
            "tfllmer_stream_inflight_bytes",
            "Bytes of GetItemEmbeddings messages read and serialized but not yet sent.",
            registry=self.registry,
        )
        self.items_encoded = Counter(
            "tfllmer_items_encoded", "Item texts encoded.", registry=self.registry
        )
        self.encode_seconds = Counter(
            "tfllmer_encode_seconds", "Seconds spent encoding item texts.", registry=self.registry
        )
        self.encode_rate = Gauge(
            "tfllmer_encode_items_per_second",
            "Item texts encoded per second by the running or latest UpsertItems call of the "
            "catalog.",
            ("catalog",),
            registry=self.registry,
        )
        self.ingest_encoded = Gauge(
            "tfllmer_ingest_encoded_items",
            "Texts encoded so far by the running or latest UpsertItems call of the catalog.",
            ("catalog",),
            registry=self.registry,
        )
        self.ingest_total = Gauge(
            "tfllmer_ingest_items_to_encode",
            "Texts the running or latest UpsertItems call of the catalog has to encode.",
            ("catalog",),
            registry=self.registry,
        )
        self.refit_seconds = Histogram(
            "tfllmer_refit_duration_seconds",
            "Duration of refits that wrote a version.",
            buckets=REFIT_BUCKETS,
            registry=self.registry,
        )
        self.refit_phase = Gauge(
            "tfllmer_refit_phase",
            "1 for the phase a running refit of the catalog is in, 0 for the others.",
            ("catalog", "phase"),
            registry=self.registry,
        )
        self.refit_fraction = Gauge(
            "tfllmer_refit_fraction_done",
            "Fraction done, in [0, 1], of the catalog's running or latest refit.",
            ("catalog",),
            registry=self.registry,
        )
        self.catalog_items = Gauge(
            "tfllmer_catalog_items",
            "Items in the catalog, as this server last saw it.",
            ("catalog",),
            registry=self.registry,
        )
        self.active_version = Gauge(
            "tfllmer_catalog_active_version",
            "The catalog's active version (0: none), as this server last saw it.",
            ("catalog",),
            registry=self.registry,
        )
        self.active_since = Gauge(
            "tfllmer_catalog_active_version_activated_seconds",
            "Unix time the active version was activated; its age is time() minus this.",
            ("catalog",),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "tfllmer_store_errors",
            "Store operations that failed.",
            ("operation",),
            registry=self.registry,
        )

    def record_catalog(self, catalog: str, items: int, active: int,
                       activated_at: float | None) -> None:
        """What this server last saw of a catalog (describe, watch, refit, activate)."""
        self.catalog_items.labels(catalog).set(items)
        self.active_version.labels(catalog).set(active)
        if activated_at is not None:
            self.active_since.labels(catalog).set(activated_at)

    def record_refit_progress(self, catalog: str, phase: str, fraction: float,
                              phases: Sequence[str]) -> None:
        for name in phases:
            self.refit_phase.labels(catalog, name).set(1 if name == phase else 0)
        self.refit_fraction.labels(catalog).set(fraction)

    def record_encode_progress(self, catalog: str, encoded: int, total: int,
                               items_per_second: float) -> None:
        """Called after each encoder batch of an UpsertItems call (from its thread)."""
        self.ingest_encoded.labels(catalog).set(encoded)
        self.ingest_total.labels(catalog).set(total)
        self.encode_rate.labels(catalog).set(items_per_second)

    def record_served(self, kind: str, dtype: str, vectors: int, nbytes: int) -> None:
        self.vectors_served.labels(kind, dtype).inc(vectors)
        self.bytes_served.labels(kind, dtype).inc(nbytes)

    def record_encoded(self, items: int, seconds: float) -> None:
        self.items_encoded.inc(items)
        self.encode_seconds.inc(seconds)

    def record_refit(self, seconds: float) -> None:
        self.refit_seconds.observe(seconds)

    def record_store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def record_rpc(self, method: str, kind: str, code: grpc.StatusCode, seconds: float) -> None:
        labels = (*_split(method), kind)
        self.rpc_handled.labels(*labels, code.name).inc()
        self.rpc_seconds.labels(*labels).observe(seconds)


def _split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with, as the client sees it."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc.aio sends for an unhandled exception


def _is_dead_call_write(error: BaseException) -> bool:
    """grpc's core refused to send on a call that has ended: the client cancelled or went
    away between two messages (grpc-js cancels that way in most pulls it drops)."""
    return type(error).__name__ == "ExecuteBatchError"


_TYPES = {(False, False): "unary", (True, False): "client_stream",
          (False, True): "server_stream", (True, True): "bidi_stream"}
# The contract's own streaming kinds: the call guard serves every method of the service
# through request-stream handlers (raw-bytes parsing), so the handler's kind is not the RPC's.
_CONTRACT_TYPES = {
    f"/{method.containing_service.full_name}/{method.name}":
        _TYPES[(method.client_streaming, method.server_streaming)]
    for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods}


def rpc_type(method: str, handler: grpc.RpcMethodHandler) -> str:
    """The grpc-ecosystem ``grpc_type`` label of a call: the contract's kind of the RPC,
    or (other services) the handler's."""
    return _CONTRACT_TYPES.get(method) or _TYPES[
        (bool(handler.request_streaming), bool(handler.response_streaming))]


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC and writes one access-log line per call.

    Place it first (outermost) so calls refused by the auth interceptor are observed too.
    Only async behaviours are observed; every handler of this server is async.

    Response streams are written here with ``context.write`` rather than left to grpc's
    iteration of the handler's generator: when a client cancels between two messages, the
    failed send then surfaces here and ends the call as CANCELLED (one access-log line),
    instead of an ERROR traceback from grpc's core for each such cancel.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: not counted, so callers cannot add label values
            return None
        behavior = behavior_of(handler)
        method = handler_call_details.method
        kind = rpc_type(method, handler)
        if inspect.isasyncgenfunction(behavior):
            return with_behavior(handler, self._observe_stream(method, kind, behavior))
        if inspect.iscoroutinefunction(behavior):
            return with_behavior(handler, self._observe_call(method, kind, behavior))
        return handler

    def _start(self, method: str, kind: str, context: grpc.aio.ServicerContext
               ) -> tuple[float, str]:
        """Count the call; its start time and peer. The peer is read now, while the call is
        alive: ``context.peer()`` on a call the client has cancelled dereferences freed
        memory in grpc's core and crashes the process (SIGSEGV)."""
        self._metrics.rpc_started.labels(*_split(method), kind).inc()
        return time.perf_counter(), context.peer()

    def _finish(
        self,
        method: str,
        kind: str,
        context: grpc.aio.ServicerContext,
        started: tuple[float, str],
        error: BaseException | None,
    ) -> None:
        began, peer = started
        seconds = time.perf_counter() - began
        code = grpc.StatusCode.CANCELLED if error is not None and _is_dead_call_write(
            error) else final_code(context, error)
        self._metrics.record_rpc(method, kind, code, seconds)
        log_rpc(access_log, method, code, seconds * 1000, peer=peer)

    def _observe_call(self, method: str, kind: str, behavior: Behavior) -> Behavior:
        """Unary responses, and streams written with ``context.write``."""

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = self._start(method, kind, context)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                self._finish(method, kind, context, started, error)
                if _is_dead_call_write(error):
                    raise asyncio.CancelledError() from None
                raise
            self._finish(method, kind, context, started, None)
            return response

        return observed

    def _observe_stream(self, method: str, kind: str, behavior: Behavior) -> Behavior:
        """Response streams from async generators, written here: timed until the last
        message is sent."""

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> None:
            started = self._start(method, kind, context)
            try:
                responses: AsyncIterator[Any] = behavior(request, context)
                try:
                    async for response in responses:
                        await context.write(response)
                finally:
                    await responses.aclose()  # type: ignore[attr-defined]
            except BaseException as error:
                self._finish(method, kind, context, started, error)
                if _is_dead_call_write(error):
                    raise asyncio.CancelledError() from None
                raise
            self._finish(method, kind, context, started, None)

        return observed


def start_metrics_server(port: int, host: str, registry: CollectorRegistry,
                         app: Callable[..., Any] | None = None) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread, or ``app``
    (a WSGI app that serves /metrics and more, such as the web console).

    Port 0 picks a free port (read it from ``server_port``); stop with ``shutdown()``.
    """
    if app is None:
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return server
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class _QuietHandler(WSGIRequestHandler):
    """No access line per request on stderr (Prometheus scrapes every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass
