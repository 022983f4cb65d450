"""Follow a refit operation from a terminal: a progress bar over WatchRefitOperation that
re-attaches when the connection drops, used by the admin CLI's ``refit`` and ``operation``.

The refit belongs to the server: interrupting the bar (Ctrl-C) or losing the connection
leaves it running, and ``operation --name NAME`` picks it up again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from tqdm import tqdm

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc

# Re-attach after UNAVAILABLE this many times in a row (a restart or a network blip),
# waiting a little longer each time.
REATTACH_TRIES = 8


def phase_name(phase: int) -> str:
    return pb.RefitPhase.Name(phase).removeprefix("REFIT_PHASE_").lower()


def follow(stub: pb_grpc.EmbeddingServiceStub, name: str, metadata: Any,
           sleep: Callable[[float], None] = time.sleep) -> pb.RefitOperation:
    """Watch operation ``name`` until it is done, drawing a bar on stderr (terminals only);
    its final state."""
    tries = 0
    # disable=None: a bar on a terminal only, none in logs and pipes.
    with tqdm(total=1000, unit="‰", desc="queued", file=sys.stderr, disable=None,
              bar_format="{desc:<12} {percentage:3.0f}%|{bar}| {elapsed}") as bar:
        while True:
            try:
                for message in stub.WatchRefitOperation(
                        pb.WatchRefitOperationRequest(name=name), metadata=metadata):
                    operation = message.operation
                    tries = 0
                    bar.set_description_str(phase_name(operation.phase))
                    bar.update(int(operation.fraction * 1000) - bar.n)
                    if operation.done:
                        return operation
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or tries >= REATTACH_TRIES:
                    raise
                tries += 1
                bar.set_description_str("reconnecting")
                sleep(min(0.5 * 2**tries, 10.0))
