"""GetItemEmbeddings messages serialized by the servicer (vector block appended to the other
fields) are byte for byte what protobuf serializes, and split to fit the byte budget."""

from __future__ import annotations

import numpy as np
import pytest

from protos.codecs import encode_vectors
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.service.servicer import EmbeddingServicer


@pytest.mark.parametrize(("n", "dim", "dtype"), [
    (1, 4, "float32"), (300, 64, "float16"), (5000, 64, "float32"), (7, 3, "bfloat16"),
    (40, 384, "float32"), (0, 8, "float32"),
])
def test_serialized_messages_are_what_protobuf_writes(n: int, dim: int, dtype: str) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    rows, ids = np.arange(n) + 17, [f"id-{i}-é" for i in range(n)]
    (data, items, vector_bytes), = EmbeddingServicer._messages(
        5, rows, ids, vectors, dtype, 1 << 30)
    expected = pb.GetItemEmbeddingsResponse(
        start=5, rows=rows.astype("<u4").tobytes(), item_ids=ids,
        vectors=encode_vectors(vectors, dtype))
    assert data == expected.SerializeToString()
    assert (items, vector_bytes) == (n, len(expected.vectors))


def test_messages_are_halved_until_they_fit_the_budget() -> None:
    vectors = np.ones((64, 16), np.float32)
    ids = [f"{'x' * 200}{i}" for i in range(64)]  # long ids: the vectors alone would fit
    messages = EmbeddingServicer._messages(0, np.arange(64), ids, vectors, "float32", 8192)
    assert len(messages) > 1 and sum(items for _, items, _ in messages) == 64
    starts = [pb.GetItemEmbeddingsResponse.FromString(data).start for data, _, _ in messages]
    assert starts == sorted(starts) and starts[0] == 0
    assert all(len(data) + 1024 <= 8192 for data, _, _ in messages)
