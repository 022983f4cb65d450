"""Packing vectors and pair blocks for the wire: little-endian bytes, never repeated floats.

Pure functions shared by the servicer and the trainer client, so both sides agree on the
byte layout byte for byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2"),
}


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
