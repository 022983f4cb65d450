"""The tfllmer.v1 wire contract: stubs import, the eleven RPCs stream as specified, every
element of the .proto is documented, and vectors travel as packed bytes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc

# RPC name -> (client streaming, server streaming)
RPCS = {
    "UpsertItems": (True, False),
    "DescribeCatalog": (False, False),
    "GetItemEmbeddings": (False, True),
    "PushCooccurrence": (True, False),
    "RefitProjection": (False, False),
    "ActivateVersion": (False, False),
    "SimilarItems": (False, False),
    "WatchCatalog": (False, True),
    "StartRefit": (False, False),
    "GetRefitOperation": (False, False),
    "WatchRefitOperation": (False, True),
}


def test_the_service_has_the_eleven_rpcs_with_their_streaming_kinds() -> None:
    assert pb.DESCRIPTOR.package == "tfllmer.v1"
    assert pb.DESCRIPTOR.name == "tfllmer/v1/embedding_service.proto"
    service = pb.DESCRIPTOR.services_by_name["EmbeddingService"]
    assert service.full_name == "tfllmer.v1.EmbeddingService"
    kinds = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert kinds == RPCS
    for method in service.methods:  # one request and one response message per RPC
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
        assert hasattr(pb_grpc.EmbeddingServiceServicer, method.name)


def test_message_classes_carry_the_importable_module_path() -> None:
    assert pb.GetItemEmbeddingsRequest.__module__ == "protos.tfllmer.v1.embedding_service_pb2"


def _all_fields() -> Iterator[tuple[str, object]]:
    pending = list(pb.DESCRIPTOR.message_types_by_name.values())
    while pending:
        message = pending.pop()
        pending.extend(message.nested_types)
        for field in message.fields:
            yield f"{message.full_name}.{field.name}", field


def test_vectors_and_ids_never_travel_as_repeated_numbers() -> None:
    numeric = {
        descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
        descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
        descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    }
    repeated_numbers = [
        name for name, field in _all_fields() if field.is_repeated and field.type in numeric
    ]
    assert repeated_numbers == []


def test_every_enum_starts_with_an_unspecified_zero_value() -> None:
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_")
        assert enum.values[0].number == 0
        assert enum.values[0].name == f"{prefix}_UNSPECIFIED"
        assert all(value.name.startswith(f"{prefix}_") for value in enum.values)


@pytest.fixture(scope="module")
def documented_proto() -> descriptor_pb2.FileDescriptorProto:
    pytest.importorskip("grpc_tools", reason="protoc (grpcio-tools) reads the comments")
    from protos import generate

    files = descriptor_pb2.FileDescriptorSet.FromString(generate.descriptor_set())
    (proto,) = [f for f in files.file if f.name == pb.DESCRIPTOR.name]
    return proto


def _elements(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, tuple]]:
    """Every documented element with its SourceCodeInfo path (descriptor.proto numbers)."""

    def message(msg: descriptor_pb2.DescriptorProto, path: tuple) -> Iterator[tuple[str, tuple]]:
        yield f"message {msg.name}", path
        for i, field in enumerate(msg.field):
            yield f"field {msg.name}.{field.name}", (*path, 2, i)
        for i, oneof in enumerate(msg.oneof_decl):
            if not oneof.name.startswith("_"):  # synthetic oneofs of proto3 `optional`
                yield f"oneof {msg.name}.{oneof.name}", (*path, 8, i)
        for i, nested in enumerate(msg.nested_type):
            yield from message(nested, (*path, 3, i))
        for i, enum_type in enumerate(msg.enum_type):
            yield from enum(enum_type, (*path, 4, i))

    def enum(enum_type: descriptor_pb2.EnumDescriptorProto, path: tuple):
        yield f"enum {enum_type.name}", path
        for i, value in enumerate(enum_type.value):
            yield f"enum value {value.name}", (*path, 2, i)

    for i, msg in enumerate(proto.message_type):
        yield from message(msg, (4, i))
    for i, enum_type in enumerate(proto.enum_type):
        yield from enum(enum_type, (5, i))
    for i, service in enumerate(proto.service):
        yield f"service {service.name}", (6, i)
        for j, method in enumerate(service.method):
            yield f"rpc {service.name}.{method.name}", (6, i, 2, j)


def test_every_element_of_the_proto_has_a_leading_comment(documented_proto) -> None:
    comments = {
        tuple(location.path): location.leading_comments.strip()
        for location in documented_proto.source_code_info.location
    }
    elements = list(_elements(documented_proto))
    assert len(elements) > 100  # the walk found the fields, not just the messages
    undocumented = [name for name, path in elements if not comments.get(path)]
    assert undocumented == []


def test_every_rpc_comment_names_its_role_and_error_codes(documented_proto) -> None:
    (service,) = documented_proto.service
    comments = {
        tuple(location.path): location.leading_comments
        for location in documented_proto.source_code_info.location
    }
    for j, method in enumerate(service.method):
        text = " ".join(comments[(6, 0, 2, j)].split())
        assert "(trainer)" in text or "(admin)" in text, method.name
        assert "Errors: INVALID_ARGUMENT" in text, method.name
    service_text = " ".join(comments[(6, 0)].split())
    for code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"):
        assert code in service_text


class _EchoServicer(pb_grpc.EmbeddingServiceServicer):
    """Just enough of a servicer to carry one stream of each direction over a channel."""

    def GetItemEmbeddings(self, request, context):
        vectors = np.arange(6, dtype="<f4").reshape(3, 2)
        header = pb.EmbeddingHeader(
            version=1, dim=2, dtype=pb.DTYPE_FLOAT32, kind=pb.EMBEDDING_KIND_REDUCED, item_count=3
        )
        rows = np.arange(3, dtype="<u4")
        yield pb.GetItemEmbeddingsResponse(
            header=header, start=0, rows=rows[:2].tobytes(), vectors=vectors[:2].tobytes()
        )
        yield pb.GetItemEmbeddingsResponse(
            start=2, rows=rows[2:].tobytes(), vectors=vectors[2:].tobytes()
        )

    def PushCooccurrence(self, request_iterator, context):
        seen: set[tuple[str, str]] = set()
        response = pb.PushCooccurrenceResponse()
        for batch in request_iterator:
            if (batch.worker_id, batch.batch_id) in seen:
                response.duplicates_ignored += 1
                continue
            seen.add((batch.worker_id, batch.batch_id))
            weights = np.frombuffer(batch.weights, dtype="<f4")
            response.batches_applied += 1
            response.pairs_added += len(weights)
            response.weight_added += float(weights.sum(dtype=np.float64))
        return response


def test_stubs_carry_both_stream_directions_over_a_real_channel() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_EmbeddingServiceServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            chunks = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(catalog="c"), 10))
            header = chunks[0].header
            assert chunks[0].HasField("header") and not chunks[1].HasField("header")
            out = np.empty((header.item_count, header.dim), dtype="<f4")
            for chunk in chunks:
                block = np.frombuffer(chunk.vectors, dtype="<f4").reshape(-1, header.dim)
                out[chunk.start : chunk.start + len(block)] = block
            np.testing.assert_array_equal(out, np.arange(6, dtype="<f4").reshape(3, 2))

            def batch(batch_id: str) -> pb.PushCooccurrenceRequest:
                return pb.PushCooccurrenceRequest(
                    catalog="c",
                    worker_id="w0",
                    batch_id=batch_id,
                    rows=np.array([0, 1], dtype="<u4").tobytes(),
                    cols=np.array([1, 2], dtype="<u4").tobytes(),
                    weights=np.array([1.0, 0.5], dtype="<f4").tobytes(),
                )

            result = stub.PushCooccurrence(iter([batch("b0"), batch("b0"), batch("b1")]), 10)
            assert (result.batches_applied, result.duplicates_ignored) == (2, 1)
            assert (result.pairs_added, result.weight_added) == (4, 3.0)
    finally:
        server.stop(None)


def test_the_strength_oneof_keeps_an_explicit_zero_lambda() -> None:
    params = pb.FitParameters(dim=32, lam=0.0)
    assert params.WhichOneof("strength") == "lam"
    assert pb.FitParameters().WhichOneof("strength") is None
    assert not pb.FitDiagnostics().HasField("graph_tv")
