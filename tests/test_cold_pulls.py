"""Whole-catalog pulls of a version the server has not loaded ("cold") are served from the
bytes the store keeps: vectors as stored in the pulled dtype (Redis keeps a float16 copy of
every version), ids as their wire entries (Redis keeps them in id blocks). The client must
get exactly what the server sends when it holds the version in memory, on Redis and on the
local store, and for catalogs and versions written before those copies existed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.service.catalog_service import CatalogService
from server.stores import (
    CatalogStore,
    CooccurrenceTotals,
    EncoderIdentity,
    ItemChanges,
    LocalStore,
    NewVersion,
    RedisStore,
)
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread
from trainer_client.client import EmbeddingClient

CATALOG, DIM, BLOCK_ROWS, ITEMS = "cold", 8, 16, 1000
ENCODER = EncoderIdentity(HashEncoder(DIM).name, DIM)
BUDGET = 2048  # small chunks: long ids split them, several groups per pull
SETTINGS = {"pull_buffer_bytes": 64 * 1024}


def item_ids(start: int, stop: int) -> list[str]:
    """Short, long (split the chunks) and non-ASCII ids."""
    return [f"item-{row}-" + ("é" * 150 if row % 7 == 0 else "") for row in range(start, stop)]


def add_items(store: CatalogStore, start: int, stop: int) -> None:
    ids = item_ids(start, stop)
    vectors = np.random.default_rng(start).standard_normal((len(ids), DIM)).astype(np.float32)
    store.commit_items(CATALOG, ItemChanges(start, ids, [f"h-{i}" for i in ids], vectors),
                       create=(ENCODER, "<f4"))


def write_version(store: CatalogStore, items: int) -> None:
    rng = np.random.default_rng(7)
    reduced = rng.standard_normal((items, DIM)).astype(np.float32)
    store.write_version(CATALOG, NewVersion(
        item_count=items, dim=DIM, encoder=ENCODER, parameters={"lam": 0.0},
        diagnostics={}, counts=CooccurrenceTotals(), fit_seconds=0.1,
        components=rng.standard_normal((DIM, DIM)), mean=np.zeros(DIM),
        reduced=reduced / np.linalg.norm(reduced, axis=1, keepdims=True)), activate=True)


def created_before_id_blocks(store: RedisStore, name: str) -> None:
    """Create ``name`` as the store did before id blocks: a header without "id_blocks"."""
    store.create_catalog(name, ENCODER)
    key = store._key(name, "meta")
    header = json.loads(store._client.get(key))
    del header["id_blocks"]
    store._client.set(key, json.dumps(header))


def written_before_float16_copies(store: RedisStore, name: str, version: int) -> None:
    """Make ``version`` what the store wrote before float16 copies: no flag, no red16 keys."""
    client, key = store._client, store._key(name, "versions")
    record = json.loads(client.hget(key, str(version)))
    del record["reduced_float16"]
    client.hset(key, str(version), json.dumps(record))
    client.unlink(*client.keys(store._key(name, "v", version, "red16", "*")))


@pytest.fixture(params=["redis", "local", "redis-before"])
def opened(request, redis_server, tmp_path: Path) -> Iterator[object]:
    """Opens a new handle on one store holding CATALOG (``ITEMS`` items, one version)."""
    if request.param == "local":
        def opened() -> CatalogStore:
            return LocalStore(tmp_path / "store.db", block_rows=BLOCK_ROWS)
    else:
        with redis_server.client() as client:
            client.flushall()

        def opened() -> CatalogStore:
            return RedisStore(redis_server.url, block_rows=BLOCK_ROWS)
    store = opened()
    if request.param == "redis-before":
        created_before_id_blocks(store, CATALOG)
    add_items(store, 0, ITEMS // 2)
    add_items(store, ITEMS // 2, ITEMS)  # the second commit starts inside a block
    write_version(store, ITEMS)
    if request.param == "redis-before":
        written_before_float16_copies(store, CATALOG, 1)
    store.close()
    yield opened


def pull(store: CatalogStore, warm: bool, **fields) -> list[pb.GetItemEmbeddingsResponse]:
    """A whole-catalog pull from a new server; ``warm``: after a look-up loaded the version
    into the server's memory (then every chunk is built from its float32 vectors)."""
    with ServerThread(store, HashEncoder(DIM), **SETTINGS) as server, \
            server.channel() as channel:
        stub = server.stub(channel)
        if warm:
            list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
                catalog=CATALOG, item_ids=["item-1-"]), timeout=30))
        return list(stub.GetItemEmbeddings(pb.GetItemEmbeddingsRequest(
            catalog=CATALOG, max_chunk_bytes=BUDGET, **fields), timeout=30))


