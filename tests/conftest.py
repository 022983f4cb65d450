"""Shared fixtures: real Redis servers, the real encoder model and real MovieLens-100K, each
started or loaded once per session (``fresh_redis_server``: once per test)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from harness.redis_server import RedisClusterServer, RedisServer
from trainer_client.datasets import dataset_dir, fetch
from trainer_client.recbole_data import RecBoleDataset, load_recbole


def _server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the whole session (flush it, do not stop it)."""
    yield from _server()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A server of this test's own, to stop, kill or restart."""
    yield from _server()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A 3-node Redis Cluster for the session (flush it, do not stop it)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server or redis-cli is not installed")
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def movielens_100k() -> RecBoleDataset:
    fetch("ml-100k")
    return load_recbole(dataset_dir("ml-100k"))


@pytest.fixture(scope="session")
def pooled_encoder():
    from server.encoders.sentence_transformer import SentenceTransformerEncoder

    return SentenceTransformerEncoder(output="pooled")
