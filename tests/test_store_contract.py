"""One contract suite for every store: each test runs on LocalStore (a fresh SQLite file), on
RedisStore (a real redis-server, flushed before the test) and on RedisStore over a real
3-node Redis Cluster (``redis+cluster://``, flushed before the test), and on LocalStore and
RedisStore with a raw file store (``local+files``, ``redis+files``: raw vectors in Arrow block
files, the manifest in the store). Blocks of 4 rows (4 or 8 rows per block file) make small
arrays cross block boundaries."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from redis.crc import key_slot

from protos.codecs import encode_vectors
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.cooccurrence_merge import counts_from_pairs
from server.errors import InvalidArgument
from server.stores import (
    ConflictError,
    CooccurrenceTotals,
    DataLostError,
    EncoderIdentity,
    IdField,
    ItemChanges,
    LocalStore,
    NewVersion,
    NotFoundError,
    PairBatch,
    RawFileStore,
    RedisStore,
    StoreUnavailableError,
    open_store,
)

ENCODER = EncoderIdentity("test-encoder", 6)
CATALOG = "ml-1m"
BLOCK_ROWS = 4


FILE_BLOCK_BYTES = BLOCK_ROWS * ENCODER.dim * 4  # 4 float32 rows, 8 float16 rows per file


@pytest.fixture(params=["local", "redis", "cluster", "local+files", "redis+files"])
def store(request, tmp_path):
    files = None
    if request.param.endswith("+files"):
        files = RawFileStore(str(tmp_path / "raw"), block_bytes=FILE_BLOCK_BYTES)
    if request.param.startswith("local"):
        store = LocalStore(tmp_path / "store.sqlite3", block_rows=BLOCK_ROWS, raw_files=files)
    elif request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        store = RedisStore(cluster.url, block_rows=BLOCK_ROWS)
        store._url_for_tests = cluster.url
    else:
        server = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()
        store = RedisStore(server.url, block_rows=BLOCK_ROWS, raw_files=files)
        store._url_for_tests = server.url
    yield store
    store.close()


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, ENCODER.dim)).astype(np.float32)


def add_items(store, ids: list[str], seed: int = 0, name: str = CATALOG) -> np.ndarray:
    """Append ``ids`` with random vectors; returns the vectors."""
    state = store.get_catalog(name) or store.create_catalog(name, ENCODER)
    new = vectors(len(ids), seed)
    changes = ItemChanges(state.item_count, ids, [f"h-{i}" for i in ids], new)
    store.commit_items(name, changes)
    return new


def new_version(n_items: int, dim: int = 3, seed: int = 0) -> NewVersion:
    rng = np.random.default_rng(seed)
    reduced = rng.standard_normal((n_items, dim)).astype(np.float32)
    return NewVersion(
        item_count=n_items,
        dim=dim,
        encoder=ENCODER,
        parameters={"lam": 0.5, "graph": {"transform": "identity", "top_k": 0}},
        diagnostics={"retained_variance": 0.9, "graph_tv": None},
        counts=CooccurrenceTotals(3, 4.5, 1),
        fit_seconds=0.25,
        components=rng.standard_normal((ENCODER.dim, dim)),
        mean=rng.standard_normal(ENCODER.dim),
        reduced=reduced / np.linalg.norm(reduced, axis=1, keepdims=True),
    )


def batch(worker: str, batch_id: str, pairs: list[tuple[int, int, float]]) -> PairBatch:
    rows, cols, weights = zip(*pairs, strict=True)
    return PairBatch(
        worker,
        batch_id,
        np.array(rows, np.uint32),
        np.array(cols, np.uint32),
        np.array(weights, np.float32),
    )


def counts_of(outcome) -> tuple[int, int]:
    """``(applied, duplicates)`` of an ``apply_pair_batches`` outcome."""
    return outcome.applied, outcome.duplicates


def expected_counts(batches: list[PairBatch], n_items: int):
    return counts_from_pairs(
        np.concatenate([b.rows for b in batches]),
        np.concatenate([b.cols for b in batches]),
        np.concatenate([b.weights for b in batches]),
        n_items,
    )


def assert_same_matrix(actual, expected) -> None:
    assert actual.shape == expected.shape
    assert (actual != expected).nnz == 0


# -- catalogs and items -------------------------------------------------------------------


def test_create_catalog_is_idempotent_and_keeps_the_first_settings(store):
    assert store.get_catalog(CATALOG) is None
    first = store.create_catalog(CATALOG, ENCODER, "<f2")
    again = store.create_catalog(CATALOG, EncoderIdentity("other", 9), "<f4")
    assert first == again == store.get_catalog(CATALOG)
    assert (first.item_count, first.active_version, first.raw_dtype) == (0, 0, "<f2")
    assert first.encoder == ENCODER


@pytest.mark.parametrize("name", ["", "{ml}", "a b", "-x", "x" * 65])
def test_bad_catalog_names_are_rejected(store, name):
    with pytest.raises(InvalidArgument, match="must be 1 to 64 characters"):
        store.create_catalog(name, ENCODER)


def test_unknown_raw_dtype_is_rejected(store):
    with pytest.raises(ValueError, match="raw dtype"):
        store.create_catalog(CATALOG, ENCODER, "<f8")


def test_rows_are_appended_in_order_and_never_move(store):
    add_items(store, ["a", "b", "c"])
    add_items(store, ["d", "e"], seed=1)
    assert store.get_catalog(CATALOG).item_count == 5
    assert store.find_rows(CATALOG, ["e", "a", "c"]).tolist() == [4, 0, 2]
    assert store.item_ids(CATALOG, 0, 100) == ["a", "b", "c", "d", "e"]
    assert store.item_ids(CATALOG, 2, 4) == ["c", "d"]
    assert store.item_ids(CATALOG, 4, 2) == []
    assert store.text_hashes(CATALOG, np.array([3, 0])) == ["h-d", "h-a"]


def test_an_id_field_is_the_wire_field_of_those_rows_ids(store):
    ids = [f"i{i}" for i in range(5)] + ["é" * 100, "x" * 512, "日本"] + [f"j{i}" for i in range(4)]
    add_items(store, ids[:7])
    add_items(store, ids[7:], seed=1)  # starts inside a block
    for start, stop in [(0, 12), (0, 100), (3, 9), (5, 6), (4, 8), (8, 8), (9, 4), (11, 40),
                        (20, 30), (-3, 2)]:
        expected = ids[max(start, 0):stop]
        field = store.item_id_field(CATALOG, start, stop)
        assert bytes(field.data) == pb.GetItemEmbeddingsResponse(
            item_ids=expected).SerializeToString()
        assert field.ends.tolist() == IdField.of(expected).ends.tolist()
        if len(expected) >= 3:  # any row range of it is a slice
            assert bytes(field.part(1, 3).data) == IdField.of(expected[1:3]).data
        assert store.item_ids(CATALOG, start, stop) == expected


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reduced_bytes_are_the_served_vectors_in_the_wire_dtype(store, dtype):
    add_items(store, [f"i{i}" for i in range(10)])
    new = new_version(10)
    store.write_version(CATALOG, new, activate=True)
    for start, stop in [(0, 10), (3, 9), (9, 20), (5, 5), (-2, 3)]:
        expected = encode_vectors(new.reduced[max(start, 0):stop], dtype)
        assert bytes(store.read_reduced_bytes(CATALOG, 1, start, stop, dtype)) == expected
    with pytest.raises(NotFoundError):
        store.read_reduced_bytes(CATALOG, 2, 0, 10, dtype)


def test_catalog_names_lists_every_catalog_sorted(store):
    assert store.catalog_names() == []
    for name in ("zeta", CATALOG, "a.b-c_9"):
        store.create_catalog(name, ENCODER)
    assert store.catalog_names() == sorted(["zeta", CATALOG, "a.b-c_9"])


def test_texts_are_kept_by_hash_and_unknown_hashes_are_none(store):
    add_items(store, ["a", "b"])
    store.put_texts(CATALOG, ["h-a", "h-b"], ["Toy Story (1995)", "Ünïcode\ntext"])
    store.put_texts(CATALOG, ["h-a"], ["Toy Story (1995)"])  # idempotent
    assert store.texts_of(CATALOG, ["h-b", "h-zz", "h-a", "h-b"]) == [
        "Ünïcode\ntext", None, "Toy Story (1995)", "Ünïcode\ntext"]
    assert store.texts_of("other", ["h-a"]) == [None]  # texts belong to their catalog


def test_find_rows_marks_unknown_ids(store):
    add_items(store, ["a", "b"])
    rows = store.find_rows(CATALOG, ["b", "zz", "a", ""])
    assert rows.dtype == np.int64
    assert rows.tolist() == [1, -1, 0, -1]


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.find_rows("nope", ["a"]),
        lambda s: s.text_hashes("nope", np.array([0])),
        lambda s: s.item_ids("nope", 0, 1),
        lambda s: s.read_raw("nope", 0, 1),
        lambda s: s.read_raw_rows("nope", np.array([0])),
        lambda s: s.commit_items("nope", ItemChanges(0, ["a"], ["h"], vectors(1))),
        lambda s: s.versions("nope"),
        lambda s: s.activate("nope", 1),
        lambda s: s.read_projection("nope", 1),
        lambda s: s.read_reduced("nope", 1, 0, 1),
        lambda s: s.write_version("nope", new_version(2), activate=True),
        lambda s: s.apply_pair_batches("nope", [batch("w", "b", [(0, 1, 1.0)])]),
        lambda s: s.read_counts("nope", 2),
        lambda s: s.cooccurrence_totals("nope"),
        lambda s: s.compact_counts("nope"),
        lambda s: s.collect_garbage("nope", 0),
    ],
)
def test_an_unknown_catalog_is_not_found(store, read):
    with pytest.raises(NotFoundError):
        read(store)


def test_commit_with_a_stale_base_count_conflicts_and_changes_nothing(store):
    raw = add_items(store, ["a", "b"])
    stale = ItemChanges(
        base_count=1,
        new_ids=["c"],
        new_text_hashes=["h-c"],
        new_vectors=vectors(1, 5),
        changed_rows=np.array([0]),
        changed_text_hashes=["h-a2"],
        changed_vectors=vectors(1, 6),
    )
    with pytest.raises(ConflictError):
        store.commit_items(CATALOG, stale)
    assert store.get_catalog(CATALOG).item_count == 2
    assert store.find_rows(CATALOG, ["c"]).tolist() == [-1]
    assert store.text_hashes(CATALOG, np.array([0])) == ["h-a"]
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, 10), raw)


@pytest.mark.parametrize(
    "changes",
    [
        ItemChanges(2, ["c", "a"], ["h", "h"], vectors(2)),  # "a" already has a row
        ItemChanges(2, ["c", "c"], ["h", "h"], vectors(2)),  # an id twice
        ItemChanges(2, ["c"], ["h"], vectors(2)),  # ragged
        ItemChanges(2, ["c"], ["h"], vectors(1)[:, :3]),  # wrong dim
        ItemChanges(2, [], [], vectors(0), np.array([2]), ["h"], vectors(1)),  # not a row yet
    ],
)
def test_an_inconsistent_upsert_is_rejected_and_changes_nothing(store, changes):
    raw = add_items(store, ["a", "b"])
    with pytest.raises(ValueError):
        store.commit_items(CATALOG, changes)
    assert store.get_catalog(CATALOG).item_count == 2
    assert store.item_ids(CATALOG, 0, 10) == ["a", "b"]
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, 10), raw)


@pytest.mark.parametrize("raw_dtype", ["<f4", "<f2"])
def test_raw_vectors_round_trip_across_blocks(store, raw_dtype):
    store.create_catalog(CATALOG, ENCODER, raw_dtype)
    ids = [f"i{i}" for i in range(11)]
    raw = np.concatenate(
        [add_items(store, ids[:3]), add_items(store, ids[3:9], 1), add_items(store, ids[9:], 2)]
    )
    expected = raw.astype(raw_dtype).astype(np.float32)
    for start, stop in [(0, 11), (3, 9), (5, 100), (-3, 2), (11, 20), (7, 7)]:
        got = store.read_raw(CATALOG, start, stop)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected[max(start, 0) : stop])
    rows = np.array([10, 0, 4, 4, 3, 7])
    np.testing.assert_array_equal(store.read_raw_rows(CATALOG, rows), expected[rows])
    assert store.read_raw_rows(CATALOG, np.array([], np.int64)).shape == (0, ENCODER.dim)


@pytest.mark.parametrize("raw_dtype", ["<f4", "<f2"])
def test_whole_tables_read_in_their_stored_dtype(store, raw_dtype, monkeypatch):
    import server.stores.redis_store as redis_store

    monkeypatch.setattr(redis_store, "_BLOCKS_PER_READ", 2)  # several reads per table
    store.create_catalog(CATALOG, ENCODER, raw_dtype)
    raw = add_items(store, [f"i{i}" for i in range(23)])
    expected = raw.astype(raw_dtype).astype(np.float32)
    for start, stop in [(0, 23), (3, 21), (5, 100), (-3, 2), (23, 30), (9, 9)]:
        got = store.read_raw_stored(CATALOG, start, stop)
        assert got.dtype in (np.dtype(raw_dtype), np.float32)
        assert got.shape == (len(expected[max(start, 0) : stop]), ENCODER.dim)
        np.testing.assert_array_equal(got.astype(np.float32), expected[max(start, 0) : stop])
    if isinstance(store, RedisStore):
        assert store.read_raw_stored(CATALOG, 0, 23).dtype == np.dtype(raw_dtype)


@pytest.mark.parametrize("raw_dtype", ["<f4", "<f2"])
def test_raw_blocks_cover_rows_up_to_the_count_asked_in_the_stored_dtype(store, raw_dtype):
    store.create_catalog(CATALOG, ENCODER, raw_dtype)
    raw = np.concatenate([add_items(store, [f"i{i}" for i in range(13)]),
                          add_items(store, [f"j{i}" for i in range(6)], 1)])
    for count in (19, 10, 40):
        blocks = store.raw_blocks(CATALOG, count)
        shown = min(count, 19)
        assert (blocks.n_rows, blocks.dim, np.dtype(blocks.dtype)) == (
            shown, ENCODER.dim, np.dtype(raw_dtype))
        bounds = blocks.block_bounds()
        assert bounds[0][0] == 0 and bounds[-1][1] == shown
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        got = np.concatenate([blocks.read_block(i) for i in range(len(bounds))])
        assert got.dtype == np.dtype(raw_dtype)
        np.testing.assert_array_equal(got, raw[:shown].astype(raw_dtype))


def test_catalog_and_rows_in_one_call(store):
    assert store.catalog_and_rows(CATALOG, ["i0"])[0] is None
    assert store.catalog_and_rows(CATALOG, ["i0"])[1].tolist() == [-1]
    add_items(store, [f"i{i}" for i in range(5)])
    state, rows = store.catalog_and_rows(CATALOG, ["i3", "nope", "i0", "i3"])
    assert state == store.get_catalog(CATALOG)
    assert rows.tolist() == [3, -1, 0, 3]
    assert store.catalog_and_rows(CATALOG, [])[1].shape == (0,)


def test_changed_rows_replace_vectors_and_hashes_in_place(store):
    raw = add_items(store, [f"i{i}" for i in range(10)])
    rows = np.array([9, 1, 4])
    changed = vectors(3, seed=7)
    count = store.commit_items(
        CATALOG,
        ItemChanges(10, ["new"], ["h-new"], vectors(1, 8), rows, ["x9", "x1", "x4"], changed),
    )
    assert count == 11
    raw[rows] = changed
    np.testing.assert_array_equal(store.read_raw(CATALOG, 0, 10), raw)
    np.testing.assert_array_equal(store.read_raw(CATALOG, 10, 11), vectors(1, 8))
    assert store.text_hashes(CATALOG, np.array([1, 4, 9, 0])) == ["x1", "x4", "x9", "h-i0"]
    assert store.find_rows(CATALOG, ["i9", "new"]).tolist() == [9, 10]


def test_a_commit_with_nothing_new_keeps_the_count(store):
    add_items(store, ["a"])
    assert store.commit_items(CATALOG, ItemChanges(1, [], [], vectors(0))) == 1


# -- versions -----------------------------------------------------------------------------


def test_versions_are_numbered_in_order_with_derived_statuses(store):
    add_items(store, [f"i{i}" for i in range(6)])
    first = store.write_version(CATALOG, new_version(6, seed=1), activate=True).record
    second = store.write_version(CATALOG, new_version(6, seed=2), activate=False).record
    third = store.write_version(CATALOG, new_version(6, seed=3), activate=True).record
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert (first.status, second.status, third.status) == ("active", "staged", "active")
    assert second.activated_at is None and third.activated_at is not None
    listed = store.versions(CATALOG)
    assert [(v.version, v.status) for v in listed] == [(1, "retired"), (2, "staged"), (3, "active")]
    assert listed[2] == third
    assert listed[0].parameters == {"lam": 0.5, "graph": {"transform": "identity", "top_k": 0}}
    assert listed[0].diagnostics == {"retained_variance": 0.9, "graph_tv": None}
    assert listed[0].counts == CooccurrenceTotals(3, 4.5, 1)
    assert (listed[0].item_count, listed[0].dim, listed[0].encoder) == (6, 3, ENCODER)
    assert store.get_catalog(CATALOG).active_version == 3


def test_activate_switches_the_pointer_and_returns_the_previous_version(store):
    add_items(store, [f"i{i}" for i in range(6)])
    store.write_version(CATALOG, new_version(6, seed=1), activate=False)
    store.write_version(CATALOG, new_version(6, seed=2), activate=True)
    assert store.activate(CATALOG, 1) == 2
    assert store.get_catalog(CATALOG).active_version == 1
    assert store.activate(CATALOG, 1) == 1  # already active: changes nothing
    assert [v.status for v in store.versions(CATALOG)] == ["active", "retired"]
    assert store.activate(CATALOG, 2) == 1  # roll forward again
    assert [v.status for v in store.versions(CATALOG)] == ["retired", "active"]


def test_the_first_activation_returns_zero(store):
    add_items(store, [f"i{i}" for i in range(4)])
    store.write_version(CATALOG, new_version(4), activate=False)
    assert store.activate(CATALOG, 1) == 0


def test_a_pinned_version_reads_bit_for_bit_after_a_newer_one_is_activated(store):
    add_items(store, [f"i{i}" for i in range(10)])
    old = new_version(10, seed=1)
    store.write_version(CATALOG, old, activate=True)
    store.write_version(CATALOG, new_version(10, dim=2, seed=2), activate=True)
    components, mean = store.read_projection(CATALOG, 1)
    assert components.dtype == mean.dtype == np.float64
    assert components.tobytes() == old.components.tobytes()
    assert mean.tobytes() == old.mean.tobytes()
    for start, stop in [(0, 10), (3, 9), (5, 50)]:
        got = store.read_reduced(CATALOG, 1, start, stop)
        assert got.dtype == np.float32
        assert got.tobytes() == old.reduced[start:stop].tobytes()
    assert store.read_reduced(CATALOG, 2, 0, 10).shape == (10, 2)


def test_an_unknown_version_is_not_found_and_changes_nothing(store):
    add_items(store, [f"i{i}" for i in range(4)])
    store.write_version(CATALOG, new_version(4), activate=True)
    for call in (
        lambda: store.activate(CATALOG, 7),
        lambda: store.read_projection(CATALOG, 7),
        lambda: store.read_reduced(CATALOG, 7, 0, 4),
        lambda: store.read_projection(CATALOG, 0),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert store.get_catalog(CATALOG).active_version == 1


def test_a_version_of_the_wrong_shape_is_rejected(store):
    add_items(store, [f"i{i}" for i in range(4)])
    bad = new_version(4)
    for fields in ({"item_count": 5}, {"dim": 2}, {"mean": np.zeros(3)}):
        with pytest.raises(ValueError):
            store.write_version(CATALOG, NewVersion(**{**bad.__dict__, **fields}), True)
    assert store.versions(CATALOG) == []


def payload_left(store, version: int) -> bool:
    """Whether any payload of ``version`` is still stored (published or not)."""
    if isinstance(store, RedisStore):
        return bool(list(store._client.scan_iter(match=f"*:v:{version}:*")))
    with sqlite3.connect(store._path) as conn:
        query = "SELECT COUNT(*) FROM {} WHERE version = ?"
        return any(
            conn.execute(query.format(table), (version,)).fetchone()[0]
            for table in ("versions", "reduced_blocks")
        )


def test_a_version_that_was_never_published_is_invisible_and_collected(store, monkeypatch):
    add_items(store, [f"i{i}" for i in range(10)])

    def crash(*args, **kwargs):
        raise RuntimeError("crash between payload and publish")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_publish", crash)
        with pytest.raises(RuntimeError, match="crash"):
            store.write_version(CATALOG, new_version(10), activate=True)
    assert store.versions(CATALOG) == []
    assert store.get_catalog(CATALOG).active_version == 0
    with pytest.raises(NotFoundError):
        store.read_reduced(CATALOG, 1, 0, 10)
    with pytest.raises(NotFoundError):
        store.activate(CATALOG, 1)
    assert payload_left(store, 1)
    assert store.collect_garbage(CATALOG, min_age_seconds=3600) == 0  # may still be running
    assert store.collect_garbage(CATALOG, min_age_seconds=0) == 1
    assert not payload_left(store, 1)
    assert store.write_version(CATALOG, new_version(10), activate=True).record.version == 2


def test_a_collected_payload_can_not_be_published(store, monkeypatch):
    add_items(store, [f"i{i}" for i in range(5)])
    write_payload = store._write_payload

    def collected_meanwhile(*args):  # a refit that outlived collect_garbage's min age
        version = write_payload(*args)
        assert store.collect_garbage(CATALOG, min_age_seconds=0) == 1
        return version

    monkeypatch.setattr(store, "_write_payload", collected_meanwhile)
    with pytest.raises(ConflictError):
        store.write_version(CATALOG, new_version(5), activate=True)
    assert store.versions(CATALOG) == []
    assert store.get_catalog(CATALOG).active_version == 0


def test_collect_garbage_leaves_published_versions_alone(store):
    add_items(store, [f"i{i}" for i in range(5)])
    new = new_version(5)
    store.write_version(CATALOG, new, activate=True)
    assert store.collect_garbage(CATALOG, min_age_seconds=0) == 0
    assert store.read_reduced(CATALOG, 1, 0, 5).tobytes() == new.reduced.tobytes()


# -- co-occurrence ------------------------------------------------------------------------


def test_a_batch_retried_three_times_counts_once(store):
    add_items(store, [f"i{i}" for i in range(5)])
    pushed = batch("w0", "b0", [(0, 1, 1.0), (1, 2, 0.5), (0, 1, 2.0)])
    results = [counts_of(store.apply_pair_batches(CATALOG, [pushed])) for _ in range(3)]
    assert results == [(1, 0), (0, 1), (0, 1)]
    assert store.cooccurrence_totals(CATALOG) == CooccurrenceTotals(3, 3.5, 1)
    assert_same_matrix(store.read_counts(CATALOG, 5), expected_counts([pushed], 5))


def test_duplicates_inside_one_call_count_once(store):
    add_items(store, [f"i{i}" for i in range(5)])
    first, other = batch("w0", "b0", [(0, 1, 1.0)]), batch("w1", "b0", [(2, 3, 1.0)])
    assert counts_of(store.apply_pair_batches(CATALOG, [first, first, other])) == (2, 1)
    assert store.cooccurrence_totals(CATALOG) == CooccurrenceTotals(2, 2.0, 2)


def test_a_call_with_a_bad_batch_applies_none_of_its_batches(store):
    add_items(store, [f"i{i}" for i in range(5)])
    good, bad = batch("w0", "b0", [(0, 1, 1.0)]), batch("w0", "b1", [(0, 5, 1.0)])
    with pytest.raises(ValueError):
        store.apply_pair_batches(CATALOG, [good, bad])
    assert store.cooccurrence_totals(CATALOG) == CooccurrenceTotals()
    assert store.read_counts(CATALOG, 5).nnz == 0
    # It was not marked as seen.
    assert counts_of(store.apply_pair_batches(CATALOG, [good])) == (1, 0)


@pytest.mark.parametrize(
    "pairs", [[(1, 1, 1.0)], [(0, 1, 0.0)], [(0, 1, -1.0)], [(0, 1, float("nan"))]]
)
def test_self_pairs_and_bad_weights_are_rejected(store, pairs):
    add_items(store, [f"i{i}" for i in range(3)])
    with pytest.raises(ValueError):
        store.apply_pair_batches(CATALOG, [batch("w", "b", pairs)])
    assert store.cooccurrence_totals(CATALOG) == CooccurrenceTotals()


def test_concurrent_pushers_give_exact_totals(store):
    n_items, workers, per_worker = 20, 8, 6
    add_items(store, [f"i{i}" for i in range(n_items)])
    rng = np.random.default_rng(0)
    batches = {}
    for w in range(workers):
        for b in range(per_worker):
            rows = rng.integers(0, n_items, 30)
            cols = (rows + rng.integers(1, n_items, 30)) % n_items
            weights = rng.integers(1, 8, 30) / 4  # exact in float32 and in any summation order
            batches[w, b] = PairBatch(
                f"w{w}", f"b{b}", rows.astype(np.uint32), cols.astype(np.uint32),
                weights.astype(np.float32),
            )  # fmt: skip
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def push(worker: int) -> None:
        try:
            for b in range(per_worker):
                for _ in range(2):  # every batch retried once
                    outcome = store.apply_pair_batches(CATALOG, [batches[worker, b]])
                    results.append(counts_of(outcome))
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)

    threads = [threading.Thread(target=push, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(a for a, _ in results) == workers * per_worker
    assert sum(d for _, d in results) == workers * per_worker
    everything = list(batches.values())
    weight = float(sum(b.weights.astype(np.float64).sum() for b in everything))
    assert store.cooccurrence_totals(CATALOG) == CooccurrenceTotals(
        workers * per_worker * 30, weight, workers * per_worker
    )
    assert_same_matrix(store.read_counts(CATALOG, n_items), expected_counts(everything, n_items))


def test_compaction_keeps_the_counts_and_the_seen_batches(store):
    add_items(store, [f"i{i}" for i in range(6)])
    pushed = [batch("w", f"b{i}", [(i % 5, 5, 0.5), (0, 1 + i % 5, 1.25)]) for i in range(10)]
    store.apply_pair_batches(CATALOG, pushed)
    before = store.read_counts(CATALOG, 6)
    totals = store.cooccurrence_totals(CATALOG)
    assert store.compact_counts(CATALOG) == 10
    assert store.compact_counts(CATALOG) == 0  # one entry left: nothing to merge
    assert_same_matrix(store.read_counts(CATALOG, 6), before)
    assert store.cooccurrence_totals(CATALOG) == totals
    assert counts_of(store.apply_pair_batches(CATALOG, pushed[:2])) == (0, 2)
    late = batch("w", "late", [(2, 3, 2.0)])
    store.apply_pair_batches(CATALOG, [late])
    assert_same_matrix(store.read_counts(CATALOG, 8), expected_counts([*pushed, late], 8))


def test_read_counts_compacts_a_long_log(store, monkeypatch):
    add_items(store, [f"i{i}" for i in range(4)])
    pushed = [batch("w", f"b{i}", [(0, 1 + i % 3, 0.75)]) for i in range(5)]
    store.apply_pair_batches(CATALOG, pushed)
    monkeypatch.setattr(store, "_compact_after", 3)
    first = store.read_counts(CATALOG, 4)
    assert store.compact_counts(CATALOG) == 0  # read_counts left a single merged entry
    assert_same_matrix(store.read_counts(CATALOG, 4), first)
    assert_same_matrix(first, expected_counts(pushed, 4))


# -- refit lock ---------------------------------------------------------------------------


def test_the_refit_lock_is_exclusive_and_released_only_by_its_owner(store):
    assert store.acquire_refit_lock(CATALOG, "a", 30)
    assert not store.acquire_refit_lock(CATALOG, "b", 30)
    assert not store.acquire_refit_lock(CATALOG, "a", 30)
    store.release_refit_lock(CATALOG, "b")  # not b's: nothing happens
    assert not store.acquire_refit_lock(CATALOG, "b", 30)
    assert not store.renew_refit_lock(CATALOG, "b", 30)
    assert store.renew_refit_lock(CATALOG, "a", 30)
    store.release_refit_lock(CATALOG, "a")
    assert store.acquire_refit_lock(CATALOG, "b", 30)
    assert store.acquire_refit_lock("other", "a", 30)  # one lock per catalog


def test_the_refit_lock_expires_after_its_lease(store):
    assert store.acquire_refit_lock(CATALOG, "a", 0.2)
    assert store.renew_refit_lock(CATALOG, "a", 0.3)
    time.sleep(0.15)
    assert not store.acquire_refit_lock(CATALOG, "b", 10)  # the renewal extended it
    time.sleep(0.25)
    assert store.acquire_refit_lock(CATALOG, "b", 10)
    assert not store.renew_refit_lock(CATALOG, "a", 10)  # a's lease is gone
    store.release_refit_lock(CATALOG, "a")
    assert not store.acquire_refit_lock(CATALOG, "c", 10)  # still b's


# -- the store is the truth, and answers from its atomic steps -----------------------------


def test_a_push_reports_what_its_own_step_applied_under_concurrent_pushers(store):
    add_items(store, [f"i{i}" for i in range(20)])
    rng = np.random.default_rng(3)
    shared = batch("shared", "b", [(0, 1, 2.0), (2, 3, 1.0)])
    outcomes, errors = [], []

    def push(worker: int) -> None:
        try:
            for b in range(15):
                n = int(rng.integers(1, 30))
                own = batch(f"w{worker}", str(b), [(k % 19, k % 19 + 1, 1.0) for k in range(n)])
                outcome = store.apply_pair_batches(CATALOG, [own, shared])
                outcomes.append(outcome)
                took_shared = outcome.applied - 1
                assert took_shared in (0, 1)
                assert outcome.pairs == n + 2 * took_shared
                assert outcome.weight == n + 3.0 * took_shared
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)

    threads = [threading.Thread(target=push, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    totals = store.cooccurrence_totals(CATALOG)
    assert sum(o.pairs for o in outcomes) == totals.pairs
    assert sum(o.weight for o in outcomes) == totals.weight
    assert sum(o.applied for o in outcomes) == totals.batches == 61
    # Each outcome's totals are the catalog's right after its step: they only grow.
    assert max(o.totals.pairs for o in outcomes) == totals.pairs


@pytest.mark.parametrize(("first", "second"), [(("w\0x", "b"), ("w", "x\0b")),
                                               (("1", "23"), ("12", "3")),
                                               (("a:", "b"), ("a", ":b"))])
def test_batch_ids_are_a_pair_never_a_joined_string(store, first, second):
    add_items(store, [f"i{i}" for i in range(3)])
    one, two = batch(*first, [(0, 1, 1.0)]), batch(*second, [(1, 2, 1.0)])
    assert counts_of(store.apply_pair_batches(CATALOG, [one])) == (1, 0)
    assert counts_of(store.apply_pair_batches(CATALOG, [two, one])) == (1, 1)
    assert counts_of(store.apply_pair_batches(CATALOG, [two])) == (0, 1)
    assert store.cooccurrence_totals(CATALOG) == CooccurrenceTotals(2, 2.0, 2)


def test_describe_is_one_snapshot_while_versions_switch(store):
    add_items(store, [f"i{i}" for i in range(6)])
    store.write_version(CATALOG, new_version(6, seed=1), activate=True)
    store.write_version(CATALOG, new_version(6, seed=2), activate=False)
    stop = threading.Event()

    def switch() -> None:
        flips = 0
        while not stop.is_set():
            store.activate(CATALOG, 1 + flips % 2)
            flips += 1

    thread = threading.Thread(target=switch)
    thread.start()
    try:
        for _ in range(300):
            snapshot = store.describe(CATALOG)
            active = [v.version for v in snapshot.versions if v.status == "active"]
            assert active == [snapshot.state.active_version]
    finally:
        stop.set()
        thread.join()
    assert store.describe("nope") is None


def test_a_publish_is_fenced_by_the_refit_lock(store):
    add_items(store, [f"i{i}" for i in range(10)])
    assert store.acquire_refit_lock(CATALOG, "slow", 0.2)
    time.sleep(0.4)  # its lease runs out ...
    with pytest.raises(ConflictError, match="lock"):  # ... even with nobody else holding it
        store.write_version(CATALOG, new_version(10), activate=True, lock_owner="slow")
    assert store.acquire_refit_lock(CATALOG, "fast", 30)  # another refit takes it
    with pytest.raises(ConflictError, match="lock"):
        store.write_version(CATALOG, new_version(10), activate=True, lock_owner="slow")
    assert store.versions(CATALOG) == [] and store.get_catalog(CATALOG).active_version == 0
    assert not payload_left(store, 1) and not payload_left(store, 2)  # dropped at once
    published = store.write_version(CATALOG, new_version(10), activate=True, lock_owner="fast")
    # Version numbers are never reused, not even the refused ones'.
    assert (published.record.version, published.previous_active) == (3, 0)
    assert [r.version for r in store.versions(CATALOG)] == [3]


def test_a_publish_reports_the_active_version_it_replaced(store, monkeypatch):
    add_items(store, [f"i{i}" for i in range(10)])
    store.write_version(CATALOG, new_version(10), activate=True)
    store.write_version(CATALOG, new_version(10, seed=1), activate=False)
    write_payload = store._write_payload

    def activation_meanwhile(*args):  # an operator's activation lands mid-refit
        version = write_payload(*args)
        store.activate(CATALOG, 2)
        return version

    monkeypatch.setattr(store, "_write_payload", activation_meanwhile)
    published = store.write_version(CATALOG, new_version(10, seed=2), activate=True)
    assert (published.record.version, published.previous_active) == (3, 2)


def lose_everything(store) -> None:
    """What a store restarted empty looks like: the data is gone under a live handle."""
    if isinstance(store, LocalStore):
        LocalStore(store._path.with_suffix(".other")).close()
        for suffix in ("-wal", "-shm"):
            Path(f"{store._path}{suffix}").unlink(missing_ok=True)
        os.replace(store._path.with_suffix(".other"), store._path)
    else:
        store._client.flushall()


def reopen(store):
    if isinstance(store, LocalStore):
        return LocalStore(store._path, block_rows=BLOCK_ROWS, raw_files=store._raw_files)
    return RedisStore(store._url_for_tests, block_rows=BLOCK_ROWS, raw_files=store._raw_files)


def test_a_catalog_the_store_lost_is_data_loss_never_an_empty_catalog(store):
    add_items(store, [f"i{i}" for i in range(6)])
    store.write_version(CATALOG, new_version(6), activate=True)
    store.probe()
    lose_everything(store)
    for call in (lambda: store.get_catalog(CATALOG), lambda: store.describe(CATALOG),
                 lambda: store.read_reduced(CATALOG, 1, 0, 6),
                 lambda: store.commit_items(CATALOG, ItemChanges(0, ["x"], ["h"], vectors(1)),
                                            create=(ENCODER, "<f4")),
                 lambda: store.apply_pair_batches(CATALOG, [batch("w", "b", [(0, 1, 1.0)])]),
                 store.probe):
        with pytest.raises(DataLostError, match="lost"):
            call()
    # Nothing was written in its place, and a handle that never saw it finds no catalog.
    fresh = reopen(store)
    assert fresh.get_catalog(CATALOG) is None
    fresh.probe()
    fresh.close()


def test_a_catalog_created_again_over_a_lost_one_is_data_loss(store):
    add_items(store, ["a", "b"])
    lose_everything(store)
    other = reopen(store)
    add_items(other, ["c"])  # another process re-creates it: same name, new epoch
    assert other.get_catalog(CATALOG).item_count == 1
    with pytest.raises(DataLostError, match="replaced"):
        store.get_catalog(CATALOG)
    other.close()


def test_a_first_upsert_creates_its_catalog_in_the_same_step_or_not_at_all(store):
    bad = ItemChanges(0, ["a", "a"], ["h", "h"], vectors(2))  # rejected by the store
    with pytest.raises(ValueError):
        store.commit_items(CATALOG, bad, create=(ENCODER, "<f2"))
    assert store.get_catalog(CATALOG) is None  # no empty catalog left behind
    assert store.commit_items(CATALOG, ItemChanges(0, ["a"], ["h"], vectors(1)),
                              create=(ENCODER, "<f2")) == 1
    state = store.get_catalog(CATALOG)
    assert (state.item_count, state.encoder, state.raw_dtype) == (1, ENCODER, "<f2")
    assert state.epoch
    # A second "first" upsert of a racing caller conflicts instead of re-creating it.
    with pytest.raises(ConflictError):
        store.commit_items(CATALOG, ItemChanges(0, ["b"], ["h"], vectors(1)),
                           create=(ENCODER, "<f2"))


def test_a_healthy_store_passes_its_probe(store):
    store.probe()
    add_items(store, ["a"])
    store.probe()


# -- backend-specific ---------------------------------------------------------------------


def populate(store, name: str) -> None:
    """Touch every kind of key: items, versions (published and not), batches, the lock."""
    add_items(store, [f"i{i}" for i in range(6)], name=name)
    store.write_version(name, new_version(6), activate=True)
    store._write_payload(name, new_version(6), time.time())
    store.apply_pair_batches(name, [batch("w", "b", [(0, 1, 1.0)])])
    store.compact_counts(name)
    store.acquire_refit_lock(name, "a", 30)


@pytest.fixture
def redis_store(redis_server):
    with redis_server.client() as client:
        client.flushall()
    store = RedisStore(redis_server.url, block_rows=BLOCK_ROWS)
    yield store
    store.close()


def test_every_redis_key_carries_its_catalog_hash_tag(redis_store):
    catalogs = ["ml-1m", "ml.100k"]
    for name in catalogs:
        populate(redis_store, name)
    keys = [key.decode() for key in redis_store._client.scan_iter()]
    assert len(keys) > 20
    for name in catalogs:
        mine = [key for key in keys if key.startswith(f"tfllmer:{{{name}}}:")]
        assert len({key_slot(key.encode()) for key in mine}) == 1
    assert all(key.startswith(tuple(f"tfllmer:{{{n}}}:" for n in catalogs)) for key in keys)


def test_redis_values_are_raw_bytes_or_json_never_pickles(redis_store):
    populate(redis_store, CATALOG)
    client = redis_store._client
    values: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key))
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"hash":
            values += client.hvals(key)
        else:
            values += client.smembers(key)
        if key.endswith((b":meta", b":versions", b":pending")):
            text = client.get(key) if kind == b"string" else None
            for value in [text] if text else client.hvals(key):
                json.loads(value)
    assert values and not any(value.startswith(b"\x80") for value in values)


def test_an_unreachable_redis_is_store_unavailable(fresh_redis_server):
    store = RedisStore(fresh_redis_server.url, socket_connect_timeout=1)
    store.create_catalog(CATALOG, ENCODER)
    fresh_redis_server.stop()
    for call in (
        store.ping,
        lambda: store.get_catalog(CATALOG),
        lambda: store.read_raw(CATALOG, 0, 1),
        lambda: store.acquire_refit_lock(CATALOG, "a", 1),
    ):
        with pytest.raises(StoreUnavailableError):
            call()
    fresh_redis_server.start()  # empty again (no persistence): the store reconnects
    store.ping()
    assert store.create_catalog("back", ENCODER).item_count == 0
    store.close()


def test_redis_store_works_with_a_password_url(fresh_redis_server):
    with fresh_redis_server.client() as client:
        client.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{fresh_redis_server.port}/0"
    store = RedisStore(url)
    store.ping()
    store.close()
    with pytest.raises(StoreUnavailableError):
        RedisStore(fresh_redis_server.url.replace("//", "//:wrong@")).ping()


def test_the_local_store_keeps_its_data_across_reopening(tmp_path):
    path = tmp_path / "store.sqlite3"
    first = LocalStore(path, block_rows=BLOCK_ROWS)
    raw = add_items(first, [f"i{i}" for i in range(6)])
    first.write_version(CATALOG, new_version(6), activate=True)
    first.close()
    again = LocalStore(path)
    assert again.get_catalog(CATALOG).active_version == 1
    np.testing.assert_array_equal(again.read_raw(CATALOG, 0, 6), raw)
    again.close()


def test_open_store_picks_the_backend_from_the_url(tmp_path, redis_server):
    for url in (str(tmp_path / "a.db"), f"sqlite:///{tmp_path}/b.db"):
        store = open_store(url)
        assert isinstance(store, LocalStore)
        store.close()
    assert (tmp_path / "b.db").exists()
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    store.ping()
    store.close()
