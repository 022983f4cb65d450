"""Redis store: production persistence, one Redis Cluster hash slot per catalog.

Key layout (``P`` the key prefix; every key of catalog ``c`` carries the hash tag ``{c}``, so
a catalog lives in one slot and every MULTI/EXEC or script touches one catalog only)::

    P:store                 epoch of the whole store (a restarted-empty Redis has none)
    P:{c}:meta              JSON {encoder, raw_dtype, block_rows, created_at, epoch,
                            id_blocks}, written once; every call reads it, so no process
                            trusts a cached copy
    P:{c}:count             item count; commit_items WATCHes it
    P:{c}:ids               hash  item id -> row
    P:{c}:idwire:<b>        ids of rows [b·B, (b+1)·B) (catalogs with "id_blocks"), each as
                            its GetItemEmbeddingsResponse.item_ids entry on the wire (tag,
                            length, UTF-8), APPENDed: a whole-catalog pull sends a slice
    P:{c}:idends:<b>        <u4 end offset of each of those rows' entries in idwire:<b>
    P:{c}:rowids            list  row -> item id (catalogs created before "id_blocks" only)
    P:{c}:texthash          hash  row -> text hash
    P:{c}:texts             hash  text hash -> text (content-addressed, written before commit)
    P:{c}:raw:<b>           raw vectors of rows [b·B, (b+1)·B) in the raw dtype (APPEND, SETRANGE)
    P:{c}:rawfiles          hash  first row -> JSON block entry: with a raw file store (the
                            header's "raw_files"), the manifest of the catalog's block files
    P:{c}:rawretired        hash  block file -> when a commit replaced it (collected later)
    P:{c}:vseq              last version number handed out (INCR)
    P:{c}:pending           hash  version -> JSON {started, blocks}: payloads not yet published
    P:{c}:v:<n>:W           packed float64 W (D × d);  P:{c}:v:<n>:mean  packed float64 μ
    P:{c}:v:<n>:red:<b>     reduced float32 vectors of rows [b·B, (b+1)·B)
    P:{c}:v:<n>:red16:<b>   the same rows as float16, sent as stored by float16 pulls
                            (versions whose record has "reduced_float16"; older versions
                            are converted from float32): half again the float32 blocks'
                            memory, i.e. a version's served vectors take items × d × 6 bytes
    P:{c}:versions          hash  version -> immutable record JSON (published versions only)
    P:{c}:active            active version number
    P:{c}:activated         hash  version -> last activation time (unix seconds)
    P:{c}:batch_keys        set of applied batch keys "<bytes of worker>:<worker>:<batch>"
                            (length-prefixed: two (worker, batch) pairs never share a key)
    P:{c}:batches           the same as "worker\\0batch", written before that format
                            existed; read only, for ids without NUL (where it is exact)
    P:{c}:pairs             list of packed pair blobs (the co-occurrence log)
    P:{c}:pairs_gen         compaction generation of that log
    P:{c}:cooc              hash  pairs, weight, batches
    P:{c}:refit_lock        owner of the refit lock, with a PX lease

``B`` (rows per block) is fixed per catalog at creation, so a 1M-item catalog is a few
hundred values of a few MiB, and a range read is one GETRANGE per block touched.

Redis Cluster: ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) opens a
cluster client seeded by that node; it discovers the others. Because every key of a
catalog shares one slot, transactions, WATCH and the Lua scripts run unchanged on the node
that owns the catalog.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import redis
import redis.asyncio as redis_async
import scipy.sparse as sp
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from protos.codecs import WIRE_DTYPES, item_ids_of
from server.call_lifetime import CallEnded, check_commit, commit_deadline_ms, deadline_passed
from server.cooccurrence_merge import counts_from_pairs
from server.quoting import shown
from server.recpca.row_blocks import RowBlocks
from server.stores.base import (
    CatalogSnapshot,
    CatalogState,
    CatalogStore,
    ConflictError,
    CooccurrenceTotals,
    CorruptDataError,
    DataLostError,
    EncoderIdentity,
    IdField,
    ItemChanges,
    NewVersion,
    NotFoundError,
    PairBatch,
    PublishedVersion,
    PushOutcome,
    RequestRecord,
    StoreUnavailableError,
    VersionRecord,
)
from server.stores.checks import (
    check_changes,
    check_new_version,
    check_pair_batch,
    check_raw_dtype,
)
from server.stores.epochs import EpochWatch, new_epoch
from server.stores.packing import (
    decoding,
    pack_array,
    pack_pairs,
    pair_arrays,
    row_runs,
    unpack_array,
)
from server.stores.raw_files import BlockChanges, BlockEntry, RawFileStore, check_manifest
from server.stores.records import parse_record, record_json
from server.validation import verify_catalog

P = ParamSpec("P")
T = TypeVar("T")

# Wire dtype -> key of a version's reduced blocks in it (float32 always, float16 for
# versions whose record has _FLOAT16_COPY).
_REDUCED_KINDS = {"float32": "red", "float16": "red16"}
_FLOAT16_COPY = "reduced_float16"

_CHUNK = 10_000  # fields per HSET/HMGET/RPUSH command, so no single command is huge
_BLOCKS_PER_READ = 16  # row blocks per MULTI when a whole table is read
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Failures that mean "the store cannot serve right now" (UNAVAILABLE, safe to retry: Redis
# applied none of the refused commands): connection loss, timeouts, a cluster whose slots
# are not all served (a node is down), a replica that became read-only in a failover, and a
# full Redis (maxmemory with noeviction refuses writes and, inside MULTI, reads too).
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)

# Scripts that commit a call's effects first check its commit deadline (unix ms, 0: none)
# on Redis's clock, so a call whose script waited past its deadline (a paused or busy
# Redis) commits nothing: they return -3.
_PAST_DEADLINE = """
local function past_deadline(deadline)
  deadline = tonumber(deadline)
  if deadline == 0 then return false end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > deadline
end
"""

# Applies the batches not seen before and updates the totals: one script for the whole
# call, so a call is all-or-nothing and a retried batch is counted once. Returns which
# batches it applied ("1"/"0" per batch) and the totals right after: what the caller is told
# comes from this step, not from reads around it. ARGV[1] is the catalog header the caller
# read (its epoch): a catalog lost or re-created since is not written to (-1). ARGV[2]: the
# commit deadline (-3 once passed).
_APPLY_BATCHES = _PAST_DEADLINE + """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
if past_deadline(ARGV[2]) then return -3 end
local applied, pairs, flags = 0, 0, {}
for i = 3, #ARGV, 5 do
  local old = ARGV[i + 1] ~= '' and redis.call('SISMEMBER', KEYS[5], ARGV[i + 1]) == 1
  if not old and redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 2])
    redis.call('HINCRBYFLOAT', KEYS[3], 'weight', ARGV[i + 4])
    applied = applied + 1
    pairs = pairs + tonumber(ARGV[i + 3])
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end
if applied > 0 then
  redis.call('HINCRBY', KEYS[3], 'batches', applied)
  redis.call('HINCRBY', KEYS[3], 'pairs', pairs)
