"""Promise: what one caller, or all callers together, can make the server hold is bounded,
and the memory comes back when their calls end. A trainer token is enough to try.

Against a real ``python -m server`` process: 4 hostile PushCooccurrence streams that send
3.9 MB messages as fast as they can and never half-close; streams that stop sending (or
trickle); a unary request that never completes; a stalled GetItemEmbeddings reader; over-long
texts held in an open stream; bytes that are not protobuf. Before the fix (10018c8) 4 such
push streams took the server from 612 to 2,622 MiB and it kept that after they failed; no
stream had a server-side time limit; texts and block lengths were checked at half-close.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.server_process import ServerProcess, status_of, synthetic_catalog
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores import LocalStore

TRAINER = "trainer-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdefgh"
IDLE_SECONDS = 1.5
MAX_CALL_SECONDS = 6.0
CATALOG = "bounded"
SMALL = "bounded-small"
MiB = 2**20


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("bounded")
    store = LocalStore(directory / "store.db")
    synthetic_catalog(store, CATALOG, 20_000)
    synthetic_catalog(store, SMALL, 500)
    process = ServerProcess(str(directory / "store.db"), directory / "server.log", args=[
        "--trainer-tokens", TRAINER, "--admin-tokens", ADMIN,
        "--idle-stream-seconds", str(IDLE_SECONDS), "--max-call-seconds", str(MAX_CALL_SECONDS),
        "--max-open-pulls", "2", "--version-cache-size", "0"])
    with process:
        yield process


def _hostile_pushes(pairs: int, *, cols_only: bool = False) -> Iterator[pb.PushCooccurrenceRequest]:
    """3.9 MB messages, forever: the stream never half-closes."""
    rows = np.arange(pairs, dtype="<u4") % 1000
    block = rows.tobytes()
    message = pb.PushCooccurrenceRequest(
        catalog=CATALOG, worker_id="hostile", batch_id="b",
        rows=b"" if cols_only else block, cols=(block * 3 if cols_only else
                                                ((rows + 1) % 1000).astype("<u4").tobytes()),
        weights=b"" if cols_only else np.ones(pairs, "<f4").tobytes())
    n = 0
    while True:
        n += 1
        message.batch_id = f"b{n}"
        yield message


def test_four_hostile_trainer_push_streams_are_bounded_and_their_memory_returns(
        server: ServerProcess, record_property) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        # Warm the push path, then measure from a settled baseline.
        stub.PushCooccurrence(iter([pb.PushCooccurrenceRequest(
            catalog=CATALOG, worker_id="warm", batch_id="0", rows=np.uint32([1]).tobytes(),
            cols=np.uint32([2]).tobytes(), weights=np.float32([1]).tobytes())]),
            metadata=_auth(TRAINER), timeout=30)
        time.sleep(1.0)
        before = server.rss_bytes()
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], server.rss_bytes())
                time.sleep(0.02)

        codes: list[grpc.StatusCode] = []

        def attack(cols_only: bool) -> None:
            codes.append(status_of(lambda: stub.PushCooccurrence(
                _hostile_pushes(325_000, cols_only=cols_only), metadata=_auth(TRAINER),
                timeout=120)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        attackers = [threading.Thread(target=attack, args=(False,)) for _ in range(4)]
        # The shape of the original report too: empty rows, 3.9 MB of cols.
        attackers += [threading.Thread(target=attack, args=(True,)) for _ in range(4)]
        started = time.monotonic()
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(120)
        ended = time.monotonic() - started
        done.set()
        sampler.join()
        # Memory comes back within seconds (freed buffers are trimmed after the last stream).
        returned = time.monotonic()
        while (after := server.rss_bytes()) - before >= 64 * MiB and (
                time.monotonic() - returned < 10):
            time.sleep(0.25)
        returned = time.monotonic() - returned
    growth, kept = (peak[0] - before) / MiB, (after - before) / MiB
    record_property("rss_before_mib", round(before / MiB, 1))
    record_property("rss_peak_mib", round(peak[0] / MiB, 1))
    record_property("rss_after_mib", round(after / MiB, 1))
    record_property("rss_growth_mib", round(growth, 1))
    record_property("rss_kept_mib", round(kept, 1))
    record_property("attack_seconds", round(ended, 2))
    record_property("seconds_until_returned", round(returned, 2))
    record_property("statuses", ",".join(sorted(code.name for code in codes)))
    assert all(code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
               for code in codes), codes
    assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) == 4  # the unequal blocks, at once
    assert growth < 256, f"RSS grew by {growth:.0f} MiB"
    assert kept < 64, f"RSS stayed {kept:.0f} MiB above the baseline"
    assert server.process is not None and server.process.poll() is None


def test_an_over_long_text_fails_the_upsert_while_its_stream_is_still_open(
        server: ServerProcess) -> None:
    release = threading.Event()

    def requests() -> Iterator[pb.UpsertItemsRequest]:
        yield pb.UpsertItemsRequest(catalog="texts", items=[pb.Item(id="a", text="x" * 9000)])
        release.wait(30)  # never half-closes while the test waits

    with server.channel() as channel:
        started = time.monotonic()
        code = status_of(lambda: server.stub(channel).UpsertItems(
            requests(), metadata=_auth(ADMIN), timeout=30))
        release.set()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 10


def test_a_stream_that_stops_sending_is_ended_and_one_that_trickles_is_ended_at_the_cap(
        server: ServerProcess) -> None:
    def pushes(interval: float, count: int) -> Iterator[pb.PushCooccurrenceRequest]:
        for n in range(count):
            yield pb.PushCooccurrenceRequest(
                catalog=CATALOG, worker_id="slow", batch_id=str(n),
                rows=np.uint32([1]).tobytes(), cols=np.uint32([2]).tobytes(),
                weights=np.float32([1]).tobytes())
            time.sleep(interval)

    with server.channel() as channel:
        stub = server.stub(channel)
        for interval, count, bound in ((60.0, 1, IDLE_SECONDS), (0.5, 1000, MAX_CALL_SECONDS)):
            started = time.monotonic()
            code = status_of(functools.partial(
                stub.PushCooccurrence, pushes(interval, count), metadata=_auth(TRAINER),
                timeout=120))
            seconds = time.monotonic() - started
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (interval, code)
            assert bound - 0.5 < seconds < bound + 5, (interval, seconds)
        # Neither ended call applied its batches: pushing "0" and "1" again applies both.
        again = stub.PushCooccurrence(pushes(0, 2), metadata=_auth(TRAINER), timeout=30)
        assert again.batches_applied == 2


def test_a_unary_request_that_never_completes_is_ended(server: ServerProcess) -> None:
    """A client that opens DescribeCatalog and never finishes sending its request (a
    stream on the unary method's path, as a raw HTTP/2 client could)."""
    never = threading.Event()

    def nothing() -> Iterator[bytes]:
        never.wait(60)
        yield b""

    with server.channel() as channel:
        describe = channel.stream_unary("/tfllmer.v1.EmbeddingService/DescribeCatalog")
        started = time.monotonic()
        code = status_of(lambda: describe(nothing(), metadata=_auth(TRAINER), timeout=60))
        never.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < IDLE_SECONDS + 5


def test_bytes_that_are_not_a_message_are_invalid_argument_without_a_traceback(
        server: ServerProcess) -> None:
    with server.channel() as channel:
        for method in ("DescribeCatalog", "RefitProjection", "GetItemEmbeddings"):
            path = f"/tfllmer.v1.EmbeddingService/{method}"
            if method == "GetItemEmbeddings":
                stream = channel.unary_stream(path)

                def call(data: bytes, stream=stream) -> object:
                    return list(stream(data, metadata=_auth(ADMIN), timeout=10))
            else:
                unary = channel.unary_unary(path)

                def call(data: bytes, unary=unary) -> object:
                    return unary(data, metadata=_auth(ADMIN), timeout=10)
            for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01abc", b"\x08" * 11):
                code = status_of(functools.partial(call, garbage))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, garbage, code)
    assert "Traceback" not in server.log_text()


