"""A trainer worker: fetch served vectors, push co-occurrence counts, train a backbone.

    python -m trainer_client.worker --server HOST:PORT --catalog ml-100k \\
        --data .cache/data/ml-100k --backbone sasrec --mode init --epochs 50 --out runs/v2
    torchrun --nproc_per_node 2 -m trainer_client.worker …   # DDP: gloo on CPU, NCCL on GPU

Item ids in the data are mapped through the service's catalog, so sequences, pushed counts
and served vectors share row indices. Under torchrun every rank fetches the vectors itself
and pushes the counts of its own shard of users (worker id ``<worker-id>-rank<r>``); rank 0
writes the metrics JSON and the loss curve PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from protos import connection
from trainer_client.client import EmbeddingClient, EmbeddingTable, ServiceError
from trainer_client.cooccurrence import window_pairs
from trainer_client.interactions import build_sequences, read_csv_interactions
from trainer_client.pusher import CooccurrencePusher
from trainer_client.recbole_data import read_interactions
from trainer_client.sequences import UserSequences, leave_one_out

log = logging.getLogger(__name__)
BACKBONES = ("sasrec", "gru4rec")
MODES = ("id", "init", "frozen")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer_client.worker", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    service = parser.add_argument_group("service")
    connection.add_arguments(service, token_help="trainer bearer token")
    service.add_argument("--catalog", required=True, help="catalog name on the service")
    service.add_argument("--version", type=int, default=0,
                         help="catalog version to pin (default 0: the active one)")
    service.add_argument("--wait-version", type=int, default=0, metavar="N",
                         help="first wait (WatchCatalog) until version N or a later one is "
                         "active, then pin the active version")
    service.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS",
                         help="give up waiting for --wait-version after this long (3600)")
    service.add_argument("--pin-active", action="store_true",
                         help="pin the version active when the worker started: every rank "
                         "trains on the one rank 0 saw, even if another is activated meanwhile")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True,
                      help="RecBole dataset folder (with <name>.inter) or a CSV of interactions")
    data.add_argument("--csv-columns", default="user_id,item_id,timestamp",
                      help="CSV column names: user,item[,time] (default %(default)s)")
    counts = parser.add_argument_group("co-occurrence counts")
    counts.add_argument("--push", action=argparse.BooleanOptionalAction, default=True,
                        help="push this worker's co-occurrence counts (default on)")
    counts.add_argument("--window", type=int, default=3,
                        help="co-occurrence window over training sequences (default 3)")
    counts.add_argument("--worker-id", default="worker",
                        help="idempotency id of this worker's pushes; ranks append -rank<r>")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default="sasrec", help="backbone")
    model.add_argument("--mode", choices=MODES, default="init",
                       help="item table: id (random), init (served vectors, trainable), "
                            "frozen (served vectors fixed + linear adapter)")
    model.add_argument("--dim", type=int, default=64,
                       help="model dim (mode id; init/frozen take the served dim for init)")
    model.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                       help="item-embedding normalization with cosine logits (default: on "
                            "with served vectors, off with mode id)")
    model.add_argument("--temperature", type=float, default=0.1,
                       help="temperature τ of cosine logits (default 0.1)")
    model.add_argument("--max-len", type=int, default=50, help="max sequence length (50)")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=200,
                          help="upper bound on epochs; early stopping ends sooner (200)")
    training.add_argument("--patience", type=int, default=10,
                          help="validations without a better NDCG@10 before stopping (10)")
    training.add_argument("--batch-size", type=int, default=128, help="users per step (128)")
    training.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    training.add_argument("--seed", type=int, default=0, help="random seed (0)")
    training.add_argument("--mask-seen", action="store_true",
                          help="exclude items of the input history from the ranking")
    training.add_argument("--cold-start", choices=("auto", "off"), default="auto",
                          help="items absent from training: auto (default) keeps them out of "
                               "the training softmax and scores them through a map from "
                               "served vectors; off trains them as plain negatives")
    training.add_argument("--out", type=Path, default=Path("runs/worker"),
                          help="where rank 0 writes metrics.json and loss.png")
    training.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    connection.check_arguments(parser, args)
    return args


def load_interactions(args: argparse.Namespace, row_of: dict[str, int]
                      ) -> tuple[UserSequences, int]:
    if args.data.is_dir():
        inter = args.data / f"{args.data.name}.inter"
        if not inter.is_file():
            raise SystemExit(f"error: {inter} not found")
        return build_sequences(read_interactions(inter), row_of)
    columns = args.csv_columns.split(",")
    if len(columns) not in (2, 3):
        raise SystemExit("error: --csv-columns takes user,item[,time]")
    return build_sequences(read_csv_interactions(args.data, *columns), row_of)


def distributed_context() -> tuple[int, int, Any]:
    """Rank and world size from torchrun's environment, with the process group started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world, dist


