"""Stage 3 of the value benchmark: every measure, paired against PCA + norm, from the runs
logged so far (a partial log gives a partial report that says exactly what ran).

Measures, all on the test split unless named otherwise, full ranking over every item:

* converged test HR@10 / NDCG@10 (the state with the best validation NDCG@10);
* time to quality: epochs (primary) and wall seconds until validation NDCG@10 first reaches
  95 % of PCA + norm's best validation NDCG@10 (mean over its final seeds). Wall seconds on
  a shared machine are noisy; epochs are not;
* popularity buckets: NDCG@10 over users whose test item is among the least popular 50 % of
  items by training count ("tail"), and over the rest ("head");
* cold start: NDCG@10 over users whose test item is a cold item of the cold-start split,
  with the trainer's cold-start path on for both variants;
* zero-shot retrieval of each served space, no training (``evaluate_zero_shot``): the mean
  of the last 5 history items, and the last item alone (what ``SimilarItems`` of the item a
  user just consumed returns).

Every comparison with PCA + norm gives the ratio of means, the paired per-seed differences
and a bootstrap 95 % interval over users (``bench.value.stats``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.prepare import PreparedData
from bench.quality.variants import BY_NAME, VARIANTS
from bench.report import machine_info, markdown_table, write_results
from bench.value.design import BY_KEY, COLD, MAIN, PCA_NORM, SERVED_PCA, TF_LLMER
from bench.value.runs import Budget, fingerprints, matching_records, prepared_splits
from bench.value.stats import paired_ratio, seed_bootstrap_ratio
from trainer_client.evaluation import (
    epochs_to_quality,
    evaluate_zero_shot,
    tail_items,
)

NDCG, HR = "NDCG@10", "HR@10"
QUALITY_SHARE = 0.95
COLUMNS = ("variant", "seeds", "test HR@10", "test NDCG@10", "× PCA + norm [95 % CI]",
           "tail NDCG@10", "head NDCG@10", "epochs to quality", "seconds to quality",
           "epochs to best", "epochs run", "final train loss")
BOUNDS = {  # key: (bound, at_most, definition)
    "converged_ndcg10": (1.00, False, "test NDCG@10 at the best validation state"),
    "time_to_quality": (0.70, True, "epochs until validation NDCG@10 first reaches 95 % of "
                                    "PCA + norm's best validation NDCG@10"),
    "tail_ndcg10": (1.05, False, "test NDCG@10 over users whose test item is in the least "
                                 "popular 50 % of items"),
    "cold_start_ndcg10": (1.05, False, "test NDCG@10 over users whose test item is a cold "
                                       "item (cold-start split, cold-start path on for both)"),
    "zero_shot_ndcg10": (1.15, False, "zero-shot test NDCG@10 of the served space: cosine "
                                      "to the mean of the last 5 history items, no training"),
}


def _pm(values: Sequence[float], digits: int = 4) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def _ci(comparison: dict[str, Any] | None) -> str:
    if not comparison or comparison.get("ratio") is None:
        return ""
    low, high = (f"{v:.3f}" if v is not None else "∞" for v in comparison["ci95"])
    return f"{comparison['ratio']:.3f} [{low}, {high}]"


def _difference(comparison: dict[str, Any] | None) -> str:
    if not comparison or "difference" not in comparison:
        return ""
    low, high = comparison["difference_ci95"]
    return f"{comparison['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def per_user(records: Sequence[dict[str, Any]], metric: str = NDCG
             ) -> tuple[np.ndarray, np.ndarray]:
    """(users,), (seeds, users) test values of runs on the same split."""
    users = np.asarray(records[0]["test_users"])
    for record in records[1:]:
        if not np.array_equal(record["test_users"], users):
            raise RuntimeError("runs of one split must evaluate the same users")
    return users, np.array([record["test_per_user"][metric] for record in records])


def compare(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]],
            users_mask: np.ndarray | None = None, metric: str = NDCG
            ) -> dict[str, Any] | None:
    """Paired over the seeds both sides ran, on the users where ``users_mask`` holds."""
    seeds = sorted({r["spec"]["seed"] for r in ours} & {r["spec"]["seed"] for r in theirs})
    if not seeds:
        return None
    pick = {r["spec"]["seed"]: r for r in ours}
    other = {r["spec"]["seed"]: r for r in theirs}
    users, values = per_user([pick[s] for s in seeds], metric)
    _, reference = per_user([other[s] for s in seeds], metric)
    keep = np.ones(len(users), bool) if users_mask is None else users_mask
    if not keep.any():
        return None
    return {**paired_ratio(values[:, keep], reference[:, keep]), "paired_seeds": seeds}


class Report:
    def __init__(self, work: Path, log_path: Path, budget: Budget) -> None:
        self.work, self.budget = work, budget
        data = prepared_splits(work)
        self.main, self.cold = data[MAIN], data.get(COLD)
        records = list(matching_records(log_path, budget, fingerprints(data)).values())
        self.tuning = [r for r in records if r["spec"]["phase"] == "tune"]
        self.finals: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in sorted(records, key=lambda r: r["spec"]["seed"]):
            if r["spec"]["phase"] == "final":
                self.finals.setdefault((r["spec"]["split"], r["spec"]["variant"]), []).append(r)
        choice_path = work / "choice.json"
        self.choice = json.loads(choice_path.read_text()) if choice_path.is_file() else None
        self.tail = tail_items(self.main.split.train, self.main.n_items)

    def runs(self, variant: str, split: str = MAIN) -> list[dict[str, Any]]:
        return self.finals.get((split, variant), [])

    def threshold(self) -> float | None:
        reference = self.runs(PCA_NORM.name)
        if not reference:
            return None
        return QUALITY_SHARE * statistics.fmean(r["best_valid"][NDCG] for r in reference)

    def time_to_quality(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        threshold = self.threshold()
        out = []
        for r in records:
            epochs, seconds = (None, None) if threshold is None else epochs_to_quality(
                r["valid_curve"], r.get("valid_seconds") or [0.0] * len(r["valid_curve"]),
                threshold)
            out.append({"seed": r["spec"]["seed"], "epochs": epochs, "seconds": seconds,
                        "epochs_run": len(r["losses"])})
        return out

    def users_with_targets_in(self, data: PreparedData, items: np.ndarray,
                              records: Sequence[dict[str, Any]]) -> np.ndarray:
        users = np.asarray(records[0]["test_users"])
        return items[data.split.test_targets[users]]

    def variant_rows(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows, details = [], {}
        reference = self.runs(PCA_NORM.name)
        for variant in VARIANTS:
            records = self.runs(variant.name)
            if not records:
                continue
            tail_mask = self.users_with_targets_in(self.main, self.tail, records)
            ttq = self.time_to_quality(records)
            tail = [float(np.mean(np.asarray(r["test_per_user"][NDCG])[tail_mask]))
                    for r in records]
            head = [float(np.mean(np.asarray(r["test_per_user"][NDCG])[~tail_mask]))
                    for r in records]
            versus = {
                "converged_ndcg10": compare(records, reference),
                "converged_hr10": compare(records, reference, metric=HR),
                "tail_ndcg10": compare(records, reference, tail_mask),
                "head_ndcg10": compare(records, reference, ~tail_mask),
                "time_to_quality": self.ttq_versus(ttq, self.time_to_quality(reference)),
            } if reference else {}
            table = records[0]["spec"]["table"]
            details[variant.name] = {
                "label": variant.label, "table": table, "seeds": [r["spec"]["seed"]
                                                                  for r in records],
                "lr": records[0]["spec"]["lr"], "temperature": records[0]["spec"]["temperature"],
                "test_ndcg10": [r["test"][NDCG] for r in records],
                "test_hr10": [r["test"][HR] for r in records],
                "valid_ndcg10": [r["best_valid"][NDCG] for r in records],
                "tail_ndcg10": tail, "head_ndcg10": head, "time_to_quality": ttq,
                "best_epoch": [r["best_epoch"] for r in records],
                "epochs_run": [len(r["losses"]) for r in records],
                "final_loss": [r["losses"][-1] for r in records],
                "cold_items_scored_by_map": records[0].get("cold_items", 0),
                "wall_time_s": [r["wall_time_s"] for r in records],
                "versus_pca_norm": versus,
            }
            reached = [t["epochs"] for t in ttq if t["epochs"] is not None]
            seconds = [t["seconds"] for t in ttq if t["seconds"] is not None]
            label = variant.label
            if variant == TF_LLMER and table in BY_KEY:
                label += f" ({BY_KEY[table].label})"
            rows.append({
                "variant": label, "seeds": len(records),
                "test HR@10": _pm([r["test"][HR] for r in records]),
                "test NDCG@10": _pm([r["test"][NDCG] for r in records]),
                "× PCA + norm [95 % CI]": _ci(versus.get("converged_ndcg10")),
                "tail NDCG@10": _pm(tail), "head NDCG@10": _pm(head),
                "epochs to quality": f"{_pm(reached, 1)} ({len(reached)}/{len(ttq)} reached)",
                "seconds to quality": _pm(seconds, 0),
                "epochs to best": _pm([r["best_epoch"] for r in records], 1),
                "epochs run": _pm([len(r["losses"]) for r in records], 1),
                "final train loss": _pm([r["losses"][-1] for r in records], 3),
            })
        return rows, details

    @staticmethod
    def ttq_versus(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
                   ) -> dict[str, Any] | None:
        """Epochs ratio over paired seeds; a run that never reached the quality counts with
        the epochs it ran (a lower bound), and is flagged."""
        paired = {t["seed"]: t for t in theirs}
        seeds = [t["seed"] for t in ours if t["seed"] in paired]
        if not seeds:
            return None
        mine = {t["seed"]: t for t in ours}

        def epochs(entry: dict[str, Any]) -> float:
            return entry["epochs"] if entry["epochs"] is not None else entry["epochs_run"]

        result = seed_bootstrap_ratio([epochs(mine[s]) for s in seeds],
                                      [epochs(paired[s]) for s in seeds])
        censored = [s for s in seeds if mine[s]["epochs"] is None or paired[s]["epochs"] is None]
        ours_s = [mine[s]["seconds"] for s in seeds if mine[s]["seconds"] is not None]
        theirs_s = [paired[s]["seconds"] for s in seeds if paired[s]["seconds"] is not None]
        seconds_ratio = (statistics.fmean(ours_s) / statistics.fmean(theirs_s)
                         if ours_s and theirs_s and not censored else None)
        return {**result, "censored_seeds": censored, "paired_seeds": seeds,
                "seconds_ratio": seconds_ratio}

    def cold_start(self) -> dict[str, Any] | None:
        ours, theirs = self.runs(TF_LLMER.name, COLD), self.runs(PCA_NORM.name, COLD)
        if self.cold is None or not theirs:
            return None
        start, stop = self.cold.meta["cold_rows"]
        is_cold = np.zeros(self.cold.n_items, bool)
        is_cold[start:stop] = True
        out: dict[str, Any] = {"cold_items": stop - start}
        for name, records in ((PCA_NORM.name, theirs), (TF_LLMER.name, ours)):
            if not records:
                continue
            mask = self.users_with_targets_in(self.cold, is_cold, records)
            out[name] = {
                "seeds": [r["spec"]["seed"] for r in records], "table": records[0]["spec"]["table"],
                "cold_users": int(mask.sum()),
                "cold_ndcg10": [float(np.mean(np.asarray(r["test_per_user"][NDCG])[mask]))
                                for r in records],
                "warm_ndcg10": [float(np.mean(np.asarray(r["test_per_user"][NDCG])[~mask]))
                                for r in records],
                "test_ndcg10": [r["test"][NDCG] for r in records],
                "cold_items_scored_by_map": records[0].get("cold_items", 0),
            }
        if ours:
            mask = self.users_with_targets_in(self.cold, is_cold, ours)
            out["versus_pca_norm"] = {"cold_ndcg10": compare(ours, theirs, mask),
                                      "warm_ndcg10": compare(ours, theirs, ~mask)}
        return out

    def zero_shot(self) -> dict[str, Any]:
        """Every served table of the main split, and the cold split's on its cold users."""
        out: dict[str, Any] = {}
        for data, label in ((self.main, MAIN), (self.cold, COLD)):
            if data is None:
                continue
            rows: dict[str, Any] = {}
            reference = None
            mask = None
            if label == COLD:
                start, stop = data.meta["cold_rows"]
                is_cold = np.zeros(data.n_items, bool)
                is_cold[start:stop] = True
            for key, table in data.tables.items():
                test = evaluate_zero_shot(table, data.split, "test", per_user=True)
                assert test.users is not None and test.per_user is not None
                last1 = evaluate_zero_shot(table, data.split, "test", last=1)
                valid = evaluate_zero_shot(table, data.split, "valid")
                if label == COLD:
                    mask = is_cold[data.split.test_targets[test.users]]
                values = test.per_user[NDCG] if mask is None else test.per_user[NDCG][mask]
                rows[key] = {"valid_ndcg10": valid[NDCG], "test_ndcg10": test[NDCG],
                             "test_hr10": test[HR], "similar_items_last1_ndcg10": last1[NDCG],
                             "subset_ndcg10": float(values.mean()), "per_user": values}
                if key == SERVED_PCA:
                    reference = values
            for row in rows.values():
                per = row.pop("per_user")
                if reference is not None:
                    row["versus_pca_norm"] = paired_ratio(per[None], reference[None])
            out[label] = rows
        return out


