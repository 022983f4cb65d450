"""What the value benchmark compares (pure definitions, no I/O).

Variants are the quality benchmark's six (``bench.quality.variants``); TF-LLMER's served
version is one of several Rec-PCA formulations, chosen on validation. The reduced grid:
the learning rate and τ are fixed at values the full quality benchmark chose on validation
(``bench/results/quality_ml-100k.json``: τ = 0.2 won for every normalized variant, and
lr 3e-3 was within 0.6 % of the best lr for PCA + norm), so the compute goes to seeds and
formulations instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.quality.variants import BY_NAME, Variant

LR = 3e-3
TEMPERATURE = 0.2
WINDOW = 3
DIM = 64
MAIN, COLD = "main", "cold"  # the standard split, and the cold-start split
SERVED_PCA = "served_pca"


@dataclass(frozen=True)
class Formulation:
    """One served Rec-PCA version: retention budget ρ, graph transform, whitening p."""

    retention: float
    transform: str = "identity"
    whitening: float = 0.0

    @property
    def key(self) -> str:
        return f"recpca_rho{self.retention:g}_{self.transform}_p{self.whitening:g}"

    @property
    def label(self) -> str:
        parts = [f"ρ {self.retention:g}", self.transform]
        if self.whitening:
            parts.append(f"whitening p {self.whitening:g}")
        return ", ".join(parts)


# The reference first (today's default: ρ = 0.8, identity, no whitening), then one change
# at a time: the PPMI graph, full whitening. These are trained on validation; the half
# whitening (p = 0.5) is fitted and probed zero-shot only (2 shared cores: each trained
# candidate costs about 6 minutes).
FORMULATIONS: tuple[Formulation, ...] = (
    Formulation(0.8),
    Formulation(0.8, "ppmi"),
    Formulation(0.8, whitening=1.0),
)
PROBED_ONLY: tuple[Formulation, ...] = (Formulation(0.8, whitening=0.5),)
BY_KEY = {formulation.key: formulation for formulation in FORMULATIONS + PROBED_ONLY}
REFERENCE = FORMULATIONS[0]

PCA_NORM = BY_NAME["pca_norm"]
TF_LLMER = BY_NAME["tf_llmer"]
RAW_PCA = BY_NAME["raw_pca"]


def training_setting(variant: Variant) -> tuple[float, float | None]:
    """(lr, τ) of a variant in this benchmark: τ only where normalization is on."""
    return LR, TEMPERATURE if variant.normalize else None
