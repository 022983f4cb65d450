"""How many co-occurrence pairs per second a worker gets into Redis through the service.

A worker's counts: the within-window pairs (window 3, counts) of MovieLens-1M's training
prefixes (leave-one-out), as ``trainer_client.cooccurrence.window_pairs`` yields them, one
pair per co-occurrence. The catalog holds MovieLens-1M's item ids (raw vectors synthetic,
written through the store API: pushing needs only the item count). The real server runs as
``python -m server`` against a private ``redis-server``; the real ``CooccurrencePusher``
(default batch size and batches per call, state file on local disk) pushes every pair,
and the clock stops when the last call is acknowledged, i.e. every batch is committed in
Redis. Each repeat pushes under a fresh worker id, so nothing is a duplicate; a second push
of the same input (every batch a duplicate) is timed too.

    python -m bench.push [--repeats 5 --copies 4]

``--copies k`` pushes the pairs k times over (as k workers' shards, one after the other in
one pusher call), for longer runs. Prints a table and writes ``bench/results/push.{json,md}``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import config_from, config_parser, median_of, server_process
from bench.harness import progress as _progress
from bench.report import RESULTS_DIR, Target, machine_info, write_results
from harness.redis_server import RedisServer
from server.stores.base import EncoderIdentity, ItemChanges
from server.stores.redis_store import RedisStore
from trainer_client.client import EmbeddingClient
from trainer_client.cooccurrence import window_pairs
from trainer_client.pusher import CooccurrencePusher

NAME = "push"
CATALOG = "bench-push"
DATASET = "ml-1m"
WINDOW = 3
TARGET_PAIRS_PER_S = 5e6


@dataclass(frozen=True)
class Config:
    repeats: int = 5
    copies: int = 4
    batch_pairs: int = 100_000
    batches_per_call: int = 8


def progress(message: str) -> None:
    _progress(NAME, message)


def worker_pairs(copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], float]:
    from trainer_client.datasets import fetch
    from trainer_client.recbole_data import load_recbole
    from trainer_client.sequences import leave_one_out

    data = load_recbole(fetch(DATASET))
    train = leave_one_out(data.sequences).train
    start = time.perf_counter()
    rows, cols, weights = window_pairs(train, WINDOW)
    count_s = time.perf_counter() - start
    if copies > 1:
        rows, cols, weights = (np.tile(a, copies) for a in (rows, cols, weights))
    return rows, cols, weights, data.catalog.item_ids, count_s


def run(config: Config) -> dict[str, Any]:
    rows, cols, weights, item_ids, count_s = worker_pairs(config.copies)
    progress(f"{len(rows)} pairs over {len(item_ids)} items")
    timings: list[float] = []
    duplicate_timings: list[float] = []
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        store = RedisStore(redis.url)
        encoder = EncoderIdentity("synthetic", 8)
        store.create_catalog(CATALOG, encoder)
        store.commit_items(CATALOG, ItemChanges(
            base_count=0, new_ids=item_ids, new_text_hashes=["0" * 64] * len(item_ids),
            new_vectors=np.ones((len(item_ids), encoder.dim), np.float32)))
        with server_process(redis.url, Path(tmp) / "server.log") as server, \
                EmbeddingClient(server.address, token="") as client:
            client.describe(CATALOG)  # connect before the clock starts
            for repeat in range(config.repeats):
                progress(f"repeat {repeat + 1}/{config.repeats}")
                pusher = CooccurrencePusher(
                    client, CATALOG, f"worker-{repeat}", Path(tmp) / f"state-{repeat}.json",
                    config.batch_pairs, config.batches_per_call)
                start = time.perf_counter()
                summary = pusher.push(rows, cols, weights)
                timings.append(time.perf_counter() - start)
                assert summary.pairs_added == len(rows) and summary.duplicates == 0
                again = CooccurrencePusher(
                    client, CATALOG, f"worker-{repeat}", Path(tmp) / f"again-{repeat}.json",
                    config.batch_pairs, config.batches_per_call)
                start = time.perf_counter()
                summary = again.push(rows, cols, weights)
                duplicate_timings.append(time.perf_counter() - start)
                assert summary.pairs_added == 0 and summary.duplicates == summary.batches
            totals = store.cooccurrence_totals(CATALOG)
        store.close()
    assert totals.pairs == config.repeats * len(rows)
    return {"pairs": int(len(rows)), "items": len(item_ids), "count_s": count_s,
            "times_s": timings, "duplicate_times_s": duplicate_timings,
            "stored_pairs": totals.pairs}


def report(config: Config, raw: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    seconds = median_of(raw["times_s"])
    rate = raw["pairs"] / seconds
    duplicate_rate = raw["pairs"] / median_of(raw["duplicate_times_s"])
    checks = [Target("pairs_per_s", "pairs/s pushed end to end", rate, TARGET_PAIRS_PER_S,
                     at_most=False)]
    rows = [
        {"push": "new batches", "pairs": raw["pairs"], "median_s": seconds,
         "times_s": raw["times_s"], "pairs_per_s": rate, "MB_per_s": raw["pairs"] * 12 / 2**20
         / seconds},
        {"push": "all duplicates (retry)", "pairs": raw["pairs"],
         "median_s": median_of(raw["duplicate_times_s"]), "times_s": raw["duplicate_times_s"],
         "pairs_per_s": duplicate_rate},
    ]
    machine = machine_info()
    payload = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": machine,
        "dataset": DATASET,
        "window": WINDOW,
        "raw": raw,
        "pairs_per_s": rate,
        "duplicate_pairs_per_s": duplicate_rate,
        "targets": {check.key: check.to_dict() for check in checks},
    }
    notes = [
        f"{DATASET} training prefixes, window {WINDOW}, {config.copies} cop"
        f"{'y' if config.copies == 1 else 'ies'}: {raw['pairs']} pairs over {raw['items']} "
        f"items (one copy counted in {raw['count_s']:.3g} s, not included); "
        f"batches of {config.batch_pairs} pairs, {config.batches_per_call} per call; "
        f"{machine['nproc']} cores ({machine['cpu_model']}), client, server and Redis on one "
        f"machine; medians of {config.repeats} repeats",
        *(check.note() for check in checks),
    ]
    json_path, md_path = write_results(
        NAME, payload, rows, ["push", "pairs", "median_s", "times_s", "pairs_per_s", "MB_per_s"],
        notes, results_dir)
    progress(f"wrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = config_parser("python -m bench.push", __doc__, Config())
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.copies < 1:
        parser.error("need --repeats >= 1 and --copies >= 1")
    return config_from(args, Config), args.results_dir


def main(argv: list[str] | None = None) -> None:
    config, results_dir = parse_args(argv)
    report(config, run(config), results_dir)


if __name__ == "__main__":
    main()
