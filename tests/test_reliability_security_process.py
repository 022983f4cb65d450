"""Security of a real ``python -m server`` process (issue 8, item 5), beyond the in-process
interceptor tests of tests/test_auth.py and tests/test_tls.py: mutual TLS with certificates
generated here, tokens given through the environment, Redis behind a password.

* Every RPC of the contract refuses a call without a token or with an unknown one
  (UNAUTHENTICATED) and an admin RPC called with a trainer token (PERMISSION_DENIED), and
  none of those calls changes anything; the right tokens get through.
* The TLS handshake refuses plaintext clients, clients that do not trust the server's CA,
  clients without a certificate and clients whose certificate another CA signed.
* No token (nor the Redis password) appears in the server's log at debug level, in its
  command line, or in any error detail.

Tokens are compared in constant time (SHA-256 digests through ``hmac.compare_digest``, every
configured token each time): tests/test_auth.py::test_every_configured_token_is_compared.

``-m reliability`` only (one server start, ~15 s)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from harness.redis_server import RedisServer
from harness.server_process import ServerProcess, wait_for
from protos.connection import channel_credentials
from protos.metadata import SERVICE, bearer_metadata
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.service.auth import REQUIRED_ROLE, Role
from tests.test_tls import issue, make_ca

pytestmark = pytest.mark.reliability
CATALOG = "secure"
ADMIN = "admin-" + secrets.token_urlsafe(24)
TRAINER = "trainer-" + secrets.token_urlsafe(24)
UNKNOWN = "unknown-" + secrets.token_urlsafe(24)
REDIS_PASSWORD = secrets.token_urlsafe(18)
OK = grpc.StatusCode.OK


@dataclass
class Secured:
    server: ServerProcess
    pki: Path
    redis: RedisServer


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Secured]:
    pki = tmp_path_factory.mktemp("pki")
    ca, other = make_ca("tfllmer CA"), make_ca("rogue CA")
    for name, issued in (("server", issue(ca, "tfllmer", ExtendedKeyUsageOID.SERVER_AUTH)),
                         ("client", issue(ca, "trainer", ExtendedKeyUsageOID.CLIENT_AUTH)),
                         ("rogue", issue(other, "rogue", ExtendedKeyUsageOID.CLIENT_AUTH))):
        (pki / f"{name}.pem").write_bytes(issued.cert_pem)
        (pki / f"{name}.key").write_bytes(issued.key_pem)
    (pki / "ca.pem").write_bytes(ca.cert_pem)
    (pki / "other-ca.pem").write_bytes(other.cert_pem)
    credentials = channel_credentials(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    with RedisServer() as redis_server:
        with redis_server.client() as client:
            client.config_set("requirepass", REDIS_PASSWORD)
        url = redis_server.url.replace("redis://", f"redis://:{REDIS_PASSWORD}@")
        server = ServerProcess(
            url, tmp_path_factory.mktemp("logs") / "server.log", credentials=credentials,
            args=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                  "--tls-client-ca", str(pki / "ca.pem"), "--log-level", "debug"],
            env={"TFLLMER_ADMIN_TOKENS": ADMIN, "TFLLMER_TRAINER_TOKENS": TRAINER})
        with server, server.channel() as channel:
            stub = server.stub(channel)
            admin = bearer_metadata(ADMIN)
            stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=CATALOG, items=[
                pb.Item(id=f"i{k}", text=f"A film about topic {k}") for k in range(30)])]),
                metadata=admin)
            stub.RefitProjection(pb.RefitProjectionRequest(
                catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=8, lam=0)),
                metadata=admin)
            yield Secured(server, pki, redis_server)


def requests() -> dict[str, object]:
    """A valid request for every RPC (would succeed with the right token)."""
    return {
        "UpsertItems": [pb.UpsertItemsRequest(catalog=CATALOG, items=[
            pb.Item(id=f"n{secrets.token_hex(4)}", text="A new film")])],
        "DescribeCatalog": pb.DescribeCatalogRequest(catalog=CATALOG),
        "GetItemEmbeddings": pb.GetItemEmbeddingsRequest(catalog=CATALOG),
        "PushCooccurrence": [pb.PushCooccurrenceRequest(
            catalog=CATALOG, worker_id="w", batch_id=secrets.token_hex(4),
            rows=b"\x00\x00\x00\x00", cols=b"\x01\x00\x00\x00", weights=b"\x00\x00\x80\x3f")],
        "RefitProjection": pb.RefitProjectionRequest(
            catalog=CATALOG, parameters=pb.FitParameters(dim=4, lam=0)),
        "ActivateVersion": pb.ActivateVersionRequest(catalog=CATALOG, version=1),
        "SimilarItems": pb.SimilarItemsRequest(catalog=CATALOG, item_id="i0", k=3),
        "WatchCatalog": pb.WatchCatalogRequest(catalog=CATALOG),
        "StartRefit": pb.StartRefitRequest(refit=pb.RefitProjectionRequest(
            catalog=CATALOG, parameters=pb.FitParameters(dim=4, lam=0))),
        # A well-formed name no server holds: past auth, the handler says NOT_FOUND.
        "GetRefitOperation": pb.GetRefitOperationRequest(name=f"refits/{'0' * 12}/{'0' * 32}"),
        "WatchRefitOperation": pb.WatchRefitOperationRequest(
            name=f"refits/{'0' * 12}/{'0' * 32}"),
    }


def call(stub: pb_grpc.EmbeddingServiceStub, rpc: str, request: object,
         metadata: tuple = ()) -> tuple[grpc.StatusCode, str]:
    try:
        reply = getattr(stub, rpc)(iter(request) if isinstance(request, list) else request,
                                   metadata=metadata, timeout=60)
        if rpc == "GetItemEmbeddings":
            list(reply)
        elif rpc in ("WatchCatalog", "WatchRefitOperation"):  # endless: the first message
            next(reply)
            reply.cancel()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


def state(stub) -> bytes:
    admin = bearer_metadata(ADMIN)
    described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG), metadata=admin)
    pulled = b"".join(m.vectors for m in stub.GetItemEmbeddings(
        pb.GetItemEmbeddingsRequest(catalog=CATALOG), metadata=admin))
    return described.SerializeToString(deterministic=True) + pulled


def test_every_rpc_refuses_missing_unknown_and_underprivileged_tokens(secured: Secured) -> None:
    assert {m.rsplit("/", 1)[1] for m in REQUIRED_ROLE} == set(requests())
    details = []
    with secured.server.channel() as channel:
        stub = secured.server.stub(channel)
        for rpc, request in requests().items():
            before = state(stub)  # a trainer's allowed push changes it legitimately
            admin_only = REQUIRED_ROLE[f"/{SERVICE}/{rpc}"] is Role.ADMIN
            for metadata, expected in (
                    ((), grpc.StatusCode.UNAUTHENTICATED),
                    (bearer_metadata(UNKNOWN), grpc.StatusCode.UNAUTHENTICATED),
                    ((("authorization", ADMIN),), grpc.StatusCode.UNAUTHENTICATED),  # no scheme
                    (bearer_metadata(TRAINER),
                     grpc.StatusCode.PERMISSION_DENIED if admin_only else OK)):
                code, detail = call(stub, rpc, request, metadata)
                details.append(detail)
                assert code is expected, (rpc, metadata and metadata[0][1][:12], code, detail)
            if admin_only:
                assert state(stub) == before, f"a refused {rpc} changed the catalog"
        for rpc, request in requests().items():  # the admin may call everything
            allowed = grpc.StatusCode.NOT_FOUND if "RefitOperation" in rpc else OK
            assert call(stub, rpc, request, bearer_metadata(ADMIN))[0] is allowed, rpc
    assert not any(token in detail for detail in details for token in (ADMIN, TRAINER, UNKNOWN))


def test_the_tls_handshake_refuses_clients_without_a_trusted_certificate(
        secured: Secured) -> None:
    pki, address = secured.pki, secured.server.address
    variants = {
        "plaintext": grpc.insecure_channel(address),
        "untrusted server CA": grpc.secure_channel(address, channel_credentials(
            pki / "other-ca.pem", pki / "client.pem", pki / "client.key")),
        "no client certificate": grpc.secure_channel(address, channel_credentials(
            pki / "ca.pem")),
        "client certificate of another CA": grpc.secure_channel(address, channel_credentials(
            pki / "ca.pem", pki / "rogue.pem", pki / "rogue.key")),
    }
    for name, channel in variants.items():
        with channel:
            code, _ = call(pb_grpc.EmbeddingServiceStub(channel), "DescribeCatalog",
                           requests()["DescribeCatalog"], bearer_metadata(ADMIN))
        assert code is grpc.StatusCode.UNAVAILABLE, name


def test_no_secret_in_the_server_log_or_command_line(secured: Secured) -> None:
    with secured.server.channel() as channel:  # make sure refusals were logged
        call(secured.server.stub(channel), "DescribeCatalog", requests()["DescribeCatalog"],
             bearer_metadata(UNKNOWN))
    wait_for(lambda: "UNAUTHENTICATED" in secured.server.log_text(), 15, 0.1, "access log")
    log = secured.server.log_text()
    assert '"level": "debug"' in log  # it did log at debug level
    cmdline = Path(f"/proc/{secured.server.pid}/cmdline").read_bytes().decode()
    for secret in (ADMIN, TRAINER, UNKNOWN, REDIS_PASSWORD):
        assert secret not in log  # the store URL is logged with its password redacted
    for token in (ADMIN, TRAINER):  # tokens came through the environment
        assert token not in cmdline
