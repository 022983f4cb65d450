"""The main job: what TF-LLMER is for, on MovieLens-100K, through the real service.

1. start the service (embedded SQLite store and the CPU encoder by default; set
   ``TFLLMER_STORE_URL=redis://…`` to run the same loop on Redis);
2. ingest and encode the catalog (admin CLI);
3. fit version 1 with λ = 0 — no co-occurrence counts exist yet, so it is plain PCA of the
   normalized vectors ("PCA + norm", what a careful team does today);
4. train a SASRec worker on version 1; it pushes the counts of its training sequences;
5. refit with TF-LLMER's default formulation (Rec-PCA with the counts) as version 2 and
   activate it; train again on version 2 with the same settings;
6. train a third time from the raw encoder vectors reduced by PCA with no normalization
   ("LLM-raw-PCA", the LLM-init recipe that hits the optimization barrier);

then print one table (loss, epochs to reach 95 % of PCA + norm's best validation NDCG@10,
validation and test NDCG@10, zero-shot NDCG@10 of each initial table) and write it with one
PNG of the three loss and validation curves under ``runs/demo/``. Every run has the same
fixed epoch budget (no early stopping), so the curves compare like with like.

    python -m bench.demo [--epochs 12] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.quality.prepare import raw_pca
from bench.report import markdown_table
from bench.service_calls import ingest, refit
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.background import BackgroundServer
from trainer_client import worker
from trainer_client.client import EmbeddingClient
from trainer_client.datasets import dataset_dir, fetch
from trainer_client.evaluation import epochs_to_quality, evaluate_zero_shot
from trainer_client.training import TrainResult, save_loss_curve

DATASET = "ml-100k"
LR, TEMPERATURE = 3e-3, 0.2  # as in bench.value (chosen on validation by bench.quality)
QUALITY_SHARE = 0.95
COLUMNS = ("item table", "normalized", "final training loss", "epochs to quality",
           "best valid NDCG@10", "test NDCG@10", "zero-shot test NDCG@10")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per training run [12]")
    parser.add_argument("--dim", type=int, default=64, help="served dimension [64]")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    return parser.parse_args(argv)


def step(message: str) -> None:
    print(f"\n=== {message}", flush=True)


def train(address: str, catalog: str, args: argparse.Namespace, version: int,
          run_id: str, push: bool) -> dict[str, Any]:
    """One worker run on a served version; the worker id is unique to this demo run, so a
    rerun never resumes an older run's push state."""
    options = ["--server", address, "--catalog", catalog, "--version", str(version),
               "--data", str(dataset_dir(DATASET)), "--backbone", "sasrec", "--mode", "init",
               "--epochs", str(args.epochs), "--patience", str(args.epochs),
               "--lr", str(LR), "--temperature", str(TEMPERATURE), "--no-progress",
               "--worker-id", f"demo-{run_id}", "--out", str(args.out / f"v{version}"),
               "--push" if push else "--no-push"]
    return worker.run(worker.parse_args(options))


def train_raw(address: str, catalog: str, args: argparse.Namespace) -> tuple[dict, Any]:
    """The same run from the raw encoder vectors, PCA-reduced, no normalization."""
    from trainer_client.interactions import build_sequences
    from trainer_client.models.item_table import ItemTableConfig
    from trainer_client.models.registry import build_model
    from trainer_client.recbole_data import read_interactions
    from trainer_client.sequences import leave_one_out
    from trainer_client.training import TrainConfig, seed_everything
    from trainer_client.training import train as train_loop

    with EmbeddingClient(address) as client:
        raw = client.fetch_embeddings(catalog, kind="raw")
    row_of = {item: int(row) for item, row in zip(raw.item_ids, raw.rows, strict=True)}
    inter = dataset_dir(DATASET) / f"{DATASET}.inter"
    split = leave_one_out(build_sequences(read_interactions(inter), row_of)[0])
    table = raw_pca(raw.vectors, args.dim)
    seed_everything(0)
    model = build_model("sasrec", len(table), args.dim, {"max_len": 50},
                        table=ItemTableConfig("init", False), item_vectors=table)
    result = train_loop(model, split, TrainConfig(epochs=args.epochs, patience=args.epochs,
                                                  lr=LR, progress=False))
    return {"result": asdict(result)}, (table, split)