def write_report(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    report = Report(args.work, args.run_log, budget)
    rows, details = report.variant_rows()
    cold = report.cold_start()
    zero = report.zero_shot()
    chosen = report.choice["table"] if report.choice else None
    targets = build_targets(details, cold, zero, chosen)
    tuning = [{"formulation": BY_KEY[r["spec"]["table"]].label,
               "valid NDCG@10 (trained)": r["best_valid"][NDCG],
               "valid NDCG@10 (zero-shot)": zero[MAIN][r["spec"]["table"]]["valid_ndcg10"],
               "chosen": r["spec"]["table"] == chosen}
              for r in report.tuning]
    png = save_curves(report, args.results_dir / f"value_{args.name}_curves.png")
    payload = {
        "dataset": args.name, "data_dir": str(args.data), "budget": vars(budget) | {},
        "protocol": {"lr": 3e-3, "temperature": 0.2, "window": 3,
                     "quality_share": QUALITY_SHARE, "tuning_seed": 0,
                     "cold_fraction": args.cold_fraction},
        "choice": report.choice, "targets": targets, "variants": details,
        "cold_start": cold, "zero_shot": zero, "tuning": tuning,
        "threshold_valid_ndcg10": report.threshold(),
        "versions": {"main": report.main.meta["versions"],
                     "cold": report.cold.meta["versions"] if report.cold else None},
        "machine": machine_info(),
    }
    notes = [
        f"{args.name}: SASRec (max length 50, d = 64), leave-one-out, full ranking over "
        f"{report.main.n_items} items, seen items not masked; lr 3e-3, τ 0.2 for the "
        f"normalized variants; epochs ≤ {budget.epochs}, patience {budget.patience}; CPU.",
        f"Time to quality: validation NDCG@10 ≥ {QUALITY_SHARE:.0%} of PCA + norm's best "
        f"validation NDCG@10 (threshold {report.threshold() or float('nan'):.4f}); epochs "
        "are the primary measure, seconds are noisy on a shared machine.",
        "Tail: the least popular 50 % of items by training count; head: the rest.",
        "Finished runs: " + ", ".join(
            f"{BY_NAME[variant].label} {split} seeds {[r['spec']['seed'] for r in runs]}"
            for (split, variant), runs in report.finals.items())
        + f"; tuning runs {len(report.tuning)}. Whatever else the protocol plans did not run.",
    ]
    if cold and TF_LLMER.name in cold:
        notes.append(
            "Cold start: trained cold-user NDCG@10 "
            f"{statistics.fmean(cold[PCA_NORM.name]['cold_ndcg10']):.4f} (PCA + norm) and "
            f"{statistics.fmean(cold[TF_LLMER.name]['cold_ndcg10']):.4f} (TF-LLMER), against "
            f"zero-shot retrieval of the served spaces on the same users "
            f"{zero[COLD][SERVED_PCA]['subset_ndcg10']:.4f} and "
            f"{zero[COLD][cold[TF_LLMER.name]['table']]['subset_ndcg10']:.4f}.")
    more = "## Targets (TF-LLMER's default served version ÷ PCA + norm, same run)\n\n"
    more += markdown_table(
        [{**t, "value": "not measured" if t["value"] is None else f"{t['value']:.3f}",
          "ratio [95 % CI]": _ci(t["comparison"]),
          "difference [95 % CI]": _difference(t["comparison"])}
         for t in targets.values()],
        ("key", "definition", "value", "ratio [95 % CI]", "difference [95 % CI]", "bound",
         "met", "note"))
    if tuning:
        more += ("\n\n## Choosing TF-LLMER's formulation (validation only, tuning seed 0)\n\n"
                 + markdown_table(tuning, ("formulation", "valid NDCG@10 (trained)",
                                           "valid NDCG@10 (zero-shot)", "chosen")))
    more += "\n\n## Zero-shot retrieval of each served space (no training)\n\n"
    more += markdown_table(
        [{"table": key, "valid NDCG@10": row["valid_ndcg10"], "test NDCG@10": row["test_ndcg10"],
          "test HR@10": row["test_hr10"],
          "last item only (SimilarItems) NDCG@10": row["similar_items_last1_ndcg10"],
          "× PCA + norm [95 % CI]": _ci(row.get("versus_pca_norm"))}
         for key, row in zero[MAIN].items()],
        ("table", "valid NDCG@10", "test NDCG@10", "test HR@10",
         "last item only (SimilarItems) NDCG@10", "× PCA + norm [95 % CI]"))
    if cold:
        more += (f"\n\n## Cold-start split ({cold['cold_items']} items held out of training, "
                 "counts and the fit)\n\n")
        cold_rows = []
        for name in (PCA_NORM.name, TF_LLMER.name):
            if name in cold:
                entry = cold[name]
                versus = cold.get("versus_pca_norm", {}) if name == TF_LLMER.name else {}
                cold_rows.append({
                    "variant": BY_NAME[name].label, "seeds": len(entry["seeds"]),
                    "cold users": entry["cold_users"],
                    "cold NDCG@10": _pm(entry["cold_ndcg10"]),
                    "warm NDCG@10": _pm(entry["warm_ndcg10"]),
                    "cold × PCA + norm [95 % CI]": _ci(versus.get("cold_ndcg10")),
                    "zero-shot cold NDCG@10": zero[COLD][entry["table"]]["subset_ndcg10"]})
        more += markdown_table(cold_rows, ("variant", "seeds", "cold users", "cold NDCG@10",
                                           "warm NDCG@10", "cold × PCA + norm [95 % CI]",
                                           "zero-shot cold NDCG@10"))
    more += f"\n\nCurves: `{png.name}`\n"
    write_results(f"value_{args.name}", payload, rows, COLUMNS, notes,
                  results_dir=args.results_dir, more_markdown=more)
    return payload


def build_targets(details: dict[str, Any], cold: dict[str, Any] | None,
                  zero: dict[str, Any], chosen: str | None) -> dict[str, Any]:
    ours = details.get(TF_LLMER.name, {}).get("versus_pca_norm", {})
    found: dict[str, dict[str, Any] | None] = {
        "converged_ndcg10": ours.get("converged_ndcg10"),
        "time_to_quality": ours.get("time_to_quality"),
        "tail_ndcg10": ours.get("tail_ndcg10"),
        "cold_start_ndcg10": (cold or {}).get("versus_pca_norm", {}).get("cold_ndcg10"),
        "zero_shot_ndcg10": zero[MAIN][chosen]["versus_pca_norm"] if chosen else None,
    }
    targets = {}
    for key, (bound, at_most, definition) in BOUNDS.items():
        comparison = found[key]
        value = None if comparison is None else comparison.get("ratio")
        met = value is not None and (value <= bound if at_most else value >= bound)
        if comparison is None or value is None:
            note = "not measured: no finished paired runs"
        else:
            ours_mean, theirs_mean = comparison["means"]
            note = (f"{ours_mean:.4g} vs {theirs_mean:.4g}; {comparison['seeds']} paired "
                    f"seed(s)" + (f", {comparison['users']} users" if "users" in comparison
                                  else ""))
        if key == "time_to_quality" and comparison and comparison["censored_seeds"]:
            met, note = False, note + "; censored seeds (quality not reached): " + \
                ", ".join(map(str, comparison["censored_seeds"]))
        targets[key] = {"key": key, "definition": f"ratio TF-LLMER ÷ PCA + norm of "
                        f"{definition}", "value": value, "bound": bound, "at_most": at_most,
                        "met": met, "note": note, "comparison": comparison}
    return targets


def save_curves(report: Report, path: Path) -> Path:
    """Training loss (left) and validation NDCG@10 (right) of each variant's first final
    seed, with the time-to-quality threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (loss_axis, valid_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for variant in VARIANTS:
        records = report.runs(variant.name)
        if not records:
            continue
        run = records[0]
        loss_axis.plot(range(1, len(run["losses"]) + 1), run["losses"], label=variant.label)
        valid_axis.plot([p["epoch"] for p in run["valid_curve"]],
                        [p[NDCG] for p in run["valid_curve"]], label=variant.label)
    threshold = report.threshold()
    if threshold is not None:
        valid_axis.axhline(threshold, color="grey", linestyle="--", linewidth=1,
                           label=f"{QUALITY_SHARE:.0%} of PCA + norm's best")
    loss_axis.set(xlabel="epoch", ylabel="mean training loss", title="Training loss")
    valid_axis.set(xlabel="epoch", ylabel="validation NDCG@10", title="Validation")
    for axis in (loss_axis, valid_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
