"""Rec-PCA on real MovieLens: λ and retention budget ρ against variance, graph TV, alignment.

Item texts ("Title (year). Genres: …") are encoded with all-MiniLM-L6-v2 (pooled, not
normalized); co-occurrence counts come from training prefixes only (the last two items of
every user are held out, as leave-one-out evaluation will hold them out). The moments are
computed once; every row of the table is one D×D solve on them.

    python -m bench.recpca_movielens --dataset ml-100k
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.report import machine_info, write_results
from server.encoders.sentence_transformer import SentenceTransformerEncoder
from server.recpca import (
    FitSettings,
    GraphOptions,
    build_graph,
    compute_moments,
    diagnose,
    fit_projection,
    plain_pca,
    transform_together,
)
from server.recpca.graph import TRANSFORMS
from trainer_client.cooccurrence import count_cooccurrences
from trainer_client.datasets import DATASETS, dataset_dir, fetch
from trainer_client.recbole_data import load_recbole
from trainer_client.sequences import leave_one_out

LAMBDAS = (0.5, 0.9, 0.95, 0.97, 1.0, 1.02, 1.05, 1.1)
RETENTIONS = (0.99, 0.95, 0.9, 0.85, 0.8, 0.7)
COLUMNS = ("setting", "lambda", "retained variance", "graph TV", "alignment@10",
           "alignment vs PCA")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.recpca_movielens", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-100k")
    parser.add_argument("--dim", type=int, default=64, help="reduced dimension d")
    parser.add_argument("--window", type=int, default=3, help="co-occurrence window")
    parser.add_argument("--transform", choices=TRANSFORMS, default="identity",
                        help="graph transform applied to the counts")
    parser.add_argument("--top-k", type=int, default=50, help="neighbours kept by 'topk'")
    parser.add_argument("--k", type=int, default=10, help="k of alignment@k")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    fetch(args.dataset)
    dataset = load_recbole(dataset_dir(args.dataset))
    n_items = len(dataset.catalog)
    print(f"{args.dataset}: {n_items} items, {len(dataset.sequences)} users, "
          f"{len(dataset.sequences.items)} interactions")

    started = time.perf_counter()
    encoder = SentenceTransformerEncoder(output="pooled")
    with tqdm(total=n_items, desc="encoding", unit="item") as bar:
        raw = encoder.encode(dataset.catalog.texts, progress=bar.update)
    encode_seconds = time.perf_counter() - started
    norms = np.linalg.norm(raw, axis=1)

    train = leave_one_out(dataset.sequences).train
    counts = count_cooccurrences(train, n_items, window=args.window)
    options = GraphOptions(args.transform, args.top_k)
    graph = build_graph(counts, n_items, options)
    moments = compute_moments(raw, graph)
    print(f"encoded in {encode_seconds:.1f}s; {graph.n_edges} co-occurrence edges from "
          f"{len(train.items)} training interactions; tr(G)/tr(S) = "
          f"{moments.trace_graph / moments.trace_scatter:.3f}")

    base = FitSettings(dim=args.dim, lam=0.0, graph=options)
    settings = [("plain PCA (λ = 0)", base)]
    settings += [(f"λ = {lam:g}", replace(base, lam=lam)) for lam in LAMBDAS]
    settings += [(f"ρ = {rho:g}", replace(base, lam=None, retention=rho)) for rho in RETENTIONS]
    rows, fits = [], []
    for label, setting in settings:
        projection, pca = fit_projection(moments, setting), plain_pca(moments, setting)
        vectors, pca_vectors = transform_together(raw, [projection, pca])
        spaces = (lambda v=vectors: [v], lambda v=pca_vectors: [v])
        report = diagnose(moments, projection, pca, spaces, counts, setting,
                          args.k, None, graph.n_edges)
        fits.append({"setting": label, **report.to_dict()})
        rows.append({
            "setting": label,
            "lambda": report.lam,
            "retained variance": report.retained_variance,
            "graph TV": report.graph_tv,
            "alignment@10": report.alignment,
            "alignment vs PCA": report.alignment / report.pca_alignment,
        })

    payload = {
        "dataset": args.dataset,
        "encoder": encoder.name,
        "n_items": n_items,
        "raw_dim": encoder.dim,
        "dim": args.dim,
        "window": args.window,
        "graph": {"transform": args.transform, "top_k": args.top_k, "edges": graph.n_edges},
        "train_interactions": int(len(train.items)),
        "raw_norms": {"min": float(norms.min()), "median": float(np.median(norms)),
                      "max": float(norms.max())},
        "trace_graph_over_scatter": moments.trace_graph / moments.trace_scatter,
        "encode_seconds": encode_seconds,
        "fits": fits,
        "machine": machine_info(),
    }
    notes = [
        f"{args.dataset}, {n_items} items, {encoder.name}, d = {args.dim}, window {args.window}, "
        f"graph {args.transform}; counts from training prefixes only (last two items held out)",
        "retained variance = tr(WᵀSW)/tr(S); graph TV = tr(WᵀGW)/tr(G); alignment@10 = "
        "overlap of served-space and co-occurrence top-10 neighbours",
        f"tr(G)/tr(S) = {payload['trace_graph_over_scatter']:.3f}; raw pooled norms "
        f"{norms.min():.2f}–{norms.max():.2f} (what row normalization removes)",
    ]
    suffix = "" if args.transform == "identity" else f"_{args.transform}"
    write_results(f"recpca_movielens_{args.dataset}{suffix}", payload, rows, COLUMNS, notes)
    return payload


if __name__ == "__main__":
    main()
