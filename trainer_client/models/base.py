"""What every backbone shares: the input convention, the item table and the training loss.

Input convention: a ``(batch, length)`` tensor of item rows, right-aligned (most recent item
in the last column), left-padded with the table's padding index ``n_items``. Right alignment
puts every user's latest item at the same position, so the last column is the one that
predicts the next item and positional embeddings are anchored to recency.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer_client.models.item_table import ItemTable
from trainer_client.sequences import UserSequences


class SequentialRecommender(nn.Module):
    """A backbone maps item sequences to one representation per position (``encode``); the
    item table scores representations against every item."""

    def __init__(self, item_table: ItemTable, max_len: int) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.item_table = item_table
        self.max_len = max_len

    @property
    def n_items(self) -> int:
        return self.item_table.n_items

    @property
    def padding_idx(self) -> int:
        return self.item_table.padding_idx

    @property
    def device(self) -> torch.device:
        """Where the parameters live; inputs are moved there."""
        return next(self.parameters()).device

    def encode(self, items: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` item rows -> ``(B, L, dim)``; position t sees only items up to t."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy of next-item prediction over all non-padding
        target positions. The loss lives in ``forward`` so that DDP's hooks see it."""
        matrix = self.item_table.item_matrix()
        hidden = self.encode(inputs, matrix)
        keep = targets != self.padding_idx
        logits = self.item_table.logits(hidden[keep], matrix)
        return F.cross_entropy(logits, targets[keep])

    @torch.no_grad()
    def score_next(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, n_items)`` scores of the item following each right-aligned input sequence
        (on the model's device)."""
        matrix = self.item_table.item_matrix()
        hidden = self.encode(inputs.to(self.device), matrix)[:, -1]
        return self.item_table.logits(hidden, matrix)


def right_aligned(
    sequences: UserSequences, users: np.ndarray, length: int, pad: int
) -> np.ndarray:
    """The last ``length`` items of each chosen user, right-aligned and left-padded with ``pad``
    (``(len(users), length)`` int64), built without a per-user Python loop."""
    users = np.asarray(users, dtype=np.int64)
    ends = sequences.offsets[users + 1]
    taken = np.minimum(ends - sequences.offsets[users], length)
    out = np.full((len(users), length), pad, dtype=np.int64)
    column = np.arange(length)[None, :]
    filled = column >= length - taken[:, None]
    source = ends[:, None] - length + column  # position in the flat array for filled cells
    out[filled] = sequences.items[source[filled]]
    return out
