"""Backbones looked up by name, each with a dataclass of commented defaults (RecBole style)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from trainer_client.models.base import SequentialRecommender
from trainer_client.models.gru4rec import GRU4Rec, GRU4RecConfig
from trainer_client.models.item_table import ItemTable, ItemTableConfig
from trainer_client.models.sasrec import SASRec, SASRecConfig

MODELS: dict[str, tuple[Callable[..., SequentialRecommender], type]] = {
    "sasrec": (SASRec, SASRecConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
}


def default_config(name: str) -> Any:
    return _entry(name)[1]()


def build_model(
    name: str,
    n_items: int,
    dim: int,
    config: Any | Mapping[str, Any] | None = None,
    *,
    table: ItemTableConfig | None = None,
    item_vectors: np.ndarray | None = None,
) -> SequentialRecommender:
    """Build backbone ``name``. ``config`` is its config dataclass, or a mapping of overrides
    of its defaults (unknown keys are rejected, so a typo never silently keeps a default)."""
    model_class, config_class = _entry(name)
    if config is None or isinstance(config, Mapping):
        config = _with_overrides(config_class, dict(config or {}))
    elif not isinstance(config, config_class):
        raise TypeError(f"{name} takes a {config_class.__name__}, got {type(config).__name__}")
    item_table = ItemTable(n_items, dim, table or ItemTableConfig(), item_vectors)
    return model_class(item_table, config)


def _entry(name: str) -> tuple[Callable[..., SequentialRecommender], type]:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(MODELS)}") from None


def _with_overrides(config_class: type, overrides: dict[str, Any]) -> Any:
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"{config_class.__name__} has no field(s) {unknown}; known: {sorted(known)}"
        )
    return config_class(**overrides)
