"""Rec-PCA on real MovieLens-100K with the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import numpy as np
import pytest

from server.recpca import FitSettings, fit_recpca
from trainer_client.cooccurrence import count_cooccurrences
from trainer_client.sequences import leave_one_out

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw_vectors(movielens_100k, pooled_encoder) -> np.ndarray:
    return pooled_encoder.encode(movielens_100k.catalog.texts)


def test_pooled_vectors_keep_the_norm_disparity_that_normalization_removes(
    raw_vectors: np.ndarray, pooled_encoder
) -> None:
    from server.encoders.sentence_transformer import SentenceTransformerEncoder

    assert raw_vectors.shape == (1682, 384) and raw_vectors.dtype == np.float32
    norms = np.linalg.norm(raw_vectors, axis=1)
    assert norms.max() / norms.min() > 1.5
    normalized = SentenceTransformerEncoder(output="normalized").encode(["Heat (1995)"])
    np.testing.assert_allclose(np.linalg.norm(normalized), 1.0, atol=1e-5)
    pooled = pooled_encoder.encode(["Heat (1995)"])[0]
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled), normalized[0], atol=1e-5)


def test_recpca_aligns_served_neighbours_with_co_occurrence_better_than_pca(
    movielens_100k, raw_vectors: np.ndarray
) -> None:
    split = leave_one_out(movielens_100k.sequences)
    counts = count_cooccurrences(split.train, len(movielens_100k.catalog), window=3)
    result = fit_recpca(raw_vectors, counts, FitSettings(dim=64, retention=0.8))
    report = result.diagnostics
    assert report.lam > 0
    assert report.retained_variance >= 0.8 * report.pca_retained_variance
    assert report.graph_tv < report.pca_graph_tv
    assert report.alignment > 1.1 * report.pca_alignment
    served = result.projection.transform(raw_vectors)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
