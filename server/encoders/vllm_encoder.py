"""vLLM backend for GPU hosts: ``LLM(model=…, runner="pooling").embed(texts)``.

vLLM is CUDA-only and lives in the ``gpu`` extra, so it is imported when this encoder is
built, never at module import. vLLM schedules and batches requests itself; this backend
only hands it the texts in chunks so that progress can be reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from server.encoders.base import ProgressCallback


class VLLMEncoder:
    def __init__(
        self, model: str, *, chunk_texts: int = 8192, **engine_options: Any
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                "the vllm encoder needs vLLM on a CUDA host: pip install 'tfllmer-service[gpu]'"
            ) from error
        self._model_name = model
        self._llm = LLM(model=model, runner="pooling", **engine_options)
        self._chunk = chunk_texts
        self._dim = len(self._llm.embed(["dimension probe"], use_tqdm=False)[0].outputs.embedding)

    @property
    def name(self) -> str:
        return f"vllm/{self._model_name}"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), self._chunk):
            chunk = texts[start : start + self._chunk]
            outputs = self._llm.embed(chunk, use_tqdm=False)
            out[start : start + len(chunk)] = [o.outputs.embedding for o in outputs]
            if progress is not None:
                progress(len(chunk))
        return out
