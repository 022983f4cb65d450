"""Prometheus metrics: every RPC timed and counted with its method and final status, by an
interceptor in front of a real grpc.aio server; the registry served over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos.metadata import SERVICE, bearer_metadata
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.service.auth import Authenticator, AuthInterceptor
from server.service.metrics import MetricsInterceptor, ServiceMetrics, start_metrics_server
from tests.grpc_harness import EmptyEmbeddingService, eventually, serve

TOKEN = "admin-token-for-metrics-tests"
AUTHORIZED = bearer_metadata(TOKEN)
STREAM_PAUSE_SECONDS = 0.1
HEALTH = "grpc.health.v1.Health"


class ScriptedService(EmptyEmbeddingService):
    """DescribeCatalog fails as its catalog name says; GetItemEmbeddings streams slowly."""

    async def DescribeCatalog(self, request, context):
        if request.catalog == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such catalog")
        if request.catalog == "bug":
            raise RuntimeError("a servicer bug")
        return pb.DescribeCatalogResponse()

    async def GetItemEmbeddings(self, request, context):
        for _ in range(3):
            await asyncio.sleep(STREAM_PAUSE_SECONDS)
            yield pb.GetItemEmbeddingsResponse()


@dataclass
class Server:
    metrics: ServiceMetrics
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.EmbeddingServiceStub:
        return pb_grpc.EmbeddingServiceStub(self.channel)

    def sample(self, name: str, method: str, code: str | None, service: str = SERVICE,
               kind: str = "unary") -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind}
        if code is not None:
            labels["grpc_code"] = code
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def handled(self, method: str, code: str, count: int, service: str = SERVICE,
                kind: str = "unary") -> bool:
        """Whether ``count`` calls ended with ``code``, waiting for late records."""
        return eventually(
            lambda: self.sample("grpc_server_handled_total", method, code, service, kind)
            == count
        )


@pytest.fixture
def server() -> Iterator[Server]:
    metrics = ServiceMetrics()

    def setup(grpc_server: grpc.aio.Server) -> int:
        pb_grpc.add_EmbeddingServiceServicer_to_server(ScriptedService(), grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
        return grpc_server.add_insecure_port("127.0.0.1:0")

    interceptors = (MetricsInterceptor(metrics), AuthInterceptor(Authenticator((), (TOKEN,))))
    with serve(setup, interceptors) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Server(metrics, channel)


def describe(server: Server, catalog: str, metadata=AUTHORIZED) -> None:
    """Call DescribeCatalog, whatever its status (the metrics tell it)."""
    with contextlib.suppress(grpc.RpcError):
        server.stub.DescribeCatalog(
            pb.DescribeCatalogRequest(catalog=catalog), metadata=metadata, timeout=10
        )


def test_unary_rpcs_are_counted_and_timed_by_method_and_status(server: Server) -> None:
    for catalog in ("c", "c", "missing", "bug"):
        describe(server, catalog)
    describe(server, "c", metadata=())
    expected = {"OK": 2, "NOT_FOUND": 1, "UNKNOWN": 1, "UNAUTHENTICATED": 1}
    for code, count in expected.items():
        assert server.handled("DescribeCatalog", code, count)
    assert server.sample("grpc_server_handling_seconds_count", "DescribeCatalog", None) == 5
    assert server.sample("grpc_server_started_total", "DescribeCatalog", None) == 5


def test_server_stream_is_timed_until_it_ends(server: Server) -> None:
    request = pb.GetItemEmbeddingsRequest(catalog="c")
    responses = list(server.stub.GetItemEmbeddings(request, metadata=AUTHORIZED, timeout=10))
    assert len(responses) == 3
    seconds = server.sample("grpc_server_handling_seconds_sum", "GetItemEmbeddings", None,
                            kind="server_stream")
    assert seconds >= 3 * STREAM_PAUSE_SECONDS


def test_client_stream_is_counted(server: Server) -> None:
    requests = iter([pb.PushCooccurrenceRequest(catalog="c")] * 3)
    server.stub.PushCooccurrence(requests, metadata=AUTHORIZED, timeout=10)
    assert server.handled("PushCooccurrence", "OK", 1, kind="client_stream")


def test_stream_cancelled_by_the_client_is_counted_as_cancelled(server: Server) -> None:
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(health_pb2.HealthCheckRequest())
    next(watch)  # the first status; the stream then waits for changes
    watch.cancel()
    assert server.handled("Watch", "CANCELLED", 1, service=HEALTH, kind="server_stream")


def test_each_rpc_writes_one_access_log_line(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tfllmer.access")
    describe(server, "missing")
    assert eventually(lambda: any(r.name == "tfllmer.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "tfllmer.access"]
    assert record.rpc == f"/{SERVICE}/DescribeCatalog"
    assert record.status == "NOT_FOUND"
    assert record.duration_ms >= 0
    assert record.peer.startswith("ipv4:127.0.0.1:")


def test_metrics_endpoint_serves_the_registry(server: Server) -> None:
    describe(server, "c")
    server.metrics.record_served("reduced", "float16", vectors=10, nbytes=640)
    http = start_metrics_server(0, "127.0.0.1", server.metrics.registry)
    try:
        url = f"http://127.0.0.1:{http.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        http.shutdown()
        http.server_close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    call = (("grpc_method", "DescribeCatalog"), ("grpc_service", SERVICE), ("grpc_type", "unary"))
    assert samples[("grpc_server_handled_total", (("grpc_code", "OK"), *call))] == 1
    assert samples[("grpc_server_handling_seconds_count", call)] == 1
    assert samples[("grpc_server_started_total", call)] == 1
    served = (("dtype", "float16"), ("kind", "reduced"))
    assert samples[("tfllmer_vectors_served_total", served)] == 10
    assert samples[("tfllmer_served_bytes_total", served)] == 640


def test_servicer_measurements_are_recorded() -> None:
    metrics = ServiceMetrics()
    metrics.record_encoded(items=500, seconds=2.0)
    metrics.record_encoded(items=300, seconds=1.0)
    metrics.record_refit(12.5)
    metrics.record_store_error("get_vectors")
    value = metrics.registry.get_sample_value
    assert value("tfllmer_items_encoded_total") == 800
    assert value("tfllmer_encode_seconds_total") == 3.0
    assert value("tfllmer_refit_duration_seconds_count") == 1
    assert value("tfllmer_refit_duration_seconds_sum") == 12.5
    assert value("tfllmer_store_errors_total", {"operation": "get_vectors"}) == 1


def test_servers_in_one_process_keep_separate_metrics() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.record_store_error("put")
    assert (
        second.registry.get_sample_value("tfllmer_store_errors_total", {"operation": "put"}) is None
    )
