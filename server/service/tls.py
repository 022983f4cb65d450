"""TLS and mutual TLS from configuration (clients: ``protos.connection``).

``--tls-cert``/``--tls-key`` turn on TLS; ``--tls-client-ca`` also requires every client to
present a certificate that CA signed (mutual TLS), checked during the handshake, before any
RPC or token is seen. Bearer tokens still apply on top.
"""

from __future__ import annotations

import grpc

from protos.connection import read_pem
from server.config import ServerConfig


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The credentials ``config`` asks for, or None when it serves plain text."""
    if not config.tls_cert:
        return None
    key_pair = [(read_pem(config.tls_key), read_pem(config.tls_cert))]
    if not config.tls_client_ca:
        return grpc.ssl_server_credentials(key_pair)
    return grpc.ssl_server_credentials(
        key_pair, root_certificates=read_pem(config.tls_client_ca), require_client_auth=True
    )


def add_listening_port(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Listen on ``config.listen_address``, with TLS when configured; returns the bound port
    (the free one the OS picked when ``config.port`` is 0)."""
    credentials = server_credentials(config)
    if credentials is None:
        return server.add_insecure_port(config.listen_address)
    return server.add_secure_port(config.listen_address, credentials)

