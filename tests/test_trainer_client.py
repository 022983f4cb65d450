"""The trainer client against the real server: real Redis, the real encoder, ML-100K, real
gRPC channels (plain, and mutual TLS with tokens), and a server process killed mid-pull."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from cryptography.x509.oid import ExtendedKeyUsageOID

from harness.ports import free_port
from harness.server_process import ServerProcess
from protos.codecs import decode_vectors, encode_vectors
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc
from server.stores import RedisStore
from tests.service_harness import ServerThread
from tests.test_tls import issue, make_ca
from trainer_client.client import EmbeddingClient, RetryPolicy, ServiceError

pytestmark = pytest.mark.slow
CATALOG = "ml-100k"
N_ITEMS = 1682
TRAINER_TOKEN = "trainer-" + secrets.token_urlsafe(24)
ADMIN_TOKEN = "admin-" + secrets.token_urlsafe(24)
QUICK = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, budget_s=10)


@dataclass(frozen=True)
class Service:
    server: ServerThread
    store: RedisStore
    active: int  # version 0 resolves to this one (dim 32)
    staged: int  # a second version, dim 16, never activated


def ingest(stub, catalog, name: str = CATALOG) -> None:
    items = [pb.Item(id=i, text=t) for i, t in zip(catalog.item_ids, catalog.texts, strict=True)]
    stub.UpsertItems(iter([pb.UpsertItemsRequest(catalog=name, items=items)]))


def refit(stub, dim: int, activate: bool, name: str = CATALOG) -> int:
    request = pb.RefitProjectionRequest(
        catalog=name, activate=activate, parameters=pb.FitParameters(dim=dim, lam=0.0))
    return stub.RefitProjection(request).version.version


@pytest.fixture(scope="module")
def service(redis_server, pooled_encoder, movielens_100k) -> Iterator[Service]:
    store = RedisStore(redis_server.url, key_prefix=f"client-test-{secrets.token_hex(4)}")
    with ServerThread(store, pooled_encoder) as server, server.channel() as channel:
        stub = server.stub(channel)
        ingest(stub, movielens_100k.catalog)
        active, staged = refit(stub, 32, activate=True), refit(stub, 16, activate=False)
        yield Service(server, store, active, staged)


@pytest.fixture
def client(service: Service) -> Iterator[EmbeddingClient]:
    with EmbeddingClient(service.server.address, token="", retry=QUICK) as client:
        yield client


@pytest.mark.parametrize(("dtype", "tolerance"),
                         [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_a_full_pull_is_the_stored_matrix_in_row_order(
        service: Service, client: EmbeddingClient, movielens_100k, dtype: str, tolerance: float
) -> None:
    chunks: list[int] = []
    table = client.fetch_embeddings(CATALOG, dtype=dtype, max_chunk_bytes=8 * 1024,
                                    on_chunk=lambda received, _: chunks.append(received))
    stored = service.store.read_reduced(CATALOG, service.active, 0, N_ITEMS)
    assert (table.version, table.dim, table.dtype, table.kind) == (
        service.active, 32, dtype, "reduced")
    assert len(chunks) > 10 and chunks[-1] == N_ITEMS  # many chunks were assembled
    assert table.item_ids == movielens_100k.catalog.item_ids
    np.testing.assert_array_equal(table.rows, np.arange(N_ITEMS))
    assert table.vectors.dtype == np.float32 and table.vectors.shape == (N_ITEMS, 32)
    # Exactly the server's rounding of its stored vectors, and close to them.
    wire = decode_vectors(encode_vectors(stored, dtype), dtype, 32)
    assert table.vectors.tobytes() == wire.tobytes()
    np.testing.assert_allclose(table.vectors, stored, rtol=0, atol=tolerance)


def test_ids_pick_items_in_the_order_asked(service: Service, client: EmbeddingClient,
                                           movielens_100k) -> None:
    ids = movielens_100k.catalog.item_ids
    table = client.fetch_embeddings(CATALOG, ids=[ids[5], ids[2], ids[5]])
    stored = service.store.read_reduced(CATALOG, service.active, 0, N_ITEMS)
    assert table.item_ids == [ids[5], ids[2], ids[5]]
    np.testing.assert_array_equal(table.rows, [5, 2, 5])
    np.testing.assert_array_equal(table.vectors, stored[[5, 2, 5]])


def test_raw_vectors_are_the_encoder_dim(client: EmbeddingClient) -> None:
    table = client.fetch_embeddings(CATALOG, kind="raw", dtype="float16")
    assert (table.version, table.kind, table.vectors.shape) == (0, "raw", (N_ITEMS, 384))


def test_a_pinned_version_is_served_whatever_is_active(service: Service,
                                                       client: EmbeddingClient) -> None:
    staged = client.fetch_embeddings(CATALOG, version=service.staged)
    assert (staged.version, staged.dim) == (service.staged, 16)
    expected = service.store.read_reduced(CATALOG, service.staged, 0, N_ITEMS)
    assert staged.vectors.tobytes() == expected.tobytes()
    described = client.describe(CATALOG)
    assert described.active_version == service.active and described.item_count == N_ITEMS
    assert [v.version for v in described.versions] == [service.active, service.staged]


class Interrupted(grpc.RpcError):
    """What a dropped connection raises from a stream."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection dropped"


