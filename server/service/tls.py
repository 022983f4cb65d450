"""TLS and mutual TLS from configuration, and the matching client credentials.

``--tls-cert``/``--tls-key`` turn on TLS; ``--tls-client-ca`` also requires every client to
present a certificate that CA signed (mutual TLS), checked during the handshake, before any
RPC or token is seen. Bearer tokens still apply on top.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from server.config import ServerConfig

# PEM given inline as bytes, or the path of a PEM file.
Pem = bytes | str | os.PathLike[str]


def _pem(source: Pem) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The credentials ``config`` asks for, or None when it serves plain text."""
    if not config.tls_cert:
        return None
    key_pair = [(_pem(config.tls_key), _pem(config.tls_cert))]
    if not config.tls_client_ca:
        return grpc.ssl_server_credentials(key_pair)
    return grpc.ssl_server_credentials(
        key_pair, root_certificates=_pem(config.tls_client_ca), require_client_auth=True
    )


def add_listening_port(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Listen on ``config.listen_address``, with TLS when configured; returns the bound port
    (the free one the OS picked when ``config.port`` is 0)."""
    credentials = server_credentials(config)
    if credentials is None:
        return server.add_insecure_port(config.listen_address)
    return server.add_secure_port(config.listen_address, credentials)


def channel_credentials(
    ca_cert: Pem | None = None, client_cert: Pem | None = None, client_key: Pem | None = None
) -> grpc.ChannelCredentials:
    """Client credentials trusting ``ca_cert`` (None: the system roots), presenting
    ``client_cert`` and ``client_key`` to a mutual-TLS server when given (both or neither)."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca_cert is None else _pem(ca_cert),
        private_key=None if client_key is None else _pem(client_key),
        certificate_chain=None if client_cert is None else _pem(client_cert),
    )