def test_open_pulls_are_capped_and_a_stalled_reader_is_ended(server: ServerProcess) -> None:
    # Raw vectors: 30 MB, more than the transport buffers a stalled reader can absorb.
    request = pb.GetItemEmbeddingsRequest(catalog=CATALOG, max_chunk_bytes=64 * 1024,
                                          kind=pb.EMBEDDING_KIND_RAW)
    with server.channel() as first, server.channel() as second, server.channel() as third:
        stalled = [server.stub(channel).GetItemEmbeddings(request, metadata=_auth(TRAINER),
                                                          timeout=60)
                   for channel in (first, second)]
        for stream in stalled:
            next(stream)  # then stop reading: the server's sends back up
        time.sleep(0.3)
        stub = server.stub(third)
        refused = status_of(lambda: list(stub.GetItemEmbeddings(
            request, metadata=_auth(TRAINER), timeout=30)))
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The stalled readers are ended after the idle timeout; then pulls are served again.
        time.sleep(IDLE_SECONDS + 2.0)
        served = list(stub.GetItemEmbeddings(request, metadata=_auth(TRAINER), timeout=60))
        assert sum(len(m.rows) // 4 for m in served) == 20_000
        for stream in stalled:
            stream.cancel()


def test_encoder_health_is_reported(server: ServerProcess) -> None:
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
            service="tfllmer.v1.EmbeddingService/encoder"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unary_and_streamed_calls_still_work_with_the_bounds_in_place(
        server: ServerProcess) -> None:
    with server.channel() as channel:
        stub = server.stub(channel)
        reply = stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=SMALL, activate=True, parameters=pb.FitParameters(dim=8, lam=0.0)),
            metadata=_auth(ADMIN), timeout=120)
        pulled = list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(catalog=SMALL),
                                             metadata=_auth(TRAINER), timeout=60))
    assert reply.version.version == 1
    assert sum(len(m.rows) // 4 for m in pulled) == 500