end
local totals = redis.call('HMGET', KEYS[3], 'pairs', 'weight', 'batches')
return {table.concat(flags), totals[1] or '0', totals[2] or '0', totals[3] or '0'}
"""

# Replaces the first ARGV[2] log entries by one merged blob unless another compaction ran
# since they were read (pushes only append, so those entries are still the first ones).
_COMPACT = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('LTRIM', KEYS[1], ARGV[2], -1)
redis.call('LPUSH', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2])
return 1
"""

# Publishes a written payload (and optionally activates it) and returns the active version
# it replaced, or refuses: -5 if the catalog was lost or re-created (KEYS[7] is no longer the
# header ARGV[10] the caller read), -3 once the commit deadline ARGV[8] passed, -4 if ARGV[9]
# (the refit's lock owner, a fencing token) no longer holds the refit lock KEYS[6], -2 if the
# request id (KEYS[5], when ARGV[5] holds its fingerprint) is already recorded, -1 if the
# payload was collected. The request's record is written in the same step, with the active
# version it replaced.
_PUBLISH = _PAST_DEADLINE + """
if redis.call('GET', KEYS[7]) ~= ARGV[10] then return -5 end
if past_deadline(ARGV[8]) then return -3 end
if ARGV[9] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[9] then return -4 end
if ARGV[5] ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then return -2 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local previous = tonumber(redis.call('GET', KEYS[3]) or '0')
if ARGV[3] == '1' then
  redis.call('SET', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[5], 'fingerprint', ARGV[5], 'outcome', ARGV[6], 'version', ARGV[1],
             'previous', previous)
  redis.call('PEXPIREAT', KEYS[5], ARGV[7])
end
return previous
"""

_ACTIVATE = _PAST_DEADLINE + """
if past_deadline(ARGV[3]) then return -3 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if previous ~= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
return previous
"""

