"""A deterministic stand-in encoder for tests that exercise the service, not the model: each
text maps to a pseudo-random vector seeded by its SHA-256 (same text, same vector)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


class HashEncoder:
    def __init__(self, dim: int = 16) -> None:
        self._dim = dim

    @property
    def name(self) -> str:
        return f"test-hash:{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str], progress=None) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self._dim) + 0.5
        if progress is not None:
            progress(len(texts))
        return out
