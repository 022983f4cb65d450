"""Packing vectors and pair blocks for the wire: little-endian bytes, never repeated floats.

Pure functions shared by the server and the trainer client, so both sides agree on the
byte layout byte for byte (ARCHITECTURE §7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from protos.tfllmer.v1 import embedding_service_pb2 as pb

WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2"),
}
# PushCooccurrenceRequest's rows, cols and weights blocks.
ROW_DTYPE, WEIGHT_DTYPE = np.dtype("<u4"), np.dtype("<f4")
_ROW_LIMIT = 2**32  # rows travel as uint32
_LENGTH_DELIMITED = 2  # protobuf wire type of bytes, strings and messages


def to_bfloat16_bits(vectors: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounded to nearest even like torch does."""
    bits = np.ascontiguousarray(vectors, dtype="<f4").view("<u4")
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype("<u2")


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype("<u4") << np.uint32(16)).view("<f4")


def encode_vectors(vectors: np.ndarray, dtype: str) -> bytes:
    """Row-major little-endian bytes of float32 ``vectors`` in the wire ``dtype``."""
    return bytes(vector_buffer(vectors, dtype))


def vector_buffer(vectors: np.ndarray, dtype: str) -> memoryview:
    """The bytes of ``encode_vectors`` as a buffer, without the copy into a ``bytes``
    object when ``vectors`` already has the wire layout."""
    if dtype == "bfloat16":
        array = to_bfloat16_bits(vectors)
    else:
        array = np.ascontiguousarray(vectors, dtype=WIRE_DTYPES[dtype])
    return array.reshape(-1).view(np.uint8).data


def decode_vectors(block: bytes, dtype: str, dim: int) -> np.ndarray:
    """The inverse of ``encode_vectors`` as float32, shape (rows, dim)."""
    raw = np.frombuffer(block, dtype=WIRE_DTYPES[dtype])
    values = from_bfloat16_bits(raw) if dtype == "bfloat16" else raw.astype(np.float32)
    return values.reshape(-1, dim)


def bytes_per_value(dtype: str) -> int:
    return WIRE_DTYPES[dtype].itemsize


def wire_pairs(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs in the wire's layout (``<u4``, ``<u4``, ``<f4``); a batch's blocks are their
    bytes. Refuses what the wire cannot carry: arrays of different lengths, and rows a cast
    to uint32 would silently wrap into other items (whether a row exists in the catalog is
    the server's check)."""
    if not len(rows) == len(cols) == len(weights):
        raise ValueError("rows, cols and weights must have the same length")
    for name, values in (("rows", rows), ("cols", cols)):
        if len(values) and (np.min(values) < 0 or np.max(values) >= _ROW_LIMIT):
            raise ValueError(f"{name} must be item rows in [0, 2**32)")
    return (np.asarray(rows, ROW_DTYPE), np.asarray(cols, ROW_DTYPE),
            np.asarray(weights, WEIGHT_DTYPE))


def decode_pairs(
    rows: bytes, cols: bytes, weights: bytes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays of a batch's blocks (read-only views, no copy); ValueError unless
    the three blocks are equally long multiples of 4 bytes."""
    lengths = {len(rows), len(cols), len(weights)}
    if len(lengths) != 1 or next(iter(lengths)) % 4:
        raise ValueError("rows, cols and weights must be equally long multiples of 4 bytes")
    return (
        np.frombuffer(rows, ROW_DTYPE),
        np.frombuffer(cols, ROW_DTYPE),
        np.frombuffer(weights, WEIGHT_DTYPE),
    )


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_header(number: int, size: int) -> bytes:
    """Tag and length of a length-delimited field of ``size`` bytes: the header plus the
    bytes are that field on the wire, so a server can append stored bytes to a serialized
    message without building the field in protobuf."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(size)


def item_id_entries(ids: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """``ids`` as GetItemEmbeddingsResponse's ``item_ids`` field on the wire (one entry per
    id: tag, length, UTF-8), and where each entry ends (int64 byte offsets). Entries of
    consecutive rows concatenate to the field of those rows, so a store can keep them and
    a server cut any row range's field out of them without touching each id again."""
    # protobuf writes the entries (in C); only their lengths are computed here: a tag byte,
    # the varint of the id's UTF-8 length (one byte per 7 bits), the UTF-8 bytes.
    data = pb.GetItemEmbeddingsResponse(item_ids=list(ids)).SerializeToString()
    sizes = np.fromiter(map(len, map(str.encode, ids)), np.int64, len(ids))
    entry = sizes + 2
    for bits in (7, 14, 21, 28):
        entry += sizes >= 1 << bits
    return data, np.cumsum(entry)


def item_ids_of(entries: bytes) -> list[str]:
    """The ids of ``item_id_entries``' bytes, parsed by protobuf (UTF-8 checked); ValueError
    for bytes that are not such entries."""
    try:
        message = pb.GetItemEmbeddingsResponse.FromString(entries)
    except DecodeError as error:
        raise ValueError(f"not item id entries: {error}") from error
    return list(message.item_ids)
