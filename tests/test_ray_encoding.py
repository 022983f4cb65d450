"""Batch encoding on Ray Data (``RayDataEncoder``) with sentence-transformers actors, the
CPU stand-in for vLLM actors on GPU nodes: the same vectors as the in-process encoder, in
input order, with progress, from two actors that each load the model once. Starts a local
Ray and loads the model in each actor, so it runs with ``-m ray``."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest

from server.encoders.sentence_transformer import SentenceTransformerEncoder

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.ray

from server.encoders.ray_data import RayDataEncoder  # noqa: E402  (needs ray)

FACTORY = functools.partial(SentenceTransformerEncoder, output="pooled", device="cpu")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_data_encoding_equals_the_in_process_encoder_in_input_order(
        local_ray, pooled_encoder) -> None:
    texts = [f"Item {i}: a film about {'space ' * (i % 7)}and {'time ' * (i % 3)}" for i in
             range(300)]
    texts[17] = "A"  # short and long texts mixed, as in real catalogs
    done: list[int] = []
    encoder = RayDataEncoder(FACTORY, concurrency=2, batch_size=64)
    vectors = encoder.encode(texts, progress=done.append)
    expected = pooled_encoder.encode(texts)
    assert encoder.name == pooled_encoder.name and encoder.dim == pooled_encoder.dim
    assert vectors.shape == (300, pooled_encoder.dim) and sum(done) == 300
    cosine = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(
        expected, axis=1)
    assert cosine.min() > 0.99999  # batch composition changes padding, not the vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1),
                               np.linalg.norm(expected, axis=1), rtol=1e-4)
    assert encoder.encode([]).shape == (0, pooled_encoder.dim)


def test_bad_pool_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        RayDataEncoder(FACTORY, concurrency=0)
