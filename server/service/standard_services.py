"""The standard gRPC services every server carries: health (with ``List``) and reflection
under both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-health-checking's async servicer has no ``List`` (its descriptor does), so the base
class answers UNIMPLEMENTED and grpc logs an ERROR traceback per call; ``HealthWithList``
implements it. grpcio-reflection ships only ``v1alpha``; ``v1`` carries the same messages
under another package, so the same servicer serves both names, and a copy of the reflection
file renamed to ``grpc.reflection.v1`` joins the descriptor pool so that reflection can
describe itself under either name (tools such as grpcurl ≥ 1.9 ask v1 first).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION_V1ALPHA = reflection.SERVICE_NAME
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_V1_FILE = "grpc/reflection/v1/reflection.proto"


class HealthWithList(HealthServicer):
    """grpc.health.v1.Health with ``List``: every registered service and its status."""

    async def List(  # noqa: N802 (the RPC's name)
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in sorted(self._server_status.items()):
            response.statuses[service].status = status
        return response


def _register_reflection_v1() -> None:
    """Add the reflection file renamed to package ``grpc.reflection.v1`` to the default pool
    (once per process)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    copy = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(copy)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    copy.name, copy.package = _V1_FILE, "grpc.reflection.v1"
    for message in copy.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in copy.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(copy)


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection for ``service_names`` (plus health and reflection itself) under the
    v1 and v1alpha names."""
    _register_reflection_v1()
    names = (*service_names, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for name in (REFLECTION_V1, REFLECTION_V1ALPHA):
        handlers = {"ServerReflectionInfo": handler}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
