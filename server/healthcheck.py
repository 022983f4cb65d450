"""``python -m server.healthcheck``: a gRPC health probe for container healthchecks.

Asks the server's standard ``grpc.health.v1.Health/Check`` and exits 0 when the answer is
SERVING, 1 otherwise (NOT_SERVING, an unknown service, no answer within the timeout, a refused
connection). Docker's ``HEALTHCHECK`` reads exactly these two codes, so the images need no
``grpc_health_probe`` binary downloaded at build time.

    python -m server.healthcheck                             # 127.0.0.1:$TFLLMER_PORT (50051)
    python -m server.healthcheck --server 127.0.0.1:50051 --service tfllmer.v1.EmbeddingService

The server reports NOT_SERVING while its store does not answer and from the start of a
graceful shutdown, so an unhealthy container is one that cannot serve. The health service
needs no token. The connection flags are every client CLI's (``protos.connection``): with TLS,
pass ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mutual TLS); ``--tls-server-name``
overrides the name checked against the certificate when probing 127.0.0.1.

Only grpcio, grpcio-health-checking and the standard library are imported (no torch, no
model), so one probe costs a fraction of a second of CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import connection, environment
from server.settings import env_name

PORT_ENV = env_name("port")
HEALTHY, UNHEALTHY = 0, 1


def default_address() -> str:
    """Loopback on the port the server in this container is configured with."""
    port = os.environ.get(PORT_ENV, "").strip() or str(environment.DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.healthcheck",
        description="Exit 0 when the gRPC health service answers SERVING, 1 otherwise.",
    )
    connection.add_arguments(
        parser, token_help=None,
        server_help=f"host:port of the server [default: 127.0.0.1:${PORT_ENV}, or "
        f":{environment.DEFAULT_PORT}]",
    )  # fmt: skip
    parser.add_argument(
        "--service", default="",
        help="service name to ask about; empty (the default) means the whole server",
    )
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the answer [3]")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    connection.check_arguments(parser, args)
    return args


def check(args: argparse.Namespace) -> tuple[int, str]:
    """The exit code and a one-line reason."""
    # TFLLMER_SERVER names the service for client tools; the probe asks its own container.
    target = connection.Connection.from_args(args, environ={}, default_server=default_address())
    address = target.server
    try:
        channel = target.channel()
    except (OSError, ValueError) as error:
        return UNHEALTHY, f"{address}: TLS: {error}"
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            code = error.code()
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            return UNHEALTHY, f"{address}: {name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    service = f" ({args.service})" if args.service else ""
    healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
    return HEALTHY if healthy else UNHEALTHY, f"{address}{service}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    code, message = check(args)
    if not args.quiet:
        print(message, file=sys.stdout if code == HEALTHY else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