def test_a_retry_after_an_interruption_requests_the_version_of_the_first_header(
        service: Service, client: EmbeddingClient) -> None:
    """The active version switches while the first attempt streams; the retry still gets
    the version that attempt's header named, so the result is one consistent matrix."""
    progress: list[int] = []

    def switch_then_drop(received: int, _: int) -> None:
        progress.append(received)
        if len(progress) == 3:
            service.store.activate(CATALOG, service.staged)
            raise Interrupted()

    try:
        table = client.fetch_embeddings(CATALOG, max_chunk_bytes=4 * 1024,
                                        on_chunk=switch_then_drop)
    finally:
        service.store.activate(CATALOG, service.active)
    assert progress[3] < progress[2]  # the pull restarted from the beginning
    expected = service.store.read_reduced(CATALOG, service.active, 0, N_ITEMS)
    assert table.version == service.active
    assert table.vectors.tobytes() == expected.tobytes()


def test_as_torch_shares_the_float32_matrix(client: EmbeddingClient) -> None:
    table = client.fetch_embeddings(CATALOG, dtype="bfloat16")
    tensor = table.as_torch()
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == table.vectors.shape
    assert tensor.data_ptr() == table.vectors.ctypes.data  # no copy
    assert torch.equal(tensor, torch.from_numpy(table.vectors.copy()))


def test_an_unreachable_server_is_unavailable_once_the_budget_is_spent() -> None:
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, budget_s=1)
    with EmbeddingClient(f"127.0.0.1:{free_port()}", token="", retry=policy,
                         deadline_s=2) as client, pytest.raises(ServiceError) as error:
        client.describe(CATALOG)
    assert error.value.code is grpc.StatusCode.UNAVAILABLE
    assert str(error.value).startswith("DescribeCatalog: UNAVAILABLE")


# ---------------------------------------------------------------- tokens and mutual TLS


