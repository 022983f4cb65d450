"""What the service does, free of gRPC: upsert, describe, serve, push, refit, activate, search.

Methods are synchronous (numpy and store I/O); the gRPC servicer runs them in worker threads.
Each validates its request completely before it writes anything, so a rejected call changes
nothing; store failures surface as ``StoreUnavailableError`` (UNAVAILABLE).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.linalg

from server.call_lifetime import check_alive
from server.config import ServerConfig
from server.encoders.base import Encoder
from server.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from server.fit_engines import FitEngineError, fit_engine
from server.quoting import shown
from server.recpca import FitSettings, Projection, fit_recpca, fit_recpca_streamed
from server.recpca.streamed import run_locally
from server.service.dim_prefix import prefix, served_dim
from server.service.refit_progress import RefitProgress
from server.service.row_cache import RowCache
from server.stores.base import (
    CatalogState,
    CatalogStore,
    ConflictError,
    CooccurrenceTotals,
    EncoderIdentity,
    ItemChanges,
    NewVersion,
    NotFoundError,
    PairBatch,
    RequestRecord,
    StoredRowBlocks,
    StoreError,
    VersionRecord,
)
from server.validation import (
    FitRequest,
    PairBlock,
    verify_catalog,
    verify_fit,
    verify_item_id,
    verify_items,
    verify_pair_batches,
    verify_similar,
    verify_version,
)

log = logging.getLogger(__name__)
# ServerConfig.raw_vector_dtype → the stores' numpy name.
RAW_DTYPES = {"float32": "<f4", "float16": "<f2"}


@dataclass(frozen=True)
class Limits:
    """Per-call bounds and store options of the service, taken from its configuration
    (``ServerConfig`` holds every default, once)."""

    max_items_per_upsert: int
    max_text_chars: int
    max_pairs_per_push: int
    max_similar_k: int
    refit_lock_lease_seconds: float
    version_cache_size: int
    raw_dtype: str  # numpy's name of the stored raw vectors' element type
    # How long a committed call's request_id is remembered (its retries return its outcome).
    request_id_ttl_seconds: float
    # Serialized GetItemEmbeddings chunks of full-catalog pulls kept by the servicer (LRU);
    # 0 disables them. Off whenever version_cache_size is 0.
    chunk_cache_bytes: int = 1 << 30
    row_cache_items: int = 2_000_000  # id -> row entries kept for look-ups (0: none)
    fit_engine: str = "local"  # where refits compute their moments (server.fit_engines)
    ray_address: str = ""

    @classmethod
    def from_config(cls, config: ServerConfig) -> Limits:
        return cls(
            max_items_per_upsert=config.max_items_per_upsert,
            max_text_chars=config.max_text_chars,
            max_pairs_per_push=config.max_pairs_per_push,
            max_similar_k=config.max_similar_k,
            refit_lock_lease_seconds=config.refit_lock_lease_seconds,
            version_cache_size=config.version_cache_size,
            raw_dtype=RAW_DTYPES[config.raw_vector_dtype],
            request_id_ttl_seconds=config.request_id_ttl_seconds,
            row_cache_items=config.row_cache_items,
            fit_engine=config.fit_engine,
            ray_address=config.ray_address,
        )


@dataclass(frozen=True)
class UpsertResult:
    added: int
    changed: int
    unchanged: int
    item_count: int
    encode_seconds: float


@dataclass(frozen=True)
class PushResult:
    applied: int
    duplicates: int
    pairs_added: int
    weight_added: float
    totals: CooccurrenceTotals


@dataclass(frozen=True)
class CatalogDescription:
    state: CatalogState
    versions: list[VersionRecord]
    totals: CooccurrenceTotals


@dataclass(frozen=True)
class RefitLease:
    """A checked refit request holding its catalog's refit lock (see ``begin_refit``), or,
    for a request_id that already published, that refit's outcome (``done``, no lock)."""

    state: CatalogState
    settings: FitSettings
    owner: str
    renewer: _LeaseRenewer | None
    request_id: str = ""
    fingerprint: str = ""
    done: tuple[VersionRecord, int] | None = None


