"""TLS and mutual TLS as configuration: certificates are generated here, for a throwaway CA."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.connection import channel_credentials
from server.config import ServerConfig
from server.service.tls import add_listening_port
from tests.grpc_harness import serve


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def make_ca(name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    extensions = [(x509.BasicConstraints(ca=True, path_length=None), True), (usage, True)]
    return Issued(_certificate(name, key, None, extensions), key)


def issue(ca: Issued, name: str, usage: x509.ObjectIdentifier) -> Issued:
    """A leaf certificate for ``name`` (also valid for localhost and 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([usage]), False),
        (names, False),
    ]
    return Issued(_certificate(name, key, ca, extensions), key)


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    rogue_client: Issued  # signed by another CA
    files: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, other_ca = make_ca("test CA"), make_ca("other CA")
    server = issue(ca, "tfllmer server", ExtendedKeyUsageOID.SERVER_AUTH)
    files = tmp_path_factory.mktemp("pki")
    (files / "ca.pem").write_bytes(ca.cert_pem)
    (files / "server.pem").write_bytes(server.cert_pem)
    (files / "server.key").write_bytes(server.key_pem)
    return Pki(
        ca=ca,
        server=server,
        client=issue(ca, "trainer", ExtendedKeyUsageOID.CLIENT_AUTH),
        rogue_client=issue(other_ca, "rogue trainer", ExtendedKeyUsageOID.CLIENT_AUTH),
        files=files,
    )


def tls_config(pki: Pki, *, mutual: bool) -> ServerConfig:
    return ServerConfig(
        port=0,
        tls_cert=str(pki.files / "server.pem"),
        tls_key=str(pki.files / "server.key"),
        tls_client_ca=str(pki.files / "ca.pem") if mutual else "",
    )


@pytest.fixture(scope="module", params=[False, True], ids=["tls", "mutual-tls"])
def tls_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[int, bool]]:
    mutual = request.param
    config = tls_config(pki, mutual=mutual)

    def setup(server: grpc.aio.Server) -> int:
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        return add_listening_port(server, config)

    with serve(setup) as port:
        yield port, mutual


def check(channel: grpc.Channel) -> grpc.StatusCode:
    """The status of one health check over ``channel``."""
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def check_secure(port: int, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return check(channel)


def test_client_with_a_ca_signed_certificate_is_served(tls_server, pki: Pki) -> None:
    port, _ = tls_server
    credentials = channel_credentials(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)
    assert check_secure(port, credentials) is grpc.StatusCode.OK


def test_plaintext_client_is_unavailable(tls_server) -> None:
    port, _ = tls_server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert check(channel) is grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_server_ca_is_unavailable(tls_server) -> None:
    port, _ = tls_server
    untrusted = channel_credentials(make_ca("unrelated CA").cert_pem)
    assert check_secure(port, untrusted) is grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_served_only_without_mutual_tls(tls_server, pki) -> None:
    port, mutual = tls_server
    expected = grpc.StatusCode.UNAVAILABLE if mutual else grpc.StatusCode.OK
    assert check_secure(port, channel_credentials(pki.ca.cert_pem)) is expected


def test_client_certificate_from_another_ca_is_refused_by_mutual_tls(tls_server, pki) -> None:
    port, mutual = tls_server
    rogue = pki.rogue_client
    credentials = channel_credentials(pki.ca.cert_pem, rogue.cert_pem, rogue.key_pem)
    # Plain TLS never asks for a client certificate, so it cannot refuse one.
    expected = grpc.StatusCode.UNAVAILABLE if mutual else grpc.StatusCode.OK
    assert check_secure(port, credentials) is expected


def test_pem_files_and_inline_pem_are_equivalent(tls_server, pki: Pki, tmp_path: Path) -> None:
    port, _ = tls_server
    (tmp_path / "client.pem").write_bytes(pki.client.cert_pem)
    (tmp_path / "client.key").write_bytes(pki.client.key_pem)
    credentials = channel_credentials(
        pki.files / "ca.pem", str(tmp_path / "client.pem"), tmp_path / "client.key"
    )
    assert check_secure(port, credentials) is grpc.StatusCode.OK


def test_client_certificate_without_key_is_rejected(pki: Pki) -> None:
    with pytest.raises(ValueError, match="both or neither"):
        channel_credentials(pki.ca.cert_pem, client_cert=pki.client.cert_pem)
