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
import time
from collections.abc import AsyncIterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

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
    """Every metric of one server. The servicer reports through the ``record_*`` methods."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        rpc_labels = ("service", "method")
        self.rpc_started = Counter(
            "tfllmer_rpc_started", "RPCs started.", rpc_labels, registry=self.registry
        )
        self.rpc_handled = Counter(
            "tfllmer_rpc_handled",
            "RPCs finished, by status code.",
            (*rpc_labels, "code"),
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "tfllmer_rpc_duration_seconds",
            "RPC latency until the last response was sent (streams: until the stream ends).",
            (*rpc_labels, "code"),
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
        self.items_encoded = Counter(
            "tfllmer_items_encoded", "Item texts encoded.", registry=self.registry
        )
        self.encode_seconds = Counter(
            "tfllmer_encode_seconds", "Seconds spent encoding item texts.", registry=self.registry
        )
        self.refit_seconds = Histogram(
            "tfllmer_refit_duration_seconds",
            "Duration of refits that wrote a version.",
            buckets=REFIT_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "tfllmer_store_errors",
            "Store operations that failed.",
            ("operation",),
            registry=self.registry,
        )

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

    def record_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        labels = (*_split(method), code.name)
        self.rpc_handled.labels(*labels).inc()
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


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC and writes one access-log line per call.

    Place it first (outermost) so calls refused by the auth interceptor are observed too.
    Only async behaviours are observed; every handler of this server is async.
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
        if inspect.isasyncgenfunction(behavior):
            return with_behavior(handler, self._observe_stream(method, behavior))
        if inspect.iscoroutinefunction(behavior):
            return with_behavior(handler, self._observe_call(method, behavior))
        return handler

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> tuple[float, str]:
        """Count the call; its start time and peer. The peer is read now, while the call is
        alive: ``context.peer()`` on a call the client has cancelled dereferences freed
        memory in grpc's core and crashes the process (SIGSEGV)."""
        self._metrics.rpc_started.labels(*_split(method)).inc()
        return time.perf_counter(), context.peer()

    def _finish(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        started: tuple[float, str],
        error: BaseException | None,
    ) -> None:
        began, peer = started
        seconds = time.perf_counter() - began
        code = final_code(context, error)
        self._metrics.record_rpc(method, code, seconds)
        log_rpc(access_log, method, code, seconds * 1000, peer=peer)

    def _observe_call(self, method: str, behavior: Behavior) -> Behavior:
        """Unary responses, and streams written with ``context.write``."""

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = self._start(method, context)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                self._finish(method, context, started, error)
                raise
            self._finish(method, context, started, None)
            return response

        return observed

    def _observe_stream(self, method: str, behavior: Behavior) -> Behavior:
        """Response streams from async generators: timed until the last message is sent."""

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = self._start(method, context)
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as error:
                self._finish(method, context, started, error)
                raise
            self._finish(method, context, started, None)

        return observed


def start_metrics_server(port: int, host: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    Port 0 picks a free port (read it from ``server_port``); stop with ``shutdown()``.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
