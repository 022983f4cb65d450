"""The rules of the contract, each written once with one message (like vLLM's ``verify()``).

The servicer checks what a stream delivers as it arrives, the service checks each request
before anything is written (so a rejected call changes nothing), and the stores check the
same rules again before they persist (a bad key or pair in the store would break every later
read). Every message names the field and the bound it broke, never the whole offending value.
Broken rules raise ``InvalidArgument`` or ``ResourceExhausted`` (``server.errors``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protos.codecs import decode_pairs
from server.errors import InvalidArgument, ResourceExhausted
from server.quoting import shown
from server.recpca import DEFAULT_WHITENING, FitSettings, GraphOptions

MAX_ID_BYTES = 512
MAX_WORKER_OR_BATCH_BYTES = 128
MAX_REQUEST_ID_BYTES = 128
# The name becomes part of store keys (and, in Redis, of the `{name}` hash tag, which must
# not contain braces).
CATALOG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# (worker_id, batch_id, rows, cols, weights) of one decoded, checked batch.
CheckedBatch = tuple[str, str, np.ndarray, np.ndarray, np.ndarray]


def verify_catalog(name: str) -> None:
    if not isinstance(name, str) or not CATALOG_NAME.fullmatch(name):
        raise InvalidArgument(
            f"catalog {shown(name)} must be 1 to 64 characters from [A-Za-z0-9._-] starting "
            "with a letter or a digit"
        )


def verify_same_catalog(first: str | None, catalog: str) -> str:
    """Every message of a stream names the catalog of its first."""
    if first is not None and catalog != first:
        raise InvalidArgument("every message of a stream must name the same catalog")
    return catalog


def verify_not_empty(catalog: str | None) -> str:
    """A client stream's catalog (None: it had no message)."""
    if catalog is None:
        raise InvalidArgument("the stream had no message")
    return catalog


def verify_item_count(count: int, limit: int) -> None:
    """Checked while an UpsertItems stream arrives, so memory stays bounded."""
    if count > limit:
        raise ResourceExhausted(f"more than {limit} items in one call; split the ingest")


def verify_pair_count(count: int, limit: int) -> None:
    """Checked while a PushCooccurrence stream arrives, so memory stays bounded."""
    if count > limit:
        raise ResourceExhausted(f"more than {limit} pairs in one call; push in several calls")


def verify_pull(dtype: str | None, kind: str | None, max_chunk_bytes: int) -> None:
    """GetItemEmbeddings options (``None``: an enum value this server does not know)."""
    if dtype is None or kind is None:
        raise InvalidArgument("unknown dtype or kind")
    if max_chunk_bytes < 0:
        raise InvalidArgument("max_chunk_bytes must be >= 0")


def verify_version(version: int) -> None:
    if version < 0:
        raise InvalidArgument(f"version must be >= 0 (0 = the active one), got {version}")


def verify_item_id(item_id: str) -> None:
    if not item_id or len(item_id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"item id {shown(item_id)} must be 1 to {MAX_ID_BYTES} bytes")


def verify_items(
    catalog: str, ids: Sequence[str], texts: Sequence[str], max_items: int, max_chars: int
) -> None:
    verify_catalog(catalog)
    if not ids:
        raise InvalidArgument("UpsertItems needs at least one item")
    verify_item_count(len(ids), max_items)
    seen: set[str] = set()
    for item_id, text in zip(ids, texts, strict=True):
        verify_item(item_id, text, max_chars)
        if item_id in seen:
            raise InvalidArgument(f"item id {shown(item_id)} appears twice in one call")
        seen.add(item_id)


def verify_item(item_id: str, text: str, max_chars: int) -> None:
    """One item on its own (the servicer checks each as its message arrives)."""
    verify_item_id(item_id)
    if len(text) > max_chars:
        raise InvalidArgument(
            f"item {shown(item_id)} has {len(text)} characters, more than the limit "
            f"{max_chars}"
        )
    if not text.strip():
        raise InvalidArgument(f"item {shown(item_id)} has an empty text")


