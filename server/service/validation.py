"""Request validation, one function per request kind (like vLLM's ``verify()``).

Every check runs before anything is written, so a rejected call changes nothing, and every
message names the field and the bound it broke.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.recpca import DEFAULT_WHITENING, FitSettings, GraphOptions
from server.service.errors import InvalidArgument, ResourceExhausted
from server.stores.base import PairBatch
from server.stores.checks import CATALOG_NAME

MAX_ID_BYTES = 512
MAX_WORKER_OR_BATCH_BYTES = 128
MAX_REQUEST_ID_BYTES = 128


def verify_catalog(name: str) -> None:
    if not CATALOG_NAME.fullmatch(name or ""):
        raise InvalidArgument(
            f"catalog {name!r} must be 1 to 64 characters from [A-Za-z0-9._-] starting with a "
            "letter or a digit"
        )


def verify_version(version: int) -> None:
    if version < 0:
        raise InvalidArgument(f"version must be >= 0 (0 = the active one), got {version}")


def verify_item_id(item_id: str) -> None:
    if not item_id or len(item_id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"item id {item_id[:40]!r} must be 1 to {MAX_ID_BYTES} bytes")


def verify_items(
    catalog: str, ids: Sequence[str], texts: Sequence[str], max_items: int, max_chars: int
) -> None:
    verify_catalog(catalog)
    if not ids:
        raise InvalidArgument("UpsertItems needs at least one item")
    if len(ids) > max_items:
        raise ResourceExhausted(
            f"{len(ids)} items in one call exceeds the limit of {max_items}; split the ingest"
        )
    seen: set[str] = set()
    for item_id, text in zip(ids, texts, strict=True):
        verify_item(item_id, text, max_chars)
        if item_id in seen:
            raise InvalidArgument(f"item id {item_id!r} appears twice in one call")
        seen.add(item_id)


def verify_item(item_id: str, text: str, max_chars: int) -> None:
    """One item on its own (the servicer checks each as its message arrives)."""
    verify_item_id(item_id)
    if len(text) > max_chars:
        raise InvalidArgument(
            f"item {item_id!r} has {len(text)} characters, more than the limit {max_chars}"
        )
    if not text.strip():
        raise InvalidArgument(f"item {item_id!r} has an empty text")


def verify_request_id(request_id: str) -> None:
    """An optional idempotency key (AIP-155): empty, or 1 to 128 bytes."""
    if len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument(f"request_id must be at most {MAX_REQUEST_ID_BYTES} bytes")


@dataclass(frozen=True)
class PairBlock:
    """One pushed batch as it arrives: packed little-endian blocks."""

    worker_id: str
    batch_id: str
    rows: bytes
    cols: bytes
    weights: bytes


def verify_pair_batches(
    catalog: str, blocks: Sequence[PairBlock], item_count: int, max_pairs: int
) -> list[PairBatch]:
    """Decode and check every batch of a push; nothing is applied unless all pass."""
    verify_catalog(catalog)
    if not blocks:
        raise InvalidArgument("PushCooccurrence needs at least one batch")
    batches, total = [], 0
    for block in blocks:
        total += verify_pair_block(block)
        name = f"batch {block.worker_id}/{block.batch_id}"
        rows = np.frombuffer(block.rows, dtype="<u4")
        cols = np.frombuffer(block.cols, dtype="<u4")
        weights = np.frombuffer(block.weights, dtype="<f4")
        if total > max_pairs:
            raise ResourceExhausted(
                f"more than {max_pairs} pairs in one call; push in several calls"
            )
        if len(rows) and max(int(rows.max()), int(cols.max())) >= item_count:
            raise InvalidArgument(f"{name}: an item row is outside the catalog's {item_count}")
        if np.any(rows == cols):
            raise InvalidArgument(f"{name}: a pair joins an item to itself")
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise InvalidArgument(f"{name}: weights must be finite and positive")
        batches.append(PairBatch(block.worker_id, block.batch_id, rows, cols, weights))
    return batches


def verify_pair_block(block: PairBlock) -> int:
    """The ids and block lengths of one batch (checked as its message arrives); its pairs."""
    for label, value in (("worker_id", block.worker_id), ("batch_id", block.batch_id)):
        if not value or len(value.encode()) > MAX_WORKER_OR_BATCH_BYTES:
            raise InvalidArgument(f"{label} must be 1 to {MAX_WORKER_OR_BATCH_BYTES} bytes")
    lengths = {len(block.rows), len(block.cols), len(block.weights)}
    if len(lengths) != 1 or next(iter(lengths)) % 4:
        raise InvalidArgument(
            f"batch {block.worker_id}/{block.batch_id}: rows, cols and weights must be "
            "equally long multiples of 4 bytes"
        )
    return len(block.rows) // 4


DEFAULT_DIM = 64
DEFAULT_K = 10


@dataclass(frozen=True)
class FitRequest:
    """Fit settings as a request states them (0 and None mean "the default")."""

    dim: int = 0
    lam: float | None = None
    retention: float | None = None
    transform: str = "identity"
    top_k: int = 0
    whitening: float | None = None


def verify_fit(request: FitRequest, encoder_dim: int) -> FitSettings:
    """Fit settings from a request; ``dim`` 0 means 64, ``top_k`` 0 means the default, and
    neither λ nor a budget means the default retention budget."""
    dim = request.dim or min(DEFAULT_DIM, encoder_dim)
    if not 1 <= dim <= encoder_dim:
        raise InvalidArgument(
            f"dim must be between 1 and the encoder's dim {encoder_dim}, got {dim}"
        )
    lam, retention, top_k = request.lam, request.retention, request.top_k
    if lam is not None and (not math.isfinite(lam) or lam < 0):
        raise InvalidArgument(f"lam must be a finite number >= 0, got {lam}")
    if retention is not None and not 0 < retention <= 1:
        raise InvalidArgument(f"retention_budget must be in (0, 1], got {retention}")
    if top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0, got {top_k}")
    if top_k and request.transform != "topk":
        raise InvalidArgument("top_k is only meaningful with GRAPH_TRANSFORM_TOP_K")
    whitening = DEFAULT_WHITENING if request.whitening is None else request.whitening
    if not (math.isfinite(whitening) and 0 <= whitening <= 1):
        raise InvalidArgument(f"whitening must be in [0, 1], got {whitening}")
    graph = GraphOptions(request.transform, top_k or GraphOptions().top_k)  # type: ignore[arg-type]
    return FitSettings(dim=dim, lam=lam, retention=retention, graph=graph, whitening=whitening)


def verify_similar(k: int, max_k: int) -> int:
    """The number of neighbours to return (0 means 10)."""
    k = k or min(DEFAULT_K, max_k)
    if not 1 <= k <= max_k:
        raise InvalidArgument(f"k must be between 1 and {max_k}, got {k}")
    return k
