"""The raw matrix as a sequence of row blocks: what a streamed or sharded fit reads.

A catalog's raw vectors can be far larger than one process's memory (10M × 4096 float16 is
82 GB). A fit that only ever holds a block or two at a time needs the matrix in a form that
says where its blocks are and reads one on request; this protocol is that form. A file store
implements it over its block files, and an in-memory array is adapted by ``ArrayRowBlocks``.

Sources given to a distributed engine are pickled into its tasks, so an implementation holds
where the data is (a URL and a manifest), never the data itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RowBlocks(Protocol):
    """An ``n_rows × dim`` matrix stored as contiguous row blocks of any sizes."""

    @property
    def n_rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> np.dtype: ...

    def block_bounds(self) -> Sequence[tuple[int, int]]:
        """``[start, stop)`` of each block, in order, covering ``0 .. n_rows`` without gaps."""
        ...

    def read_block(self, index: int) -> np.ndarray:
        """Block ``index`` as a ``(stop − start, dim)`` array in the stored dtype."""
        ...


class ArrayRowBlocks:
    """An in-memory array (or memmap) cut into blocks of ``block_rows``."""

    def __init__(self, array: np.ndarray, block_rows: int) -> None:
        if array.ndim != 2:
            raise ValueError("row blocks need a 2-D array (rows × dim)")
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.array = array
        self.block_rows = block_rows

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[0])

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def block_bounds(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.block_rows, self.n_rows))
                for start in range(0, self.n_rows, self.block_rows)]

    def read_block(self, index: int) -> np.ndarray:
        start, stop = self.block_bounds()[index]
        return np.asarray(self.array[start:stop])


class CoarserRowBlocks:
    """Consecutive blocks of ``source`` joined into blocks of at least ``min_rows`` rows (the
    last may be shorter). A streamed fit's graph pass reads about half of all blocks per
    block, so the number of blocks, not their size, sets how often the matrix is read:
    a fit can use blocks coarser than the store writes. Pickles as the source + grouping."""

    def __init__(self, source: RowBlocks, min_rows: int) -> None:
        if min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {min_rows}")
        self.source = source
        self.groups: list[tuple[int, int]] = []  # [first, last) source blocks
        self.bounds: list[tuple[int, int]] = []
        first, start = 0, 0
        inner = list(source.block_bounds())
        for index, (_, stop) in enumerate(inner):
            if stop - start >= min_rows or index == len(inner) - 1:
                self.groups.append((first, index + 1))
                self.bounds.append((start, stop))
                first, start = index + 1, stop

    @property
    def n_rows(self) -> int:
        return self.source.n_rows

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def block_bounds(self) -> list[tuple[int, int]]:
        return list(self.bounds)

    def read_block(self, index: int) -> np.ndarray:
        first, last = self.groups[index]
        parts = [self.source.read_block(inner) for inner in range(first, last)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
