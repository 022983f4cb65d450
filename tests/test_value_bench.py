"""The value benchmark's pure parts: the cold-start split, the paired statistics, and the
report's targets computed from a run log (synthetic runs on a toy prepared data set, so the
arithmetic is checked without training anything)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from bench.quality.prepare import PreparedData
from bench.value.cold_split import choose_cold, cold_split, without_items
from bench.value.design import COLD, FORMULATIONS, MAIN, SERVED_PCA
from bench.value.protocol import FINAL_SEED_BASE, choose, spec
from bench.value.report import write_report
from bench.value.runs import Budget, fingerprint
from bench.value.stats import paired_ratio, seed_bootstrap_ratio
from trainer_client.sequences import LeaveOneOutSplit, UserSequences, leave_one_out


def sequences(rows: list[list[int]]) -> UserSequences:
    lengths = [len(r) for r in rows]
    return UserSequences([str(u) for u in range(len(rows))],
                         np.asarray([i for r in rows for i in r], dtype=np.int64),
                         np.concatenate(([0], np.cumsum(lengths))).astype(np.int64))


def test_cold_items_leave_training_but_keep_their_targets() -> None:
    split = leave_one_out(sequences([[0, 1, 2, 3, 4], [4, 3, 1, 0], [2, 2, 1]]))
    cold = np.zeros(5, dtype=bool)
    cold[[1, 3]] = True
    held = cold_split(split, cold)
    assert not cold[held.train.items].any()
    assert [held.train[u].tolist() for u in range(3)] == [[0, 2], [4], [2]]
    np.testing.assert_array_equal(held.test_targets, split.test_targets)
    np.testing.assert_array_equal(held.valid_targets, split.valid_targets)


def test_removing_items_keeps_empty_users_in_place() -> None:
    kept = without_items(sequences([[], [1, 1], [0]]), np.array([False, True]))
    assert kept.offsets.tolist() == [0, 0, 0, 1] and kept.items.tolist() == [0]


def test_the_cold_share_is_seeded_and_sized() -> None:
    ids = [f"i{k}" for k in range(200)]
    assert choose_cold(ids, 0.15, 3) == choose_cold(ids, 0.15, 3)
    assert len(choose_cold(ids, 0.15, 3)) == 30 and choose_cold(ids, 0.15, 4) != choose_cold(
        ids, 0.15, 3)
    with pytest.raises(ValueError):
        choose_cold(ids, 0.0, 0)


def test_paired_ratio_is_exact_and_its_interval_covers_it() -> None:
    rng = np.random.default_rng(0)
    theirs = rng.uniform(0.0, 1.0, (3, 400))
    result = paired_ratio(theirs * 1.2, theirs)
    assert result["ratio"] == pytest.approx(1.2)
    assert result["ci95"][0] == pytest.approx(1.2) and result["ci95"][1] == pytest.approx(1.2)
    noisy = paired_ratio(theirs + rng.normal(0.05, 0.3, theirs.shape), theirs)
    assert noisy["ci95"][0] < noisy["ratio"] < noisy["ci95"][1]
    assert len(noisy["seed_differences"]) == 3
    assert seed_bootstrap_ratio([10, 20], [20, 40])["ratio"] == pytest.approx(0.5)


def test_the_formulation_is_chosen_on_validation_with_ties_to_the_reference() -> None:
    records = [{"spec": {"table": f.key}, "best_valid": {"NDCG@10": 0.05}} for f in FORMULATIONS]
    assert choose(records)["table"] == FORMULATIONS[0].key
    records[1]["best_valid"]["NDCG@10"] = 0.06
    assert choose(records)["table"] == FORMULATIONS[1].key


def _toy_work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    n_items, users = 30, 24
    rows = [list(rng.choice(n_items, 8, replace=False)) for _ in range(users)]
    split = leave_one_out(sequences(rows))
    tables = {key: rng.standard_normal((n_items, 8)).astype(np.float32)
              for key in (SERVED_PCA, "raw_pca", *(f.key for f in FORMULATIONS))}
    cold_rows = [n_items - 5, n_items]
    cold = np.zeros(n_items, bool)
    cold[cold_rows[0]:] = True
    held = LeaveOneOutSplit(without_items(split.train, cold), split.valid_targets,
                            split.test_targets)
    meta = {"n_items": n_items, "versions": {}}
    PreparedData("toy", split, tables, dict(meta)).save(tmp_path / MAIN)
    PreparedData("toy", held, tables, {**meta, "cold_rows": cold_rows}).save(tmp_path / COLD)
    return tmp_path


def _record(variant: str, split: str, table: str, seed: int, scale: float, curve: list[float],
            budget: Budget, work: Path) -> dict:
    users = list(range(24))
    values = np.linspace(0.0, 0.2, 24) * scale
    return {
        "spec": asdict(spec(variant, split, table, seed, "final")), "budget": asdict(budget),
        "prepared": fingerprint(PreparedData.load(work / split)),
        "losses": [5.0 - 0.1 * k for k in range(len(curve))],
        "valid_curve": [{"epoch": k + 1, "NDCG@10": v, "HR@10": v} for k, v in enumerate(curve)],
        "valid_seconds": [2.0 * (k + 1) for k in range(len(curve))],
        "best_epoch": int(np.argmax(curve)) + 1, "best_valid": {"NDCG@10": max(curve)},
        "test": {"NDCG@10": float(values.mean()), "HR@10": float(values.mean())},
        "test_users": users, "test_per_user": {"NDCG@10": values.tolist(),
                                               "HR@10": values.tolist()},
        "wall_time_s": 10.0, "cold_items": 5 if split == COLD else 0,
    }


def test_the_report_computes_every_target_from_the_log(tmp_path: Path) -> None:
    work = _toy_work(tmp_path / "work")
    budget = Budget(10, 3)
    chosen = FORMULATIONS[0].key
    (work / "choice.json").write_text(json.dumps({"table": chosen}))
    slow, fast = [0.01, 0.02, 0.03, 0.04, 0.05, 0.1], [0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
    records = []
    for k in range(2):
        seed = FINAL_SEED_BASE + k
        records += [_record("pca_norm", MAIN, SERVED_PCA, seed, 1.0, slow, budget, work),
                    _record("tf_llmer", MAIN, chosen, seed, 1.1, fast, budget, work),
                    _record("pca_norm", COLD, SERVED_PCA, seed, 1.0, slow, budget, work),
                    _record("tf_llmer", COLD, chosen, seed, 0.9, fast, budget, work)]
    # A run on other prepared tables (another encoder, say) never counts here.
    stale = _record("tf_llmer", MAIN, chosen, FINAL_SEED_BASE + 2, 9.0, fast, budget, work)
    stale["prepared"] = "0" * 16
    log = tmp_path / "results" / "value_toy_runs.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(r) + "\n" for r in [*records, stale]))
    args = argparse.Namespace(work=work, name="toy", results_dir=tmp_path / "results",
                              data=work, cold_fraction=0.15, run_log=log)
    payload = write_report(args, budget)
    targets = payload["targets"]
    assert set(targets) == {"converged_ndcg10", "time_to_quality", "tail_ndcg10",
                            "cold_start_ndcg10", "zero_shot_ndcg10"}
    assert targets["converged_ndcg10"]["value"] == pytest.approx(1.1)  # the stale run: 9.0
    assert targets["converged_ndcg10"]["met"]
    # Threshold 0.95 × 0.1: PCA + norm reaches it at epoch 6, TF-LLMER at epoch 2.
    assert targets["time_to_quality"]["value"] == pytest.approx(2 / 6)
    assert targets["time_to_quality"]["met"]
    assert targets["cold_start_ndcg10"]["value"] == pytest.approx(0.9)
    assert not targets["cold_start_ndcg10"]["met"]
    for target in targets.values():
        assert {"key", "definition", "value", "bound", "met"} <= set(target)
    assert (tmp_path / "results" / "value_toy.md").is_file()
    assert (tmp_path / "results" / "value_toy_curves.png").is_file()


def _small_atomic_folder(root: Path, items: int = 300) -> Path:
    """A user's own catalog: the first ``items`` MovieLens-100K items and their
    interactions, as a RecBole atomic folder under another name."""
    from trainer_client.datasets import dataset_dir, fetch

    fetch("ml-100k")
    source = dataset_dir("ml-100k")
    folder = root / "my-catalog"
    folder.mkdir(parents=True)
    for suffix in ("item", "inter"):
        lines = (source / f"ml-100k.{suffix}").read_text(encoding="utf-8").splitlines()
        kept = [lines[0]] + [line for line in lines[1:]
                             if int(line.split("\t")[0 if suffix == "item" else 1]) <= items]
        (folder / f"my-catalog.{suffix}").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_every_stage_runs_through_the_service_on_any_atomic_folder(tmp_path: Path) -> None:
    from bench.value.__main__ import main

    folder = _small_atomic_folder(tmp_path)
    work, results = tmp_path / "work", tmp_path / "results"
    common = ["--data", str(folder), "--work", str(work), "--results-dir", str(results),
              "--epochs", "1", "--patience", "1"]
    main([*common, "--stage", "prepare"])
    prepared = PreparedData.load(work / MAIN)
    cold = PreparedData.load(work / COLD)
    assert prepared.n_items == cold.n_items == 300
    versions = prepared.meta["versions"]
    assert versions[SERVED_PCA]["lam"] == 0
    assert all(versions[f.key]["lam"] > 0 for f in FORMULATIONS)
    for key, table in prepared.tables.items():
        assert table.shape == (300, 64), key
    assert cold.meta["cold_rows"][0] < 300 == cold.meta["cold_rows"][1]

    (tmp_path / "choice.json").write_text(json.dumps({"table": FORMULATIONS[0].key}))
    main([*common, "--stage", "train", "--seeds", "1", "--cold-seeds", "1", "--extras", "",
          "--choice-from", str(tmp_path / "choice.json")])
    log = results / "value_my-catalog_runs.jsonl"
    assert log.read_text().count("\n") == 4  # the pair, on both splits
    main([*common, "--stage", "train", "--seeds", "1", "--cold-seeds", "1", "--extras", "",
          "--choice-from", str(tmp_path / "choice.json")])
    assert log.read_text().count("\n") == 4  # resumed from the log: nothing trained twice
    main([*common, "--stage", "report"])
    payload = json.loads((results / "value_my-catalog.json").read_text())
    assert payload["targets"]["converged_ndcg10"]["value"] > 0
    assert (results / "value_my-catalog.md").read_text().startswith("# value_my-catalog")
