"""The quality benchmark: its selection rules, its tables, and one short run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.quality.__main__ import main
from bench.quality.prepare import ID_INIT_NORM, PreparedData, raw_pca, rescaled
from bench.quality.protocol import Choice, choose, final_specs, run_protocol
from bench.quality.report import summarize, verdict_text
from bench.quality.runs import RunSpec
from bench.quality.variants import BY_NAME, FULL_GRID, QUICK_GRID, VARIANTS
from trainer_client.sequences import UserSequences, leave_one_out


def record(spec: RunSpec, valid: float, test: float, losses: list[float]) -> dict:
    return {"spec": spec.__dict__, "best_valid": {"NDCG@10": valid},
            "test": {"NDCG@10": test, "HR@10": 2 * test}, "losses": losses,
            "best_epoch": len(losses), "wall_time_s": 1.0}


def test_choose_maximizes_mean_validation_over_seeds_and_ignores_test() -> None:
    variant = BY_NAME["pca_norm"]
    specs = [RunSpec(variant.name, "served_pca", lr, 0.1, seed, "tune")
             for lr in (1e-3, 3e-3) for seed in (0, 1)]
    valid = {1e-3: (0.10, 0.04), 3e-3: (0.06, 0.06)}  # means 0.07 vs 0.06
    results = {s.key: record(s, valid[s.lr][s.seed], test=1.0 if s.lr == 3e-3 else 0.0,
                             losses=[1.0]) for s in specs}
    assert choose(results, specs) == Choice("served_pca", 1e-3, 0.1, pytest.approx(0.07))


def test_a_single_candidate_is_chosen_without_training() -> None:
    spec = RunSpec("id", None, 1e-3, None, 0, "tune")
    assert choose({}, [spec]) == Choice(None, 1e-3, None, None)


def test_grid_gives_temperatures_only_to_normalized_variants() -> None:
    assert FULL_GRID.training_settings(BY_NAME["id"]) == [(1e-3, None), (3e-3, None)]
    assert len(FULL_GRID.training_settings(BY_NAME["id_norm"])) == 6
    assert len(FULL_GRID.recpca_settings()) == 12
    assert FULL_GRID.recpca_settings()[0].key == "recpca_rho0.8_identity_w3"


class RecordingPool:
    """Stands in for the process pool: 'trains' instantly and remembers what it was asked."""

    def __init__(self) -> None:
        self.batches: list[list[RunSpec]] = []

    def run(self, specs) -> dict:
        specs = list(specs)
        self.batches.append(specs)
        return {s.key: record(s, valid=s.lr + (s.temperature or 0), test=0.05,
                              losses=[2.0, 1.0]) for s in specs}


def test_protocol_tunes_then_trains_disjoint_final_seeds() -> None:
    pool = RecordingPool()
    choices, finals, tuned = run_protocol(pool, FULL_GRID, [0], final_seeds=3)
    assert set(finals) == {v.name for v in VARIANTS}
    assert all(len(runs) == 3 for runs in finals.values())
    final_seeds = {r["spec"]["seed"] for runs in finals.values() for r in runs}
    tune_seeds = {r["spec"]["seed"] for r in tuned.values()}
    assert final_seeds.isdisjoint(tune_seeds)
    # The fake score favours the larger lr and τ; TF-LLMER tunes them on its chosen table.
    assert choices["tf_llmer"].lr == 3e-3 and choices["tf_llmer"].temperature == 0.2
    assert choices["id"] == Choice(None, 3e-3, None, pytest.approx(3e-3))


def test_protocol_with_one_setting_per_variant_trains_only_final_runs() -> None:
    pool = RecordingPool()
    variants = (BY_NAME["raw_pca"], BY_NAME["tf_llmer"])
    _, finals, tuned = run_protocol(pool, QUICK_GRID, [0], final_seeds=2, variants=variants)
    assert tuned == {} and set(finals) == {"raw_pca", "tf_llmer"}
    assert [len(batch) for batch in pool.batches] == [0, 4]  # all finals in one batch


def test_summary_compares_tf_llmer_with_the_best_other_variant() -> None:
    finals = {}
    for variant, test in (("raw_pca", 0.050), ("pca_norm", 0.060), ("tf_llmer", 0.066)):
        finals[variant] = [
            record(spec, 0.1, test + 0.001 * k, losses=[3.0, 2.0] if variant == "raw_pca"
                   else [2.0, 1.0])
            for k, spec in enumerate(final_specs(BY_NAME[variant],
                                                 Choice(None, 1e-3, None, None), 3))
        ]
    choices = {name: Choice(None, 1e-3, None, None) for name in finals}
    summary = summarize(choices, finals)
    assert summary["best_baseline"] == "pca_norm"
    assert summary["targets"]["ndcg_ratio"] == pytest.approx(0.067 / 0.061)
    assert summary["targets"]["ndcg_target_met"]
    assert summary["targets"]["loss_below_raw_pca_at_common_epoch"]
    assert summary["tf_llmer_vs_best"]["exceeds_noise"]
    assert "met" in verdict_text(summary)


def test_raw_pca_keeps_norm_disparity_and_rescaling_matches_the_id_init_scale() -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((300, 24)) * rng.lognormal(1.5, 0.3, size=(300, 1))
    table = raw_pca(raw, dim=8)
    assert table.shape == (300, 8) and np.allclose(table.mean(0), 0, atol=1e-4)
    scaled = rescaled(table)
    norms = np.linalg.norm(scaled, axis=1)
    assert norms.mean() == pytest.approx(ID_INIT_NORM, rel=1e-5)
    ratio = np.linalg.norm(table, axis=1) / norms
    assert np.allclose(ratio, ratio[0], rtol=1e-5)  # one global scale


def test_prepared_data_round_trips(tmp_path: Path) -> None:
    sequences = UserSequences(["a", "b"], np.array([0, 1, 2, 3, 2, 1, 0, 3]),
                              np.array([0, 4, 8]))
    data = PreparedData("toy", leave_one_out(sequences),
                        {"served_pca": np.eye(4, dtype=np.float32)},
                        {"n_items": 4, "versions": {}})
    loaded = PreparedData.load(data.save(tmp_path))
    assert loaded.dataset == "toy" and loaded.n_items == 4
    assert np.array_equal(loaded.split.train.items, data.split.train.items)
    assert np.array_equal(loaded.split.test_targets, data.split.test_targets)
    assert np.array_equal(loaded.tables["served_pca"], np.eye(4))


@pytest.mark.slow
def test_quick_run_goes_through_the_service_and_writes_table_and_plot(tmp_path: Path) -> None:
    payload = main(["--dataset", "ml-100k", "--quick", "--epochs", "1", "--patience", "1",
                    "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path)])
    assert payload is not None
    summary = payload["summary"]
    assert set(summary["variants"]) == {v.name for v in VARIANTS}
    assert all(len(v["test_ndcg10"]) == 2 for v in summary["variants"].values())
    versions = payload["all_versions"]
    assert versions["served_pca"]["lam"] == 0
    assert versions["recpca_rho0.8_identity_w3"]["lam"] > 0
    assert json.loads((tmp_path / "quality_ml-100k_quick.json").read_text())["quick"]
    assert "| 6 TF-LLMER |" in (tmp_path / "quality_ml-100k_quick.md").read_text()
    assert (tmp_path / "quality_ml-100k_quick_loss.png").stat().st_size > 10_000
    assert (tmp_path / "work" / "runs.jsonl").read_text().count("\n") == 12
