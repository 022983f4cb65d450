"""Batch encoding on Ray Data, behind the same ``Encoder`` interface.

Encoding a catalog of millions of texts is a batch-inference job: Ray Data spreads the texts
over a pool of actors, each of which loads the model once (``factory``) and encodes the
batches it is given; results come back in input order. On GPU nodes the factory builds the
vLLM backend (``server.encoders.vllm_encoder.VllmEncoder`` with ``num_gpus=1`` per actor:
the pattern of vLLM's own Ray Data batch inference), elsewhere any other backend: the
actors only ever see ``Encoder.encode``. The vLLM wheel cannot be installed on the CPU
machines this project is tested on, so it is tested with sentence-transformers actors.

``name`` and ``dim`` come from one actor (the model is never loaded in the caller). Needs
the ``ray-data`` extra (Ray with pandas); imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from server.encoders.base import Encoder, ProgressCallback


class _EncodeBatches:
    """One Ray Data actor: a model loaded once, then batches of ``{"row", "text"}``."""

    def __init__(self, factory: Callable[[], Encoder]) -> None:
        self.encoder = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode([str(text) for text in batch["text"]])
        return {"row": batch["row"], "vector": vectors}


def _identity(factory: Callable[[], Encoder]) -> tuple[str, int]:
    encoder = factory()
    return encoder.name, encoder.dim


class RayDataEncoder:
    """``encode`` as a Ray Data job over ``concurrency`` actors of ``factory``'s encoder.

    ``batch_size`` texts go to an actor at a time; ``num_gpus`` (and ``num_cpus``) are each
    actor's resources. Ray is started on first use when it is not running (``address``:
    ``ray://…``, ``auto``, or None for ``RAY_ADDRESS`` / a local Ray)."""

    def __init__(self, factory: Callable[[], Encoder], *, concurrency: int = 1,
                 batch_size: int = 256, num_cpus: float = 1, num_gpus: float = 0,
                 address: str | None = None) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be >= 1")
        self.factory = factory
        self.concurrency, self.batch_size = concurrency, batch_size
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.address = address
        self._identity: tuple[str, int] | None = None

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address)
        return ray

    def _ask_identity(self) -> tuple[str, int]:
        if self._identity is None:
            ray = self._ray()
            probe = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_identity)
            self._identity = ray.get(probe.remote(self.factory))
        return self._identity

    @property
    def name(self) -> str:
        return self._ask_identity()[0]

    @property
    def dim(self) -> int:
        return self._ask_identity()[1]

    def encode(self, texts: Sequence[str], progress: ProgressCallback | None = None
               ) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ray = self._ray()
        dataset = ray.data.from_items(
            [{"row": row, "text": text} for row, text in enumerate(texts)])
        encoded = dataset.map_batches(
            _EncodeBatches, fn_constructor_args=(self.factory,), batch_size=self.batch_size,
            concurrency=self.concurrency, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
            batch_format="numpy")
        seen = np.zeros(len(texts), dtype=bool)
        for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
            rows = np.asarray(batch["row"], dtype=np.int64)
            out[rows] = batch["vector"]
            seen[rows] = True
            if progress is not None:
                progress(len(rows))
        if not seen.all():  # never silently return uninitialized rows
            raise RuntimeError(f"Ray Data returned {int(seen.sum())} of {len(texts)} vectors")
        return out
