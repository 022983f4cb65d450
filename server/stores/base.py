"""The store interface: everything the service persists, behind one abstract class.

Two implementations run the same contract tests (``tests/test_store_contract.py``):
``RedisStore`` (production; keys carry a per-catalog hash tag so a catalog lives in one
Redis Cluster slot) and ``LocalStore`` (embedded default for the quickstart and
single-machine use, like Feast's local online store). Methods are synchronous; the gRPC
servicer calls them through ``asyncio.to_thread`` so numpy work never blocks its event loop.

Invariants every implementation keeps:

* A catalog's item table is append-only: an id keeps its row forever.
* ``commit_items`` is atomic and optimistic: it applies all of an upsert or nothing, and
  fails with ``ConflictError`` when the item count moved since the caller read it.
* A version is immutable and becomes visible only when completely written; with
  ``activate`` the active pointer switches in the same atomic step.
* ``apply_pair_batches`` is exactly-once per ``(worker_id, batch_id)`` (the pair, never a
  joined string) and all-or-nothing per call; what it reports is decided in that step.
* The steps that make a call's effects visible (``commit_items``, publishing a version,
  ``activate``, ``apply_pair_batches``) call ``server.call_lifetime.check_commit()`` inside
  their atomic step: a call that was cancelled or passed its deadline commits nothing.
* A ``RequestRecord`` given to ``commit_items`` or ``write_version`` is stored in the same
  atomic step as the commit, so a retry with the same request id finds it exactly when the
  first call committed.
* The store is the truth: every catalog carries an epoch written when it is created, and
  a store that no longer has a catalog it served, or has another one under its name (the
  backend restarted empty, was flushed, or its file was replaced), raises ``DataLostError``
  instead of answering from what the process remembers.
* Nothing read from a store is unpickled or evaluated: vectors are raw little-endian
  bytes, metadata is JSON.
* With a raw file store (``server.stores.raw_files``, ``--raw-store-url``), a catalog
  created then keeps its raw vectors in immutable Arrow IPC block files; ``commit_items``
  writes its files first and changes the block manifest in its atomic step, and a block
  that is missing or damaged reads as ``CorruptDataError``. ``raw_blocks`` hands out any
  catalog's raw vectors as ``RowBlocks``, what a refit streams.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from protos.codecs import encode_vectors, item_id_entries
from server.errors import Aborted, DataLoss, NotFound, ServiceError, Unavailable
from server.recpca.row_blocks import RowBlocks


class StoreError(ServiceError):
    """Base class of store failures; each one is also the ``server.errors`` kind it maps to."""


class StoreUnavailableError(StoreError, Unavailable):
    """The backing store does not answer (UNAVAILABLE; safe to retry)."""


class NotFoundError(StoreError, NotFound):
    """An unknown catalog or version (NOT_FOUND)."""


class CorruptDataError(StoreError, DataLoss):
    """A stored value does not decode (truncated block, garbage header, not JSON): the data
    is damaged, not the request (DATA_LOSS). Decoding never evaluates anything."""


class ConflictError(StoreError, Aborted):
    """A concurrent writer committed first; nothing was applied (ABORTED)."""


class DataLostError(StoreError, DataLoss):
    """The store lost or replaced data this process had seen: a catalog vanished or came
    back with another epoch, or the store itself was replaced (maps to DATA_LOSS; health
    turns NOT_SERVING). Sticky: the process keeps refusing until it is restarted."""


@dataclass(frozen=True)
class EncoderIdentity:
    name: str
    dim: int


@dataclass(frozen=True)
class CatalogState:
    name: str
    encoder: EncoderIdentity
    item_count: int
    active_version: int  # 0: no version active yet
    raw_dtype: str  # numpy dtype string of stored raw vectors: "<f4" or "<f2"
    epoch: str = ""  # written when the catalog was created; another epoch is another catalog


@dataclass(frozen=True)
class ItemChanges:
    """One upsert. New items take rows ``base_count, base_count + 1, …`` in order; changed
    rows get new text hashes and vectors. Vectors are float32 (n × encoder dim)."""

    base_count: int
    new_ids: list[str]
    new_text_hashes: list[str]
    new_vectors: np.ndarray
    changed_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    changed_text_hashes: list[str] = field(default_factory=list)
    changed_vectors: np.ndarray | None = None
    # text hash -> text of the new and changed items, written in the commit's atomic step
    # (content-addressed: a committed item's text is always there, a dead call leaves none).
    texts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CooccurrenceTotals:
    pairs: int = 0  # pairs applied (each unordered pair of each applied batch counts once)
    weight: float = 0.0  # sum of applied pair weights
    batches: int = 0  # distinct batches applied


@dataclass(frozen=True)
class PushOutcome:
    """What one ``apply_pair_batches`` call did, decided in its atomic step."""

    applied: int  # batches applied by this call
    duplicates: int  # batches already applied before (or earlier in this call)
    pairs: int  # pairs of the batches this call applied
    weight: float  # their summed weight
    totals: CooccurrenceTotals  # the catalog's totals right after the step


@dataclass(frozen=True)
class PairBatch:
    """Unordered pairs pushed by one worker; ``(worker_id, batch_id)`` identifies it."""

    worker_id: str
    batch_id: str
    rows: np.ndarray  # uint32
    cols: np.ndarray  # uint32
    weights: np.ndarray  # float32, finite and > 0


@dataclass(frozen=True)
class VersionRecord:
    """What a store keeps about a version besides its arrays (JSON-serializable)."""

    version: int
    status: str  # "staged" | "active" | "retired"
    item_count: int  # rows the version was fitted on (and whose reduced vectors it stores)
    dim: int
    encoder: EncoderIdentity
    parameters: dict[str, Any]
    diagnostics: dict[str, Any]
    counts: CooccurrenceTotals
    created_at: float  # unix seconds
    activated_at: float | None
    fit_seconds: float


@dataclass(frozen=True)
class RequestRecord:
    """What a retry of a committed call returns (AIP-155 request ids): the request's
    fingerprint (a retry must be the same request) and the call's outcome as JSON-ready
    values. ``write_version`` adds ``version`` and ``previous_active_version`` to it."""

    request_id: str
    fingerprint: str
    outcome: dict[str, Any]
    expires_at: float  # unix seconds; the record is forgotten afterwards


@dataclass(frozen=True)
class PublishedVersion:
    """A version as its atomic publish step left it, with the active version it replaced."""

    record: VersionRecord
    previous_active: int  # the active version just before the publish (0 if none)


@dataclass(frozen=True)
class CatalogSnapshot:
    """A catalog's state, versions and totals, read in one consistent snapshot."""

    state: CatalogState
    versions: list[VersionRecord]
    totals: CooccurrenceTotals


