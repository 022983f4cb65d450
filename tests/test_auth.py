"""Bearer-token auth on every RPC: real gRPC over loopback, the auth interceptor in front of a
servicer that answers with empty messages (what is under test is who gets through)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from protos.metadata import SERVICE, bearer_metadata
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.config import ServerConfig
from server.service import auth
from server.service.auth import REQUIRED_ROLE, Authenticator, Role
from server.service.metrics import MetricsInterceptor, ServiceMetrics
from tests.grpc_harness import EmptyEmbeddingService, eventually, serve

TRAINER_TOKEN = "trainer-" + secrets.token_urlsafe(24)
ADMIN_TOKEN = "admin-" + secrets.token_urlsafe(24)
UNKNOWN_TOKEN = "unknown-" + secrets.token_urlsafe(24)
OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
# A bidirectional-stream method of our service that REQUIRED_ROLE does not list.
UNLISTED_METHOD = f"/{SERVICE}/Converse"


@dataclass(frozen=True)
class Rpc:
    name: str
    request: Message
    client_streaming: bool = False
    server_streaming: bool = False

    def __str__(self) -> str:
        return self.name


RPCS = (
    Rpc("UpsertItems", pb.UpsertItemsRequest(catalog="c"), client_streaming=True),
    Rpc("DescribeCatalog", pb.DescribeCatalogRequest(catalog="c")),
    Rpc("GetItemEmbeddings", pb.GetItemEmbeddingsRequest(catalog="c"), server_streaming=True),
    Rpc("PushCooccurrence", pb.PushCooccurrenceRequest(catalog="c"), client_streaming=True),
    Rpc("RefitProjection", pb.RefitProjectionRequest(catalog="c")),
    Rpc("ActivateVersion", pb.ActivateVersionRequest(catalog="c")),
    Rpc("SimilarItems", pb.SimilarItemsRequest(catalog="c")),
    Rpc("WatchCatalog", pb.WatchCatalogRequest(catalog="c"), server_streaming=True),
    Rpc("StartRefit", pb.StartRefitRequest()),
    Rpc("GetRefitOperation", pb.GetRefitOperationRequest(name="n")),
    Rpc("WatchRefitOperation", pb.WatchRefitOperationRequest(name="n"), server_streaming=True),
)
ADMIN_RPCS = tuple(rpc for rpc in RPCS if REQUIRED_ROLE[f"/{SERVICE}/{rpc.name}"] is Role.ADMIN)
TRAINER_RPCS = tuple(rpc for rpc in RPCS if rpc not in ADMIN_RPCS)


async def _echo(requests, context):
    async for request in requests:
        yield request


@dataclass
class Server:
    port: int
    servicer: EmptyEmbeddingService
    channel: grpc.Channel


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    servicer = EmptyEmbeddingService()

    def setup(grpc_server: grpc.aio.Server) -> int:
        pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, grpc_server)
        unlisted = grpc.method_handlers_generic_handler(
            SERVICE, {"Converse": grpc.stream_stream_rpc_method_handler(_echo)}
        )
        grpc_server.add_generic_rpc_handlers((unlisted,))
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
        reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), grpc_server)
        return grpc_server.add_insecure_port("127.0.0.1:0")

    config = ServerConfig(trainer_tokens=(TRAINER_TOKEN,), admin_tokens=(ADMIN_TOKEN,))
    interceptors = (MetricsInterceptor(ServiceMetrics()), auth.auth_interceptor(config))
    with (
        serve(setup, interceptors) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Server(port, servicer, channel)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""


def call(server: Server, rpc: Rpc, metadata: tuple[tuple[str, str], ...] = ()) -> Outcome:
    """Make the call, reading every response; the status it ended with."""
    stub = pb_grpc.EmbeddingServiceStub(server.channel)
    method = getattr(stub, rpc.name)
    request = iter([rpc.request]) if rpc.client_streaming else rpc.request
    try:
        response = method(request, metadata=metadata, timeout=10)
        if rpc.server_streaming:
            list(response)
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")
    return Outcome(OK)


def token(value: str) -> tuple[tuple[str, str], ...]:
    return bearer_metadata(value)


def test_every_rpc_of_the_contract_has_a_role() -> None:
    service = pb.DESCRIPTOR.services_by_name["EmbeddingService"]
    assert set(REQUIRED_ROLE) == {f"/{SERVICE}/{method.name}" for method in service.methods}
    assert {rpc.name for rpc in RPCS} == {method.name for method in service.methods}


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_call_without_token_is_unauthenticated(server: Server, rpc: Rpc) -> None:
    assert call(server, rpc).code is UNAUTHENTICATED


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_call_with_unknown_token_is_unauthenticated(server: Server, rpc: Rpc) -> None:
    assert call(server, rpc, token(UNKNOWN_TOKEN)).code is UNAUTHENTICATED


@pytest.mark.parametrize(
    "authorization",
    [
        ADMIN_TOKEN,
        f"Basic {ADMIN_TOKEN}",
        "Bearer",
        "Bearer ",
        f"Bearer{ADMIN_TOKEN}",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Bearer {ADMIN_TOKEN}x",
    ],
    ids=["no-scheme", "basic", "scheme-only", "empty-token", "no-space", "prefix", "suffix"],
)
def test_malformed_authorization_is_unauthenticated(server: Server, authorization: str) -> None:
    metadata = (("authorization", authorization),)
    assert call(server, RPCS[1], metadata).code is UNAUTHENTICATED


def test_two_authorization_entries_are_unauthenticated(server: Server) -> None:
    metadata = token(ADMIN_TOKEN) + token(TRAINER_TOKEN)
    assert call(server, RPCS[1], metadata).code is UNAUTHENTICATED


def test_bearer_scheme_is_case_insensitive(server: Server) -> None:
    metadata = (("authorization", f"bearer {ADMIN_TOKEN}"),)
    assert call(server, RPCS[0], metadata).code is OK


@pytest.mark.parametrize("rpc", ADMIN_RPCS, ids=str)
def test_trainer_token_on_admin_rpc_is_permission_denied(server: Server, rpc: Rpc) -> None:
    assert call(server, rpc, token(TRAINER_TOKEN)).code is PERMISSION_DENIED


@pytest.mark.parametrize("rpc", TRAINER_RPCS, ids=str)
def test_trainer_token_may_call_trainer_rpcs(server: Server, rpc: Rpc) -> None:
    assert call(server, rpc, token(TRAINER_TOKEN)).code is OK


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_admin_token_may_call_every_rpc(server: Server, rpc: Rpc) -> None:
    assert call(server, rpc, token(ADMIN_TOKEN)).code is OK


def test_servicer_sees_the_callers_role(server: Server) -> None:
    server.servicer.roles.clear()
    call(server, RPCS[1], token(TRAINER_TOKEN))
    call(server, RPCS[1], token(ADMIN_TOKEN))
    assert server.servicer.roles == [Role.TRAINER, Role.ADMIN]


def test_method_missing_from_the_role_table_is_refused_to_everyone(server: Server) -> None:
    converse = server.channel.stream_stream(UNLISTED_METHOD)
    for metadata, expected in [((), UNAUTHENTICATED), (token(ADMIN_TOKEN), PERMISSION_DENIED)]:
        with pytest.raises(grpc.RpcError) as raised:
            list(converse(iter([b"hello"]), metadata=metadata, timeout=10))
        assert raised.value.code() is expected


def test_unregistered_method_is_unimplemented_without_a_token(server: Server) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        server.channel.unary_unary(f"/{SERVICE}/NoSuchRpc")(b"", timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_health_check_needs_no_token(server: Server) -> None:
    response = health_pb2_grpc.HealthStub(server.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_no_token(server: Server) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    assert SERVICE in {s.name for s in response.list_services_response.service}


def test_tokens_never_appear_in_logs_or_error_details(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    details = []
    for metadata in (token(ADMIN_TOKEN), token(TRAINER_TOKEN), token(UNKNOWN_TOKEN)):
        for rpc in RPCS:
            details.append(call(server, rpc, metadata).details)
    # Wait for every call's access-log line, refusals included, so none escapes the check.
    assert eventually(lambda: len(access_records(caplog)) == len(details))
    assert {r.status for r in access_records(caplog)} >= {"UNAUTHENTICATED", "PERMISSION_DENIED"}
    logged = caplog.text + "".join(repr(vars(record)) for record in caplog.records)
    for secret in (ADMIN_TOKEN, TRAINER_TOKEN, UNKNOWN_TOKEN):
        assert secret not in logged
        assert not any(secret in detail for detail in details)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "tfllmer.access"]


def test_every_configured_token_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = [secrets.token_urlsafe(24) for _ in range(5)]
    authenticator = Authenticator(tokens[:2], tokens[2:])
    comparisons = []

    def counting_compare(a: bytes, b: bytes) -> bool:
        comparisons.append(len(a) == len(b))
        return compare_digest(a, b)

    compare_digest = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", counting_compare)
    assert authenticator.role_of(token(tokens[0])) is Role.TRAINER
    assert authenticator.role_of(token(tokens[4])) is Role.ADMIN
    assert authenticator.role_of(token("x" * 100)) is None
    # Every token each time, as equal-length digests: no early exit, no length leak.
    assert comparisons == [True] * 15


def test_no_interceptor_when_no_tokens_are_set() -> None:
    assert auth.auth_interceptor(ServerConfig()) is None


def test_unauthenticated_requests_are_refused_before_they_are_parsed(server: Server) -> None:
    describe = server.channel.unary_unary(f"/{SERVICE}/DescribeCatalog")
    with pytest.raises(grpc.RpcError) as raised:
        describe(b"\xff\xff not a protobuf message", timeout=10)
    assert raised.value.code() is UNAUTHENTICATED
