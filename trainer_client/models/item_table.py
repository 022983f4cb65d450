"""The item table shared by every backbone: how item vectors are made and how items are scored.

Rows ``0..n_items-1`` are real items (the catalog's row indices, as served); the padding
index is ``n_items``, a separate all-zero row that is never scored, so no real item has to
give up index 0 for padding.

Cold-start path (``restrict_to_seen``): items that never occur in training get no gradient
except as softmax negatives, so a trainable row of such an item is only ever pushed away
from every user and its score collapses. With the path on, training excludes those items
from the softmax, and evaluation scores them through a map from served vectors to trained
rows, fitted by ridge regression on the items that were trained
(``trainer_client.cold_start``). A frozen table with an adapter already maps every item the
same way, so there only the softmax exclusion applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer_client.cold_start import map_unseen_rows

TableMode = Literal["id", "init", "frozen"]
TABLE_MODES: tuple[TableMode, ...] = ("id", "init", "frozen")


@dataclass(frozen=True)
class ItemTableConfig:
    # id: random init (ID baseline); init: the given vectors as a trainable init;
    # frozen: the given vectors fixed, a trainable linear adapter maps them to the model dim.
    mode: TableMode = "id"
    # Item-embedding normalization during training (TF-LLMER): unit-norm item vectors and
    # sequence representation, logits = cosine / temperature. None = on exactly when the
    # table comes from given vectors (init, frozen); off = plain dot-product logits.
    normalize: bool | None = None
    # Cosine logits live in [-1, 1]; softmax over thousands of items at that scale cannot put
    # much mass on one item, so the loss stalls near log(n_items). 1/0.1 = 10 gives a logit
    # range of 20 (e^20 dominates any catalog size here), while much smaller values make the
    # softmax nearly one-hot and gradients spiky. It belongs in the validation tuning grid.
    temperature: float = 0.1
    # Std of the random ID init (mode "id"); RecBole's SASRec/GRU4Rec initializer range.
    init_std: float = 0.02

    def verify(self) -> None:
        if self.mode not in TABLE_MODES:
            raise ValueError(f"mode must be one of {TABLE_MODES}, got {self.mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")

    @property
    def normalized(self) -> bool:
        return self.mode != "id" if self.normalize is None else self.normalize


class ItemTable(nn.Module):
    """Item vectors (one of three modes) plus the scoring rule (cosine/τ or dot product)."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        config: ItemTableConfig,
        vectors: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        config.verify()
        if n_items < 1 or dim < 1:
            raise ValueError(f"n_items and dim must be >= 1, got {n_items}, {dim}")
        self.n_items, self.dim, self.config = n_items, dim, config
        self.normalized = config.normalized
        self.adapter: nn.Linear | None = None
        # Cold-start path: which items training never saw (None = path off).
        self.unseen: torch.Tensor | None = None
        if config.mode == "id":
            if vectors is not None:
                raise ValueError("mode 'id' takes no item vectors")
            self.weight = nn.Parameter(torch.randn(n_items, dim) * config.init_std)
            return
        given = _checked_vectors(vectors, n_items, config.mode)
        if config.mode == "init":
            if given.shape[1] != dim:
                raise ValueError(
                    f"mode 'init' needs vectors of the model dim {dim}, got {given.shape[1]}; "
                    "use mode 'frozen' (adapter) or serve vectors of that dim"
                )
            self.weight = nn.Parameter(given.clone())
            self.register_buffer("served_vectors", given, persistent=False)
        else:
            self.register_buffer("frozen_vectors", given)
            self.adapter = nn.Linear(given.shape[1], dim)

    @property
    def padding_idx(self) -> int:
        return self.n_items

    def restrict_to_seen(self, seen: np.ndarray | None) -> None:
        """Turn the cold-start path on for the items where ``seen`` is False (None: off)."""
        if seen is None:
            self.unseen = None
            return
        seen = np.asarray(seen, dtype=bool)
        if seen.shape != (self.n_items,):
            raise ValueError(f"seen must be a ({self.n_items},) mask, got {seen.shape}")
        if not seen.any():
            raise ValueError("the cold-start path needs at least one seen item")
        self.unseen = torch.from_numpy(~seen).to(self._device())

    def item_matrix(self) -> torch.Tensor:
        """``(n_items, dim)`` vectors the model sees, unit-norm when normalization is on.
        Out of training, unseen items' trainable rows are replaced by mapped served vectors."""
        matrix = self.weight if self.adapter is None else self.adapter(self.frozen_vectors)
        if self.unseen is not None and not self.training and hasattr(self, "served_vectors"):
            matrix = map_unseen_rows(self.get_buffer("served_vectors"), matrix, self.unseen)
        return F.normalize(matrix, dim=-1) if self.normalized else matrix

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, items: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Look up item indices; the padding index maps to a zero vector."""
        matrix = self.item_matrix() if matrix is None else matrix
        padded = torch.cat([matrix, matrix.new_zeros(1, self.dim)])
        return F.embedding(items, padded)

    def logits(self, hidden: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item for each representation in ``hidden`` (``(..., dim)``)."""
        matrix = self.item_matrix() if matrix is None else matrix
        if self.normalized:
            scores = F.normalize(hidden, dim=-1) @ matrix.T / self.config.temperature
        else:
            scores = hidden @ matrix.T
        if self.unseen is not None and self.training:  # never a negative while unseen
            scores = scores.masked_fill(self.unseen.to(scores.device), -torch.inf)
        return scores


def _checked_vectors(vectors: np.ndarray | None, n_items: int, mode: str) -> torch.Tensor:
    if vectors is None:
        raise ValueError(f"mode {mode!r} needs item vectors")
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n_items:
        raise ValueError(f"item vectors must be ({n_items}, d), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("item vectors contain NaN or inf")
    return torch.from_numpy(array.copy())