@dataclass(frozen=True)
class SimilarHit:
    item_id: str
    row: int
    score: float
    text: str = ""  # set when the caller asked for texts


@dataclass(frozen=True)
class Selection:
    """What a GetItemEmbeddings call serves, fixed when it starts."""

    version: int  # 0 for raw vectors
    dim: int
    kind: str  # "reduced" | "raw"
    rows: np.ndarray | None  # None: every row in order
    item_count: int  # rows served
    encoder: EncoderIdentity
    fitted: int = 0  # rows the version covers (later rows go through the projection)
    projection: Projection | None = None  # W and μ of the version, for those later rows
    epoch: str = ""  # the catalog's epoch: cached bytes of another epoch are another catalog's
    view: VersionView | None = None  # the version in memory, when the selection was made from it


class VersionView:
    """A published version held in memory: ``W``, ``μ``, its stored served vectors and a
    lazily built search index. Versions are immutable, so views never go stale."""

    def __init__(
        self, record: VersionRecord, components: np.ndarray, mean: np.ndarray, reduced: np.ndarray
    ) -> None:
        self.record = record
        self.projection = Projection(components, mean, float(record.diagnostics.get("lam", 0)))
        self.reduced = reduced
        self._indexes: dict[int, Any] = {}
        self._lock = threading.Lock()

    def index(self, dim: int | None = None) -> Any:
        """An exact inner-product index over the served vectors, or over their first
        ``dim`` components renormalized (built on first use; the latest two kept)."""
        dim = dim or self.record.dim
        with self._lock:
            found = self._indexes.pop(dim, None)
            if found is None:
                import faiss

                found = faiss.IndexFlatIP(dim)
                found.add(np.ascontiguousarray(prefix(self.reduced, dim)))
            self._indexes[dim] = found  # most recently used last
            while len(self._indexes) > 2:
                self._indexes.pop(next(iter(self._indexes)))
            return found


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CatalogService:
    def __init__(self, store: CatalogStore, encoder: Encoder, limits: Limits | None = None,
                 encode_listener: EncodeListener | None = None) -> None:
        """``limits`` default to those of the default configuration."""
        self.store = store
        self.encode_listener = encode_listener
        self.encoder = encoder
        self.limits = limits or Limits.from_config(ServerConfig())
        self.identity = EncoderIdentity(encoder.name, encoder.dim)
        self.fit_run = fit_engine(self.limits.fit_engine, self.limits.ray_address)
        self._views: OrderedDict[tuple[str, str, int], VersionView] = OrderedDict()
        self._views_lock = threading.Lock()
        self.row_cache = RowCache(self.limits.row_cache_items)

    # -- catalogs ---------------------------------------------------------------------
    def _catalog(self, name: str) -> CatalogState:
        verify_catalog(name)
        state = self.store.get_catalog(name)
        if state is None:
            raise NotFound(f"catalog {name!r} does not exist")
        return state

    def describe(self, name: str) -> CatalogDescription:
        verify_catalog(name)
        snapshot = self.store.describe(name)  # one snapshot: the active version is the listed one
        if snapshot is None:
            raise NotFound(f"catalog {name!r} does not exist")
        return CatalogDescription(snapshot.state, snapshot.versions, snapshot.totals)

    # -- UpsertItems ------------------------------------------------------------------
    def _request(self, name: str, request_id: str, fingerprint: str) -> RequestRecord | None:
        """The record of an earlier committed call with this request_id, if any."""
        found = self.store.find_request(name, request_id) if request_id else None
        if found is not None and found.fingerprint != fingerprint:
            raise InvalidArgument(
                f"request_id {shown(request_id)} was already used for a different request")
        return found

    def _new_request(self, request_id: str, fingerprint: str, outcome: dict[str, Any]
                     ) -> RequestRecord | None:
        if not request_id:
            return None
        return RequestRecord(request_id, fingerprint, outcome,
                             time.time() + self.limits.request_id_ttl_seconds)

    def upsert_items(self, name: str, ids: Sequence[str], texts: Sequence[str],
                     request_id: str = "") -> UpsertResult:
        limits = self.limits
        verify_items(name, ids, texts, limits.max_items_per_upsert, limits.max_text_chars)
        fingerprint = _fingerprint("UpsertItems", ids, texts) if request_id else ""
        if (done := self._request(name, request_id, fingerprint)) is not None:
            return UpsertResult(**done.outcome, encode_seconds=0.0)
        state = self.store.get_catalog(name)
        if state is not None and state.encoder != self.identity:
            raise FailedPrecondition(
                f"catalog {name!r} was encoded by {state.encoder.name} (dim "
                f"{state.encoder.dim}); this server runs {self.identity.name} "
                f"(dim {self.identity.dim})"
            )
        base_count = state.item_count if state else 0
        rows = self.store.find_rows(name, ids) if state else np.full(len(ids), -1)
        hashes = [text_hash(text) for text in texts]
        known = np.flatnonzero(rows >= 0)
        stored = self.store.text_hashes(name, rows[known]) if len(known) else []
        changed = [i for i, old in zip(known.tolist(), stored, strict=True) if old != hashes[i]]
        new = np.flatnonzero(rows < 0).tolist()
        to_encode = [texts[i] for i in new + changed]
        started = time.perf_counter()
        vectors = (
            self.encoder.encode(to_encode, progress=_ProgressLog(name, len(to_encode),
                                                                 self.encode_listener))
            if to_encode
            else np.empty((0, self.identity.dim), dtype=np.float32)
        )
        encode_seconds = time.perf_counter() - started
        changes = ItemChanges(
            base_count=base_count,
            new_ids=[ids[i] for i in new],
            new_text_hashes=[hashes[i] for i in new],
            new_vectors=vectors[: len(new)],
            changed_rows=rows[changed].astype(np.int64),
            changed_text_hashes=[hashes[i] for i in changed],
            changed_vectors=vectors[len(new) :],
            texts=dict(zip([hashes[i] for i in new + changed], to_encode, strict=True)),
        )
        check_alive()  # a call that died while encoding stops before its commit
        # A new catalog is created by the commit itself: an upsert that fails or dies before
        # it leaves no empty catalog behind.
        create = None if state is not None else (self.identity, self.limits.raw_dtype)
        unchanged = len(ids) - len(new) - len(changed)
        outcome = {"added": len(new), "changed": len(changed), "unchanged": unchanged,
                   "item_count": base_count + len(new)}
        try:
            count = self.store.commit_items(
                name, changes, self._new_request(request_id, fingerprint, outcome),
                create=create)
        except ConflictError as error:
            if (done := self._request(name, request_id, fingerprint)) is not None:
                return UpsertResult(**done.outcome, encode_seconds=0.0)  # a retry won
            raise Aborted(f"a concurrent UpsertItems on {name!r} committed first; retry") from error
        return UpsertResult(len(new), len(changed), unchanged, count, encode_seconds)

    # -- GetItemEmbeddings ------------------------------------------------------------
    def select(self, name: str, version: int, ids: Sequence[str], kind: str) -> Selection:
        verify_version(version)
        for item_id in ids:
            verify_item_id(item_id)
        rows = None
        if ids:  # the catalog's state and the rows of the ids in one store round trip
            verify_catalog(name)
            found, rows = self.store.catalog_and_rows(name, ids)
            if found is None:
                self.row_cache.drop(name)
                raise NotFound(f"catalog {name!r} does not exist")
            state = found
            self.row_cache.add(name, state.epoch, ids, rows)
            self._fill_row_cache(name, state)
            if np.any(rows < 0):
                missing = ids[int(np.argmax(rows < 0))]
                raise NotFound(f"item {shown(missing)} is not in catalog {name!r}")
        else:
            state = self._catalog(name)
        count = state.item_count if rows is None else len(rows)
        if kind == "raw":
            if version:
                raise InvalidArgument("raw vectors are not versioned: ask for version 0")
            return Selection(0, state.encoder.dim, "raw", rows, count, state.encoder,
                             epoch=state.epoch)
        version = self._resolve(state, version)
        view = self.cached_view(name, state.epoch, version)
        if view is None and rows is not None:
            view = self.view(name, state.epoch, version)
        if view is not None:
            return self._selection(view, rows, count, state.epoch)
        # A whole-catalog pull streams the version's blocks: no need to load them all.
        record = self._record(name, version)
        components, mean = self.store.read_projection(name, version)
        projection = Projection(components, mean, float(record.diagnostics.get("lam", 0)))
        return Selection(record.version, record.dim, "reduced", rows, count, record.encoder,
                         record.item_count, projection, state.epoch)

    def _fill_row_cache(self, name: str, state: CatalogState) -> None:
        """After a look-up that missed the row cache: hold every id of the catalog (one read
        of its ids in row order), so the look-ups that follow map ids in memory. Ids read
        after a re-creation would be held under the older epoch, which no later header
        matches: they are never used, only dropped."""
        if not self.row_cache.claim_fill(name, state.epoch, state.item_count):
            return
        try:
            self.row_cache.fill(name, state.epoch, self.store.item_ids(name, 0, state.item_count))
        finally:
            self.row_cache.end_fill(name)

    async def select_in_memory(self, name: str, version: int, ids: Sequence[str]
                               ) -> Selection | None:
        """A look-up of reduced vectors answered from this process's memory after one
        awaited read of the catalog header (no worker thread): every id's row cached for
        the catalog's current epoch, the version's view held and covering those rows.
        ``None`` when any of that is missing: the caller then runs ``select``."""
        verify_version(version)
        verify_catalog(name)
        for item_id in ids:
            verify_item_id(item_id)
        cached = self.row_cache.rows(name, ids)
        if cached is None or np.any(cached[1] < 0):
            return None
        epoch, rows = cached
        state = await self.store.catalog_head(name)
        if state is None or state.epoch != epoch:  # gone or re-created: entries are stale
            self.row_cache.drop(name)
            return None  # ``select`` reads the store again and says what happened
        view = self.cached_view(name, epoch, self._resolve(state, version))
        if view is None or int(rows.max()) >= len(view.reduced):
            return None
        return self._selection(view, rows, len(rows), epoch)

    @staticmethod
    def _selection(view: VersionView, rows: np.ndarray | None, count: int, epoch: str
                   ) -> Selection:
        record = view.record
        return Selection(record.version, record.dim, "reduced", rows, count, record.encoder,
                         record.item_count, view.projection, epoch, view)

    def chunk(
        self, name: str, selection: Selection, start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and float32 vectors of positions ``[start, stop)`` of a selection."""
        if selection.rows is None:
            rows = np.arange(start, stop, dtype=np.int64)
        else:
            rows = selection.rows[start:stop]
        return rows, self._vectors(name, selection, rows)

    def _vectors(self, name: str, selection: Selection, rows: np.ndarray) -> np.ndarray:
        if selection.kind == "raw":
            if selection.rows is None:
                return self.store.read_raw(name, int(rows[0]), int(rows[-1]) + 1)
            return self.store.read_raw_rows(name, rows)
        view = selection.view or self.cached_view(name, selection.epoch, selection.version)
        if view is None and selection.rows is None and selection.projection is not None:
            return self._streamed(name, selection, int(rows[0]), int(rows[-1]) + 1)
        view = view or self.view(name, selection.epoch, selection.version)
        fitted = rows < len(view.reduced)
        if fitted.all():
            return view.reduced[rows]
        out = np.empty((len(rows), selection.dim), dtype=np.float32)
        out[fitted] = view.reduced[rows[fitted]]
        # Items added after the fit: served through the version's projection (cold start).
        out[~fitted] = view.projection.transform(self.store.read_raw_rows(name, rows[~fitted]))
        return out

    def _resolve(self, state: CatalogState, version: int) -> int:
        if version:
            return version
        if not state.active_version:
            raise FailedPrecondition(
                f"catalog {state.name!r} has no active version yet: refit and activate first"
            )
        return state.active_version

    def _streamed(self, name: str, selection: Selection, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a version read from the store (no view in memory)."""
        fitted = min(max(start, selection.fitted), stop)
        parts = []
        if fitted > start:
            parts.append(self.store.read_reduced(name, selection.version, start, fitted))
        if stop > fitted:  # items added after the fit (cold start)
            assert selection.projection is not None
            parts.append(selection.projection.transform(self.store.read_raw(name, fitted, stop)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def stored_vectors(self, name: str, selection: Selection, start: int, stop: int,
                       dtype: str) -> bytes | None:
        """Positions ``[start, stop)`` of a whole-catalog pull as the wire bytes of ``dtype``
        read straight from the store (no float32 round trip), when the version is not in
        memory and covers every one of those rows; None otherwise (``chunk`` serves them)."""
        if (selection.kind != "reduced" or selection.rows is not None
                or stop > selection.fitted
                or self.cached_view(name, selection.epoch, selection.version) is not None):
            return None
        return self.store.read_reduced_bytes(name, selection.version, start, stop, dtype)

    def cached_view(self, name: str, epoch: str, version: int) -> VersionView | None:
        """The view of a version if this process holds it already (never loads). Keyed by
        the catalog's epoch too: a catalog lost and created again numbers its versions
        from 1 again, and must never be served another catalog's vectors."""
        with self._views_lock:
            view = self._views.get((name, epoch, version))
            if view is not None:
                self._views.move_to_end((name, epoch, version))
            return view

    def _record(self, name: str, version: int) -> VersionRecord:
        record = next((r for r in self.store.versions(name) if r.version == version), None)
        if record is None:
            raise NotFound(f"catalog {name!r} has no version {version}")
        return record

    def view(self, name: str, epoch: str, version: int) -> VersionView:
        """The cached view of a published version (LRU of ``version_cache_size``)."""
        key = (name, epoch, version)
        cached = self.cached_view(name, epoch, version)
        if cached is not None:
            return cached
        record = self._record(name, version)
        components, mean = self.store.read_projection(name, version)
        reduced = self.store.read_reduced(name, version, 0, record.item_count)
        view = VersionView(record, components, mean, reduced)
        with self._views_lock:
            self._views[key] = view
            while len(self._views) > max(self.limits.version_cache_size, 1):
                self._views.popitem(last=False)
        return view

    def texts(self, name: str, rows: Sequence[int]) -> list[str]:
        """Current texts of rows ("" for items ingested before texts were kept)."""
        if not len(rows):
            return []
        found = self.store.texts_of(name, self.store.text_hashes(name, np.asarray(rows)))
        return [text or "" for text in found]

    # -- PushCooccurrence -------------------------------------------------------------
    def push(self, name: str, blocks: Sequence[PairBlock]) -> PushResult:
        state = self._catalog(name)
        batches = [PairBatch(*checked) for checked in verify_pair_batches(
            name, blocks, state.item_count, self.limits.max_pairs_per_push
        )]
        # This call's own pairs and the totals, from the atomic step that applied them.
        outcome = self.store.apply_pair_batches(name, batches)
        return PushResult(outcome.applied, outcome.duplicates, outcome.pairs, outcome.weight,
                          outcome.totals)

    # -- RefitProjection --------------------------------------------------------------
    def refit(self, name: str, request: FitRequest, activate: bool, request_id: str = "",
              progress: RefitProgress | None = None) -> tuple[VersionRecord, int]:
        """The blocking form: check, take the catalog's refit lock, fit, write."""
        progress = progress or RefitProgress()
        lease = self.begin_refit(name, request, activate, request_id)
        outcome = lease.done or self.run_refit(lease, activate, progress)
        progress.enter("done")
        return outcome

    def begin_refit(self, name: str, request: FitRequest, activate: bool,
                    request_id: str = "") -> RefitLease:
        """Check a refit request completely and take the catalog's refit lock (renewed until
        ``run_refit`` ends): every error a caller can cause is raised here, before any work
        starts, so StartRefit reports it as RefitProjection does. A request_id whose refit
        already published gives a lease holding that outcome (``done``) and no lock."""
        state = self._catalog(name)
        settings = verify_fit(request, state.encoder.dim)
        fingerprint = _fingerprint("RefitProjection", repr(asdict(request)), str(activate))
        if (done := self._refit_done(name, request_id, fingerprint)) is not None:
            return RefitLease(state, settings, "", None, request_id, fingerprint, done)
        if state.item_count < settings.dim + 1:
            raise FailedPrecondition(
                f"catalog {name!r} has {state.item_count} items; a fit of dim {settings.dim} "
                f"needs at least {settings.dim + 1}"
            )
        if settings.lam and not self.store.cooccurrence_totals(name).pairs:
            raise FailedPrecondition(
                f"lam > 0 needs co-occurrence counts and catalog {name!r} has none yet"
            )
        owner = uuid.uuid4().hex
        lease = self.limits.refit_lock_lease_seconds
        if not self.store.acquire_refit_lock(name, owner, lease):
            raise Aborted(f"a refit of {name!r} is already running; retry after it finishes")
        return RefitLease(state, settings, owner, _LeaseRenewer(self.store, name, owner, lease),
                          request_id, fingerprint)

    def run_refit(self, lease: RefitLease, activate: bool,
                  progress: RefitProgress | None = None) -> tuple[VersionRecord, int]:
        """Fit and write under a lease from ``begin_refit``; releases the lock at the end."""
        if lease.done is not None:
            return lease.done
        name, progress = lease.state.name, progress or RefitProgress()
        try:
            # The first call of this request_id may have published while this one waited.
            done = self._refit_done(name, lease.request_id, lease.fingerprint)
            if done is not None:
                return done
            # Payloads a refit wrote but never published (its process died before the
            # atomic publish) are invisible; collect those older than a lease, so crashed
            # refits do not leak their arrays. A live refit holding the lock is this one.
            collected = self.store.collect_garbage(
                name, min_age_seconds=self.limits.refit_lock_lease_seconds)
            if collected:
                log.warning("catalog %s: removed %d unpublished version payload(s) left by "
                            "an interrupted refit", name, collected)
            request_record = self._new_request(lease.request_id, lease.fingerprint, {})
            return self._refit_locked(lease.state, lease.settings, activate, lease.owner,
                                      progress, request_record)
        finally:
            if lease.renewer is not None:
                lease.renewer.stop()
            self.store.release_refit_lock(name, lease.owner)

    def _refit_done(self, name: str, request_id: str, fingerprint: str
                    ) -> tuple[VersionRecord, int] | None:
        """The outcome of an earlier refit with this request_id: its version as it is now
        and the active version before it was published."""
        done = self._request(name, request_id, fingerprint)
        if done is None:
            return None
        return (self._record(name, int(done.outcome["version"])),
                int(done.outcome["previous_active_version"]))

    def _refit_locked(
        self, state: CatalogState, settings: FitSettings, activate: bool, owner: str,
        progress: RefitProgress, request: RequestRecord | None = None,
    ) -> tuple[VersionRecord, int]:
        name, count = state.name, state.item_count
        progress.enter("reading")
        totals = self.store.cooccurrence_totals(name)
        started = time.perf_counter()
        # Counts first: their merge's temporaries are freed before the vectors arrive. The
        # vectors stay in their stored dtype (float16 halves them); the fit converts blocks.
        counts = self.store.read_counts(name, count) if totals.pairs else None
        blocks = self.store.raw_blocks(name, count)
        # Raw vectors in the store: read whole (in their stored dtype) and fitted in memory.
        # In a raw file store: streamed block by block, never held whole.
        raw = (self.store.read_raw_stored(name, 0, count)
               if isinstance(blocks, StoredRowBlocks) else None)
        check_alive()  # each phase below takes a while: a dead call stops between them
        progress.enter("moments")
        try:
            if raw is not None:
                result = fit_recpca(raw, counts, settings, phase=progress.enter,
                                    progress=lambda rows: progress.within(rows, count),
                                    run=self.fit_run)
            else:
                result = fit_recpca_streamed(
                    blocks, counts, settings, phase=progress.enter,
                    progress=lambda rows: progress.within(rows, count),
                    run=self.fit_run or run_locally)
        except ValueError as error:  # e.g. vectors without variance
            raise FailedPrecondition(f"cannot fit catalog {name!r}: {error}") from error
        except FitEngineError as error:  # the engine, not the data: worth a retry
            raise Unavailable(f"cannot fit catalog {name!r}: {error}") from error
        del counts
        check_alive()
        rank = variance_rank(result.moments.scatter)
        if settings.dim > rank:  # the other columns would be arbitrary null-space directions
            raise FailedPrecondition(
                f"catalog {name!r}: its normalized raw vectors vary in only {rank} directions, "
                f"so a fit of dim {settings.dim} is not determined by the data (new items "
                f"would get arbitrary coordinates in {settings.dim - rank} of them); ask for "
                f"dim <= {rank}"
            )
        progress.enter("writing")
        del raw
        reduced = result.served
        parameters = {
            "dim": settings.dim,
            "lam": settings.lam,
            "retention_budget": settings.retention,
            "graph": asdict(settings.graph),
            "whitening": settings.whitening,
        }
        new = NewVersion(
            item_count=count,
            dim=settings.dim,
            encoder=state.encoder,
            parameters=parameters,
            diagnostics=result.diagnostics.to_dict(),
            counts=totals,
            fit_seconds=time.perf_counter() - started,
            components=result.projection.served_map,  # W T: what new items go through
            mean=result.projection.mean,
            reduced=reduced,
        )
        check_alive()
        try:  # published only while this refit still holds the lock (a fencing token)
            published = self.store.write_version(name, new, activate, request, lock_owner=owner)
        except ConflictError as error:
            if request is not None and (
                    done := self._refit_done(name, request.request_id, request.fingerprint)):
                return done  # a call with this request_id published first
            raise Aborted(str(error)) from error
        # Both from the publish step: an activation during the fit is accounted for.
        record, previous = published.record, published.previous_active
        log.info(
            "catalog %s: version %d written (%s) in %.2fs, λ=%.4g",
            name,
            record.version,
            record.status,
            new.fit_seconds,
            result.projection.lam,
        )
        return record, previous

    # -- ActivateVersion --------------------------------------------------------------
    def activate(self, name: str, version: int) -> tuple[int, int]:
        if version <= 0:
            raise InvalidArgument(f"version must be >= 1, got {version}")
        self._catalog(name)
        try:
            previous = self.store.activate(name, version)
        except NotFoundError as error:
            raise NotFound(f"catalog {name!r} has no version {version}") from error
        return previous, version

    # -- SimilarItems -----------------------------------------------------------------
    def similar(
        self, name: str, version: int, item_id: str | None, vector: bytes | None, k: int,
        dim: int = 0, include_texts: bool = False,
    ) -> tuple[int, list[SimilarHit]]:
        verify_version(version)
        k = verify_similar(k, self.limits.max_similar_k)
        if item_id is not None:
            verify_item_id(item_id)
        state = self._catalog(name)
        view = self.view(name, state.epoch, self._resolve(state, version))
        dim = served_dim(dim, view.record.dim)
        exclude = -1
        if item_id is not None:
            row = int(self.store.find_rows(name, [item_id])[0])
            if row < 0:
                raise NotFound(f"item {shown(item_id)} is not in catalog {name!r}")
            exclude = row
            selection = Selection(
                view.record.version,
                view.record.dim,
                "reduced",
                None,
                state.item_count,
                view.record.encoder,
                epoch=state.epoch,
            )
            query = prefix(self._vectors(name, selection, np.array([row])), dim)
        else:
            query = _query_vector(vector or b"", dim)
        scores, found = view.index(dim).search(query, min(k + 1, len(view.reduced)))
        hits = [
            (int(r), float(s))
            for r, s in zip(found[0], scores[0], strict=True)
            if r >= 0 and r != exclude
        ][:k]
        rows = [row for row, _ in hits]
        texts = self.texts(name, rows) if include_texts else [""] * len(rows)
        return view.record.version, [
            SimilarHit(self.store.item_ids(name, row, row + 1)[0], row, score, text)
            for (row, score), text in zip(hits, texts, strict=True)
        ]


def _fingerprint(method: str, *parts: str | Sequence[str]) -> str:
    """A digest of a request's contents, to tell a retry from a different request with the
    same request_id; every string is length-prefixed so no two requests share one."""
    digest = hashlib.sha256(method.encode())
    for part in parts:
        for text in [part] if isinstance(part, str) else part:
            data = text.encode()
            digest.update(len(data).to_bytes(8, "little") + data)
        digest.update(b"\xff" * 8)  # ends a part: ("a", "b") + () differs from ("a",) + ("b",)
    return digest.hexdigest()


def variance_rank(scatter: np.ndarray) -> int:
    """Directions with variance: eigenvalues of the scatter ``S`` above its rounding noise.
    ``S`` is positive semi-definite, so its negative eigenvalues are pure noise (about 1e-7
    of the largest when moments accumulate float32 blocks); ten times the largest of them,
    and at least 1e-9 of the largest eigenvalue, separates null directions from variance."""
    eigenvalues = scipy.linalg.eigvalsh(scatter)
    noise = max(10 * float(-eigenvalues[0]), 1e-9 * float(eigenvalues[-1]), 0.0)
    return int(np.sum(eigenvalues > noise))


EncodeListener = Callable[[str, int, int, float], None]


class _ProgressLog:
    """Logs an ingest's encoding progress about every 10 % (long ingests take minutes) and
    tells ``listener`` (catalog, encoded, total, texts per second) after every batch."""

    def __init__(self, catalog: str, total: int, listener: EncodeListener | None = None
                 ) -> None:
        self.catalog, self.total, self.done, self.next_report = catalog, total, 0, 0.1
        self.started = time.perf_counter()
        self.listener = listener

    def __call__(self, encoded: int) -> None:
        self.done += encoded
        if self.listener is not None:
            seconds = max(time.perf_counter() - self.started, 1e-9)
            self.listener(self.catalog, self.done, self.total, self.done / seconds)
        if self.done >= self.next_report * self.total:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            log.info(
                "catalog %s: encoded %d/%d texts (%.0f/s)",
                self.catalog, self.done, self.total, rate,
            )
            self.next_report = self.done / self.total + 0.1


def _query_vector(block: bytes, dim: int) -> np.ndarray:
    if len(block) != 4 * dim:
        raise InvalidArgument(f"query vector must be {dim} float32 values ({4 * dim} bytes)")
    # float64: the norm of a finite float32 vector can overflow float32 (values near 3e38).
    query = np.frombuffer(block, dtype="<f4").reshape(1, dim).astype(np.float64)
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm == 0:
        raise InvalidArgument("query vector must be finite and non-zero")
    return (query / norm).astype(np.float32)


class _LeaseRenewer:
    """Keeps a refit lock's lease alive while a long fit runs (renews at a third of it)."""

    def __init__(self, store: CatalogStore, name: str, owner: str, lease: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, name, owner, lease), daemon=True
        )
        self._thread.start()

    def _run(self, store: CatalogStore, name: str, owner: str, lease: float) -> None:
        while not self._stop.wait(lease / 3):
            try:
                renewed = store.renew_refit_lock(name, owner, lease)
            except StoreError as error:  # the store may come back before the lease ends
                log.warning("could not renew the refit lock of %s: %s", name, error)
                continue
            if not renewed:
                log.warning("refit lock of %s lost before the fit finished", name)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
