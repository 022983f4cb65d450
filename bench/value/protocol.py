"""The order of work, most important first, so a time limit cuts the least important runs.

1. Tuning (skipped when the choice comes from another data set): TF-LLMER trains every
   Rec-PCA formulation on the tuning seed; the best validation NDCG@10 becomes the default
   served version (``choice.json``). The test split never takes part.
2. Seed by seed: PCA + norm and TF-LLMER's chosen version (paired seeds) on the main split,
   then the same pair on the cold-start split (cold-start path on for both), so a time
   limit leaves every measure with the same number of seeds.
3. The other variants asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.quality.variants import BY_NAME
from bench.value.design import (
    COLD,
    FORMULATIONS,
    MAIN,
    PCA_NORM,
    SERVED_PCA,
    TF_LLMER,
    training_setting,
)
from bench.value.runs import Runner, RunSpec

TUNE_SEED = 0
FINAL_SEED_BASE = 100  # final seeds 100, 101, ...: never the tuning seed


def spec(variant: str, split: str, table: str | None, seed: int, phase: str) -> RunSpec:
    lr, tau = training_setting(BY_NAME[variant])
    return RunSpec(variant, split, table, lr, tau, seed, phase)


def variant_table(variant: str, choice: str) -> str | None:
    if variant == TF_LLMER.name:
        return choice
    if variant == PCA_NORM.name:
        return SERVED_PCA
    return BY_NAME[variant].table


def tuning_specs() -> list[RunSpec]:
    return [spec(TF_LLMER.name, MAIN, f.key, TUNE_SEED, "tune") for f in FORMULATIONS]


def choose(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The formulation with the best validation NDCG@10 (ties: the earlier, i.e. the
    reference first)."""
    scores = {r["spec"]["table"]: r["best_valid"]["NDCG@10"] for r in records}
    best = max(scores, key=lambda key: (scores[key], -list(scores).index(key)))
    return {"table": best, "valid_ndcg10": scores, "seed": TUNE_SEED}


def final_specs(variants: Sequence[str], choice: str, seeds: int, split: str = MAIN
                ) -> list[RunSpec]:
    return [spec(name, split, variant_table(name, choice), FINAL_SEED_BASE + k, "final")
            for k in range(seeds) for name in variants]


def wait_for_choice(path: Path, poll_s: float = 30.0) -> dict[str, Any]:
    """The choice another data set's benchmark writes (its tuning may still be running)."""
    while not path.is_file():
        print(f"waiting for {path} (TF-LLMER's default is chosen on its validation)",
              flush=True)
        time.sleep(poll_s)
    return json.loads(path.read_text())


def run_all(runner: Runner, *, choice_from: Path | None, seeds: int, cold_seeds: int,
            with_seeds: Sequence[str] = (), extras: Sequence[str] = (), extra_seeds: int = 0
            ) -> dict[str, Any]:
    """Runs everything in priority order; returns the choice. ``with_seeds`` variants
    train alongside every final seed of the pair; ``extras`` afterwards, ``extra_seeds``
    seeds each."""
    choice_path = runner.work / "choice.json"
    if choice_from is None:
        choice = choose([runner.run(s) for s in tuning_specs()])
        choice_path.write_text(json.dumps(choice, indent=2) + "\n")
    for k in range(max(seeds, cold_seeds)):  # seed by seed, the cold split interleaved
        if k < seeds:  # needs no choice: it can run while another data set is still tuning
            runner.run(spec(PCA_NORM.name, MAIN, SERVED_PCA, FINAL_SEED_BASE + k, "final"))
        if not choice_path.is_file():
            assert choice_from is not None
            choice = wait_for_choice(choice_from)
            choice_path.write_text(json.dumps({**choice, "from": str(choice_from)}, indent=2)
                                   + "\n")
        choice = json.loads(choice_path.read_text())
        if k < seeds:
            runner.run(spec(TF_LLMER.name, MAIN, choice["table"], FINAL_SEED_BASE + k, "final"))
            for name in with_seeds:
                runner.run(spec(name, MAIN, variant_table(name, ""), FINAL_SEED_BASE + k,
                                "final"))
        if k < cold_seeds:
            for name in (PCA_NORM.name, TF_LLMER.name):
                runner.run(spec(name, COLD, variant_table(name, choice["table"]),
                                FINAL_SEED_BASE + k, "final"))
    for run in final_specs(extras, choice["table"], extra_seeds):
        runner.run(run)
    return choice
