"""Stage 3 of the quality benchmark: the table, the seed-noise verdict and the loss plot.

Losses of different runs are compared at the same epoch as well as at the end, because
early stopping ends runs at different epochs and a longer run always has the lower final loss.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.quality.protocol import Choice
from bench.quality.variants import BY_NAME, TF_LLMER, VARIANTS

NDCG, HR = "NDCG@10", "HR@10"
COLUMNS = ("variant", "setting", "test HR@10", "test NDCG@10", "× best other",
           "final train loss", "train loss @ epoch E", "epochs to best valid",
           "epochs run", "wall time per run (s)")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: Sequence[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(choices: dict[str, Choice], finals: dict[str, list[dict[str, Any]]]
              ) -> dict[str, Any]:
    """Per-variant aggregates over the final seeds, and TF-LLMER against the best baseline."""
    common_epoch = min(len(run["losses"]) for runs in finals.values() for run in runs)
    variants: dict[str, Any] = {}
    for variant in (v for v in VARIANTS if v.name in finals):
        runs = finals[variant.name]
        variants[variant.name] = {
            "label": variant.label,
            "choice": asdict(choices[variant.name]),
            "test_ndcg10": [run["test"][NDCG] for run in runs],
            "test_hr10": [run["test"][HR] for run in runs],
            "valid_ndcg10": [run["best_valid"][NDCG] for run in runs],
            "final_loss": [run["losses"][-1] for run in runs],
            "loss_at_common_epoch": [run["losses"][common_epoch - 1] for run in runs],
            "best_epoch": [run["best_epoch"] for run in runs],
            "epochs_run": [len(run["losses"]) for run in runs],
            "wall_time_s": [run["wall_time_s"] for run in runs],
        }
    baselines = [name for name in variants if name != TF_LLMER.name]
    best = max(baselines, key=lambda name: statistics.fmean(variants[name]["test_ndcg10"]))
    summary: dict[str, Any] = {"common_epoch": common_epoch, "variants": variants,
                               "best_baseline": best}
    if TF_LLMER.name not in variants:
        return summary
    ours = variants[TF_LLMER.name]
    verdict = _versus(ours["test_ndcg10"], variants[best]["test_ndcg10"])
    summary["tf_llmer_vs_best"] = verdict
    summary["targets"] = {"ndcg_ratio_target": 1.05, "ndcg_ratio": verdict["ratio"],
                          "ndcg_target_met": verdict["ratio"] >= 1.05}
    if "raw_pca" in variants:
        raw = variants["raw_pca"]
        for name, key in (("at_common_epoch", "loss_at_common_epoch"), ("final", "final_loss")):
            summary["targets"][f"loss_below_raw_pca_{name}"] = (
                statistics.fmean(ours[key]) < statistics.fmean(raw[key]))
    return summary


def _versus(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    """Ratio of means and Welch's t-test: does the margin exceed seed-to-seed noise?"""
    from scipy import stats

    ratio = statistics.fmean(ours) / statistics.fmean(theirs)
    if len(ours) > 1 and len(theirs) > 1:
        test = stats.ttest_ind(ours, theirs, equal_var=False)
        p_value = float(test.pvalue)
    else:
        p_value = float("nan")
    margin = statistics.fmean(ours) - statistics.fmean(theirs)
    noise = max(mean_std(ours)[1], mean_std(theirs)[1])
    return {"ratio": ratio, "margin": margin, "seed_std": noise, "welch_p": p_value,
            "exceeds_noise": bool(p_value < 0.05 and margin > 0)}


def table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    best = statistics.fmean(summary["variants"][summary["best_baseline"]]["test_ndcg10"])
    rows = []
    for row in summary["variants"].values():
        rows.append({
            "variant": row["label"],
            "setting": setting_text(row["choice"]),
            "test HR@10": _pm(row["test_hr10"]),
            "test NDCG@10": _pm(row["test_ndcg10"]),
            "× best other": f"{statistics.fmean(row['test_ndcg10']) / best:.3f}",
            "final train loss": _pm(row["final_loss"], 3),
            "train loss @ epoch E": _pm(row["loss_at_common_epoch"], 3),
            "epochs to best valid": _pm(row["best_epoch"], 1),
            "epochs run": _pm(row["epochs_run"], 1),
            "wall time per run (s)": f"{statistics.fmean(row['wall_time_s']):.0f}",
        })
    return rows


def setting_text(choice: dict[str, Any]) -> str:
    parts = [f"lr {choice['lr']:g}"]
    if choice["temperature"] is not None:
        parts.append(f"τ {choice['temperature']:g}")
    if choice["table"] and choice["table"].startswith("recpca"):
        parts.append(choice["table"].removeprefix("recpca_"))
    return ", ".join(parts)


def tuning_rows(tuned: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean validation NDCG@10 of every tuned setting, grouped by variant."""
    groups: dict[tuple, list[float]] = {}
    for record in tuned.values():
        spec = record["spec"]
        key = (spec["variant"], spec["table"], spec["lr"], spec["temperature"])
        groups.setdefault(key, []).append(record["best_valid"][NDCG])
    order = [v.name for v in VARIANTS]
    return [{"variant": BY_NAME[name].label,
             "setting": setting_text({"table": table, "lr": lr, "temperature": tau}),
             "valid NDCG@10": statistics.fmean(scores), "seeds": len(scores)}
            for (name, table, lr, tau), scores in sorted(
                groups.items(), key=lambda item: (order.index(item[0][0]), str(item[0][1:])))]


def verdict_text(summary: dict[str, Any]) -> str:
    if "tf_llmer_vs_best" not in summary:
        return "TF-LLMER was not among the variants run."
    versus, targets = summary["tf_llmer_vs_best"], summary["targets"]
    best = BY_NAME[summary["best_baseline"]].label
    noise = "exceeds" if versus["exceeds_noise"] else "does not exceed"
    text = (
        f"TF-LLMER test NDCG@10 is {versus['ratio']:.3f}× that of the best other variant run "
        f"({best}); target ≥ 1.05×: {'met' if targets['ndcg_target_met'] else 'not met'}. "
        f"The margin {versus['margin']:+.4f} {noise} seed noise (per-variant seed std up to "
        f"{versus['seed_std']:.4f}; Welch's t-test p = {versus['welch_p']:.3g})."
    )
    if "loss_below_raw_pca_final" in targets:
        below = {True: "below", False: "not below"}
        text += (f" Training loss at the common epoch E = {summary['common_epoch']} is "
                 f"{below[targets['loss_below_raw_pca_at_common_epoch']]} LLM-raw-PCA's; final "
                 f"training loss {below[targets['loss_below_raw_pca_final']]} it.")
    return text
