"""Sequential recommender backbones behind one look-up-by-name interface."""

from trainer_client.models.base import SequentialRecommender, right_aligned
from trainer_client.models.gru4rec import GRU4Rec, GRU4RecConfig
from trainer_client.models.item_table import TABLE_MODES, ItemTable, ItemTableConfig
from trainer_client.models.registry import MODELS, build_model, default_config
from trainer_client.models.sasrec import SASRec, SASRecConfig

__all__ = [
    "MODELS",
    "TABLE_MODES",
    "GRU4Rec",
    "GRU4RecConfig",
    "ItemTable",
    "ItemTableConfig",
    "SASRec",
    "SASRecConfig",
    "SequentialRecommender",
    "build_model",
    "default_config",
    "right_aligned",
]
