"""How fast the real server serves embeddings, next to the transport floor, in one run.

Set-up: a private ``redis-server``; a synthetic catalog of ``--items`` items (ids
``item-00000000…``, raw vectors of dim ``--dim`` written straight through the store API, no
encoding) and one active version of ``--dim`` reduced unit vectors (written with
``write_version``, as a refit would). The real server runs as ``python -m server`` against
that Redis; the floor is ``bench.floor_server`` (a bare ``grpc.aio`` generic handler in its
own process) holding the same bytes in memory. Both are read by the real client,
``EmbeddingClient.fetch_embeddings``, which assembles every pull into one float32 matrix.

* **full pulls** (no ids, every item in row order), float32 and float16, default chunk size:
  - ``floor``: the bare server streams the exact messages the real server sent for the same
    request (captured once as raw bytes);
  - ``cached``: the real server with the version already in its memory (after a warm-up
    pull);
  - ``cold``: a freshly started server process, so the version comes from Redis.
* **random look-ups**: ``--clients`` threads, each with its own ``EmbeddingClient`` (own
  channel), each request ``--ids-per-request`` random ids (float32); for ``--lookup-seconds``
  against the floor (dict + ``numpy.take`` of the same rows) and against the real server
  (version cached). Requests/s over all clients, p50/p99 latency per request.

Every repeat measures floor and server back to back, alternating which goes first (after
one untimed warm-up pull of each); the reported figures are medians over ``--repeats``, and
each ratio is median floor time / median server time (requests/s: server / floor).
Prints a table and writes ``bench/results/serving.{json,md}``.

    python -m bench.serving [--items 1000000 --dim 64 --repeats 5]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor_server import capture_stream, write_floor_data
from bench.harness import (
    MB,
    REPO_ROOT,
    config_from,
    config_parser,
    item_id,
    load_synthetic_catalog,
    median_of,
    server_process,
    write_synthetic_version,
)
from bench.harness import progress as _progress
from bench.report import RESULTS_DIR, Target, machine_info, write_results
from harness.ports import free_port
from harness.redis_server import RedisServer
from protos.tfllmer.v1 import embedding_service_pb2 as pb
from server.stores.base import EncoderIdentity
from server.stores.redis_store import RedisStore
from trainer_client.client import EmbeddingClient

NAME = "serving"
CATALOG = "bench-serving"
DTYPES = ("float32", "float16")
WIRE = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}


@dataclass(frozen=True)
class Config:
    items: int = 1_000_000
    dim: int = 64
    repeats: int = 5
    clients: int = 16
    ids_per_request: int = 256
    lookup_seconds: float = 5.0
    seed: int = 0


def progress(message: str) -> None:
    _progress(NAME, message)


class FloorProcess:
    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data = data
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> FloorProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_server", "--port", str(self.port),
             "--data", str(self.data)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the floor server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


def timed_pull(address: str, dtype: str) -> float:
    with EmbeddingClient(address, token="") as client:
        client.describe(CATALOG)  # connect before the clock starts
        start = time.perf_counter()
        table = client.fetch_embeddings(CATALOG, dtype=dtype)
        seconds = time.perf_counter() - start
    assert len(table.rows) > 0
    return seconds


def timed_floor_pull(address: str, dtype: str) -> float:
    with EmbeddingClient(address, token="") as client:
        client.fetch_embeddings(CATALOG, dtype=dtype, ids=[item_id(0)])  # connect first
        start = time.perf_counter()
        table = client.fetch_embeddings(CATALOG, dtype=dtype)
        seconds = time.perf_counter() - start
    assert len(table.rows) > 0
    return seconds


def lookups(address: str, config: Config, requests: list[list[str]]) -> dict[str, float]:
    """``config.clients`` threads issuing look-ups for ``lookup_seconds``; each thread walks
    its own slice of the pre-drawn requests (cycling)."""
    clients = [EmbeddingClient(address, token="") for _ in range(config.clients)]
    for client in clients:  # connect (and warm) every channel before the clock starts
        client.fetch_embeddings(CATALOG, ids=requests[0])
    latencies: list[list[float]] = [[] for _ in clients]
    stop_at = [0.0]
    barrier = threading.Barrier(len(clients) + 1)

    def run(index: int) -> None:
        client, mine = clients[index], latencies[index]
        barrier.wait()
        k = index
        while time.perf_counter() < stop_at[0]:
            ids = requests[k % len(requests)]
            k += len(clients)
            start = time.perf_counter()
            table = client.fetch_embeddings(CATALOG, ids=ids)
            mine.append(time.perf_counter() - start)
            assert len(table.rows) == len(ids)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + config.lookup_seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    every = np.concatenate([np.asarray(x) for x in latencies])
    return {"requests": int(len(every)), "requests_per_s": len(every) / wall,
            "p50_ms": float(np.percentile(every, 50) * 1000),
            "p99_ms": float(np.percentile(every, 99) * 1000)}


def run(config: Config) -> dict[str, Any]:
    rng = np.random.default_rng(config.seed)
    requests = [[item_id(r) for r in rng.integers(0, config.items, config.ids_per_request)]
                for _ in range(4096)]
    encoder = EncoderIdentity("synthetic", config.dim)
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        store = RedisStore(redis.url)
        progress(f"loading {config.items} items and a version of dim {config.dim} into Redis")
        load_synthetic_catalog(store, CATALOG, config.items, encoder, "<f2", config.seed)
        version = write_synthetic_version(store, CATALOG, config.items, encoder, config.dim)
        reduced = store.read_reduced(CATALOG, version, 0, config.items)
        ids = store.item_ids(CATALOG, 0, config.items)
        log = Path(tmp) / "server.log"
        full: dict[str, dict[str, list[float]]] = {
            d: {"floor": [], "cached": [], "cold": []} for d in DTYPES}
        look: dict[str, list[dict[str, float]]] = {"floor": [], "server": []}
        with server_process(redis.url, log) as server:
            progress("capturing the real server's streams for the floor")
            streams = {d: capture_stream(server.address, pb.GetItemEmbeddingsRequest(
                catalog=CATALOG, dtype=WIRE[d])) for d in DTYPES}
            header = pb.GetItemEmbeddingsResponse.FromString(streams["float32"][0]).header
            write_floor_data(Path(tmp) / "floor", streams, ids, reduced, header)
            stream_bytes = {d: sum(map(len, m)) for d, m in streams.items()}
            messages = {d: len(m) for d, m in streams.items()}
            del streams, reduced, ids
            with FloorProcess(Path(tmp) / "floor") as floor:
                for dtype in DTYPES:  # warm-up: first pulls of each kind, not timed
                    timed_floor_pull(floor.address, dtype)
                    timed_pull(server.address, dtype)
                for repeat in range(config.repeats):
                    # Alternate who goes first, so a drift in the machine's load between the
                    # two measurements of a repeat does not always favour the same side.
                    order = ("floor", "server") if repeat % 2 == 0 else ("server", "floor")
                    progress(f"repeat {repeat + 1}/{config.repeats}: full pulls, cached")
                    for dtype in DTYPES:
                        for side in order:
                            if side == "floor":
                                full[dtype]["floor"].append(timed_floor_pull(floor.address, dtype))
                            else:
                                full[dtype]["cached"].append(timed_pull(server.address, dtype))
                    progress(f"repeat {repeat + 1}/{config.repeats}: random look-ups")
                    for side in order:
                        address = floor.address if side == "floor" else server.address
                        look[side].append(lookups(address, config, requests))
        for repeat in range(config.repeats):
            for dtype in DTYPES:
                progress(f"repeat {repeat + 1}/{config.repeats}: cold {dtype} pull (new process)")
                with server_process(redis.url, log) as cold:
                    full[dtype]["cold"].append(timed_pull(cold.address, dtype))
        store.close()
    return {"full": full, "lookups": look, "stream_bytes": stream_bytes, "messages": messages}


def summarize(config: Config, raw: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Target]]:
    rows, checks = [], []
    for dtype in DTYPES:
        times = raw["full"][dtype]
        floor = median_of(times["floor"])
        size = raw["stream_bytes"][dtype]
        for mode in ("floor", "cached", "cold"):
            seconds = median_of(times[mode])
            rows.append({"test": f"full pull {dtype}", "server": mode, "median_s": seconds,
                         "times_s": times[mode], "MB_per_s": size / MB / seconds,
                         "vs_floor": floor / seconds})
        checks.append(Target(f"cached_{dtype}", f"cached {dtype} full pull: floor s / server s",
                             floor / median_of(times["cached"]), 0.8, at_most=False))
        checks.append(Target(f"cold_{dtype}", f"cold {dtype} full pull: floor s / server s",
                             floor / median_of(times["cold"]), 0.5, at_most=False))
    summary = {}
    for mode in ("floor", "server"):
        runs = raw["lookups"][mode]
        summary[mode] = {key: median_of([r[key] for r in runs])
                         for key in ("requests_per_s", "p50_ms", "p99_ms")}
        rows.append({"test": f"look-ups {config.clients}×{config.ids_per_request} ids",
                     "server": mode if mode == "floor" else "cached",
                     "req_per_s": summary[mode]["requests_per_s"],
                     "p50_ms": summary[mode]["p50_ms"], "p99_ms": summary[mode]["p99_ms"],
                     "vs_floor": summary[mode]["requests_per_s"]
                     / summary["floor"]["requests_per_s"]})
    checks.append(Target("lookups", "look-ups: server req/s / floor req/s",
                         summary["server"]["requests_per_s"]
                         / summary["floor"]["requests_per_s"], 0.7, at_most=False))
    return rows, checks


def report(config: Config, raw: dict[str, Any], results_dir: Path = RESULTS_DIR) -> None:
    rows, checks = summarize(config, raw)
    machine = machine_info()
    payload = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "machine": machine,
        "data": "synthetic: ids item-<row>, raw and reduced vectors random, written through "
                "the store API (no encoding)",
        "stream_bytes": raw["stream_bytes"],
        "messages": raw["messages"],
        "results": rows,
        "raw": raw,
        "targets": {check.key: check.to_dict() for check in checks},
    }
    columns = ["test", "server", "median_s", "times_s", "MB_per_s", "req_per_s", "p50_ms",
               "p99_ms", "vs_floor"]
    notes = [
        f"{config.items} items × d = {config.dim}, synthetic vectors written through the store "
        f"API; {machine['nproc']} cores ({machine['cpu_model']}), client, server, floor and "
        "Redis on the same machine, loopback; medians of "
        f"{config.repeats} repeats",
        "stream MB: " + ", ".join(f"{d} {raw['stream_bytes'][d] / MB:.1f} in "
                                  f"{raw['messages'][d]} messages" for d in DTYPES),
        *(check.note() for check in checks),
    ]
    json_path, md_path = write_results(NAME, payload, rows, columns, notes, results_dir)
    progress(f"wrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = config_parser("python -m bench.serving", __doc__, Config())
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.items < 2:
        parser.error("need --repeats >= 1 and --items >= 2")
    return config_from(args, Config), args.results_dir


def main(argv: list[str] | None = None) -> None:
    config, results_dir = parse_args(argv)
    report(config, run(config), results_dir)


if __name__ == "__main__":
    main()
