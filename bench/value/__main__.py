"""What TF-LLMER buys a recommender team, on any RecBole atomic data set, through the service.

    python -m bench.value --dataset ml-100k                  # tuning + 5 seeds + cold split
    python -m bench.value --dataset ml-1m --choice-from runs/value/ml-100k/choice.json \\
        --epochs 20 --patience 20 --seeds 3 --with-seeds raw_pca --cold-seeds 0
    python -m bench.value --data path/to/my-catalog          # <dir>/<dir>.item and .inter
    python -m bench.value --dataset ml-100k --stage report   # tables from the run log so far

Stage ``prepare`` goes through the real service (ingest, push, refit, fetch) for the main and
the cold-start catalogs; ``train`` runs the protocol (``bench.value.protocol``), resuming from
its run log (``bench/results/value_<name>_runs.jsonl``, committed: runs on the same prepared
data add up across sessions); ``report`` writes ``bench/results/value_<name>.{json,md}`` and
``…_curves.png`` from whatever runs have finished, with a ``targets`` object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.report import RESULTS_DIR
from bench.value.cold_split import DEFAULT_COLD_FRACTION
from bench.value.design import COLD, MAIN
from bench.value.runs import Budget


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.value", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=("ml-100k", "ml-1m"), default=None,
                        help="a MovieLens set from the data cache (fetched if missing)")
    source.add_argument("--data", type=Path, default=None,
                        help="any RecBole atomic folder DIR holding DIR.item and DIR.inter")
    parser.add_argument("--stage", choices=("all", "prepare", "train", "report"),
                        default="all")
    parser.add_argument("--work", type=Path, default=None,
                        help="prepared data [runs/value/<name>]")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--run-log", type=Path, default=None,
                        help="the runs so far, added to as runs finish "
                             "[<results-dir>/value_<name>_runs.jsonl]")
    parser.add_argument("--store-url", default=None, help="store of the in-process server")
    parser.add_argument("--cold-fraction", type=float, default=DEFAULT_COLD_FRACTION,
                        help="share of items held out of training for the cold split [0.15]")
    parser.add_argument("--epochs", type=int, default=60, help="epoch bound [60]")
    parser.add_argument("--patience", type=int, default=8,
                        help="validations without improvement before stopping [8]")
    parser.add_argument("--seeds", type=int, default=5, help="final seeds of the pair [5]")
    parser.add_argument("--cold-seeds", type=int, default=5, help="seeds of the cold split [5]")
    parser.add_argument("--with-seeds", default="",
                        help="variants trained alongside every final seed, comma-separated")
    parser.add_argument("--extras", default="raw_pca,id,id_norm,raw_pca_rescaled",
                        help="variants trained after the cold split [%(default)s]")
    parser.add_argument("--extra-seeds", type=int, default=3, help="seeds of the extras [3]")
    parser.add_argument("--choice-from", type=Path, default=None,
                        help="take TF-LLMER's formulation from another run's choice.json "
                             "(no tuning here)")
    args = parser.parse_args(argv)
    if args.data is None:
        from trainer_client.datasets import dataset_dir, fetch

        dataset = args.dataset or "ml-100k"
        fetch(dataset)
        args.data = dataset_dir(dataset)
    args.name = args.data.name
    args.work = args.work or Path("runs/value") / args.name
    args.run_log = args.run_log or args.results_dir / f"value_{args.name}_runs.jsonl"
    args.with_seeds = [v for v in args.with_seeds.split(",") if v]
    args.extras = [v for v in args.extras.split(",") if v]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.stage in ("all", "prepare") and not (args.work / COLD / "prepared.json").is_file():
        from bench.value.prepare import prepare

        prepare(args.data, args.work, args.cold_fraction, store_url=args.store_url)
        print(f"prepared {args.work / MAIN} and {args.work / COLD} in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    budget = Budget(args.epochs, args.patience)
    if args.stage in ("all", "train"):
        from bench.value.protocol import run_all
        from bench.value.runs import Runner

        run_all(Runner(args.work, args.run_log, budget), choice_from=args.choice_from,
                seeds=args.seeds, cold_seeds=args.cold_seeds, with_seeds=args.with_seeds,
                extras=args.extras, extra_seeds=args.extra_seeds)
    if args.stage in ("all", "report"):
        from bench.value.report import write_report

        write_report(args, budget)


if __name__ == "__main__":
    main()
