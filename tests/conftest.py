"""Shared fixtures: the real encoder model and real MovieLens-100K, loaded once per session."""

from __future__ import annotations

import pytest

from tests.redis_server import (  # noqa: F401 (fixtures)
    fresh_redis_server,
    redis_cluster,
    redis_server,
)
from trainer_client.datasets import dataset_dir, fetch
from trainer_client.recbole_data import RecBoleDataset, load_recbole


@pytest.fixture(scope="session")
def movielens_100k() -> RecBoleDataset:
    fetch("ml-100k")
    return load_recbole(dataset_dir("ml-100k"))


@pytest.fixture(scope="session")
def pooled_encoder():
    from server.encoders.sentence_transformer import SentenceTransformerEncoder

    return SentenceTransformerEncoder(output="pooled")
