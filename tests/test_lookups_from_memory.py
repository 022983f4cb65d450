"""Look-ups by id served from the process's memory: each call reads only the catalog header
(active pointer, epoch) from the store, ids map to rows through an in-process cache, and
nothing the cache holds outlives what it describes (another version activated elsewhere, new
items committed by another replica, an unknown id, a catalog replaced under the same name).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.server_process import refit, synthetic_catalog
from server.service.row_cache import RowCache
from tests.promise_servers import served
from trainer_client.client import EmbeddingClient, ServiceError

CATALOG = "looked-up"


# -- the cache itself (pure logic) ---------------------------------------------------------
def test_cached_rows_are_returned_and_unknown_ids_are_misses() -> None:
    cache = RowCache(100)
    assert cache.rows("c", ["a"]) is None
    cache.add("c", "e1", ["a", "b", "x"], np.array([3, 5, -1]))
    epoch, rows = cache.rows("c", ["b", "x", "a"])  # type: ignore[misc]
    assert epoch == "e1" and rows.tolist() == [5, -1, 3]


def test_a_catalog_seen_with_another_epoch_starts_empty() -> None:
    cache = RowCache(100)
    cache.add("c", "e1", ["a", "b"], np.array([0, 1]))
    cache.add("c", "e2", ["z"], np.array([0]))  # lost and re-created: row 0 is "z" now
    epoch, rows = cache.rows("c", ["a", "z"])  # type: ignore[misc]
    assert epoch == "e2" and rows.tolist() == [-1, 0]
    cache.add("d", "e", [str(i) for i in range(99)], np.arange(99))  # the bound still holds
    assert cache.rows("c", ["z"]) is not None  # 1 + 99 entries fit exactly


def test_the_least_recently_used_catalog_is_dropped_to_stay_in_bounds() -> None:
    cache = RowCache(4)
    cache.add("old", "e", ["a", "b"], np.array([0, 1]))
    cache.add("new", "e", ["a", "b"], np.array([0, 1]))
    cache.rows("old", ["a"])  # "old" is now the most recently used
    cache.add("third", "e", ["a", "b"], np.array([0, 1]))
    assert cache.rows("new", ["a"]) is None
    assert cache.rows("old", ["a"]) is not None and cache.rows("third", ["b"]) is not None


def test_a_catalog_larger_than_the_bound_keeps_what_fits() -> None:
    cache = RowCache(3)
    cache.add("big", "e", ["a", "b", "c", "d", "e"], np.arange(5))
    _, rows = cache.rows("big", ["a", "b", "c", "d", "e"])  # type: ignore[misc]
    assert (rows >= 0).sum() == 3
    cache.add("big", "e", ["f"], np.array([5]))
    _, rows = cache.rows("big", ["f"])  # type: ignore[misc]
    assert rows.tolist() == [-1]


def test_a_disabled_cache_holds_nothing() -> None:
    cache = RowCache(0)
    cache.add("c", "e", ["a"], np.array([0]))
    found = cache.rows("c", ["a"])
    assert found is None or found[1].tolist() == [-1]


def test_one_caller_at_a_time_fills_a_catalog_that_fits() -> None:
    cache = RowCache(10)
    assert cache.claim_fill("c", "e1", 5)
    assert not cache.claim_fill("c", "e1", 5)  # another caller: already under way
    cache.fill("c", "e1", list("abcde"))
    cache.end_fill("c")
    assert cache.rows("c", ["e", "a"])[1].tolist() == [4, 0]  # type: ignore[index]
    assert not cache.claim_fill("c", "e1", 5)  # held whole
    assert cache.claim_fill("c", "e1", 6)  # items added since
    cache.end_fill("c")
    assert cache.claim_fill("c", "e2", 5)  # re-created: what is held is not its rows
    cache.end_fill("c")
    assert not cache.claim_fill("big", "e", 11)  # larger than the bound: per id only
    cache.add("other", "e", list("xyz"), np.arange(3))
    cache.fill("c", "e2", list("abcdefgh"))  # the least recently used catalog makes room
    assert cache.rows("other", ["x"]) is None
    assert cache.rows("c", ["h"])[1].tolist() == [7]  # type: ignore[index]


# -- a real server process --------------------------------------------------------------
def _ids(rows: range | list[int]) -> list[str]:
    return [f"{CATALOG}-{row}" for row in rows]


def _command_calls(env) -> dict[str, int]:
    with env.redis.client() as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def test_a_warm_lookup_reads_only_the_catalog_header_from_redis(tmp_path: Path) -> None:
    with served("redis", tmp_path) as env:
        synthetic_catalog(env.store, CATALOG, 500)  # type: ignore[arg-type]
        refit(env.stub, CATALOG, dim=8)
        ids = _ids(range(0, 500, 7))
        with EmbeddingClient(env.server.address, token="") as client:
            first = client.fetch_embeddings(CATALOG, ids=ids)  # fills the caches
            before = _command_calls(env)
            repeated = [client.fetch_embeddings(CATALOG, ids=ids) for _ in range(20)]
            after = _command_calls(env)
        delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        assert delta.get("mget") == 20, delta
        for command in ("hmget", "getrange", "get", "lrange", "multi", "exec", "hget"):
            assert delta.get(command, 0) <= 2, (command, delta)  # ≤ 2: the health probe's GET
        for table in repeated:
            assert table.item_ids == ids and table.rows.tolist() == first.rows.tolist()
            np.testing.assert_array_equal(table.vectors, first.vectors)


def test_after_one_miss_lookups_of_other_ids_read_only_the_header(tmp_path: Path) -> None:
    with served("redis", tmp_path) as env:
        synthetic_catalog(env.store, CATALOG, 2000)  # type: ignore[arg-type]
        refit(env.stub, CATALOG, dim=8)
        expected = env.store.read_reduced(CATALOG, 1, 0, 2000)
        with EmbeddingClient(env.server.address, token="") as client:
            client.fetch_embeddings(CATALOG, ids=_ids([3]))  # one miss: the catalog's ids
            before = _command_calls(env)
            picks = [np.random.default_rng(seed).choice(2000, 64, replace=False)
                     for seed in range(10)]
            tables = [client.fetch_embeddings(CATALOG, ids=_ids(pick.tolist()))
                      for pick in picks]
            after = _command_calls(env)
        delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        assert delta.get("mget") == 10, delta
        for command in ("hmget", "getrange", "get", "lrange", "evalsha", "hget"):
            assert delta.get(command, 0) <= 2, (command, delta)  # ≤ 2: the health probe's GET
        for pick, table in zip(picks, tables, strict=True):
            assert table.rows.tolist() == pick.tolist()
            np.testing.assert_array_equal(table.vectors, expected[pick])


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_lookups_follow_a_version_activated_by_another_replica(kind: str,
                                                               tmp_path: Path) -> None:
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, CATALOG, 300)  # type: ignore[arg-type]
        first = refit(env.stub, CATALOG, dim=8)
        second = refit(env.stub, CATALOG, dim=4, activate=False)
        ids = _ids([5, 250, 17])
        with EmbeddingClient(env.server.address, token="") as client:
            for _ in range(2):  # warm
                assert client.fetch_embeddings(CATALOG, ids=ids).version == first
            env.store.activate(CATALOG, second)  # written by another process
            table = client.fetch_embeddings(CATALOG, ids=ids)
            pinned = client.fetch_embeddings(CATALOG, ids=ids, version=first)
        assert table.version == second and table.dim == 4
        np.testing.assert_allclose(
            table.vectors, env.store.read_reduced(CATALOG, second, 0, 300)[[5, 250, 17]])
        assert pinned.version == first and pinned.dim == 8


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_lookups_after_another_replica_adds_items_and_of_unknown_ids(kind: str,
                                                                    tmp_path: Path) -> None:
    with served(kind, tmp_path) as env:
        synthetic_catalog(env.store, CATALOG, 200)  # type: ignore[arg-type]
        version = refit(env.stub, CATALOG, dim=8)
        with EmbeddingClient(env.server.address, token="") as client:
            client.fetch_embeddings(CATALOG, ids=_ids(range(200)))  # every row cached
            synthetic_catalog(env.store, CATALOG, 260)  # type: ignore[arg-type]
            mixed = _ids([3, 230, 199, 259])
            table = client.fetch_embeddings(CATALOG, ids=mixed)
            with pytest.raises(ServiceError) as unknown:
                client.fetch_embeddings(CATALOG, ids=[*_ids([1]), "never-ingested"])
            again = client.fetch_embeddings(CATALOG, ids=mixed)
        assert table.version == version and table.rows.tolist() == [3, 230, 199, 259]
        # Rows past the fit are projected from their raw vectors; the fitted ones are stored.
        stored = env.store.read_reduced(CATALOG, version, 0, 200)
        np.testing.assert_allclose(table.vectors[[0, 2]], stored[[3, 199]])
        assert np.allclose(np.linalg.norm(table.vectors, axis=1), 1, atol=1e-5)
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND
        np.testing.assert_array_equal(again.vectors, table.vectors)
