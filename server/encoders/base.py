"""The one interface every encoder backend implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

ProgressCallback = Callable[[int], None]  # called with the number of texts just encoded


class Encoder(Protocol):
    """Turns item texts into raw float32 vectors (one row per text, in input order)."""

    @property
    def name(self) -> str:
        """Identity recorded with every vector and version (backend, model, output kind)."""
        ...

    @property
    def dim(self) -> int: ...

    def encode(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> np.ndarray: ...
