"""Byte formats shared by the stores: arrays and pair batches as little-endian bytes behind
a small JSON header, and the row-block arithmetic of vector tables.

Only these formats are ever read back; nothing is unpickled, and a header may only name
dtypes from a fixed allow-list, so a corrupted or hostile value cannot make a reader build
arbitrary objects.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np

from server.stores.base import CorruptDataError

P = ParamSpec("P")
T = TypeVar("T")

_DTYPES = frozenset({"<f8", "<f4", "<f2", "<u4"})
_LENGTH = struct.Struct("<I")


def _pack(header: dict, *payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_LENGTH.pack(len(head)), head, *payload))


def decoding(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Turn any failure to decode a stored value into ``CorruptDataError``."""

    def decorate(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return function(*args, **kwargs)
            except CorruptDataError:
                raise
            except (ValueError, TypeError, KeyError, IndexError, struct.error) as error:
                raise CorruptDataError(f"a stored {what} does not decode: {error}") from error

        return wrapper

    return decorate


def _unpack(blob: bytes) -> tuple[dict, memoryview]:
    (size,) = _LENGTH.unpack_from(blob)
    header = json.loads(bytes(blob[_LENGTH.size : _LENGTH.size + size]))
    return header, memoryview(blob)[_LENGTH.size + size :]


def _dtype(name: str) -> np.dtype:
    if name not in _DTYPES:
        raise ValueError(f"stored dtype {name!r} is not one of {sorted(_DTYPES)}")
    return np.dtype(name)


def pack_array(array: np.ndarray) -> bytes:
    """``array`` as ``{"dtype", "shape"}`` header + C-order little-endian bytes."""
    dtype = _dtype(array.dtype.newbyteorder("<").str)
    data = np.ascontiguousarray(array, dtype=dtype)
    return _pack({"dtype": dtype.str, "shape": list(data.shape)}, data.tobytes())


@decoding("array")
def unpack_array(blob: bytes) -> np.ndarray:
    header, payload = _unpack(blob)
    shape = tuple(int(s) for s in header["shape"])
    return np.frombuffer(payload, dtype=_dtype(header["dtype"])).reshape(shape).copy()


def pack_pairs(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> bytes:
    """Unordered pairs as ``{"n", "weight_dtype"}`` + rows ``<u4`` + cols ``<u4`` + weights
    (``<f4`` as pushed by workers, ``<f8`` for sums written by compaction)."""
    weight_dtype = _dtype("<f8" if np.asarray(weights).dtype == np.float64 else "<f4")
    n = len(rows)
    if not len(cols) == len(weights) == n:
        raise ValueError("rows, cols and weights must have the same length")
    return _pack(
        {"n": n, "weight_dtype": weight_dtype.str},
        np.ascontiguousarray(rows, dtype="<u4").tobytes(),
        np.ascontiguousarray(cols, dtype="<u4").tobytes(),
        np.ascontiguousarray(weights, dtype=weight_dtype).tobytes(),
    )


@decoding("pair batch")
def unpack_pairs(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, weights)`` as uint32, uint32, float64."""
    header, payload = _unpack(blob)
    n = int(header["n"])
    rows = np.frombuffer(payload, dtype="<u4", count=n)
    cols = np.frombuffer(payload, dtype="<u4", count=n, offset=4 * n)
    weights = np.frombuffer(payload, dtype=_dtype(header["weight_dtype"]), count=n, offset=8 * n)
    return rows, cols, weights.astype(np.float64)


def pair_arrays(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of many blobs, concatenated (one ``counts_from_pairs`` call merges them)."""
    parts = [unpack_pairs(blob) for blob in blobs]
    if not parts:
        return np.empty(0, np.uint32), np.empty(0, np.uint32), np.empty(0, np.float64)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]


def row_runs(rows: np.ndarray, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``rows`` as maximal runs ``[starts[i], stops[i])`` of consecutive rows
    that never cross a block boundary: one read per run instead of one per row."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return rows, rows
    breaks = np.flatnonzero((np.diff(rows) != 1) | (rows[1:] % block_rows == 0)) + 1
    starts = rows[np.r_[0, breaks]]
    stops = rows[np.r_[breaks - 1, len(rows) - 1]] + 1
    return starts, stops
