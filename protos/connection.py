"""How every client CLI reaches the service: one set of flags, one channel, one credential.

The admin CLI, the trainer worker and the container health probe take the same options:

    --server HOST:PORT     [env TFLLMER_SERVER; default 127.0.0.1:50051]
    --token TOKEN          [env TFLLMER_TOKEN, preferred: command lines are visible]
    --tls                  TLS trusting the system's public CA roots
    --tls-ca PEM           TLS trusting this CA bundle instead (a private CA)
    --tls-cert/--tls-key   a client certificate, for mutual TLS
    --tls-server-name      the name to check the server certificate against

Any ``--tls*`` option turns TLS on. PEM sources are paths or inline bytes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from protos import environment
from protos.metadata import bearer_metadata

# PEM given inline as bytes, or the path of a PEM file.
Pem = bytes | str | os.PathLike[str]
ChannelOptions = Sequence[tuple[str, Any]]


def read_pem(source: Pem) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def channel_credentials(
    ca_cert: Pem | None = None, client_cert: Pem | None = None, client_key: Pem | None = None
) -> grpc.ChannelCredentials:
    """Client credentials trusting ``ca_cert`` (None: the system roots), presenting
    ``client_cert`` and ``client_key`` to a mutual-TLS server when given (both or neither)."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca_cert is None else read_pem(ca_cert),
        private_key=None if client_key is None else read_pem(client_key),
        certificate_chain=None if client_cert is None else read_pem(client_cert),
    )


@dataclass(frozen=True)
class Connection:
    """Where and how to call the service. ``token`` never appears in the repr."""

    server: str = environment.DEFAULT_SERVER
    token: str = field(default="", repr=False)
    tls: bool = False
    ca_cert: Pem | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None
    server_name: str | None = None

    @classmethod
    def resolve(
        cls,
        server: str | None = None,
        token: str | None = None,
        *,
        tls: bool = False,
        ca_cert: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        server_name: str | None = None,
        environ: Mapping[str, str] | None = None,
        default_server: str = environment.DEFAULT_SERVER,
    ) -> Connection:
        """Given values over the environment (``TFLLMER_SERVER``, ``TFLLMER_TOKEN``) over
        the defaults; ``token=""`` means none, whatever the environment says. Any
        certificate or server name turns TLS on."""
        environ = os.environ if environ is None else environ
        if token is None:
            token = environ.get(environment.TOKEN, "")
        return cls(
            server=server or environ.get(environment.SERVER, "").strip() or default_server,
            token=token.strip(),
            tls=bool(tls or ca_cert or client_cert or client_key or server_name),
            ca_cert=ca_cert, client_cert=client_cert, client_key=client_key,
            server_name=server_name,
        )  # fmt: skip

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        environ: Mapping[str, str] | None = None,
        default_server: str = environment.DEFAULT_SERVER,
    ) -> Connection:
        """From the flags of ``add_arguments`` (absent ones read as unset)."""
        get = vars(args).get
        return cls.resolve(
            get("server"), get("token"), tls=bool(get("tls")), ca_cert=get("tls_ca"),
            client_cert=get("tls_cert"), client_key=get("tls_key"),
            server_name=get("tls_server_name"), environ=environ, default_server=default_server,
        )  # fmt: skip

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The bearer metadata of every call, or None without a token."""
        return bearer_metadata(self.token) if self.token else None

    def channel(self, options: ChannelOptions = ()) -> grpc.Channel:
        """A plain or TLS channel; OSError or ValueError when a PEM cannot be read."""
        options = list(options)
        if not self.tls:
            return grpc.insecure_channel(self.server, options)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        credentials = channel_credentials(self.ca_cert, self.client_cert, self.client_key)
        return grpc.secure_channel(self.server, credentials, options)


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    token_help: str | None = "bearer token",
    server_help: str | None = None,
    suppress: bool = False,
) -> None:
    """Add the connection flags to ``parser`` (``token_help=None``: no --token, for probes
    of the open health service). ``suppress`` leaves absent flags out of the namespace, for
    parsers that accept them before and after a subcommand."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS if suppress else None}
    flag: dict[str, Any] = {"action": "store_true"}
    if suppress:
        flag["default"] = argparse.SUPPRESS
    parser.add_argument(
        "--server", metavar="HOST:PORT", **default,
        help=server_help or f"service address [env {environment.SERVER}; "
        f"default {environment.DEFAULT_SERVER}]",
    )  # fmt: skip
    if token_help is not None:
        parser.add_argument(
            "--token", **default,
            help=f"{token_help} [env {environment.TOKEN}, preferred: command lines are "
            "visible to other users]; never printed",
        )  # fmt: skip
    parser.add_argument("--tls", **flag, help="use TLS, trusting the system's public CA roots")
    parser.add_argument("--tls-ca", metavar="PEM", **default,
                        help="CA bundle to trust instead (a private CA; implies TLS)")
    parser.add_argument("--tls-cert", metavar="PEM", **default,
                        help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", metavar="PEM", **default, help="private key of --tls-cert")
    parser.add_argument("--tls-server-name", metavar="NAME", **default,
                        help="name to check the server certificate against (implies TLS)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject what ``add_arguments`` cannot express: half a client key pair."""
    if (vars(args).get("tls_cert") is None) != (vars(args).get("tls_key") is None):
        parser.error("--tls-cert and --tls-key go together")
