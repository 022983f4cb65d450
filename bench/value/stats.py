"""Paired comparisons of a variant against the reference (pure numpy).

Both sides are evaluated on the same users with the same seeds, so the comparison is
paired twice: per seed (the differences of the seed means) and per user (the bootstrap
resamples users, the unit a product team ships to, and keeps each resampled user's values
of both sides together).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def paired_ratio(ours: np.ndarray, theirs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """``ours`` and ``theirs`` are (seeds, users) per-user values of paired seeds. Returns
    the ratio of means, its bootstrap 95 % interval over users, and the per-seed
    differences of means."""
    ours, theirs = np.atleast_2d(ours), np.atleast_2d(theirs)
    if ours.shape != theirs.shape or ours.shape[1] == 0:
        raise ValueError(f"paired arrays must share a non-empty shape, got {ours.shape} "
                         f"and {theirs.shape}")
    per_user_ours, per_user_theirs = ours.mean(0), theirs.mean(0)
    users = len(per_user_ours)
    rng = np.random.default_rng(seed)
    ours_means, theirs_means = np.empty(samples), np.empty(samples)
    for start in range(0, samples, 250):
        picks = rng.integers(0, users, (min(250, samples - start), users))
        ours_means[start : start + len(picks)] = per_user_ours[picks].mean(1)
        theirs_means[start : start + len(picks)] = per_user_theirs[picks].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # inf where a resample's reference mean is 0; nan (left out) where both are 0
        ratios = ours_means / theirs_means
    differences = ours_means - theirs_means
    return {
        "ratio": _finite(per_user_ours.mean() / per_user_theirs.mean())
        if per_user_theirs.mean() > 0 else None,
        "ci95": [_finite(v) for v in np.nanpercentile(ratios, [2.5, 97.5])],
        "means": [float(per_user_ours.mean()), float(per_user_theirs.mean())],
        "difference": float(per_user_ours.mean() - per_user_theirs.mean()),
        "difference_ci95": [float(v) for v in np.percentile(differences, [2.5, 97.5])],
        "seed_differences": (ours.mean(1) - theirs.mean(1)).tolist(),
        "seeds": int(ours.shape[0]), "users": int(users),
    }


def _finite(value: float) -> float | None:
    """JSON has no infinity: a ratio over a zero reference is reported as None."""
    return float(value) if np.isfinite(value) else None


def seed_bootstrap_ratio(ours: np.ndarray, theirs: np.ndarray,
                         samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
                         ) -> dict[str, Any]:
    """Ratio of means of a run-level quantity (epochs to quality) with a bootstrap over
    paired seeds (users do not apply: it is one number per run)."""
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ours), (samples, len(ours)))
    ratios = ours[picks].mean(1) / np.maximum(theirs[picks].mean(1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return {"ratio": float(ours.mean() / max(theirs.mean(), 1e-12)),
            "means": [float(ours.mean()), float(theirs.mean())],
            "ci95": [float(low), float(high)],
            "seed_differences": (ours - theirs).tolist(), "seeds": len(ours)}
