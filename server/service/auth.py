"""Bearer-token authentication and the trainer/admin roles, enforced by a server interceptor.

Every call of ``tfllmer.v1.EmbeddingService`` must carry ``authorization: Bearer <token>``
metadata with a configured token (ARCHITECTURE.md §7). A missing, malformed or unknown token
is UNAUTHENTICATED; a trainer token on an admin-only RPC is PERMISSION_DENIED. A registered
method that ``REQUIRED_ROLE`` does not list is refused to everyone (fail closed), so a new RPC
added to the contract stays shut until someone decides its role.

The health service and server reflection stay open without a token: orchestrators' probes
(Kubernetes gRPC probes, grpc_health_probe) cannot send credentials, and reflection exposes
only the schema, which is public in ``protos/``; neither touches catalog data. Calls to
methods no service registered are left to gRPC, which answers UNIMPLEMENTED.

Tokens are compared in constant time: the presented token is hashed and its digest compared
with ``hmac.compare_digest`` to the digest of every configured token, with no early exit, so
neither the comparison time nor the list that matched reveals anything about the secrets.
Tokens are never logged, and error details never echo them.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

import grpc

from protos.metadata import AUTHORIZATION, BEARER, SERVICE
from server.config import ServerConfig
from server.service.handlers import Continuation, with_behavior

OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

Metadata = Iterable[tuple[str, str | bytes]]


class Role(enum.StrEnum):
    TRAINER = "trainer"
    ADMIN = "admin"

    def may_call(self, required: Role) -> bool:
        """Admins have every trainer right."""
        return self is Role.ADMIN or self is required


REQUIRED_ROLE: Mapping[str, Role] = MappingProxyType(
    {
        f"/{SERVICE}/UpsertItems": Role.ADMIN,
        f"/{SERVICE}/DescribeCatalog": Role.TRAINER,
        f"/{SERVICE}/GetItemEmbeddings": Role.TRAINER,
        f"/{SERVICE}/PushCooccurrence": Role.TRAINER,
        f"/{SERVICE}/RefitProjection": Role.ADMIN,
        f"/{SERVICE}/ActivateVersion": Role.ADMIN,
        f"/{SERVICE}/SimilarItems": Role.TRAINER,
        f"/{SERVICE}/WatchCatalog": Role.TRAINER,
        f"/{SERVICE}/StartRefit": Role.ADMIN,
        f"/{SERVICE}/GetRefitOperation": Role.ADMIN,
        f"/{SERVICE}/WatchRefitOperation": Role.ADMIN,
    }
)

# Set by the interceptor for the handler of the call it admitted (grpc.aio runs interceptors
# and the handler in one contextvars.Context). Without the interceptor, auth is disabled and
# every caller has admin rights, as --allow-unauthenticated documents.
_caller_role: contextvars.ContextVar[Role] = contextvars.ContextVar(
    "tfllmer_caller_role", default=Role.ADMIN
)


def current_role() -> Role:
    """The role of the caller whose RPC the current task serves."""
    return _caller_role.get()


def bearer_token(metadata: Metadata | None) -> str | None:
    """The token of the single ``authorization: Bearer <token>`` entry, or None when there is
    none, several, or one with another scheme (RFC 6750 §2.1; the scheme is case-insensitive)."""
    values = [value for key, value in metadata or () if key == AUTHORIZATION]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    return token if scheme.lower() == BEARER and token else None


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps even the token's length out of the timing.
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Maps a presented bearer token to the role of the configured token it equals."""

    def __init__(self, trainer_tokens: Sequence[str], admin_tokens: Sequence[str]) -> None:
        self._digests = tuple((_digest(t), Role.TRAINER) for t in trainer_tokens) + tuple(
            (_digest(t), Role.ADMIN) for t in admin_tokens
        )
        if not self._digests:
            raise ValueError("an authenticator needs at least one token")

    def role_of(self, metadata: Metadata | None) -> Role | None:
        """The caller's role, or None when the metadata carries no valid token."""
        token = bearer_token(metadata)
        if token is None:
            return None
        candidate = _digest(token)
        role = None
        for digest, token_role in self._digests:  # every token, no early exit
            if hmac.compare_digest(candidate, digest):
                role = token_role
        return role


def _refusal(code: grpc.StatusCode, details: str) -> Callable[..., Awaitable[None]]:
    """A behaviour that fails the call without reading its requests; it suits every kind."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    return refuse


_UNAUTHENTICATED = _refusal(
    grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token: send authorization: Bearer <token>"
)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call only with a token whose role may call the method (see module docstring)."""

    def __init__(
        self, authenticator: Authenticator, required_role: Mapping[str, Role] = REQUIRED_ROLE
    ) -> None:
        self._authenticator = authenticator
        self._required_role = required_role

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _is_open(method):
            return handler
        role = self._authenticator.role_of(handler_call_details.invocation_metadata)
        if role is None:
            return with_behavior(handler, _UNAUTHENTICATED, parse_requests=False)
        required = self._required_role.get(method)
        if required is None or not role.may_call(required):
            details = f"a {role} token may not call {method}"
            refusal = _refusal(grpc.StatusCode.PERMISSION_DENIED, details)
            return with_behavior(handler, refusal, parse_requests=False)
        _caller_role.set(role)
        return handler


def _is_open(method: str) -> bool:
    service, _, _ = method.lstrip("/").partition("/")
    return service in OPEN_SERVICES


def auth_interceptor(config: ServerConfig) -> AuthInterceptor | None:
    """The interceptor the configuration asks for; None when no tokens are set (auth off)."""
    if not config.auth_enabled:
        return None
    return AuthInterceptor(Authenticator(config.trainer_tokens, config.admin_tokens))