@dataclass(frozen=True)
class NewVersion:
    """A fitted version to write; the store assigns its number and status."""

    item_count: int
    dim: int
    encoder: EncoderIdentity
    parameters: dict[str, Any]
    diagnostics: dict[str, Any]
    counts: CooccurrenceTotals
    fit_seconds: float
    components: np.ndarray  # W, (D, d) float64
    mean: np.ndarray  # μ, (D,) float64
    reduced: np.ndarray  # served vectors of rows [0, item_count), float32 (item_count × d)


@dataclass(frozen=True)
class IdField:
    """The ``item_ids`` field of GetItemEmbeddingsResponse for consecutive rows, as its wire
    bytes (``protos.codecs.item_id_entries``): ``ends[i]`` is where row ``i``'s entry ends,
    so any row range's field is a slice, without touching each id."""

    data: bytes | memoryview
    ends: np.ndarray  # int64, one per row

    @classmethod
    def of(cls, ids: Sequence[str]) -> IdField:
        return cls(*item_id_entries(ids))

    def __len__(self) -> int:
        return len(self.ends)

    def part(self, start: int, stop: int) -> IdField:
        """Rows ``[start, stop)`` of this field (a view of its bytes, no copy)."""
        first = int(self.ends[start - 1]) if start else 0
        last = int(self.ends[stop - 1]) if stop > start else first
        return IdField(memoryview(self.data)[first:last], self.ends[start:stop] - first)