def spy_on_float32_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The positions of every chunk read as float32 vectors (``CatalogService.chunk``)."""
    seen: list[tuple[int, int]] = []
    chunk = CatalogService.chunk

    def spied(self, name, selection, start, stop):
        seen.append((start, stop))
        return chunk(self, name, selection, start, stop)

    monkeypatch.setattr(CatalogService, "chunk", spied)
    return seen


@pytest.mark.parametrize("dtype", [pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16])
@pytest.mark.parametrize("omit_item_ids", [False, True])
def test_a_cold_pull_sends_exactly_the_messages_of_a_warm_one(
        opened, monkeypatch, dtype: int, omit_item_ids: bool) -> None:
    warm = pull(opened(), warm=True, dtype=dtype, omit_item_ids=omit_item_ids)
    float32_chunks = spy_on_float32_chunks(monkeypatch)
    cold = pull(opened(), warm=False, dtype=dtype, omit_item_ids=omit_item_ids)
    assert float32_chunks == []  # every chunk came from the stored bytes
    assert cold == warm
    assert sum(len(m.rows) // 4 for m in cold) == ITEMS
    assert all(m.ByteSize() + 1024 <= BUDGET for m in cold[1:])
    rows_per_chunk = (BUDGET - 1024) // (DIM * (4 if dtype == pb.DTYPE_FLOAT32 else 2) + 48)
    split = len(cold) > -(-ITEMS // rows_per_chunk)
    assert split == (not omit_item_ids)  # long ids split chunks to fit the budget


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_client_decodes_a_cold_pull_as_a_warm_one(opened, dtype: str) -> None:
    tables = []
    for warm in (True, False):
        with ServerThread(opened(), HashEncoder(DIM), **SETTINGS) as server, \
                EmbeddingClient(server.address, token="") as client:
            if warm:
                client.fetch_embeddings(CATALOG, ids=["item-1-"])
            tables.append(client.fetch_embeddings(CATALOG, dtype=dtype,
                                                  max_chunk_bytes=BUDGET))
    warm_table, cold_table = tables
    assert cold_table.item_ids == warm_table.item_ids == item_ids(0, ITEMS)
    np.testing.assert_array_equal(cold_table.rows, np.arange(ITEMS))
    assert cold_table.vectors.tobytes() == warm_table.vectors.tobytes()


def test_rows_past_the_fit_and_dim_prefixes_keep_the_float32_path(opened, monkeypatch) -> None:
    store = opened()
    add_items(store, ITEMS, ITEMS + 40)  # added after the fit: through the projection
    warm = pull(store, warm=True)
    float32_chunks = spy_on_float32_chunks(monkeypatch)
    cold = pull(opened(), warm=False)
    assert cold == warm and sum(len(m.rows) // 4 for m in cold) == ITEMS + 40
    assert float32_chunks and max(stop for _, stop in float32_chunks) == ITEMS + 40
    assert min(start for start, _ in float32_chunks) > 0  # the groups before: stored bytes
    float32_chunks.clear()
    assert pull(opened(), warm=False, dim=4) == pull(opened(), warm=True, dim=4)
    assert float32_chunks and float32_chunks[0][0] == 0


# -- the Redis layouts --------------------------------------------------------------------


@pytest.fixture
def redis_store(redis_server) -> Iterator[RedisStore]:
    with redis_server.client() as client:
        client.flushall()
    store = RedisStore(redis_server.url, block_rows=BLOCK_ROWS)
    yield store
    store.close()


def keys_of(store: RedisStore, *parts: object) -> list[bytes]:
    return list(store._client.scan_iter(match=store._key(CATALOG, *parts)))


def test_a_new_catalog_keeps_id_blocks_and_versions_a_float16_copy(redis_store) -> None:
    add_items(redis_store, 0, 40)
    write_version(redis_store, 40)
    assert not keys_of(redis_store, "rowids")
    assert len(keys_of(redis_store, "idwire", "*")) == len(keys_of(redis_store, "idends", "*"))
    assert len(keys_of(redis_store, "v", 1, "red16", "*")) == 3  # 40 rows, blocks of 16
    reduced = redis_store.read_reduced(CATALOG, 1, 0, 40)
    stored = redis_store._client.get(redis_store._key(CATALOG, "v", 1, "red16", 2))
    assert stored == reduced[32:].astype("<f2").tobytes()


def test_a_catalog_created_before_id_blocks_keeps_its_rowids_list(redis_store) -> None:
    created_before_id_blocks(redis_store, CATALOG)
    add_items(redis_store, 0, 20)
    add_items(redis_store, 20, 45)
    assert not keys_of(redis_store, "idwire", "*")
    assert redis_store._client.llen(redis_store._key(CATALOG, "rowids")) == 45
    assert redis_store.item_ids(CATALOG, 10, 30) == item_ids(10, 30)
    field = redis_store.item_id_field(CATALOG, 10, 30)
    assert bytes(field.data) == pb.GetItemEmbeddingsResponse(
        item_ids=item_ids(10, 30)).SerializeToString()
    assert redis_store.find_rows(CATALOG, ["item-44-"]).tolist() == [44]


def test_a_version_written_before_its_float16_copy_is_converted(redis_store) -> None:
    add_items(redis_store, 0, 40)
    write_version(redis_store, 40)
    written_before_float16_copies(redis_store, CATALOG, 1)
    reduced = redis_store.read_reduced(CATALOG, 1, 0, 40)
    assert redis_store.read_reduced_bytes(CATALOG, 1, 5, 37, "float16") == (
        reduced[5:37].astype("<f2").tobytes())
