"""GRU4Rec (Hidasi et al., 2016; RecBole's variant): a GRU over the item sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from trainer_client.models.base import SequentialRecommender
from trainer_client.models.item_table import ItemTable


@dataclass(frozen=True)
class GRU4RecConfig:
    # Same history window as SASRec so that backbones see the same data.
    max_len: int = 50
    # RecBole defaults: one layer, hidden 128 (2 x embedding 64), embedding dropout 0.3.
    hidden_size: int = 128
    n_layers: int = 1
    dropout: float = 0.3


class GRU4Rec(SequentialRecommender):
    """Embedding dropout, a GRU, and a dense layer back to the item dim."""

    def __init__(self, item_table: ItemTable, config: GRU4RecConfig) -> None:
        super().__init__(item_table, config.max_len)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            item_table.dim, config.hidden_size, config.n_layers, batch_first=True, bias=False
        )
        self.dense = nn.Linear(config.hidden_size, item_table.dim)

    def encode(self, items: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        # The GRU must start at each user's first item, not run over the left padding: shift
        # rows to left-aligned, pack, run, and shift the outputs back to right alignment.
        length = items.shape[1]
        lengths = (items != self.padding_idx).sum(1)
        shift = length - lengths
        column = torch.arange(length, device=items.device)
        to_left = (column[None, :] + shift[:, None]) % length
        x = self.dropout(self.item_table.embed(items.gather(1, to_left), matrix))
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.gru(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=length)
        to_right = (column[None, :] - shift[:, None]) % length
        output = output.gather(1, to_right[:, :, None].expand_as(output))
        return self.dense(output)
