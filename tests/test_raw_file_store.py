"""The raw-vector file store (``--raw-store-url``) attacked where it can break: block files
deleted, truncated, damaged or swapped under a live catalog; upserts racing on one catalog;
commits that fail after their files were written; files a crash left unreferenced; a refit
streamed from the files against the same refit on vectors kept in the store. Each test runs
on SQLite + files and on a real Redis + files (the contract suite in
``test_store_contract.py`` runs on both as well)."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest
import scipy.linalg

from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.errors import DataLoss
from server.stores import (
    ConflictError,
    CorruptDataError,
    EncoderIdentity,
    ItemChanges,
    LocalStore,
    PairBatch,
    RawFileStore,
    RedisStore,
    StoreUnavailableError,
)
from server.stores.raw_files import FileRowBlocks
from tests.hash_encoder import HashEncoder
from tests.service_harness import ServerThread

DIM = 6
ENCODER = EncoderIdentity("test-encoder", DIM)
CATALOG = "files"
BLOCK_BYTES = 4 * DIM * 4  # 4 float32 rows per block file


def make_store(kind: str, tmp_path: Path, request, files: RawFileStore | None, *,
               fresh: bool = True):
    """A store of ``kind`` (emptied first unless ``fresh`` is False: then a second handle)."""
    if kind == "local":
        return LocalStore(tmp_path / "store.db", block_rows=4, raw_files=files)
    server = request.getfixturevalue("redis_server")
    if fresh:
        with server.client() as client:
            client.flushall()
    return RedisStore(server.url, block_rows=4, raw_files=files)


@pytest.fixture(params=["local", "redis"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def files(tmp_path) -> RawFileStore:
    return RawFileStore(str(tmp_path / "raw"), block_bytes=BLOCK_BYTES)


@pytest.fixture
def store(kind, tmp_path, request, files):
    store = make_store(kind, tmp_path, request, files)
    yield store
    store.close()


def append(store, n: int, seed: int, name: str = CATALOG, dtype: str = "<f4") -> np.ndarray:
    state = store.get_catalog(name)
    base = state.item_count if state else 0
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    ids = [f"i{row}" for row in range(base, base + n)]
    store.commit_items(name, ItemChanges(base, ids, [f"h{i}" for i in ids], vectors),
                       create=(ENCODER, dtype))
    return vectors


def block_dir(store, files: RawFileStore, name: str = CATALOG) -> Path:
    state = store.get_catalog(name)
    return Path(files.directory(name, state.epoch))


def on_disk(store, files: RawFileStore) -> set[str]:
    return {path.name for path in block_dir(store, files).iterdir()}


def referenced(store, name: str = CATALOG) -> set[str]:
    blocks = store.raw_blocks(name, store.get_catalog(name).item_count)
    assert isinstance(blocks, FileRowBlocks)
    return {entry.file for entry in blocks.entries}


def file_of_row(store, row: int) -> str:
    blocks = store.raw_blocks(CATALOG, store.get_catalog(CATALOG).item_count)
    return next(e.file for e in blocks.entries if e.start <= row < e.stop)


# -- files that were damaged under the catalog ---------------------------------------------
def test_a_deleted_block_file_is_data_loss_never_wrong_vectors(store, files):
    expected = append(store, 12, 0)
    (block_dir(store, files) / file_of_row(store, 5)).unlink()
    with pytest.raises(CorruptDataError, match="missing"):
        store.read_raw(CATALOG, 0, 12)
    with pytest.raises(CorruptDataError):
        store.read_raw_rows(CATALOG, np.array([5]))
    np.testing.assert_array_equal(store.read_raw_rows(CATALOG, np.array([9, 0])),
                                  expected[[9, 0]])  # the other blocks still read
    with pytest.raises(CorruptDataError):  # an upsert touching the lost block refuses too
        store.commit_items(CATALOG, ItemChanges(12, [], [], np.empty((0, DIM), np.float32),
                                                np.array([5]), ["x"], expected[:1]))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "swap in another block"])
def test_a_damaged_block_file_is_data_loss(store, files, damage):
    append(store, 12, 0)
    directory = block_dir(store, files)
    path = directory / file_of_row(store, 5)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        path.write_bytes(data[:300] + bytes([data[300] ^ 1]) + data[301:])
    else:  # a valid block file of the same size, of other rows
        path.write_bytes((directory / file_of_row(store, 0)).read_bytes())
    with pytest.raises(CorruptDataError) as raised:
        store.read_raw(CATALOG, 0, 12)
    assert isinstance(raised.value, DataLoss)
    blocks = store.raw_blocks(CATALOG, 12)
    with pytest.raises(CorruptDataError):
        blocks.read_block(next(i for i, (a, b) in enumerate(blocks.block_bounds()) if a <= 5 < b))


def test_a_refit_over_a_lost_block_file_is_data_loss_and_publishes_nothing(kind, tmp_path,
                                                                          request, files):
    encoder = HashEncoder(DIM)
    identity = EncoderIdentity(encoder.name, encoder.dim)
    store = make_store(kind, tmp_path, request, files)
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(40)]
    store.commit_items(CATALOG, ItemChanges(0, ids, ids, rng.standard_normal((40, DIM)).astype(
        np.float32)), create=(identity, "<f4"))
    (block_dir(store, files) / file_of_row(store, 30)).unlink()
    with ServerThread(store, encoder) as server, server.channel() as channel:
        stub = server.stub(channel)
        with pytest.raises(Exception) as raised:
            stub.RefitProjection(pb.RefitProjectionRequest(
                catalog=CATALOG, parameters=pb.FitParameters(dim=3, lam=0)), timeout=60)
        assert raised.value.code().name == "DATA_LOSS"
        assert len(raised.value.details()) < 300
        described = stub.DescribeCatalog(pb.DescribeCatalogRequest(catalog=CATALOG))
        assert list(described.versions) == []
    store.close()


# -- writers ---------------------------------------------------------------------------------
def test_concurrent_upserts_to_one_catalog_lose_no_rows(store, files):
    """Four writers append rows and change an existing one in each upsert, retrying lost
    races; replayed in commit order (every commit has its own base count), the committed
    upserts must give exactly the vectors the store reads back."""
    first = append(store, 3, 99)
    committed: list[tuple[int, np.ndarray, int, np.ndarray]] = []
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        rng = np.random.default_rng(worker)
        try:
            for step in range(8):
                while True:
                    count = store.get_catalog(CATALOG).item_count
                    ids = [f"w{worker}-{step}-{k}" for k in range(3)]
                    vectors = rng.standard_normal((3, DIM)).astype(np.float32)
                    row = int(rng.integers(0, count))
                    changed = rng.standard_normal((1, DIM)).astype(np.float32)
                    try:
                        store.commit_items(CATALOG, ItemChanges(
                            count, ids, ids, vectors, np.array([row]), [f"c{worker}-{step}"],
                            changed))
                    except ConflictError:
                        continue
                    committed.append((count, vectors, row, changed[0]))
                    break
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    expected = [*first]
    for base, vectors, row, changed in sorted(committed, key=lambda c: c[0]):
        assert base == len(expected)
        expected[row] = changed
        expected.extend(vectors)
    count = store.get_catalog(CATALOG).item_count
    assert count == len(expected) == 3 + 4 * 8 * 3
    raw = store.read_raw(CATALOG, 0, count)
    np.testing.assert_array_equal(raw, np.array(expected))
    store.collect_garbage(CATALOG, min_age_seconds=0)
    assert on_disk(store, files) == referenced(store)  # only live blocks are left
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, count), raw)


def test_a_commit_that_fails_leaves_no_block_file(store, files):
    append(store, 6, 0)
    before = on_disk(store, files)
    stale = ItemChanges(2, ["late"], ["h"], np.ones((1, DIM), np.float32))
    with pytest.raises(ConflictError):
        store.commit_items(CATALOG, stale)
    taken = ItemChanges(6, ["i0"], ["h"], np.ones((1, DIM), np.float32))  # id already has a row
    with pytest.raises(ValueError):
        store.commit_items(CATALOG, taken)
    assert on_disk(store, files) == before


def test_an_unreferenced_block_is_collected_only_after_the_age_guard(store, files):
    expected = append(store, 10, 0)
    epoch = store.get_catalog(CATALOG).epoch
    # what a process killed between writing a block and its commit leaves behind
    orphan = files.write_block(CATALOG, epoch, 10, np.ones((4, DIM), np.float32), "<f4")
    old = store.raw_blocks(CATALOG, 10)  # a refit's view from before the next commit
    append(store, 3, 1)  # appends to the short last block: that file is replaced (retired)
    store.collect_garbage(CATALOG, min_age_seconds=3600)
    assert orphan.file in on_disk(store, files)
    np.testing.assert_array_equal(  # the older view still reads: retired, not yet deleted
        np.concatenate([old.read_block(i) for i in range(len(old.block_bounds()))]), expected)
    store.collect_garbage(CATALOG, min_age_seconds=0)
    assert on_disk(store, files) == referenced(store)
    assert orphan.file not in on_disk(store, files)
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, 10), expected)


# -- what the files are ----------------------------------------------------------------------
def test_row_blocks_pickle_as_url_and_manifest_and_read_back_alike(store, files):
    expected = append(store, 30, 0, dtype="<f2").astype("<f2")
    blocks = store.raw_blocks(CATALOG, 27)
    shipped = pickle.dumps(blocks)
    assert len(shipped) < 4000 and b"ARROW1" not in shipped  # where the data is, not the data
    copy = pickle.loads(shipped)
    assert (copy.n_rows, copy.dim, copy.dtype) == (27, DIM, np.dtype("<f2"))
    assert copy.block_bounds() == blocks.block_bounds()
    assert copy.block_bounds()[-1][1] == 27
    got = np.concatenate([copy.read_block(i) for i in range(len(copy.block_bounds()))])
    assert got.dtype == np.dtype("<f2")
    np.testing.assert_array_equal(got, expected[:27])


def test_block_files_are_arrow_ipc_and_the_store_holds_no_vectors(store, files, kind):
    append(store, 9, 0)
    for path in block_dir(store, files).iterdir():
        assert path.read_bytes()[:6] == b"ARROW1"
    if kind == "redis":
        keys = {key.decode() for key in store._client.keys("*")}
        assert not [key for key in keys if ":raw:" in key]  # no raw vector blocks in Redis


def test_a_catalog_of_the_store_keeps_its_vectors_there_under_a_raw_file_store(kind, tmp_path,
                                                                               request, files):
    before = make_store(kind, tmp_path, request, None)
    expected = append(before, 5, 0, name="old")
    after = make_store(kind, tmp_path, request, files, fresh=False)
    np.testing.assert_array_equal(after.read_raw("old", 0, 5), expected)
    append(after, 2, 1, name="old")
    assert after.read_raw("old", 0, 7).shape == (7, DIM)
    append(after, 5, 2, name="new")  # a new catalog goes to the files
    with pytest.raises(StoreUnavailableError, match="raw-store-url"):
        before.read_raw("new", 0, 5)
    before.close()
    after.close()


# -- the refit ---------------------------------------------------------------------------------
def fitted(store, encoder: HashEncoder) -> tuple[np.ndarray, np.ndarray, Any]:
    with ServerThread(store, encoder) as server, server.channel() as channel:
        stub = server.stub(channel)
        reply = stub.RefitProjection(pb.RefitProjectionRequest(
            catalog=CATALOG, activate=True, parameters=pb.FitParameters(dim=4)), timeout=120)
    components, _ = store.read_projection(CATALOG, reply.version.version)
    reduced = store.read_reduced(CATALOG, reply.version.version, 0, 10**9)
    return components, reduced, reply.version


def test_a_refit_streamed_from_block_files_equals_the_refit_in_the_store(kind, tmp_path,
                                                                         request):
    encoder = HashEncoder(16)
    identity = EncoderIdentity(encoder.name, encoder.dim)
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((5, 16))
    vectors = (rng.standard_normal((700, 5)) @ basis + 0.2 * rng.standard_normal((700, 16))
               + 1.0).astype(np.float32)
    pairs = rng.integers(0, 700, size=(2, 3000))
    keep = pairs[0] != pairs[1]
    pair_batch = PairBatch("w", "b", pairs[0][keep].astype(np.uint32),
                           pairs[1][keep].astype(np.uint32),
                           rng.integers(1, 5, keep.sum()).astype(np.float32))
    results = []
    for where in ("store", "files"):
        files = (RawFileStore(str(tmp_path / "raw"), block_bytes=64 * 16 * 2)  # 11 blocks
                 if where == "files" else None)
        (tmp_path / where).mkdir()
        store = make_store(kind, tmp_path / where, request, files)
        ids = [f"i{k}" for k in range(700)]
        store.commit_items(CATALOG, ItemChanges(0, ids, ids, vectors),
                           create=(identity, "<f2"))
        store.apply_pair_batches(CATALOG, [pair_batch])
        if files is not None:
            assert len(store.raw_blocks(CATALOG, 700).block_bounds()) == 11
        results.append(fitted(store, encoder))
        store.close()
    (w_store, reduced_store, info_store), (w_files, reduced_files, info_files) = results
    sines = np.sin(scipy.linalg.subspace_angles(w_store, w_files))
    assert sines.max() <= 1e-5
    np.testing.assert_allclose(np.abs(np.sum(reduced_store * reduced_files, axis=1)), 1,
                               atol=1e-4)
    assert info_files.diagnostics.lam == pytest.approx(info_store.diagnostics.lam, rel=1e-5)
    assert info_files.diagnostics.alignment == pytest.approx(info_store.diagnostics.alignment,
                                                             abs=1e-6)
    assert info_files.diagnostics.retained_variance == pytest.approx(
        info_store.diagnostics.retained_variance, rel=1e-6)


def test_an_object_store_url_writes_reads_and_collects_through_its_pyarrow_filesystem(
        tmp_path):
    """``mock://`` is pyarrow's in-memory filesystem: the code path of ``s3://`` and ``gs://``
    (one PUT per block, listing and deleting through ``pyarrow.fs``), without a bucket."""
    files = RawFileStore("mock:///bucket/raw", block_bytes=BLOCK_BYTES)
    assert not files.is_local
    store = LocalStore(tmp_path / "store.db", raw_files=files)
    expected = append(store, 10, 0)
    changed = np.full((1, DIM), 7.0, np.float32)
    store.commit_items(CATALOG, ItemChanges(10, [], [], np.empty((0, DIM), np.float32),
                                            np.array([2]), ["x"], changed))
    expected[2] = changed[0]
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, 10), expected)
    fs, _ = files._filesystem()
    directory = files.directory(CATALOG, store.get_catalog(CATALOG).epoch)

    def listed() -> set[str]:
        return {info.base_name for info in fs.get_file_info(pafs.FileSelector(directory))}

    assert listed() > referenced(store)  # the replaced block is retired, not yet deleted
    store.collect_garbage(CATALOG, min_age_seconds=0)
    assert listed() == referenced(store)
    fs.delete_file(f"{directory}/{file_of_row(store, 2)}")
    with pytest.raises(CorruptDataError, match="missing"):
        store.read_raw(CATALOG, 0, 10)
    store.close()


def test_a_raw_store_that_refuses_writes_fails_the_health_probe(kind, tmp_path, request):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    healthy = make_store(kind, tmp_path, request, RawFileStore(str(tmp_path / "raw")))
    healthy.probe()
    broken = make_store(kind, tmp_path, request, RawFileStore(str(blocked / "raw")),
                        fresh=False)
    with pytest.raises(StoreUnavailableError, match="refuses writes"):
        broken.probe()
    healthy.close()
    broken.close()
