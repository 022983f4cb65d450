"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer_client.models.base import SequentialRecommender
from trainer_client.models.item_table import ItemTable


@dataclass(frozen=True)
class SASRecConfig:
    # Most recent items a user is represented by; the paper uses 50 on sparse data and 200 on
    # ML-1M, 50 keeps an ML-1M epoch affordable on CPUs.
    max_len: int = 50
    # Two blocks, as in the paper and RecBole; dim must be divisible by n_heads.
    n_layers: int = 2
    n_heads: int = 2
    # Feed-forward width as a multiple of dim (RecBole: inner_size 256 at hidden 64).
    ffn_multiplier: int = 4
    # The paper's 0.2 for dense data such as MovieLens (0.5 for sparse catalogs).
    dropout: float = 0.2
    # Std of the positional embeddings and linear weights (RecBole initializer_range).
    init_std: float = 0.02


class SASRec(SequentialRecommender):
    """Item + learned positional embeddings, pre-LN Transformer blocks with a causal mask that
    also hides padding keys, and a final layer norm (as in the reference implementation)."""

    def __init__(self, item_table: ItemTable, config: SASRecConfig) -> None:
        super().__init__(item_table, config.max_len)
        dim = item_table.dim
        if dim % config.n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {config.n_heads}")
        self.n_heads = config.n_heads
        self.positions = nn.Embedding(config.max_len, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                config.n_heads,
                dim_feedforward=config.ffn_multiplier * dim,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.n_layers)
        )
        self.output_norm = nn.LayerNorm(dim)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding) and not name.startswith("item_table"):
                nn.init.normal_(module.weight, std=config.init_std)

    def encode(self, items: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        # Right-aligned input: the latest item always gets the last positional embedding.
        positions = torch.arange(self.max_len - length, self.max_len, device=items.device)
        x = self.item_table.embed(items, matrix) + self.positions(positions)
        x = self.dropout(self.input_norm(x))
        mask = self._attention_mask(items)
        for block in self.blocks:
            x = block(x, src_mask=mask)
        return self.output_norm(x)

    def _attention_mask(self, items: torch.Tensor) -> torch.Tensor:
        """Additive ``(B·heads, L, L)`` mask: query t attends to keys <= t that are items.
        Each position may always attend to itself, so padding queries (whose outputs are never
        used) still see one key and cannot produce NaN that would leak through the values."""
        length = items.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        is_item = (items != self.padding_idx)[:, None, :]
        allowed = causal & (is_item | eye)
        mask = torch.zeros(allowed.shape, device=items.device).masked_fill(~allowed, -torch.inf)
        return mask.repeat_interleave(self.n_heads, dim=0)
