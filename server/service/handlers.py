"""Rebuild a gRPC method handler around a new behaviour, keeping its kind and serializers.

A ``grpc.aio`` server interceptor cannot wrap a call: it returns the handler that serves it.
Interceptors that refuse or observe calls therefore return a handler of the same kind as the
one they replace (a stream stays a stream) with the same (de)serializers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]
# What ``intercept_service`` calls to get the handler the server would use.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

# (request_streaming, response_streaming) -> the handler attribute and factory of that kind.
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _kind(handler: grpc.RpcMethodHandler) -> tuple[str, Callable[..., grpc.RpcMethodHandler]]:
    return _KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    """The function that serves calls of ``handler``, whatever its kind."""
    attribute, _ = _kind(handler)
    return getattr(handler, attribute)


def with_behavior(
    handler: grpc.RpcMethodHandler, behavior: Behavior, *, parse_requests: bool = True
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers as ``handler`` that runs ``behavior``.

    ``parse_requests=False`` hands ``behavior`` raw bytes: a refusal has no reason to parse
    what an unauthenticated caller sent (a corrupt message would otherwise fail as UNKNOWN
    before the refusal could answer).
    """
    _, factory = _kind(handler)
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer if parse_requests else None,
        response_serializer=handler.response_serializer,
    )
