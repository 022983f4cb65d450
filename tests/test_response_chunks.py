"""GetItemEmbeddings messages serialized by the servicer (vector block appended to the other
fields, or every field from stored bytes) are byte for byte what protobuf serializes, and
split to fit the byte budget; ids' wire entries are protobuf's item_ids field."""

from __future__ import annotations

import numpy as np
import pytest

from protos.codecs import encode_vectors, item_id_entries, item_ids_of
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.service.servicer import EmbeddingServicer
from server.stores import IdField


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


IDS = ([f"id-{i}-é" for i in range(300)] + ["x" * 512, "日本語", "a"]
       + [f"{'y' * 200}{i}" for i in range(40)])


def test_item_id_entries_parse_as_the_item_ids_field() -> None:
    data, ends = item_id_entries(IDS)
    assert list(pb.GetItemEmbeddingsResponse.FromString(data).item_ids) == IDS
    assert data == pb.GetItemEmbeddingsResponse(item_ids=IDS).SerializeToString()
    for i in (0, 1, 299, 300, 301, len(IDS) - 1):  # each row's entry is a slice
        entry = data[ends[i - 1] if i else 0 : ends[i]]
        assert list(pb.GetItemEmbeddingsResponse.FromString(entry).item_ids) == [IDS[i]]
    assert item_ids_of(data) == IDS and item_id_entries([])[0] == b""


@pytest.mark.parametrize("garbage", [b"\x22\x05ab", b"\x22\x02\xff\xfe"])
def test_bytes_that_are_not_item_id_entries_are_refused(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="not item id entries"):
        item_ids_of(garbage)


@pytest.mark.parametrize(("start", "count", "dtype", "with_ids", "budget"), [
    (0, 1, "float32", True, 1 << 30), (5, 300, "float16", True, 1 << 30),
    (200, 343, "float32", True, 8192), (1 << 21, 64, "bfloat16", False, 2048),
    (7, 343, "float16", True, 1),
])
def test_messages_from_stored_bytes_are_the_messages_of_the_same_rows(
        start: int, count: int, dtype: str, with_ids: bool, budget: int) -> None:
    vectors = np.random.default_rng(count).standard_normal((count, 16)).astype(np.float32)
    ids = IDS[:count] if with_ids else []
    field = IdField.of(ids) if with_ids else None
    block = memoryview(encode_vectors(vectors, dtype))
    stored = EmbeddingServicer._stored_messages(start, field, block, count, budget)
    expected = EmbeddingServicer._messages(start, np.arange(start, start + count), ids,
                                           vectors, dtype, budget)
    assert stored == expected
