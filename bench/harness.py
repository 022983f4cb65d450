"""What the service benchmarks share beyond ``harness`` (a real ``redis-server`` on a free
port, the real server as a ``python -m server`` subprocess with its own GIL and RSS):
their flags, synthetic catalogs written straight through the store API, and profiles.

Synthetic catalogs skip the encoder on purpose (encoding a million texts would take an hour
on a CPU): ``load_synthetic_catalog`` commits items with random vectors through
``RedisStore.commit_items``, the store call ``UpsertItems`` ends in, and
``write_synthetic_version`` publishes a version through ``write_version``, the call
``RefitProjection`` ends in. ``bench.ingest`` is the benchmark that measures encoding.

Profiling: with ``BENCH_PROFILE_DIR`` set, every server process is sampled by ``py-spy``
(``pip install py-spy``) for its whole life (``harness.server_process``), and its collapsed
stacks land in that folder (``server-<pid>.txt``); ``python -m bench.harness <file>`` prints
where the time went.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

import numpy as np

from bench.report import RESULTS_DIR
from harness.server_process import ServerProcess
from server.stores.base import (
    CatalogStore,
    CooccurrenceTotals,
    EncoderIdentity,
    ItemChanges,
    NewVersion,
)
from server.stores.redis_store import RedisStore

C = TypeVar("C")
REPO_ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def progress(name: str, message: str) -> None:
    print(f"[{name}] {message}", file=sys.stderr, flush=True)


def config_parser(prog: str, doc: str | None, defaults: Any,
                  helps: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """A parser with one ``--flag`` per field of the config dataclass ``defaults`` (typed and
    defaulted by its value) plus ``--results-dir``: every benchmark's options, one way."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(value), default=value,
                            help=(helps or {}).get(field.name, "[%(default)s]"))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where <name>.json and <name>.md go")
    return parser


def config_from(args: argparse.Namespace, config_class: type[C]) -> C:
    """The config dataclass filled from the parsed flags of ``config_parser``."""
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def median_of(values: Sequence[float]) -> float:
    return float(median(values))


def server_process(store_url: str, log_path: Path, *flags: str) -> ServerProcess:
    """The server under test: ``python -m server`` with ``flags``, SIGTERM at the end."""
    return ServerProcess(store_url, log_path, args=["--log-level", "warning", *flags],
                         graceful=True)


# --- synthetic catalogs ----------------------------------------------------------------------


def item_id(row: int) -> str:
    return f"item-{row:08d}"


def synthetic_vectors(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """float32 vectors with a shared offset and uneven norms (like pooled LLM vectors)."""
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x += 0.5
    x *= rng.lognormal(0.0, 0.3, size=(rows, 1)).astype(np.float32)
    return x


def load_synthetic_catalog(store: CatalogStore, name: str, n_items: int, encoder: EncoderIdentity,
                           raw_dtype: str, seed: int = 0, batch: int = 100_000) -> None:
    """``n_items`` items with ids ``item-00000000…`` and random raw vectors, committed in
    batches through ``commit_items`` (what ``UpsertItems`` does after encoding)."""
    store.create_catalog(name, encoder, raw_dtype)
    rng = np.random.default_rng(seed)
    for base in range(0, n_items, batch):
        rows = range(base, min(base + batch, n_items))
        store.commit_items(name, ItemChanges(
            base_count=base, new_ids=[item_id(r) for r in rows],
            new_text_hashes=[f"{r:064x}" for r in rows],
            new_vectors=synthetic_vectors(len(rows), encoder.dim, rng),
        ))  # fmt: skip


def write_synthetic_version(store: RedisStore, name: str, n_items: int, encoder: EncoderIdentity,
                            dim: int, seed: int = 1) -> int:
    """Publish and activate a version of random unit vectors (what a refit writes)."""
    rng = np.random.default_rng(seed)
    reduced = rng.standard_normal((n_items, dim), dtype=np.float32)
    reduced /= np.linalg.norm(reduced, axis=1, keepdims=True)
    components = np.linalg.qr(rng.standard_normal((encoder.dim, dim)))[0]
    published = store.write_version(name, NewVersion(
        item_count=n_items, dim=dim, encoder=encoder, parameters={"dim": dim, "lam": 0.0},
        diagnostics={"lam": 0.0}, counts=CooccurrenceTotals(0, 0.0, 0), fit_seconds=0.0,
        components=components, mean=np.zeros(encoder.dim), reduced=reduced,
    ), activate=True)  # fmt: skip
    return published.record.version


# --- profiles --------------------------------------------------------------------------------


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function of a py-spy collapsed-stack file."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    lines = [f"{path.name}: {total} samples"]
    for title, table in (("self", own), ("inclusive", inclusive)):
        lines.append(f"-- {title}")
        for frame, samples in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{100 * samples / max(total, 1):6.1f}%  {frame}")
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summarize_profile(Path(name)))
