"""The six compared variants and the tuning grid they share (pure definitions, no I/O).

A variant fixes where the item table comes from and whether normalization is on; the grid
fixes what may be tuned on validation. Every variant gets the same learning-rate grid, every
normalized variant the same temperature grid, and TF-LLMER additionally its Rec-PCA settings
(retention budget ρ, graph transform, co-occurrence window).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

# Keys of item tables in the prepared data (see bench.quality.prepare).
RAW_PCA = "raw_pca"
RAW_PCA_RESCALED = "raw_pca_rescaled"
SERVED_PCA = "served_pca"


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    # None: a random ID table; otherwise the prepared table key ("recpca" = tuned Rec-PCA).
    table: str | None
    normalize: bool


VARIANTS: tuple[Variant, ...] = (
    Variant("id", "1 ID", None, False),
    Variant("id_norm", "2 ID + norm", None, True),
    Variant("raw_pca", "3 LLM-raw-PCA", RAW_PCA, False),
    Variant("raw_pca_rescaled", "4 LLM-raw-PCA rescaled", RAW_PCA_RESCALED, False),
    Variant("pca_norm", "5 PCA + norm", SERVED_PCA, True),
    Variant("tf_llmer", "6 TF-LLMER", "recpca", True),
)
BY_NAME = {variant.name: variant for variant in VARIANTS}
TF_LLMER = BY_NAME["tf_llmer"]


@dataclass(frozen=True)
class RecPcaSetting:
    """One served Rec-PCA version: retention budget, graph transform, co-occurrence window."""

    retention: float
    transform: str  # "identity" | "log1p"
    window: int

    @property
    def key(self) -> str:
        return f"recpca_rho{self.retention:g}_{self.transform}_w{self.window}"


@dataclass(frozen=True)
class Grid:
    lrs: tuple[float, ...]
    temperatures: tuple[float, ...]
    retentions: tuple[float, ...]
    transforms: tuple[str, ...]
    windows: tuple[int, ...]

    def recpca_settings(self) -> list[RecPcaSetting]:
        return [RecPcaSetting(*combo)
                for combo in product(self.retentions, self.transforms, self.windows)]

    def training_settings(self, variant: Variant) -> list[tuple[float, float | None]]:
        """(lr, τ) pairs of a variant; τ only where normalization is on."""
        temperatures = self.temperatures if variant.normalize else (None,)
        return list(product(self.lrs, temperatures))

    @property
    def defaults(self) -> tuple[float, float, RecPcaSetting]:
        """The first value of each axis: TF-LLMER's Rec-PCA search runs at these."""
        return self.lrs[0], self.temperatures[0], self.recpca_settings()[0]


# The full grid: 2 learning rates x 3 temperatures; for Rec-PCA 3 budgets x 2 transforms x
# 2 windows. The first entry of each axis is the project's default.
FULL_GRID = Grid(
    lrs=(1e-3, 3e-3),
    temperatures=(0.1, 0.05, 0.2),
    retentions=(0.8, 0.6, 0.9),
    transforms=("identity", "log1p"),
    windows=(3, 10),
)
# --quick: the defaults only, no tuning.
QUICK_GRID = Grid(lrs=(1e-3,), temperatures=(0.1,), retentions=(0.8,),
                  transforms=("identity",), windows=(3,))