def resolve_version(client: EmbeddingClient, args: argparse.Namespace, rank: int,
                    dist: Any) -> int:
    """The version every rank pulls: ``--version``; or, with ``--wait-version`` or
    ``--pin-active``, the active one that rank 0 waited for or found at start, broadcast so
    that all ranks agree."""
    if args.version or not (args.wait_version or args.pin_active):
        return int(args.version)
    version = 0
    if rank == 0:
        if args.wait_version:
            version = client.wait_for_version(args.catalog, args.wait_version,
                                              args.wait_timeout)
        else:
            version = client.describe(args.catalog).active_version
            if not version:
                raise SystemExit(f"error: catalog {args.catalog!r} has no active version to pin")
        log.info("catalog %s: pinned version %d", args.catalog, version)
    if dist is not None:
        shared = [version]
        dist.broadcast_object_list(shared, src=0)
        version = int(shared[0])
    return version


def fetch_table(client: EmbeddingClient, args: argparse.Namespace) -> EmbeddingTable:
    """The served vectors (modes init/frozen) or just the catalog's ids and rows (mode id)."""
    if args.mode == "id" and args.version == 0:
        return client.fetch_embeddings(args.catalog, kind="raw", dtype="float16")
    return client.fetch_embeddings(args.catalog, version=args.version)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from trainer_client.evaluation import evaluate_popularity
    from trainer_client.models.item_table import ItemTableConfig
    from trainer_client.models.registry import build_model
    from trainer_client.training import TrainConfig, save_loss_curve, seed_everything, train

    rank, world, dist = distributed_context()
    client = EmbeddingClient.from_connection(connection.Connection.from_args(args))
    with client:
        args.version = resolve_version(client, args, rank, dist)
        table = fetch_table(client, args)
        row_of = {item_id: int(row) for item_id, row in zip(table.item_ids, table.rows,
                                                              strict=True)}
        sequences, dropped = load_interactions(args, row_of)
        split = leave_one_out(sequences)
        pushed = None
        if args.push:
            shard = np.arange(rank, len(split.train), world)
            pusher = CooccurrencePusher(
                client, args.catalog, f"{args.worker_id}-rank{rank}",
                args.out / f"push-state-rank{rank}.json",
            )
            own = _subset(split.train, shard)
            pushed = asdict(pusher.push(*window_pairs(own, args.window)))
    n_items = len(table.item_ids)
    vectors = None if args.mode == "id" else table.vectors
    dim = args.dim if vectors is None else table.dim
    seed_everything(args.seed)
    model = build_model(
        args.backbone, n_items, dim, {"max_len": args.max_len},
        table=ItemTableConfig(args.mode, args.normalize, args.temperature),
        item_vectors=vectors,
    )
    config = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, mask_seen=args.mask_seen,
                         cold_start=args.cold_start,
                         progress=not args.no_progress)
    result = train(model, split, config)
    popularity = {stage: evaluate_popularity(split, n_items, stage,
                                             mask_seen=args.mask_seen).values
                  for stage in ("valid", "test")}
    report = {
        "catalog": args.catalog, "version": table.version, "backbone": args.backbone,
        "mode": args.mode, "normalized": model.item_table.config.normalized,
        "temperature": args.temperature, "dim": dim, "n_items": n_items,
        "users": len(sequences), "dropped_interactions": dropped, "world_size": world,
        "pushed": pushed, "result": asdict(result), "popularity": popularity,
        "torch_threads": torch.get_num_threads(),
    }
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        save_loss_curve({f"{args.backbone}/{args.mode} v{table.version}": result},
                        args.out / "loss.png")
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'loss.png'}")
    if dist is not None:
        dist.barrier()  # ranks leave together: tearing gloo down under a busy peer can abort
        dist.destroy_process_group()
    return report


def _subset(sequences: UserSequences, users: np.ndarray) -> UserSequences:
    """The sequences of the given users, in that order."""
    lengths = sequences.lengths[users]
    pieces = [sequences[u] for u in users]
    items = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    return UserSequences([sequences.users[u] for u in users], items, offsets)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