@pytest.fixture(scope="module")
def secured(service: Service, pooled_encoder, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A second server over the same store: mutual TLS and trainer/admin tokens."""
    ca = make_ca("client-test CA")
    server_cert = issue(ca, "tfllmer server", ExtendedKeyUsageOID.SERVER_AUTH)
    trainer = issue(ca, "trainer", ExtendedKeyUsageOID.CLIENT_AUTH)
    files = tmp_path_factory.mktemp("pki")
    for name, pem in (("ca.pem", ca.cert_pem), ("server.pem", server_cert.cert_pem),
                      ("server.key", server_cert.key_pem), ("client.pem", trainer.cert_pem),
                      ("client.key", trainer.key_pem)):
        (files / name).write_bytes(pem)
    with ServerThread(service.store, pooled_encoder, trainer_tokens=(TRAINER_TOKEN,),
                      admin_tokens=(ADMIN_TOKEN,), tls_cert=str(files / "server.pem"),
                      tls_key=str(files / "server.key"),
                      tls_client_ca=str(files / "ca.pem")) as server:
        yield server.address, files


def tls_client(secured: tuple[str, Path], token: str | None) -> EmbeddingClient:
    address, files = secured
    return EmbeddingClient(address, token=token, ca_cert=files / "ca.pem",
                           client_cert=files / "client.pem", client_key=files / "client.key",
                           retry=QUICK)


def test_a_trainer_token_over_mutual_tls_can_pull(secured, client: EmbeddingClient,
                                                  monkeypatch) -> None:
    monkeypatch.setenv("TFLLMER_TOKEN", TRAINER_TOKEN)  # the default, as for the admin CLI
    with tls_client(secured, token=None) as trainer:
        assert TRAINER_TOKEN not in repr(trainer)
        table = trainer.fetch_embeddings(CATALOG, dtype="float16")
    assert table.vectors.tobytes() == client.fetch_embeddings(
        CATALOG, dtype="float16").vectors.tobytes()


def test_a_call_without_token_is_unauthenticated(secured, monkeypatch) -> None:
    monkeypatch.delenv("TFLLMER_TOKEN", raising=False)
    with tls_client(secured, token=None) as anonymous, pytest.raises(ServiceError) as error:
        anonymous.fetch_embeddings(CATALOG)
    assert error.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "GetItemEmbeddings: UNAUTHENTICATED" in str(error.value)


def test_an_unknown_token_is_unauthenticated_and_never_echoed(secured) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(24)
    with tls_client(secured, token=wrong) as stranger, pytest.raises(ServiceError) as error:
        stranger.describe(CATALOG)
    assert error.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert wrong not in str(error.value)


# ---------------------------------------------------------------- a server killed mid-pull


@pytest.fixture
def server_process(fresh_redis_server, tmp_path: Path) -> Iterator[ServerProcess]:
    # A restart keeps the port: the new process replaces the killed one at the same address.
    server = ServerProcess(fresh_redis_server.url, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.kill()


def test_a_pull_interrupted_by_a_server_restart_ends_with_the_same_matrix(
        server_process: ServerProcess, fresh_redis_server, movielens_100k) -> None:
    server_process.start()
    with grpc.insecure_channel(server_process.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        ingest(stub, movielens_100k.catalog)
        pinned, other = refit(stub, 64, activate=True), refit(stub, 32, activate=False)
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, budget_s=180)
    killed = threading.Event()
    progress: list[int] = []

    def kill_after_three_chunks(received: int, total: int) -> None:
        progress.append(received)
        if len(progress) == 3:
            server_process.kill()  # SIGKILL: the stream breaks mid-way, no goodbye
            killed.set()

    with EmbeddingClient(server_process.address, token="", retry=policy,
                         deadline_s=30) as client:
        # One item per message: ~1700 messages the server is still producing at the kill.
        reference = client.fetch_embeddings(CATALOG, max_chunk_bytes=1)
        with ThreadPoolExecutor(1) as pool:
            pull = pool.submit(client.fetch_embeddings, CATALOG, max_chunk_bytes=1,
                               on_chunk=kill_after_three_chunks)
            assert killed.wait(60), "the pull never reached its third chunk"
            # While the server is down the active version moves on: the retry must still
            # ask for the version its first header named.
            RedisStore(fresh_redis_server.url).activate(CATALOG, other)
            server_process.start()
            table = pull.result(timeout=180)
    assert progress[2] < N_ITEMS and progress[3] < progress[2]  # killed mid-way, restarted
    assert progress[-1] == N_ITEMS
    assert table.version == reference.version == pinned
    assert table.item_ids == reference.item_ids
    np.testing.assert_array_equal(table.rows, reference.rows)
    assert table.vectors.tobytes() == reference.vectors.tobytes()  # bit for bit