def summary_rows(runs: dict[str, dict[str, Any]], zero_shot: dict[str, float]
                 ) -> list[dict[str, Any]]:
    pca_best = runs["PCA + norm"]["result"]["best_valid"]["NDCG@10"]
    rows = []
    for label, report in runs.items():
        result = report["result"]
        epochs, _ = epochs_to_quality(result["valid_curve"], result["valid_seconds"],
                                      QUALITY_SHARE * pca_best)
        rows.append({
            "item table": label, "normalized": label != "LLM-raw-PCA",
            "final training loss": result["losses"][-1],
            "epochs to quality": epochs if epochs is not None else f"> {len(result['losses'])}",
            "best valid NDCG@10": result["best_valid"]["NDCG@10"],
            "test NDCG@10": result["test"]["NDCG@10"],
            "zero-shot test NDCG@10": zero_shot[label],
        })
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    fetch(DATASET)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    catalog = f"{DATASET}-demo-{run_id}"  # a fresh catalog even on a persistent Redis
    store_url = os.environ.get("TFLLMER_STORE_URL")
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store_url = store_url or str(Path(scratch) / "demo.db")
        step(f"starting the service (store: {'Redis' if '://' in store_url else 'embedded'})")
        with BackgroundServer(store_url=store_url, version_cache_size=2) as service:
            address = service.address
            step(f"ingesting and encoding the catalog {catalog}")
            ingest(address, catalog, DATASET)
            step("version 1: λ = 0 (no co-occurrence counts yet) = PCA + norm")
            v1 = refit(address, catalog, pb.FitParameters(dim=args.dim, lam=0.0))
            step(f"training SASRec on version 1 for {args.epochs} epochs, pushing its counts")
            runs["PCA + norm"] = train(address, catalog, args, v1.version, run_id, push=True)
            step("version 2: TF-LLMER's default Rec-PCA fit, now with the pushed counts")
            v2 = refit(address, catalog, pb.FitParameters(dim=args.dim))
            step("training SASRec on version 2")
            runs["TF-LLMER (served v2)"] = train(address, catalog, args, v2.version, run_id,
                                                 push=False)
            step("training SASRec on the raw encoder vectors (PCA, no normalization)")
            runs["LLM-raw-PCA"], (raw_table, split) = train_raw(address, catalog, args)
            with EmbeddingClient(address) as client:
                served = {version: client.fetch_embeddings(catalog, version=version).vectors
                          for version in (v1.version, v2.version)}
    zero_shot = {label: evaluate_zero_shot(table, split, "test")["NDCG@10"]
                 for label, table in (("PCA + norm", served[v1.version]),
                                      ("TF-LLMER (served v2)", served[v2.version]),
                                      ("LLM-raw-PCA", raw_table))}
    order = ["LLM-raw-PCA", "PCA + norm", "TF-LLMER (served v2)"]
    runs = {label: runs[label] for label in order}
    rows = summary_rows(runs, zero_shot)
    table = markdown_table(rows, COLUMNS)
    curves = {label: TrainResult(**{k: v for k, v in report["result"].items()
                                    if k in TrainResult.__dataclass_fields__})
              for label, report in runs.items()}
    png = save_loss_curve(curves, args.out / "loss_curves.png")
    elapsed = time.perf_counter() - started
    d = v2.diagnostics
    summary = {"rows": rows, "epochs": args.epochs, "lr": LR, "temperature": TEMPERATURE,
               "popularity": runs["PCA + norm"]["popularity"], "seconds": elapsed,
               "v2": {"lam": d.lam, "retained_variance": d.retained_variance,
                      "alignment": d.alignment, "pca_alignment": d.pca_alignment,
                      "whitening": d.whitening,
                      "transform": pb.GraphTransform.Name(v2.parameters.graph.transform)},
               "store": "redis" if "://" in store_url else "embedded"}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(f"{table}\n")
    step(f"done in {elapsed:.0f} s")
    print(table)
    print(f"\nversion 2: λ = {d.lam:.4g}, retained variance {d.retained_variance:.3f}, "
          f"alignment@10 {d.alignment:.4f} (plain PCA {d.pca_alignment:.4f})")
    print(f"loss and validation curves: {png}; summary: {args.out / 'summary.md'}")
    return summary


if __name__ == "__main__":
    main()