def verify_request_id(request_id: str) -> str:
    """An optional idempotency key (AIP-155): empty, or 1 to 128 bytes."""
    if len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument(f"request_id must be at most {MAX_REQUEST_ID_BYTES} bytes")
    return request_id


def verify_same_request_id(first: str, request_id: str) -> None:
    """A stream's request_id is set in its first message; later ones repeat it or leave it
    empty."""
    if request_id and request_id != first:
        raise InvalidArgument("every message of a stream must carry the same request_id")


@dataclass(frozen=True)
class PairBlock:
    """One pushed batch as it arrives: packed little-endian blocks."""

    worker_id: str
    batch_id: str
    rows: bytes
    cols: bytes
    weights: bytes


def verify_pairs(
    what: str, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, item_count: int
) -> None:
    """Unordered pairs of a catalog of ``item_count`` items: equally long 1-D arrays of
    integer rows inside the catalog, no pair joining an item to itself, weights finite and
    positive. ``what`` names them in the message (e.g. ``batch w0/17``)."""
    rows, cols, weights = (np.asarray(a) for a in (rows, cols, weights))
    if not (rows.ndim == 1 and rows.shape == cols.shape == weights.shape):
        raise InvalidArgument(f"{what}: rows, cols and weights must be equally long")
    if not len(rows):
        return
    if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
        raise InvalidArgument(f"{what}: rows and cols must be integer item rows")
    if min(int(rows.min()), int(cols.min())) < 0 or max(
        int(rows.max()), int(cols.max())
    ) >= item_count:
        raise InvalidArgument(f"{what}: an item row is outside the catalog's {item_count}")
    if np.any(rows == cols):
        raise InvalidArgument(f"{what}: a pair joins an item to itself")
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise InvalidArgument(f"{what}: weights must be finite and positive")


def verify_pair_batches(
    catalog: str, blocks: Sequence[PairBlock], item_count: int, max_pairs: int
) -> list[CheckedBatch]:
    """Decode and check every batch of a push; nothing is applied unless all pass."""
    verify_catalog(catalog)
    if not blocks:
        raise InvalidArgument("PushCooccurrence needs at least one batch")
    batches, total = [], 0
    for block in blocks:
        total += verify_pair_block(block)
        verify_pair_count(total, max_pairs)
        name = f"batch {shown(block.worker_id)}/{shown(block.batch_id)}"
        rows, cols, weights = decode_pairs(block.rows, block.cols, block.weights)
        verify_pairs(name, rows, cols, weights, item_count)
        batches.append((block.worker_id, block.batch_id, rows, cols, weights))
    return batches


def verify_pair_block(block: PairBlock) -> int:
    """The ids and block lengths of one batch (checked as its message arrives); its pairs."""
    for label, value in (("worker_id", block.worker_id), ("batch_id", block.batch_id)):
        if not value or len(value.encode()) > MAX_WORKER_OR_BATCH_BYTES:
            raise InvalidArgument(f"{label} must be 1 to {MAX_WORKER_OR_BATCH_BYTES} bytes")
    lengths = {len(block.rows), len(block.cols), len(block.weights)}
    if len(lengths) != 1 or next(iter(lengths)) % 4:
        raise InvalidArgument(
            f"batch {shown(block.worker_id)}/{shown(block.batch_id)}: rows, cols and weights "
            "must be equally long multiples of 4 bytes"
        )
    return len(block.rows) // 4


DEFAULT_DIM = 64
DEFAULT_K = 10


@dataclass(frozen=True)
class FitRequest:
    """Fit settings as a request states them (0 and None mean "the default"; a ``transform``
    of None is an enum value this server does not know)."""

    dim: int = 0
    lam: float | None = None
    retention: float | None = None
    transform: str | None = "identity"
    top_k: int = 0
    whitening: float | None = None


def verify_fit(request: FitRequest, encoder_dim: int) -> FitSettings:
    """Fit settings from a request; ``dim`` 0 means 64, ``top_k`` 0 means the default, and
    neither λ nor a budget means the default retention budget."""
    if request.transform is None:
        raise InvalidArgument("unknown graph transform")
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