class CatalogStore(abc.ABC):
    """Persistence of catalogs, items, raw vectors, versions, co-occurrence counts and the
    refit lock. Every method raises ``StoreUnavailableError`` when the backend is down."""

    # -- lifecycle ----------------------------------------------------------------------
    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the store answers."""

    @abc.abstractmethod
    def probe(self) -> None:
        """What health reports: raise ``StoreUnavailableError`` unless the store answers and
        accepts a small write (a full disk or a full Redis refuses writes while reads still
        work), ``DataLostError`` if the store lost or replaced data this process has seen."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- catalogs and items -------------------------------------------------------------
    @abc.abstractmethod
    def create_catalog(
        self, name: str, encoder: EncoderIdentity, raw_dtype: str = "<f4"
    ) -> CatalogState:
        """Create the catalog, or return it unchanged if it already exists."""

    @abc.abstractmethod
    def get_catalog(self, name: str) -> CatalogState | None: ...

    async def catalog_head(self, name: str) -> CatalogState | None:
        """``get_catalog`` awaited on the event loop: a look-up whose rows are cached reads
        only this. A store with an asyncio client answers it without a worker thread."""
        return await asyncio.to_thread(self.get_catalog, name)

    @abc.abstractmethod
    def catalog_names(self) -> list[str]:
        """Every catalog's name, sorted (the web console's list)."""

    @abc.abstractmethod
    def describe(self, name: str) -> CatalogSnapshot | None:
        """The catalog's state, published versions and totals from one snapshot (its
        ``active_version`` is the version the list marks active); None if it does not
        exist."""

    @abc.abstractmethod
    def find_rows(self, name: str, ids: Sequence[str]) -> np.ndarray:
        """Row of each id (int64), -1 for ids the catalog does not have."""

    @abc.abstractmethod
    def text_hashes(self, name: str, rows: np.ndarray) -> list[str]: ...

    @abc.abstractmethod
    def put_texts(self, name: str, hashes: Sequence[str], texts: Sequence[str]) -> None:
        """Keep item texts by their hash. Content-addressed, so an upsert writes them before
        its items commit: a committed item's text is always there, and the texts of a call
        that failed are referenced by no item (invisible)."""

    @abc.abstractmethod
    def texts_of(self, name: str, hashes: Sequence[str]) -> list[str | None]:
        """The texts of these hashes; None for one never stored (ingested before texts
        were kept)."""

    @abc.abstractmethod
    def item_ids(self, name: str, start: int, stop: int) -> list[str]:
        """External ids of rows ``[start, stop)`` (clipped to the item count)."""

    def item_id_field(self, name: str, start: int, stop: int) -> IdField:
        """The ids of rows ``[start, stop)`` (clipped to the item count) as the wire bytes of
        a response's ``item_ids``: what a whole-catalog pull sends. Default: ``item_ids``
        encoded; a store that keeps the ids encoded cuts the bytes out of its blocks."""
        return IdField.of(self.item_ids(name, start, stop))

    @abc.abstractmethod
    def commit_items(self, name: str, changes: ItemChanges, request: RequestRecord | None = None,
                     *, create: tuple[EncoderIdentity, str] | None = None) -> int:
        """Apply one upsert atomically; returns the new item count. ``request``'s record is
        stored in the same step (the commit fails with ``ConflictError`` if its id is
        already recorded). With ``create`` (encoder, raw dtype), a catalog that does not
        exist yet is created in the same atomic step, so an upsert that dies before its
        commit leaves no empty catalog."""

    @abc.abstractmethod
    def find_request(self, name: str, request_id: str) -> RequestRecord | None:
        """The unexpired record of a committed call with this request id, if any."""

    @abc.abstractmethod
    def read_raw(self, name: str, start: int, stop: int) -> np.ndarray:
        """Raw vectors of rows ``[start, stop)`` as float32 (clipped to the item count)."""

    @abc.abstractmethod
    def read_raw_rows(self, name: str, rows: np.ndarray) -> np.ndarray: ...

    def catalog_and_rows(
        self, name: str, ids: Sequence[str]
    ) -> tuple[CatalogState | None, np.ndarray]:
        """``get_catalog`` and ``find_rows`` together (one round trip where the store can);
        rows are -1 for unknown ids, and all -1 when the catalog does not exist."""
        state = self.get_catalog(name)
        if state is None:
            return None, np.full(len(ids), -1, dtype=np.int64)
        return state, self.find_rows(name, ids)

    def read_raw_stored(self, name: str, start: int, stop: int) -> np.ndarray:
        """Raw vectors of rows ``[start, stop)`` in their stored element type (float16 or
        float32), for readers of a whole catalog that should not hold a float32 copy of a
        float16 table (a refit). Default: ``read_raw``."""
        return self.read_raw(name, start, stop)

    def raw_blocks(self, name: str, count: int) -> RowBlocks:
        """Raw vectors of rows ``[0, count)`` as ``RowBlocks`` in the stored dtype, what a
        refit streams. Default: ranges of ``read_raw_stored`` (the vectors are in this
        store); a store with a raw file store hands out its block files instead."""
        return StoredRowBlocks(self, name, count)

    # -- versions -----------------------------------------------------------------------
    @abc.abstractmethod
    def write_version(self, name: str, new: NewVersion, activate: bool,
                      request: RequestRecord | None = None, *,
                      lock_owner: str | None = None) -> PublishedVersion:
        """Write a complete version, then publish it (and, with ``activate``, make it the
        active one) in one atomic step, together with ``request``'s record (whose outcome
        gets the version and the active version the step replaced). A crash before that
        step leaves nothing visible. With ``lock_owner``, that step also checks that the
        owner still holds the refit lock (a fencing token): a refit whose lease ran out
        publishes nothing and gets ``ConflictError``."""

    @abc.abstractmethod
    def versions(self, name: str) -> list[VersionRecord]:
        """All published versions, oldest first."""

    @abc.abstractmethod
    def activate(self, name: str, version: int) -> int:
        """Make ``version`` active; returns the previously active version (0 if none)."""

    @abc.abstractmethod
    def read_projection(self, name: str, version: int) -> tuple[np.ndarray, np.ndarray]:
        """``(W, μ)`` of a published version."""

    @abc.abstractmethod
    def read_reduced(self, name: str, version: int, start: int, stop: int) -> np.ndarray:
        """Stored served vectors of rows ``[start, stop)`` (clipped to the version's
        item count), float32."""

    def read_reduced_bytes(self, name: str, version: int, start: int, stop: int,
                           dtype: str) -> bytes:
        """``read_reduced`` as the little-endian bytes of the wire ``dtype`` (float32,
        float16, bfloat16), what a whole-catalog pull sends. Default: ``read_reduced``
        converted; a store that keeps the vectors in that dtype returns its bytes."""
        return encode_vectors(self.read_reduced(name, version, start, stop), dtype)

    @abc.abstractmethod
    def collect_garbage(self, name: str, min_age_seconds: float) -> int:
        """Delete the payloads of versions written but never published (a refit that died
        between writing and publishing) that started more than ``min_age_seconds`` ago;
        returns how many. Pass at least the longest refit (its lock lease, renewals
        included): a refit whose payload was collected fails to publish with
        ``ConflictError``, so a published version always has its arrays."""

    # -- co-occurrence ------------------------------------------------------------------
    @abc.abstractmethod
    def apply_pair_batches(self, name: str, batches: Sequence[PairBatch]) -> PushOutcome:
        """Apply all batches not seen before, atomically; what this call applied (and the
        totals after it) come from that same step, whatever other pushers do meanwhile."""

    @abc.abstractmethod
    def read_counts(self, name: str, n_items: int) -> sp.csr_matrix:
        """The symmetric sum of all applied batches, ``n_items × n_items`` float64."""

    @abc.abstractmethod
    def cooccurrence_totals(self, name: str) -> CooccurrenceTotals: ...

    @abc.abstractmethod
    def compact_counts(self, name: str) -> int:
        """Replace the logged pairs of all applied batches by one merged entry (``read_counts``
        is unchanged, batches applied meanwhile are kept); returns the entries merged."""

    # -- refit lock ---------------------------------------------------------------------
    @abc.abstractmethod
    def acquire_refit_lock(self, name: str, owner: str, lease_seconds: float) -> bool:
        """Take the catalog's refit lock for ``lease_seconds`` unless someone holds it."""

    @abc.abstractmethod
    def renew_refit_lock(self, name: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease if ``owner`` still holds it."""

    @abc.abstractmethod
    def release_refit_lock(self, name: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it (never someone else's)."""


class StoredRowBlocks:
    """Rows ``[0, n_rows)`` of a catalog whose raw vectors are in the catalog store, as
    ``RowBlocks`` of ``block_rows`` read through ``read_raw_stored`` (not picklable: it
    holds the store's connections)."""

    def __init__(self, store: CatalogStore, name: str, n_rows: int,
                 block_rows: int = 8192) -> None:
        state = store.get_catalog(name)
        if state is None:
            raise NotFoundError(f"catalog {name!r} does not exist")
        self.store, self.name, self.block_rows = store, name, block_rows
        self._n_rows = min(n_rows, state.item_count)
        self._dim, self._dtype = state.encoder.dim, np.dtype(state.raw_dtype)

    @property
    def n_rows(self) -> int:
        return self._n_rows

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def block_bounds(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.block_rows, self._n_rows))
                for start in range(0, self._n_rows, self.block_rows)]

    def read_block(self, index: int) -> np.ndarray:
        start, stop = self.block_bounds()[index]
        block = self.store.read_raw_stored(self.name, start, stop)
        if len(block) != stop - start:
            raise CorruptDataError(f"rows {start}..{stop} of {self.name!r} are not all stored")
        return np.asarray(block, dtype=self._dtype)