# Deletes one unpublished payload if its pending entry is still the one the collector saw.
_COLLECT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('UNLINK', KEYS[i]) end
return 1
"""

# Rows of id blocks: KEYS are (idends, idwire) pairs of consecutive blocks, ARGV the rows
# [first, last) wanted of each (last > first); returns each block's end offsets of those
# rows (with the row before first's, where the entries start, unless first is 0) and the
# bytes of their entries. One atomic step: no other commit in between.
_ID_ROWS = """
local out = {}
for i = 1, #KEYS, 2 do
  local first, last = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local lead = first > 0 and 1 or 0
  local ends = redis.call('GETRANGE', KEYS[i], 4 * (first - lead), 4 * last - 1)
  local from, to = 0, 0
  if #ends >= 4 then
    if lead == 1 then from = struct.unpack('<I4', ends) end
    to = struct.unpack('<I4', ends, #ends - 3)
  end
  out[#out + 1] = ends
  out[#out + 1] = to > from and redis.call('GETRANGE', KEYS[i + 1], from, to - 1) or ''
end
return out
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@decoding("item id block")
def _item_ids_of(field: IdField) -> list[str]:
    ids = item_ids_of(bytes(field.data))
    if len(ids) != len(field):
        raise ValueError(f"{len(ids)} ids in the entries of {len(field)} rows")
    return ids


@decoding("item id block")
def _joined_id_field(reply: list[bytes], leads: list[bool], rows: int) -> IdField:
    """One ``IdField`` from ``_ID_ROWS``' reply for consecutive blocks (``leads``: whether a
    block's ends start with the row before its first), each block's ends rebased from its
    own block to the joined bytes; a block whose ends and entries disagree is corrupt."""
    parts, total = [], 0
    for block_ends, entries, lead in zip(reply[0::2], reply[1::2], leads, strict=True):
        offsets = np.frombuffer(block_ends, "<u4").astype(np.int64)
        start = int(offsets[0]) if lead and len(offsets) else 0
        offsets = offsets[int(lead):]
        if np.any(np.diff(offsets, prepend=start) <= 0) or len(entries) != (
                int(offsets[-1]) - start if len(offsets) else 0):
            raise ValueError(f"{len(entries)} bytes of entries do not end where their rows do")
        parts.append(offsets - start + total)
        total += len(entries)
    joined = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if len(joined) != rows:
        raise ValueError(f"id blocks hold {len(joined)} rows, expected {rows}")
    return IdField(b"".join(reply[1::2]), joined)


def _unavailable_as_store_error(method: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except _UNAVAILABLE as error:
            raise StoreUnavailableError(f"redis does not answer: {error}") from error

    return wrapper


def _async_client(url: str, options: dict[str, Any]) -> redis_async.Redis | AsyncRedisCluster:
    """The asyncio twin of the store's client: same URL and options. It only reads (look-up
    headers), so it may retry once on a fresh connection: a Redis restarted under the server
    is then seen at once for what it is, not as one call's UNAVAILABLE."""
    options = {**options, "retry": AsyncRetry(NoBackoff(), 1)}
    scheme, separator, rest = url.partition("://")
    if separator and scheme in CLUSTER_SCHEMES:
        options.pop("health_check_interval", None)
        return AsyncRedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
    return redis_async.Redis.from_url(url, **options)


@dataclass(frozen=True)
class _Meta:
    """A catalog's immutable settings, as its header key holds them (``raw``)."""

    encoder: EncoderIdentity
    raw_dtype: str
    block_rows: int
    epoch: str
    raw: bytes
    raw_files: bool = False  # raw vectors in block files of a raw file store
    id_blocks: bool = False  # ids in idwire/idends blocks (else the rowids list)

    @property
    def raw_row_bytes(self) -> int:
        return self.encoder.dim * np.dtype(self.raw_dtype).itemsize


@functools.lru_cache(maxsize=1024)
@decoding("catalog header")
def _parse_meta(text: bytes | str) -> _Meta:
    fields = json.loads(text)
    # Headers written before epochs existed: their bytes (with created_at) identify them.
    raw = text if isinstance(text, bytes) else text.encode()
    epoch = fields.get("epoch") or hashlib.sha256(raw).hexdigest()[:32]
    meta = _Meta(EncoderIdentity(**fields["encoder"]), fields["raw_dtype"], fields["block_rows"],
                 str(epoch), raw, bool(fields.get("raw_files", False)),
                 bool(fields.get("id_blocks", False)))
    check_raw_dtype(meta.raw_dtype)
    if not isinstance(meta.block_rows, int) or meta.block_rows < 1:
        raise ValueError(f"block_rows {meta.block_rows!r}")
    if not isinstance(meta.encoder.dim, int) or meta.encoder.dim < 1:
        raise ValueError(f"encoder dim {meta.encoder.dim!r}")
    return meta


@decoding("version record")
def _parse_json(text: bytes | str) -> dict[str, Any]:
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise TypeError("not a JSON object")
    return fields


def batch_key(worker_id: str, batch_id: str) -> str:
    """The exactly-once key of a batch: the worker id's length in bytes first, so no two
    (worker_id, batch_id) pairs share a key whatever bytes they hold."""
    return f"{len(worker_id.encode())}:{worker_id}:{batch_id}"


def legacy_batch_key(worker_id: str, batch_id: str) -> str:
    """The key the store used before ``batch_key`` ("worker\\0batch"), looked up so that
    retries of batches applied before an upgrade stay duplicates. Only where it is exact:
    with a NUL in either id, the old key may belong to another pair, so it is not used (a
    retry of such a batch from before the upgrade counts again)."""
    if "\0" in worker_id or "\0" in batch_id:
        return ""
    return f"{worker_id}\0{batch_id}"


def _totals(pairs: bytes | str | None, weight: bytes | str | None,
            batches: bytes | str | None) -> CooccurrenceTotals:
    return CooccurrenceTotals(int(pairs or 0), float(weight or 0.0), int(batches or 0))


def _records(records: dict[bytes, bytes], active: int, activated: dict[bytes, bytes]
             ) -> list[VersionRecord]:
    times = {int(v): float(t) for v, t in activated.items()}
    versions = sorted(int(v) for v in records)
    return [parse_record(v, records[str(v).encode()], active, times.get(v)) for v in versions]


class RedisStore(CatalogStore):
    """``CatalogStore`` on Redis (``redis://``, ``rediss://`` TLS, ``unix://``; passwords in
    the URL), or on a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``). Extra
    keyword arguments go to ``redis.Redis.from_url`` (``RedisCluster.from_url``), e.g.
    ``ssl_ca_certs``; TLS options may also be URL query parameters
    (``rediss://host:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=…&ssl_keyfile=…``).

    The client does not retry on its own (``retries=0``): a write whose reply was lost may
    have been applied, and only the caller (with batch ids, base counts) can retry safely.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tfllmer",
        block_rows: int = 4096,
        compact_after: int = 256,
        raw_files: RawFileStore | None = None,
        **client_options: Any,
    ) -> None:
        if block_rows < 1:
            raise ValueError("block_rows must be >= 1")
        options: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_timeout": 60.0,
            "health_check_interval": 30,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(client_options)
        self._url, self._options = url, dict(options)
        # The asyncio client of the event loop that last used it (made on first use: an
        # asyncio client belongs to one loop).
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        scheme, separator, rest = url.partition("://")
        self._client: redis.Redis | RedisCluster
        if separator and scheme in CLUSTER_SCHEMES:
            options.pop("health_check_interval")
            try:  # a cluster client connects at once, to learn the slot map
                self._client = RedisCluster.from_url(
                    f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
            except (*_UNAVAILABLE, redis.exceptions.RedisClusterException) as error:
                raise StoreUnavailableError(f"redis cluster does not answer: {error}") from error
        else:
            self._client = redis.Redis.from_url(url, **options)
        self._prefix = key_prefix
        self._block_rows = block_rows
        self._compact_after = compact_after
        self._raw_files = raw_files  # catalogs created from now on keep raw vectors there
        self._epochs = EpochWatch()
        self._store_epoch: bytes | str | None = None
        scripts = {
            "apply": _APPLY_BATCHES,
            "compact": _COMPACT,
            "publish": _PUBLISH,
            "activate": _ACTIVATE,
            "collect": _COLLECT,
            "id_rows": _ID_ROWS,
            "renew": _RENEW,
            "release": _RELEASE,
        }
        self._scripts = {key: self._client.register_script(src) for key, src in scripts.items()}

    def _key(self, name: str, *parts: object) -> str:
        return ":".join((self._prefix, f"{{{name}}}", *map(str, parts)))

    def _meta(self, name: str) -> _Meta:
        """The catalog's settings, read from the store on every call (never a cached copy:
        the store may have lost them); ``NotFoundError`` for an unknown catalog."""
        verify_catalog(name)
        meta = self._checked_meta(name, self._client.get(self._key(name, "meta")))
        if meta is None:
            raise NotFoundError(f"catalog {name!r} does not exist")
        return meta

    def _checked_meta(self, name: str, text: bytes | str | None) -> _Meta | None:
        """Parse a header read from the store and check its epoch against what this handle
        saw before (``DataLostError`` if the catalog vanished or was replaced)."""
        meta = None if text is None else _parse_meta(text)
        self._epochs.check(name, None if meta is None else meta.epoch)
        return meta

    def _state(self, name: str, meta: _Meta, count: bytes | str | None,
               active: bytes | str | None) -> CatalogState:
        return CatalogState(name, meta.encoder, int(count or 0), int(active or 0),
                            meta.raw_dtype, meta.epoch)

    def _count(self, name: str) -> int:
        return int(self._client.get(self._key(name, "count")) or 0)

    def _read_rows(
        self, block_key: Callable[[int], str], rows: np.ndarray, row_bytes: int, block_rows: int
    ) -> bytes:
        """Bytes of sorted unique ``rows`` from row blocks: one GETRANGE per run, pipelined in
        one MULTI so the rows come from one consistent snapshot."""
        starts, stops = row_runs(rows, block_rows)
        with self._client.pipeline(transaction=True) as pipe:
            for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
                block, within = divmod(start, block_rows)
                end = (within + stop - start) * row_bytes - 1
                pipe.getrange(block_key(block), within * row_bytes, end)
            data = b"".join(pipe.execute())
        if len(data) != len(rows) * row_bytes:
            raise CorruptDataError(
                f"row blocks hold {len(data)} bytes, expected {len(rows) * row_bytes}"
            )
        return data

    # -- lifecycle ----------------------------------------------------------------------
    @_unavailable_as_store_error
    def ping(self) -> None:
        self._client.ping()

    @_unavailable_as_store_error
    def probe(self) -> None:
        self._epochs.raise_if_lost()
        key = f"{self._prefix}:store"
        # SET NX is a write: a Redis that refuses writes (maxmemory, read-only replica)
        # fails here even though PING still answers.
        self._client.set(key, new_epoch(), nx=True)
        epoch = self._client.get(key)
        if self._store_epoch is None:
            self._store_epoch = epoch
        elif epoch != self._store_epoch:
            self._epochs.lose_store(
                "its epoch key vanished or changed (Redis restarted empty or was flushed)")
            self._epochs.raise_if_lost()
        if self._raw_files is not None:
            self._raw_files.probe()

    def close(self) -> None:
        self._client.close()

    # -- catalogs and items -------------------------------------------------------------
    @_unavailable_as_store_error
    def create_catalog(
        self, name: str, encoder: EncoderIdentity, raw_dtype: str = "<f4"
    ) -> CatalogState:
        verify_catalog(name)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(name, "meta"), self._new_meta(encoder, raw_dtype), nx=True)
            pipe.set(self._key(name, "count"), 0, nx=True)
            pipe.execute()
        state = self.get_catalog(name)
        assert state is not None  # created above or before; catalogs are never deleted
        return state

    def _new_meta(self, encoder: EncoderIdentity, raw_dtype: str) -> bytes:
        """The header of a new catalog, with a fresh epoch."""
        check_raw_dtype(raw_dtype)
        return json.dumps({
            "encoder": {"name": encoder.name, "dim": encoder.dim},
            "raw_dtype": raw_dtype,
            "block_rows": self._block_rows,
            "created_at": time.time(),
            "epoch": new_epoch(),
            "id_blocks": True,
            **({"raw_files": True} if self._raw_files is not None else {}),
        }).encode()

    @_unavailable_as_store_error
    def get_catalog(self, name: str) -> CatalogState | None:
        verify_catalog(name)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(name, "meta"))
            pipe.get(self._key(name, "count"))
            pipe.get(self._key(name, "active"))
            text, count, active = pipe.execute()
        meta = self._checked_meta(name, text)
        return None if meta is None else self._state(name, meta, count, active)

    async def catalog_head(self, name: str) -> CatalogState | None:
        """One MGET of header, count and active pointer on the asyncio client (the keys share
        the catalog's slot, so it is one atomic read on a cluster too)."""
        verify_catalog(name)
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, _async_client(self._url, self._options))
        keys = [self._key(name, suffix) for suffix in ("meta", "count", "active")]
        try:
            text, count, active = await self._async[1].mget(keys)
        except _UNAVAILABLE as error:
            raise StoreUnavailableError(f"redis does not answer: {error}") from error
        meta = self._checked_meta(name, text)
        return None if meta is None else self._state(name, meta, count, active)

    @_unavailable_as_store_error
    def describe(self, name: str) -> CatalogSnapshot | None:
        verify_catalog(name)
        with self._client.pipeline(transaction=True) as pipe:
            for suffix in ("meta", "count", "active"):
                pipe.get(self._key(name, suffix))
            pipe.hgetall(self._key(name, "versions"))
            pipe.hgetall(self._key(name, "activated"))
            pipe.hmget(self._key(name, "cooc"), ["pairs", "weight", "batches"])
            text, count, active, records, activated, cooc = pipe.execute()
        meta = self._checked_meta(name, text)
        if meta is None:
            return None
        state = self._state(name, meta, count, active)
        return CatalogSnapshot(state, _records(records, state.active_version, activated),
                               _totals(*cooc))

    @_unavailable_as_store_error
    def find_rows(self, name: str, ids: Sequence[str]) -> np.ndarray:
        self._meta(name)
        key = self._key(name, "ids")
        with self._client.pipeline(transaction=False) as pipe:
            for i in range(0, len(ids), _CHUNK):
                pipe.hmget(key, list(ids[i : i + _CHUNK]))
            found = [row for chunk in pipe.execute() for row in chunk]
        return np.array([-1 if row is None else int(row) for row in found], dtype=np.int64)

    @_unavailable_as_store_error
    def catalog_and_rows(
        self, name: str, ids: Sequence[str]
    ) -> tuple[CatalogState | None, np.ndarray]:
        """One MULTI: the state and the rows come from the same snapshot."""
        verify_catalog(name)
        key = self._key(name, "ids")
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(name, "meta"))
            pipe.get(self._key(name, "count"))
            pipe.get(self._key(name, "active"))
            for i in range(0, len(ids), _CHUNK):
                pipe.hmget(key, list(ids[i : i + _CHUNK]))
            text, count, active, *chunks = pipe.execute()
        meta = self._checked_meta(name, text)
        if meta is None:
            return None, np.full(len(ids), -1, dtype=np.int64)
        found = [row for chunk in chunks for row in chunk]
        rows = np.array([-1 if row is None else int(row) for row in found], dtype=np.int64)
        return self._state(name, meta, count, active), rows

    @_unavailable_as_store_error
    @_unavailable_as_store_error
    def catalog_names(self) -> list[str]:
        pattern = f"{self._prefix}:{{*}}:meta"
        start, stop = len(self._prefix) + 2, -len("}:meta")
        return sorted({key.decode()[start:stop] for key in self._client.scan_iter(
            match=pattern, count=1000)})

    @_unavailable_as_store_error
    def put_texts(self, name: str, hashes: Sequence[str], texts: Sequence[str]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            self._queue_texts(pipe, name, dict(zip(hashes, texts, strict=True)))
            pipe.execute()

    def _queue_texts(self, pipe: Any, name: str, texts: dict[str, str]) -> None:
        key, pairs = self._key(name, "texts"), list(texts.items())
        for i in range(0, len(pairs), _CHUNK):
            pipe.hset(key, mapping=dict(pairs[i : i + _CHUNK]))

    @_unavailable_as_store_error
    def texts_of(self, name: str, hashes: Sequence[str]) -> list[str | None]:
        key = self._key(name, "texts")
        with self._client.pipeline(transaction=False) as pipe:
            for i in range(0, len(hashes), _CHUNK):
                pipe.hmget(key, list(hashes[i : i + _CHUNK]))
            found = [value for chunk in pipe.execute() for value in chunk]
        return [None if value is None else value.decode() for value in found]

    def text_hashes(self, name: str, rows: np.ndarray) -> list[str]:
        self._meta(name)
        fields = [int(row) for row in np.asarray(rows).ravel()]
        key = self._key(name, "texthash")
        with self._client.pipeline(transaction=False) as pipe:
            for i in range(0, len(fields), _CHUNK):
                pipe.hmget(key, fields[i : i + _CHUNK])
            found = [value for chunk in pipe.execute() for value in chunk]
        missing = [row for row, value in zip(fields, found, strict=True) if value is None]
        if missing:
            raise ValueError(f"row {missing[0]} is not in catalog {name!r}")
        return [value.decode() for value in found]

    @_unavailable_as_store_error
    def item_ids(self, name: str, start: int, stop: int) -> list[str]:
        meta = self._meta(name)
        start = max(start, 0)
        if stop <= start:
            return []
        if meta.id_blocks:
            return _item_ids_of(self._id_field(name, meta, start, stop))
        values = self._client.lrange(self._key(name, "rowids"), start, stop - 1)
        return [value if isinstance(value, str) else value.decode() for value in values]

    @_unavailable_as_store_error
    def item_id_field(self, name: str, start: int, stop: int) -> IdField:
        meta = self._meta(name)
        if not meta.id_blocks:
            return super().item_id_field(name, start, stop)
        return self._id_field(name, meta, max(start, 0), stop)

    def _id_field(self, name: str, meta: _Meta, start: int, stop: int) -> IdField:
        """The wire entries of rows ``[start, stop)`` (clipped to the count) cut out of
        their id blocks by one script: one atomic read, only the bytes of those rows."""
        stop = min(stop, self._count(name))
        keys, args = [], []
        for block in range(start // meta.block_rows, -(-stop // meta.block_rows)):
            first = max(start - block * meta.block_rows, 0)
            keys += [self._key(name, "idends", block), self._key(name, "idwire", block)]
            args += [first, min(stop - block * meta.block_rows, meta.block_rows)]
        if not keys:
            return IdField.of([])
        reply = self._scripts["id_rows"](keys=keys, args=args)
        return _joined_id_field(reply, [first > 0 for first in args[0::2]], stop - start)

    def _request_key(self, name: str, request_id: str) -> str:
        return self._key(name, "req", hashlib.sha256(request_id.encode()).hexdigest())

    @_unavailable_as_store_error
    def find_request(self, name: str, request_id: str) -> RequestRecord | None:
        verify_catalog(name)
        key = self._request_key(name, request_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.pexpiretime(key)
            fields, expires_ms = pipe.execute()
        if not fields:
            return None
        outcome = _parse_json(fields[b"outcome"])
        if b"version" in fields:  # written by a publish
            outcome["version"] = int(fields[b"version"])
            outcome["previous_active_version"] = int(fields[b"previous"])
        return RequestRecord(request_id, fields[b"fingerprint"].decode(), outcome,
                             int(expires_ms) / 1000)

    @_unavailable_as_store_error
    def commit_items(self, name: str, changes: ItemChanges, request: RequestRecord | None = None,
                     *, create: tuple[EncoderIdentity, str] | None = None) -> int:
        verify_catalog(name)
        written: list[tuple[str, str]] = []  # (epoch, file) of block files this commit wrote
        try:
            return self._commit_items(name, changes, request, create, written)
        except StoreUnavailableError:
            raise  # EXEC may have applied: its files stay (collected if unreferenced)
        except BaseException:
            if self._raw_files is not None:
                for epoch, file in written:
                    self._raw_files.discard(name, epoch, [file])
            raise

    def _commit_items(self, name: str, changes: ItemChanges, request: RequestRecord | None,
                      create: tuple[EncoderIdentity, str] | None,
                      written: list[tuple[str, str]]) -> int:
        meta_key = self._key(name, "meta")
        count_key, ids_key = self._key(name, "count"), self._key(name, "ids")
        files_key = self._key(name, "rawfiles")
        request_key = self._request_key(name, request.request_id) if request else None
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.watch(meta_key, count_key, files_key,
                           *([request_key] if request_key else []))
                meta = self._checked_meta(name, pipe.get(meta_key))
                header = None
                if meta is None:
                    if create is None:
                        raise NotFoundError(f"catalog {name!r} does not exist")
                    header = self._new_meta(*create)
                    meta = _parse_meta(header)
                if request_key and pipe.exists(request_key):
                    raise ConflictError("the request was committed by a concurrent call")
                count = int(pipe.get(count_key) or 0)
                if count != changes.base_count:
                    raise ConflictError(
                        f"catalog {name!r} has {count} items, the upsert expected "
                        f"{changes.base_count}"
                    )
                check_changes(changes, meta.encoder.dim, count)
                # Ids only change together with the WATCHed count, so this read is current.
                for i in range(0, len(changes.new_ids), _CHUNK):
                    chunk = changes.new_ids[i : i + _CHUNK]
                    rows = pipe.hmget(ids_key, chunk)
                    taken = [id_ for id_, row in zip(chunk, rows, strict=True) if row is not None]
                    if taken and int(pipe.get(count_key) or 0) != count:
                        # A concurrent upsert committed between the two reads: the race was
                        # lost, nothing is wrong with the request (ABORTED, retry).
                        raise ConflictError(f"a concurrent upsert of {name!r} committed first")
                    if taken:
                        raise ValueError(f"item id {shown(taken[0])} already has a row")
                # The first block's ids so far: only this commit (count is WATCHed) appends.
                id_offset = int(pipe.strlen(self._key(name, "idwire", count // meta.block_rows))
                                ) if meta.id_blocks and changes.new_ids else 0
                blocks = None
                if meta.raw_files:  # block files first, complete; the manifest in the EXEC
                    blocks = self._files(name).plan_commit(
                        name, meta.epoch, self._manifest(pipe, name), changes,
                        meta.encoder.dim, meta.raw_dtype)
                    written.extend((meta.epoch, file) for file in blocks.files)
                pipe.multi()
                if header is not None:  # the catalog and its first items in one step
                    pipe.set(meta_key, header)
                self._queue_items(pipe, name, meta, changes, id_offset)
                if blocks is not None:
                    self._queue_manifest(pipe, name, blocks)
                self._queue_texts(pipe, name, changes.texts)
                if request is not None and request_key is not None:
                    pipe.hset(request_key, mapping={"fingerprint": request.fingerprint,
                                                    "outcome": json.dumps(request.outcome)})
                    pipe.pexpireat(request_key, int(request.expires_at * 1000))
                check_commit()  # the call is alive now, right before the atomic EXEC
                pipe.execute()
        except redis.WatchError as error:
            raise ConflictError(f"a concurrent upsert of {name!r} committed first") from error
        return changes.base_count + len(changes.new_ids)

    def _queue_items(self, pipe: Any, name: str, meta: _Meta, changes: ItemChanges,
                     id_offset: int) -> None:
        base, block_rows = changes.base_count, meta.block_rows
        new_rows = range(base, base + len(changes.new_ids))
        self._queue_ids(pipe, name, meta, base, changes.new_ids, id_offset)
        for i in range(0, len(new_rows), _CHUNK):
            chunk_rows, ids = new_rows[i : i + _CHUNK], changes.new_ids[i : i + _CHUNK]
            pipe.hset(self._key(name, "ids"), mapping=dict(zip(ids, chunk_rows, strict=True)))
            hashes = zip(chunk_rows, changes.new_text_hashes[i : i + _CHUNK], strict=True)
            pipe.hset(self._key(name, "texthash"), mapping=dict(hashes))
        if len(new_rows) and not meta.raw_files:
            data = np.ascontiguousarray(changes.new_vectors, dtype=meta.raw_dtype)
            done = 0
            while done < len(data):
                block, within = divmod(base + done, block_rows)
                take = min(block_rows - within, len(data) - done)
                # The last block holds exactly `within` rows, so APPEND lands at the right row.
                pipe.append(self._key(name, "raw", block), data[done : done + take].tobytes())
                done += take
        rows = np.asarray(changes.changed_rows, dtype=np.int64)
        if len(rows):
            changed = dict(zip(rows.tolist(), changes.changed_text_hashes, strict=True))
            pipe.hset(self._key(name, "texthash"), mapping=changed)
        if len(rows) and not meta.raw_files:
            vectors = np.ascontiguousarray(changes.changed_vectors, dtype=meta.raw_dtype)
            for row, vector in zip(rows.tolist(), vectors, strict=True):
                block, within = divmod(row, block_rows)
                offset = within * meta.raw_row_bytes
                pipe.setrange(self._key(name, "raw", block), offset, vector.tobytes())
        pipe.set(self._key(name, "count"), base + len(new_rows))

    def _queue_ids(self, pipe: Any, name: str, meta: _Meta, base: int, ids: list[str],
                   offset: int) -> None:
        """Append the ids of rows ``base, base + 1, …``: as wire entries to their id blocks
        (``offset``: the bytes the first block holds already), or, in a catalog created
        before id blocks, to the rowids list."""
        if not meta.id_blocks:
            for i in range(0, len(ids), _CHUNK):
                pipe.rpush(self._key(name, "rowids"), *ids[i : i + _CHUNK])
            return
        entries, done = IdField.of(ids), 0
        while done < len(ids):
            block, within = divmod(base + done, meta.block_rows)
            take = min(meta.block_rows - within, len(ids) - done)
            part = entries.part(done, done + take)
            ends = part.ends + (offset if done == 0 else 0)
            if ends[-1] > np.iinfo(np.uint32).max:
                raise ValueError(f"the ids of block {block} exceed 4 GiB: use fewer block_rows")
            pipe.append(self._key(name, "idwire", block), part.data)
            pipe.append(self._key(name, "idends", block), ends.astype("<u4").tobytes())
            done += take

    def _files(self, name: str) -> RawFileStore:
        if self._raw_files is None:
            raise StoreUnavailableError(
                f"catalog {name!r} keeps its raw vectors in a raw store: start the server "
                "with its --raw-store-url")
        return self._raw_files

    def _manifest(self, client: Any, name: str) -> list[BlockEntry]:
        entries = client.hgetall(self._key(name, "rawfiles"))
        return [BlockEntry.from_json(text) for text in entries.values()]

    def _queue_manifest(self, pipe: Any, name: str, blocks: BlockChanges) -> None:
        added = {entry.start for entry in blocks.added}
        gone = [entry.start for entry in blocks.retired if entry.start not in added]
        if gone:
            pipe.hdel(self._key(name, "rawfiles"), *gone)
        if blocks.added:
            pipe.hset(self._key(name, "rawfiles"),
                      mapping={entry.start: entry.to_json() for entry in blocks.added})
        if blocks.retired:
            now = time.time()
            pipe.hset(self._key(name, "rawretired"),
                      mapping={entry.file: now for entry in blocks.retired})

    def _file_rows(self, name: str, meta: _Meta, rows: np.ndarray) -> np.ndarray:
        """Sorted unique ``rows`` from the catalog's block files, in the stored dtype."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(name, "count"))
            pipe.hgetall(self._key(name, "rawfiles"))
            count, entries = pipe.execute()
        manifest = check_manifest([BlockEntry.from_json(text) for text in entries.values()],
                                  int(count or 0))
        return self._files(name).read_rows(name, meta.epoch, manifest, rows, meta.encoder.dim,
                                           meta.raw_dtype)

    def _raw(self, name: str, meta: _Meta, rows: np.ndarray) -> np.ndarray:
        if meta.raw_files:
            return self._file_rows(name, meta, rows).astype(np.float32)
        data = self._read_rows(
            lambda block: self._key(name, "raw", block), rows, meta.raw_row_bytes, meta.block_rows
        )
        vectors = np.frombuffer(data, dtype=meta.raw_dtype).reshape(len(rows), meta.encoder.dim)
        return vectors.astype(np.float32)

    @_unavailable_as_store_error
    def read_raw(self, name: str, start: int, stop: int) -> np.ndarray:
        meta = self._meta(name)
        start, stop = max(start, 0), min(stop, self._count(name))
        return self._raw(name, meta, np.arange(start, max(start, stop)))

    @_unavailable_as_store_error
    def read_raw_stored(self, name: str, start: int, stop: int) -> np.ndarray:
        """Filled block by block (``_BLOCKS_PER_READ`` blocks per MULTI) into one array of
        the stored dtype: no joined byte string and no float32 copy of the whole table.
        Rows never move, so a concurrent upsert can at most change the vectors of rows
        whose text it changed between two of those reads."""
        meta = self._meta(name)
        start, stop = max(start, 0), min(stop, self._count(name))
        if meta.raw_files:
            return self._file_rows(name, meta, np.arange(start, max(start, stop)))
        out = np.empty((max(stop - start, 0), meta.encoder.dim), dtype=meta.raw_dtype)
        first = start
        while first < stop:
            last = min(first - first % meta.block_rows + _BLOCKS_PER_READ * meta.block_rows,
                       stop)
            data = self._read_rows(lambda block: self._key(name, "raw", block),
                                   np.arange(first, last), meta.raw_row_bytes, meta.block_rows)
            out[first - start : last - start] = np.frombuffer(data, meta.raw_dtype).reshape(
                last - first, meta.encoder.dim)
            first = last
        return out

    @_unavailable_as_store_error
    def raw_blocks(self, name: str, count: int) -> RowBlocks:
        meta = self._meta(name)
        if not meta.raw_files:
            return super().raw_blocks(name, count)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(name, "count"))
            pipe.hgetall(self._key(name, "rawfiles"))
            stored, entries = pipe.execute()
        count = min(count, int(stored or 0))
        return self._files(name).row_blocks(
            name, meta.epoch, [BlockEntry.from_json(text) for text in entries.values()], count,
            meta.encoder.dim, meta.raw_dtype)

    @_unavailable_as_store_error
    def read_raw_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        meta = self._meta(name)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self._count(name)):
            raise ValueError(f"a row is outside catalog {name!r}")
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._raw(name, meta, unique)[inverse]

    # -- versions -----------------------------------------------------------------------
    @_unavailable_as_store_error
    def write_version(self, name: str, new: NewVersion, activate: bool,
                      request: RequestRecord | None = None, *,
                      lock_owner: str | None = None) -> PublishedVersion:
        meta = self._meta(name)
        check_new_version(new, meta.encoder.dim, self._count(name))
        created_at = time.time()
        record = record_json(new, created_at, **{_FLOAT16_COPY: True})
        version = self._write_payload(name, new, created_at)
        activated_at = time.time() if activate else None
        try:
            previous = self._publish(name, meta, version, record, activated_at, request,
                                     lock_owner)
        except (ConflictError, DataLostError, CallEnded):  # nothing published: drop the payload
            blocks = -(-new.item_count // meta.block_rows)
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._key(name, "pending"), str(version))
                pipe.unlink(*self._payload_keys(name, version, blocks))
                pipe.execute()
            raise
        return PublishedVersion(
            parse_record(version, record, version if activate else 0, activated_at), previous)

    def _payload_keys(self, name: str, version: int, blocks: int) -> list[str]:
        """Every key of a version's payload (its float16 copy too: absent keys of versions
        written before it existed are harmless to UNLINK)."""
        keys = [self._key(name, "v", version, "W"), self._key(name, "v", version, "mean")]
        return keys + [self._key(name, "v", version, kind, b)
                       for kind in _REDUCED_KINDS.values() for b in range(blocks)]

    def _write_payload(self, name: str, new: NewVersion, started: float) -> int:
        """Allocate a version number and write W, μ, the reduced vectors and their float16
        copy (after all float32 blocks), unpublished: until ``_publish`` nothing reads them,
        and ``collect_garbage`` can find them."""
        meta = self._meta(name)
        version = int(self._client.incr(self._key(name, "vseq")))
        reduced = np.ascontiguousarray(new.reduced, dtype="<f4")
        blocks = -(-len(reduced) // meta.block_rows)
        pending = json.dumps({"started": started, "blocks": blocks})
        self._client.hset(self._key(name, "pending"), str(version), pending)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._key(name, "v", version, "W"),
                     pack_array(np.asarray(new.components, dtype=np.float64)))
            pipe.set(self._key(name, "v", version, "mean"),
                     pack_array(np.asarray(new.mean, dtype=np.float64)))
            for sets, (dtype, block) in enumerate(
                    ((d, b) for d in _REDUCED_KINDS for b in range(blocks)), 1):
                rows = reduced[block * meta.block_rows : (block + 1) * meta.block_rows]
                pipe.set(self._key(name, "v", version, _REDUCED_KINDS[dtype], block),
                         rows.astype(WIRE_DTYPES[dtype]).tobytes())
                if sets % 16 == 0:  # bound what the client buffers
                    pipe.execute()
            pipe.execute()
        return version

    def _publish(self, name: str, meta: _Meta, version: int, record: str,
                 activated_at: float | None, request: RequestRecord | None,
                 lock_owner: str | None) -> int:
        """Make the version visible (and active, with ``activated_at``) in one atomic step
        that also checks the catalog's epoch, the call's deadline and the lock owner, with
        ``request``'s record; returns the previously active version."""
        keys = [self._key(name, k) for k in ("pending", "versions", "active", "activated")]
        activate = "1" if activated_at is not None else "0"
        args: list[Any] = [version, record, activate, activated_at or 0.0]
        if request is None:
            keys.append(self._key(name, "req", "-"))  # unused: every key names the catalog
            args += ["", "", 0]
        else:
            keys.append(self._request_key(name, request.request_id))
            args += [request.fingerprint, json.dumps(request.outcome),
                     int(request.expires_at * 1000)]
        keys += [self._key(name, "refit_lock"), self._key(name, "meta")]
        check_commit()  # the call is alive now; the script checks its deadline again
        args += [commit_deadline_ms(), lock_owner or "", meta.raw]
        previous = int(self._scripts["publish"](keys=keys, args=args))
        if previous == -5:
            self._meta(name)  # raises DataLostError (vanished) or NotFoundError
            raise DataLostError(f"catalog {name!r} changed in the store during the refit")
        if previous == -3:
            raise deadline_passed()
        if previous == -4:
            raise ConflictError(
                f"the refit of {name!r} no longer holds the refit lock (its lease ran out and "
                "another refit may have taken it): nothing was published; refit again"
            )
        if previous == -2:
            raise ConflictError("the request was committed by a concurrent call")
        if previous < 0:
            raise ConflictError(
                f"version {version} of {name!r} was garbage-collected before it was published "
                "(the refit outlived collect_garbage's min_age_seconds); refit again"
            )
        return previous

    @_unavailable_as_store_error
    def versions(self, name: str) -> list[VersionRecord]:
        snapshot = self.describe(name)
        if snapshot is None:
            raise NotFoundError(f"catalog {name!r} does not exist")
        return snapshot.versions

    @_unavailable_as_store_error
    def activate(self, name: str, version: int) -> int:
        self._meta(name)
        keys = [self._key(name, k) for k in ("versions", "active", "activated")]
        check_commit()  # the call is alive now; the script checks its deadline again
        previous = int(self._scripts["activate"](
            keys=keys, args=[version, time.time(), commit_deadline_ms()]))
        if previous == -3:
            raise deadline_passed()
        if previous < 0:
            raise NotFoundError(f"catalog {name!r} has no version {version}")
        return previous

    def _record(self, name: str, version: int) -> dict[str, Any]:
        text = self._client.hget(self._key(name, "versions"), str(version))
        if text is None:
            raise NotFoundError(f"catalog {name!r} has no version {version}")
        return _parse_json(text)

    @_unavailable_as_store_error
    def read_projection(self, name: str, version: int) -> tuple[np.ndarray, np.ndarray]:
        self._meta(name)
        self._record(name, version)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(name, "v", version, "W"))
            pipe.get(self._key(name, "v", version, "mean"))
            components, mean = pipe.execute()
        return unpack_array(components), unpack_array(mean)

    @_unavailable_as_store_error
    def read_reduced(self, name: str, version: int, start: int, stop: int) -> np.ndarray:
        meta = self._meta(name)
        record = self._record(name, version)
        dim = int(record["dim"])
        start, stop = max(start, 0), min(stop, int(record["item_count"]))
        rows = np.arange(start, max(start, stop))
        data = self._read_rows(
            lambda block: self._key(name, "v", version, "red", block),
            rows,
            dim * 4,
            meta.block_rows,
        )
        # Read-only over the bytes read (no copy): versions are immutable, nothing writes.
        return np.frombuffer(data, dtype="<f4").reshape(len(rows), dim)

    @_unavailable_as_store_error
    def read_reduced_bytes(self, name: str, version: int, start: int, stop: int,
                           dtype: str) -> bytes:
        """The stored bytes (one MULTI, no conversion) of float32 and, for versions written
        with their float16 copy, float16; other dtypes and older versions are converted."""
        meta = self._meta(name)
        record = self._record(name, version)
        if dtype not in _REDUCED_KINDS or (dtype != "float32" and not record.get(_FLOAT16_COPY)):
            return super().read_reduced_bytes(name, version, start, stop, dtype)
        start, stop = max(start, 0), min(stop, int(record["item_count"]))
        return self._read_rows(
            lambda block: self._key(name, "v", version, _REDUCED_KINDS[dtype], block),
            np.arange(start, max(start, stop)),
            int(record["dim"]) * WIRE_DTYPES[dtype].itemsize,
            meta.block_rows,
        )

    @_unavailable_as_store_error
    def collect_garbage(self, name: str, min_age_seconds: float) -> int:
        self._meta(name)
        pending = self._client.hgetall(self._key(name, "pending"))
        collected = 0
        for version, text in pending.items():
            fields = json.loads(text)
            if time.time() - float(fields["started"]) < min_age_seconds:
                continue
            keys = [self._key(name, "pending")]
            keys += self._payload_keys(name, int(version), int(fields["blocks"]))
            collected += int(self._scripts["collect"](keys=keys, args=[version, text]))
        self._collect_files(name, min_age_seconds)
        return collected

    def _collect_files(self, name: str, min_age_seconds: float) -> None:
        """Delete block files nothing references any more (replaced, or never committed)."""
        meta = self._meta(name)
        if not meta.raw_files or self._raw_files is None:
            return
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._key(name, "rawfiles"))
            pipe.hgetall(self._key(name, "rawretired"))
            entries, retired = pipe.execute()
        referenced = {BlockEntry.from_json(text).file for text in entries.values()}
        since = {file.decode(): float(when) for file, when in retired.items()}
        deleted = self._raw_files.collect(name, meta.epoch, referenced, since, min_age_seconds)
        if deleted:
            self._client.hdel(self._key(name, "rawretired"), *deleted)

    # -- co-occurrence ------------------------------------------------------------------
    @_unavailable_as_store_error
    def apply_pair_batches(self, name: str, batches: Sequence[PairBatch]) -> PushOutcome:
        meta = self._meta(name)
        count = self._count(name)  # counts only grow: a row valid now stays valid
        args: list[Any] = []
        weights = []
        for batch in batches:
            check_pair_batch(batch, count)
            weights.append(float(np.sum(batch.weights, dtype=np.float64)))
            blob = pack_pairs(batch.rows, batch.cols, np.asarray(batch.weights, np.float32))
            args += [batch_key(batch.worker_id, batch.batch_id),
                     legacy_batch_key(batch.worker_id, batch.batch_id), blob, len(batch.rows),
                     repr(weights[-1])]
        if not batches:
            return PushOutcome(0, 0, 0, 0.0, self.cooccurrence_totals(name))
        keys = [self._key(name, k) for k in ("batch_keys", "pairs", "cooc", "meta", "batches")]
        check_commit()  # the call is alive now; the script checks its deadline again
        reply = self._scripts["apply"](keys=keys, args=[meta.raw, commit_deadline_ms(), *args])
        if reply == -1:
            self._meta(name)  # raises DataLostError (vanished) or NotFoundError
            raise DataLostError(f"catalog {name!r} changed in the store during the push")
        if reply == -3:
            raise deadline_passed()
        flags, *totals = reply
        applied = [flag == ord("1") for flag in bytes(flags)]
        return PushOutcome(
            applied=sum(applied), duplicates=len(batches) - sum(applied),
            pairs=sum(len(b.rows) for b, new in zip(batches, applied, strict=True) if new),
            weight=sum(w for w, new in zip(weights, applied, strict=True) if new),
            totals=_totals(*totals))

    def _log_snapshot(self, name: str) -> tuple[bytes, list[bytes]]:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(name, "pairs_gen"))
            pipe.lrange(self._key(name, "pairs"), 0, -1)
            generation, blobs = pipe.execute()
        return generation or b"0", blobs

    def _replace_log(
        self, name: str, generation: bytes, entries: int, counts: sp.csr_matrix
    ) -> bool:
        upper = sp.triu(counts, k=1).tocoo()
        merged = pack_pairs(upper.row, upper.col, upper.data.astype(np.float64))
        keys = [self._key(name, "pairs"), self._key(name, "pairs_gen")]
        return bool(self._scripts["compact"](keys=keys, args=[generation, entries, merged]))

    @_unavailable_as_store_error
    def read_counts(self, name: str, n_items: int) -> sp.csr_matrix:
        self._meta(name)
        generation, blobs = self._log_snapshot(name)
        counts = counts_from_pairs(*pair_arrays(blobs), n_items)
        if len(blobs) > self._compact_after:  # the merge is done already: keep it
            self._replace_log(name, generation, len(blobs), counts)
        return counts

    @_unavailable_as_store_error
    def compact_counts(self, name: str) -> int:
        self._meta(name)
        generation, blobs = self._log_snapshot(name)
        if len(blobs) < 2:
            return 0
        counts = counts_from_pairs(*pair_arrays(blobs), self._count(name))
        return len(blobs) if self._replace_log(name, generation, len(blobs), counts) else 0

    @_unavailable_as_store_error
    def cooccurrence_totals(self, name: str) -> CooccurrenceTotals:
        self._meta(name)
        return _totals(*self._client.hmget(self._key(name, "cooc"),
                                           ["pairs", "weight", "batches"]))

    # -- refit lock ---------------------------------------------------------------------
    @_unavailable_as_store_error
    def acquire_refit_lock(self, name: str, owner: str, lease_seconds: float) -> bool:
        verify_catalog(name)
        lease_ms = max(1, round(lease_seconds * 1000))
        return bool(self._client.set(self._key(name, "refit_lock"), owner, nx=True, px=lease_ms))

    @_unavailable_as_store_error
    def renew_refit_lock(self, name: str, owner: str, lease_seconds: float) -> bool:
        verify_catalog(name)
        lease_ms = max(1, round(lease_seconds * 1000))
        keys = [self._key(name, "refit_lock")]
        return bool(self._scripts["renew"](keys=keys, args=[owner, lease_ms]))

    @_unavailable_as_store_error
    def release_refit_lock(self, name: str, owner: str) -> None:
        verify_catalog(name)
        self._scripts["release"](keys=[self._key(name, "refit_lock")], args=[owner])
