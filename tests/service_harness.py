"""The real ``EmbeddingServer`` on a free loopback port, for tests that talk to it over a
real gRPC channel with the plain synchronous stub, exactly as a trainer or operator would."""

from __future__ import annotations

import grpc

from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.background import BackgroundServer


class ServerThread(BackgroundServer):
    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self, channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
        return pb_grpc.EmbeddingServiceStub(channel)
