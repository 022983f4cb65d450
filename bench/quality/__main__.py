"""What TF-LLMER buys on real data: six SASRec variants, tuned alike, through the service.

    python -m bench.quality --dataset ml-100k            # the main table (hours on 2 cores)
    python -m bench.quality --dataset ml-100k --quick    # defaults only, 2 seeds: < 15 min
    python -m bench.quality --dataset ml-1m --stage prepare   # service part only, then
    python -m bench.quality --dataset ml-1m --stage train --device cuda --jobs 12  # on a GPU

Stage ``prepare`` goes through the real service (ingest, push, refit, fetch) and saves the
split and the item tables under ``--work``; stage ``train`` runs the tuning protocol and the
final seeds from there (resuming from its run log) and writes
``bench/results/quality_<dataset>[_quick].{json,md}`` and ``…_loss.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from bench.quality.prepare import PreparedData, prepare
from bench.quality.protocol import run_protocol
from bench.quality.report import (
    COLUMNS,
    summarize,
    table_rows,
    tuning_rows,
    verdict_text,
)
from bench.quality.runs import RunPool, TrainingBudget
from bench.quality.variants import BY_NAME, FULL_GRID, QUICK_GRID, SERVED_PCA, TF_LLMER, VARIANTS
from bench.report import RESULTS_DIR, machine_info, markdown_table, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("ml-100k", "ml-1m"), default="ml-100k")
    parser.add_argument("--quick", action="store_true",
                        help="--grid defaults, 2 seeds, 30 epochs, patience 10")
    parser.add_argument("--grid", choices=("full", "defaults"), default=None,
                        help="tuning grid: full (default) or each axis's default only")
    parser.add_argument("--lr", type=float, default=None,
                        help="fix the learning rate (no lr tuning)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="fix τ of the normalized variants (no τ tuning)")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                        help="variants to run, comma-separated [all: %(default)s]")
    parser.add_argument("--stage", choices=("all", "prepare", "train"), default="all")
    parser.add_argument("--work", type=Path, default=None,
                        help="prepared data and run log [runs/quality/<dataset>[-quick]]")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON, Markdown and PNG go [bench/results]")
    parser.add_argument("--store-url", default=None,
                        help="store of the in-process server (default: a fresh embedded one)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--jobs", type=int, default=1, help="training processes in parallel")
    parser.add_argument("--tune-seeds", type=int, default=None,
                        help="seeds per tuning setting [1]")
    parser.add_argument("--seeds", type=int, default=None,
                        help="final seeds per variant [5; quick 2]")
    parser.add_argument("--epochs", type=int, default=None, help="epoch bound [200; quick 30]")
    parser.add_argument("--patience", type=int, default=None,
                        help="validations without improvement before stopping [15; quick 10]")
    args = parser.parse_args(argv)
    quick = args.quick
    grid = QUICK_GRID if quick or args.grid == "defaults" else FULL_GRID
    args.grid = dataclasses.replace(
        grid, lrs=(args.lr,) if args.lr else grid.lrs,
        temperatures=(args.temperature,) if args.temperature else grid.temperatures)
    unknown = set(args.variants.split(",")) - set(BY_NAME)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(BY_NAME)}")
    args.variants = tuple(v for v in VARIANTS if v.name in args.variants.split(","))
    args.tune_seeds = args.tune_seeds or 1
    args.seeds = args.seeds or (2 if quick else 5)
    args.epochs = args.epochs or (30 if quick else 200)
    args.patience = args.patience or (10 if quick else 15)
    args.name = f"quality_{args.dataset}{'_quick' if quick else ''}"
    args.work = args.work or Path("runs/quality") / args.name
    return args


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_report(args: argparse.Namespace, data: PreparedData, outcome: tuple, seconds: float
                 ) -> dict[str, Any]:
    from trainer_client.training import TrainResult, save_loss_curve

    choices, finals, tuned = outcome
    summary = summarize(choices, finals)
    chosen = choices[TF_LLMER.name].table if TF_LLMER.name in choices else SERVED_PCA
    diagnostics = data.meta["versions"][chosen]
    pca = data.meta["versions"][SERVED_PCA]
    diag_rows = [
        {"version": "5 PCA + norm (λ = 0)", "λ": pca["lam"],
         "retained variance": pca["retained_variance"],
         "alignment@10": diagnostics.get("pca_alignment")},
        {"version": f"6 TF-LLMER ({chosen})", "λ": diagnostics["lam"],
         "retained variance": diagnostics["retained_variance"],
         "alignment@10": diagnostics.get("alignment")},
    ]
    fields = {field.name for field in dataclasses.fields(TrainResult)}
    curves = {BY_NAME[name].label: TrainResult(**{k: v for k, v in runs[0].items()
                                                   if k in fields})
              for name, runs in finals.items()}
    png = save_loss_curve(curves, args.results_dir / f"{args.name}_loss.png")
    payload = {
        "dataset": args.dataset, "quick": args.quick, "device": args.device, "jobs": args.jobs,
        "variants": [v.name for v in args.variants],
        "budget": {"epochs": args.epochs, "patience": args.patience,
                   "tune_seeds": args.tune_seeds, "final_seeds": args.seeds},
        "grid": {k: list(v) for k, v in vars(args.grid).items()},
        "summary": summary, "diagnostics": {"chosen": diagnostics, "pca": pca},
        "prepared": {k: v for k, v in data.meta.items() if k != "versions"},
        "all_versions": data.meta["versions"], "tuning": tuning_rows(tuned),
        "seconds": seconds, "machine": machine_info(),
    }
    more = (f"## Verdict\n\n{verdict_text(summary)}\n\n"
            f"## Rec-PCA diagnostics of the served versions (alignment with window-"
            f"{diagnostics['window']} counts)\n\n"
            f"{markdown_table(diag_rows, ('version', 'λ', 'retained variance', 'alignment@10'))}"
            f"\n\nLoss curves: `{png.name}`\n")
    if payload["tuning"]:
        more += ("\n## Tuning on validation (mean over tuning seeds)\n\n" + markdown_table(
            payload["tuning"], ("variant", "setting", "valid NDCG@10", "seeds")) + "\n")
    notes = [
        f"{args.dataset}, SASRec (max length 50, d = 64), leave-one-out, full ranking over "
        f"{data.n_items} items; {args.seeds} final seeds per variant (mean ± std), "
        f"{args.tune_seeds} tuning seed(s); epochs ≤ {args.epochs}, patience {args.patience}; "
        f"device {args.device}, {args.jobs} run(s) in parallel.",
        f"E = {summary['common_epoch']}: the fewest epochs any final run trained.",
    ]
    write_results(args.name, payload, table_rows(summary), COLUMNS, notes,
                  results_dir=args.results_dir, more_markdown=more)
    print(verdict_text(summary))
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.stage in ("all", "prepare"):
        prepare(args.dataset, args.grid, args.store_url).save(args.work)
        print(f"prepared data in {args.work}")
        if args.stage == "prepare":
            return None
    args.device = resolve_device(args.device)
    data = PreparedData.load(args.work)
    budget = TrainingBudget(epochs=args.epochs, patience=args.patience)
    with RunPool(args.work, args.work / "runs.jsonl", budget, args.device, args.jobs) as pool:
        outcome = run_protocol(pool, args.grid, list(range(args.tune_seeds)), args.seeds,
                               args.variants)
    return write_report(args, data, outcome, time.perf_counter() - started)


if __name__ == "__main__":
    main()
