"""The transport floor: a bare ``grpc.aio`` server that answers ``GetItemEmbeddings`` from
memory with a generic handler, no store, no validation, no interceptors.

* A full-catalog request (no ids) is answered with the exact messages the real server sent
  for the same request, captured once as raw bytes and streamed back unchanged: the same
  bytes, the same chunk sizes, nothing computed per call.
* A request with ids is answered like the real server answers it: ids mapped to rows with
  an in-memory dict, ``numpy.take`` of those rows, one message with the header.

Run as ``python -m bench.floor_server --port P --data DIR`` (a subprocess, so it never
shares the benchmark client's GIL); DIR holds what ``write_floor_data`` wrote. It prints
``ready`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np

from protos.codecs import encode_vectors
from protos.tfllmer.v1 import embedding_service_pb2 as pb

METHOD = "/tfllmer.v1.EmbeddingService/GetItemEmbeddings"
_LENGTH = struct.Struct("<I")
DTYPES = {pb.DTYPE_UNSPECIFIED: "float32", pb.DTYPE_FLOAT32: "float32",
          pb.DTYPE_FLOAT16: "float16", pb.DTYPE_BFLOAT16: "bfloat16"}


def capture_stream(address: str, request: pb.GetItemEmbeddingsRequest) -> list[bytes]:
    """Every message of one ``GetItemEmbeddings`` call, as the raw bytes on the wire."""
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    with grpc.insecure_channel(address, options) as channel:
        call = channel.unary_stream(METHOD, request_serializer=pb.GetItemEmbeddingsRequest
                                    .SerializeToString, response_deserializer=None)
        return list(call(request, timeout=600))


def write_floor_data(directory: Path, streams: dict[str, list[bytes]], ids: list[str],
                     reduced: np.ndarray, header: pb.EmbeddingHeader) -> None:
    """What the floor server loads: captured streams per dtype, ids, vectors, header."""
    directory.mkdir(parents=True, exist_ok=True)
    for dtype, messages in streams.items():
        with open(directory / f"stream_{dtype}.bin", "wb") as out:
            for message in messages:
                out.write(_LENGTH.pack(len(message)))
                out.write(message)
    (directory / "ids.json").write_text(json.dumps(ids))
    np.save(directory / "reduced.npy", np.ascontiguousarray(reduced, dtype=np.float32))
    (directory / "header.bin").write_bytes(header.SerializeToString())


def _read_stream(path: Path) -> list[bytes]:
    data, messages, at = path.read_bytes(), [], 0
    while at < len(data):
        (size,) = _LENGTH.unpack_from(data, at)
        messages.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return messages


class FloorHandler(grpc.GenericRpcHandler):
    def __init__(self, directory: Path) -> None:
        self.streams = {path.stem.removeprefix("stream_"): _read_stream(path)
                        for path in directory.glob("stream_*.bin")}
        ids = json.loads((directory / "ids.json").read_text())
        self.rows = {item: row for row, item in enumerate(ids)}
        self.reduced = np.load(directory / "reduced.npy")
        self.header = pb.EmbeddingHeader.FromString((directory / "header.bin").read_bytes())
        self.handler = grpc.unary_stream_rpc_method_handler(self.serve)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self.handler if handler_call_details.method == METHOD else None

    async def serve(self, request_bytes: bytes, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[bytes]:
        request = pb.GetItemEmbeddingsRequest.FromString(request_bytes)
        dtype = DTYPES[request.dtype]
        if not request.item_ids:
            for message in self.streams[dtype]:
                yield message
            return
        for message in self.take(request.item_ids, dtype):
            yield message

    def take(self, ids: Iterable[str], dtype: str) -> Iterator[bytes]:
        ids = list(ids)
        rows = np.fromiter((self.rows[i] for i in ids), dtype=np.int64, count=len(ids))
        header = pb.EmbeddingHeader()
        header.CopyFrom(self.header)
        header.item_count = len(ids)
        header.dtype = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16,
                        "bfloat16": pb.DTYPE_BFLOAT16}[dtype]
        yield pb.GetItemEmbeddingsResponse(
            header=header, start=0, rows=rows.astype("<u4").tobytes(), item_ids=ids,
            vectors=encode_vectors(np.take(self.reduced, rows, axis=0), dtype),
        ).SerializeToString()


async def serve(port: int, directory: Path) -> None:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 2**20)])
    server.add_generic_rpc_handlers((FloorHandler(directory),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.data))


if __name__ == "__main__":
    main()
