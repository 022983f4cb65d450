"""The selection protocol: tune on validation, then train the reported seeds.

1. Every variant trains its (lr, τ) grid on the tuning seeds; TF-LLMER meanwhile trains each
   Rec-PCA setting (ρ, graph transform, window) at the default lr and τ.
2. TF-LLMER trains its (lr, τ) grid on the Rec-PCA setting chosen in step 1.
3. Each variant trains its chosen setting on the final seeds (disjoint from the tuning
   seeds); only these runs' test metrics are reported.

Choices maximize the mean validation NDCG@10 over the tuning seeds; the test split never
takes part in a choice. A variant with a single candidate setting is not tuned at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.quality.runs import RunPool, RunSpec
from bench.quality.variants import TF_LLMER, VARIANTS, Grid, Variant

FINAL_SEED_BASE = 100  # final seeds 100, 101, ...: never a tuning seed


@dataclass(frozen=True)
class Choice:
    table: str | None
    lr: float
    temperature: float | None
    valid_ndcg10: float | None  # mean over the tuning seeds; None when nothing was tuned


def tuning_specs(variant: Variant, grid: Grid, seeds: list[int], table: str | None = None,
                 settings: list[tuple[float, float | None]] | None = None) -> list[RunSpec]:
    table = variant.table if table is None else table
    return [RunSpec(variant.name, table, lr, tau, seed, "tune")
            for lr, tau in (settings or grid.training_settings(variant)) for seed in seeds]


def choose(results: dict[str, dict[str, Any]], specs: list[RunSpec]) -> Choice:
    """The (table, lr, τ) with the best mean validation NDCG@10 over seeds; ties keep the
    first in grid order (the defaults come first)."""
    settings = {(spec.table, spec.lr, spec.temperature) for spec in specs}
    if len(settings) == 1:
        return Choice(*settings.pop(), None)
    scores: dict[tuple, list[float]] = {}
    for spec in specs:
        score = results[spec.key]["best_valid"].get("NDCG@10", 0.0)
        scores.setdefault((spec.table, spec.lr, spec.temperature), []).append(score)
    best = max(scores, key=lambda setting: sum(scores[setting]) / len(scores[setting]))
    return Choice(*best, sum(scores[best]) / len(scores[best]))


def final_specs(variant: Variant, choice: Choice, n_seeds: int) -> list[RunSpec]:
    return [RunSpec(variant.name, choice.table, choice.lr, choice.temperature,
                    FINAL_SEED_BASE + k, "final") for k in range(n_seeds)]


def run_protocol(pool: RunPool, grid: Grid, tune_seeds: list[int], final_seeds: int,
                 variants: tuple[Variant, ...] = VARIANTS,
                 ) -> tuple[dict[str, Choice], dict[str, list[dict[str, Any]]],
                            dict[str, dict[str, Any]]]:
    """Returns the choice per variant, its final runs, and every tuning run by key."""
    default_lr, default_tau, _ = grid.defaults
    baselines = [v for v in variants if v != TF_LLMER]
    tuning = {v.name: tuning_specs(v, grid, tune_seeds) for v in baselines}
    if TF_LLMER in variants:
        tuning[TF_LLMER.name] = [
            spec for setting in grid.recpca_settings()
            for spec in tuning_specs(TF_LLMER, grid, tune_seeds, setting.key,
                                     [(default_lr, default_tau)])
        ]
    results = pool.run(_needing_tuning(tuning.values()))
    choices = {name: choose(results, specs) for name, specs in tuning.items()}
    baseline_finals = [spec for v in baselines
                       for spec in final_specs(v, choices[v.name], final_seeds)]
    recpca_choice: list[RunSpec] = []
    if TF_LLMER in variants:
        recpca_choice = tuning_specs(TF_LLMER, grid, tune_seeds, choices[TF_LLMER.name].table)
    step_two = _needing_tuning([recpca_choice])
    if TF_LLMER in variants and not step_two:  # nothing to tune: its finals join the others'
        choices[TF_LLMER.name] = choose(results, recpca_choice)
        baseline_finals += final_specs(TF_LLMER, choices[TF_LLMER.name], final_seeds)
    results |= pool.run(step_two + baseline_finals)  # step 2 alongside the baselines' step 3
    if step_two:
        choices[TF_LLMER.name] = choose(results, recpca_choice)
        results |= pool.run(final_specs(TF_LLMER, choices[TF_LLMER.name], final_seeds))
    finals = {v.name: [results[s.key] for s in final_specs(v, choices[v.name], final_seeds)]
              for v in variants}
    tuned = {key: record for key, record in results.items()
             if record["spec"]["phase"] == "tune"}
    return choices, finals, tuned


def _needing_tuning(groups: Iterable[list[RunSpec]]) -> list[RunSpec]:
    """The specs of every group that has more than one candidate setting."""
    return [spec for specs in groups
            if len({(s.table, s.lr, s.temperature) for s in specs}) > 1 for spec in specs]
