"""The composition root: config in, a running gRPC server out.

``EmbeddingServer`` wires the store, the encoder and the servicer with health checking,
reflection, auth, metrics and TLS, and shuts down gracefully: health turns NOT_SERVING first
(so load balancers stop routing) and no new call is accepted, then in-flight calls get
``shutdown_grace_seconds`` to finish; the rest are cancelled with nothing committed (their
worker threads see their ended lifetimes and stop between steps), and ``stop`` returns once
those threads are gone. ``python -m server`` runs it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import make_wsgi_app

from protos.metadata import SERVICE
from server.call_lifetime import SHUTTING_DOWN
from server.config import ConfigError, ServerConfig
from server.console.api import Console, console_authenticator
from server.encoders.base import Encoder
from server.service.auth import auth_interceptor
from server.service.call_limits import CallGuard, CallLimits, LiveCalls
from server.service.catalog_service import CatalogService, Limits
from server.service.encoder_executor import EncoderExecutor
from server.service.metrics import MetricsInterceptor, ServiceMetrics, start_metrics_server
from server.service.servicer import EmbeddingServicer, add_to_server
from server.service.standard_services import HealthWithList, add_reflection
from server.service.tls import add_listening_port
from server.settings import flag_name
from server.stores import CatalogStore, DataLostError, StoreError, open_store

log = logging.getLogger(__name__)
STORE_CHECK_SECONDS = 5.0
# grpc.health.v1 name of the encoder's health (ingest needs it; serving does not).
ENCODER_HEALTH_NAME = f"{SERVICE}/encoder"
# After the grace period, how long cancelled calls' worker threads get to reach their next
# liveness check (an encoder batch, a fit phase) before the process stops waiting.
THREAD_DRAIN_SECONDS = 10.0


def build_encoder(config: ServerConfig) -> Encoder:
    """The configured backend; heavy imports happen only for the one chosen."""
    if config.encoder_backend == "vllm":
        from server.encoders.vllm_encoder import VLLMEncoder

        return VLLMEncoder(config.model)
    if config.encoder_backend == "openai":
        from server.encoders.openai_http import OpenAICompatibleEncoder

        return OpenAICompatibleEncoder(
            config.openai_base_url or "", config.model, api_key=config.openai_api_key,
            token_budget=config.encode_batch_tokens,
            timeout_seconds=config.openai_timeout_seconds,
        )
    from server.encoders.sentence_transformer import (
        DEFAULT_MODEL_NAME,
        SentenceTransformerEncoder,
    )

    return SentenceTransformerEncoder(
        None if config.model == DEFAULT_MODEL_NAME else config.model,
        output=config.encoder_output,
        device=None if config.encoder_device == "auto" else config.encoder_device,
        token_budget=config.encode_batch_tokens,
    )


def build_call_limits(config: ServerConfig) -> CallLimits:
    """Each ``CallLimits`` field is the server setting of the same name."""
    return CallLimits(**{f.name: getattr(config, f.name) for f in fields(CallLimits)})


class EmbeddingServer:
    """One server process. ``store`` and ``encoder`` may be passed in (tests, the demo) so
    a model is loaded once; otherwise they are built from ``config``."""

    def __init__(self, config: ServerConfig, *, store: CatalogStore | None = None,
                 encoder: Encoder | None = None) -> None:
        self.config = config
        self._store = store
        self._encoder = encoder
        self.metrics = ServiceMetrics()
        self.health = HealthWithList()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._watch_encoder_task: asyncio.Task[None] | None = None
        self._encoders: EncoderExecutor | None = None
        self.guard = CallGuard(build_call_limits(config), LiveCalls())
        self.servicer: EmbeddingServicer | None = None

    async def start(self) -> int:
        """Load the encoder and reach the store, then open the port. Health is NOT_SERVING
        until both are ready and whenever the store stops answering afterwards."""
        config = self.config
        store, encoder = await asyncio.to_thread(self._dependencies)
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics)]
        auth = auth_interceptor(config)
        if auth is not None:
            # After the metrics interceptor (outermost): refused calls are counted and
            # access-logged too, so failed authentication attempts leave a trace.
            interceptors.append(auth)
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", config.max_receive_message_bytes),
                     ("grpc.max_send_message_length", config.max_send_message_bytes),
                     # Receive windows stay at HTTP/2's 64 KiB instead of growing with
                     # the bandwidth-delay product: what the transport buffers per request
                     # stream stays small (it is outside --max-inflight-bytes). Responses
                     # are unaffected (the client's windows govern them).
                     ("grpc.http2.bdp_probe", 0),
                     # An occupied port is an error, never a port shared with another
                     # server that would then take half of the traffic.
                     ("grpc.so_reuseport", 0)],
        )
        self._encoders = EncoderExecutor(encoder, config.encoder_queue_limit)
        service = CatalogService(store, self._encoders, Limits.from_config(config),
                                 encode_listener=self.metrics.record_encode_progress)
        self.servicer = EmbeddingServicer(service, self.metrics, config.default_chunk_bytes,
                                          config.max_send_message_bytes, self.guard,
                                          config.pull_buffer_bytes)
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        add_reflection(server, (SERVICE,))
        try:
            self.port = add_listening_port(server, config)
        except RuntimeError as error:  # gRPC's "Failed to bind": in use, or not ours
            raise ConfigError([f"{flag_name('port')}: cannot listen on {config.listen_address}:"
                               " the address is in use (another server?) or not available"]
                              ) from error
        await server.start()
        self._server = server
        if config.metrics_port:  # /metrics and the web console
            console = Console(service, console_authenticator(config),
                              make_wsgi_app(self.metrics.registry))
            self._metrics_http = start_metrics_server(
                config.metrics_port, config.host, self.metrics.registry, console)
        await self._set_health(True)
        await self.health.set(ENCODER_HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._watch = asyncio.create_task(self._watch_store(store))
        self._watch_encoder_task = asyncio.create_task(self._watch_encoder(self._encoders))
        log.info("listening on %s:%d with encoder %s and store %s", config.host, self.port,
                 encoder.name, type(store).__name__)
        return self.port

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else (
            health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def _watch_store(self, store: CatalogStore) -> None:
        """Report NOT_SERVING while the store does not answer or refuses writes, SERVING once
        it does again; for good once it lost data this server had seen (a restart after
        restoring or re-ingesting brings the server back)."""
        serving = True
        while True:
            try:  # probe at once too: a store epoch is recorded before anything can lose it
                await asyncio.to_thread(store.probe)
                healthy = True
            except DataLostError as error:
                log.error("%s; health is NOT_SERVING until the server restarts", error)
                await self._set_health(False)
                return
            except StoreError as error:
                healthy = False
                reason = error
            if healthy != serving:
                serving = healthy
                if healthy:
                    log.warning("store answers and accepts writes again")
                else:
                    log.warning("store does not answer or refuses writes: %s", reason)
                await self._set_health(healthy)
            await asyncio.sleep(STORE_CHECK_SECONDS)

    async def _watch_encoder(self, encoders: EncoderExecutor) -> None:
        """The encoder's health name follows its last call: NOT_SERVING after a failure."""
        serving = True
        while True:
            await asyncio.sleep(STORE_CHECK_SECONDS / 5)
            if encoders.healthy != serving:
                serving = encoders.healthy
                await self.health.set(ENCODER_HEALTH_NAME, (
                    health_pb2.HealthCheckResponse.SERVING if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING))

    def _dependencies(self) -> tuple[CatalogStore, Encoder]:
        store = self._store or open_store(self.config.store_url, self.config.raw_store_url)
        store.ping()
        self._store = store
        self._encoder = self._encoder or build_encoder(self.config)
        return store, self._encoder

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING and no new calls first, then let in-flight calls finish within the
        grace period; cancel the rest (nothing of them is committed) and wait, a bounded
        time, for their worker threads to stop."""
        for task in (self._watch, self._watch_encoder_task):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        if self.servicer is not None:
            self.servicer.close()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        if self._server is not None:
            await self._server.stop(grace)
        # grpc cancelled the calls still running; end every lifetime anyway (a call between
        # its handler and its worker thread) and refuse new work in threads.
        self.guard.stopping = True
        ended = self.guard.live.end_all(SHUTTING_DOWN, "the server is shutting down")
        left = await asyncio.to_thread(self.guard.live.wait_for_threads, THREAD_DRAIN_SECONDS)
        if ended or left:
            log.info("shutdown: %d call(s) cancelled after the grace period; %d worker "
                     "thread(s) still running", ended, left)
        if self._encoders is not None:
            self._encoders.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
