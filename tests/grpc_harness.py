"""A real ``grpc.aio`` server on a loopback port, run on its own event loop in a thread, so
tests call it with ordinary blocking clients, as trainers do; and a do-nothing servicer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager

import grpc

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.service.auth import Role, current_role

Setup = Callable[[grpc.aio.Server], int]


@contextmanager
def serve(setup: Setup, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> Iterator[int]:
    """Run a server that ``setup`` filled with servicers and bound to a port; yield the port."""
    bound: Future[int] = Future()
    stopping = threading.Event()
    thread = threading.Thread(
        target=asyncio.run, args=(_run(setup, interceptors, bound, stopping),), daemon=True
    )
    thread.start()
    try:
        yield bound.result(timeout=30)
    finally:
        stopping.set()
        thread.join(timeout=30)


async def _run(
    setup: Setup,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    bound: Future[int],
    stopping: threading.Event,
) -> None:
    server = grpc.aio.server(interceptors=list(interceptors))
    try:
        port = setup(server)
        await server.start()
    except BaseException as error:
        bound.set_exception(error)
        raise
    bound.set_result(port)
    await asyncio.to_thread(stopping.wait)
    await server.stop(grace=None)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition``. ``context.abort`` sends the status before the exception reaches
    the interceptors, so what they record about a failed call may lag the client's return."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class EmptyEmbeddingService(pb_grpc.EmbeddingServiceServicer):
    """Answers every RPC with empty messages, after reading the whole request stream; records
    the caller's role each call saw."""

    def __init__(self) -> None:
        self.roles: list[Role] = []

    async def _drain(self, requests: AsyncIterator[object]) -> None:
        self.roles.append(current_role())
        async for _ in requests:
            pass

    async def UpsertItems(self, request_iterator, context):
        await self._drain(request_iterator)
        return pb.UpsertItemsResponse()

    async def DescribeCatalog(self, request, context):
        self.roles.append(current_role())
        return pb.DescribeCatalogResponse()

    async def GetItemEmbeddings(self, request, context):
        self.roles.append(current_role())
        yield pb.GetItemEmbeddingsResponse()
        yield pb.GetItemEmbeddingsResponse()

    async def PushCooccurrence(self, request_iterator, context):
        await self._drain(request_iterator)
        return pb.PushCooccurrenceResponse()

    async def RefitProjection(self, request, context):
        self.roles.append(current_role())
        return pb.RefitProjectionResponse()

    async def ActivateVersion(self, request, context):
        self.roles.append(current_role())
        return pb.ActivateVersionResponse()

    async def SimilarItems(self, request, context):
        self.roles.append(current_role())
        return pb.SimilarItemsResponse()

    async def WatchCatalog(self, request, context):
        self.roles.append(current_role())
        yield pb.WatchCatalogResponse()

    async def StartRefit(self, request, context):
        self.roles.append(current_role())
        return pb.StartRefitResponse()

    async def GetRefitOperation(self, request, context):
        self.roles.append(current_role())
        return pb.GetRefitOperationResponse()

    async def WatchRefitOperation(self, request, context):
        self.roles.append(current_role())
        yield pb.WatchRefitOperationResponse()
