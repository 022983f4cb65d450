"""The one interface every encoder backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Encoder(Protocol):
    """Turns item texts into raw float32 vectors (one row per text)."""

    @property
    def name(self) -> str:
        """Identity recorded with every vector and version (model and output kind)."""
        ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...
