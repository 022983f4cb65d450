"""Local store: the embedded default, one SQLite database file (no server to run).

Transactions give the atomicity the interface asks for: every write runs in one
``BEGIN IMMEDIATE`` transaction, and every multi-statement read in one snapshot (WAL mode, so
readers never wait for a writer). Each thread gets its own connection; writers of this process
queue on a lock, writers of other processes on SQLite's file lock (``timeout``).

Schema::

    catalogs(name PK, encoder_name, encoder_dim, raw_dtype, block_rows, item_count,
             active_version, last_version, pairs, weight, batches, created_at, epoch)
    items(catalog, row, item_id, text_hash)        PK (catalog, row), UNIQUE (catalog, item_id)
    raw_blocks(catalog, block, data)                raw vectors of rows [b·B, (b+1)·B)
    raw_files(catalog, start, stop, file, size, crc32)   with a raw file store: the block
                                                    manifest (catalogs.raw_files = 1)
    raw_retired(catalog, file, retired_at)          block files a commit replaced
    versions(catalog, version, published, started_at, record, activated_at, components, mean)
    reduced_blocks(catalog, version, block, data)   float32 served vectors, row blocks
    pair_batches(catalog, worker_id, batch_id)      PK: exactly-once batches
    pair_log(seq, catalog, pairs)                   packed pair blobs of applied batches
    refit_locks(catalog PK, owner, expires_at)      expiry in unix seconds (this machine's clock)
    requests(catalog, request_id, fingerprint, outcome, expires_at)   PK (catalog, request_id)
    store_info(key PK, value)                       "probe": the last health probe's write

The store is the truth: a handle remembers the file it opened (device and inode) and every
catalog's epoch it has read, and raises ``DataLostError`` when the file at its path was
replaced or removed, or a catalog vanished or came back with another epoch.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from server.call_lifetime import CallEnded, check_commit
from server.cooccurrence_merge import counts_from_pairs
from server.quoting import shown
from server.recpca.row_blocks import RowBlocks
from server.stores.base import (
    CatalogSnapshot,
    CatalogState,
    CatalogStore,
    ConflictError,
    CooccurrenceTotals,
    EncoderIdentity,
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
from server.stores.packing import pack_array, pack_pairs, pair_arrays, unpack_array
from server.stores.raw_files import BlockEntry, RawFileStore, check_manifest
from server.stores.records import parse_record, record_json
from server.validation import verify_catalog

_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalogs (
    name TEXT PRIMARY KEY, encoder_name TEXT NOT NULL, encoder_dim INTEGER NOT NULL,
    raw_dtype TEXT NOT NULL, block_rows INTEGER NOT NULL,
    item_count INTEGER NOT NULL DEFAULT 0, active_version INTEGER NOT NULL DEFAULT 0,
    last_version INTEGER NOT NULL DEFAULT 0, pairs INTEGER NOT NULL DEFAULT 0,
    weight REAL NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    catalog TEXT NOT NULL, row INTEGER NOT NULL, item_id TEXT NOT NULL,
    text_hash TEXT NOT NULL, PRIMARY KEY (catalog, row), UNIQUE (catalog, item_id));
CREATE TABLE IF NOT EXISTS raw_blocks (
    catalog TEXT NOT NULL, block INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (catalog, block));
CREATE TABLE IF NOT EXISTS raw_files (
    catalog TEXT NOT NULL, start INTEGER NOT NULL, stop INTEGER NOT NULL, file TEXT NOT NULL,
    size INTEGER NOT NULL, crc32 INTEGER NOT NULL, PRIMARY KEY (catalog, start));
CREATE TABLE IF NOT EXISTS raw_retired (
    catalog TEXT NOT NULL, file TEXT NOT NULL, retired_at REAL NOT NULL,
    PRIMARY KEY (catalog, file));
CREATE TABLE IF NOT EXISTS versions (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, published INTEGER NOT NULL,
    started_at REAL NOT NULL, record TEXT, activated_at REAL,
    components BLOB NOT NULL, mean BLOB NOT NULL, PRIMARY KEY (catalog, version));
CREATE TABLE IF NOT EXISTS reduced_blocks (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, block INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (catalog, version, block));
CREATE TABLE IF NOT EXISTS pair_batches (
    catalog TEXT NOT NULL, worker_id TEXT NOT NULL, batch_id TEXT NOT NULL,
    PRIMARY KEY (catalog, worker_id, batch_id));
CREATE TABLE IF NOT EXISTS pair_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, catalog TEXT NOT NULL, pairs BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS pair_log_by_catalog ON pair_log (catalog, seq);
CREATE TABLE IF NOT EXISTS item_texts (
    catalog TEXT NOT NULL, text_hash TEXT NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (catalog, text_hash));
CREATE TABLE IF NOT EXISTS refit_locks (
    catalog TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    catalog TEXT NOT NULL, request_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (catalog, request_id));
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Databases written before catalogs had epochs get the column, and an epoch per catalog.
_MIGRATIONS = (
    ("catalogs", "epoch", "ALTER TABLE catalogs ADD COLUMN epoch TEXT"),
    ("catalogs", "raw_files",
     "ALTER TABLE catalogs ADD COLUMN raw_files INTEGER NOT NULL DEFAULT 0"),
)

_IN_CHUNK = 900  # bound parameters per IN (...) query


def _blocks_of(rows: np.ndarray, block_rows: int) -> Iterator[tuple[int, slice]]:
    """``(block, slice of rows)`` for sorted ``rows``."""
    blocks = rows // block_rows
    for block in np.unique(blocks).tolist():
        lo, hi = np.searchsorted(blocks, [block, block + 1])
        yield block, slice(int(lo), int(hi))


class LocalStore(CatalogStore):
    """``CatalogStore`` in one SQLite file; safe to share between threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        block_rows: int = 4096,
        compact_after: int = 256,
        timeout: float = 30.0,
        raw_files: RawFileStore | None = None,
    ) -> None:
        """With ``raw_files``, catalogs created from now on keep their raw vectors in its
        block files (this file keeps the manifest); catalogs created before keep theirs
        here."""
        if str(path) == ":memory:":
            raise ValueError("LocalStore needs a file (every thread opens its own connection)")
        if block_rows < 1:
            raise ValueError("block_rows must be >= 1")
        self._path = Path(path)
        self._block_rows = block_rows
        self._compact_after = compact_after
        self._timeout = timeout
        self._raw_files = raw_files
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._epochs = EpochWatch()
        conn = self._connection()
        with self._write_lock:
            try:
                conn.executescript(_SCHEMA)  # outside any transaction: it commits
                for table, column, statement in _MIGRATIONS:
                    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        conn.execute(statement)
                conn.execute("UPDATE catalogs SET epoch = lower(hex(randomblob(16))) "
                             "WHERE epoch IS NULL")
            except sqlite3.OperationalError as error:
                raise StoreUnavailableError(f"{self._path}: {error}") from error
        self._file = self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def _check_file(self) -> None:
        """The file at the path must still be the one this handle opened: an open
        connection would otherwise go on reading (and writing) a deleted or replaced file
        while every new connection and process sees another one."""
        if self._file_identity() != self._file:
            self._epochs.lose_store(f"the database file {self._path} was removed or replaced")
            self._epochs.raise_if_lost()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self._path,
                    timeout=self._timeout,
                    isolation_level=None,
                    check_same_thread=False,  # only so that close() can close it
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.row_factory = sqlite3.Row
            except sqlite3.Error as error:
                raise StoreUnavailableError(f"cannot open {self._path}: {error}") from error
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several SELECTs."""
        self._check_file()
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.OperationalError as error:
            raise StoreUnavailableError(f"{self._path}: {error}") from error

    @contextmanager
    def _write(self, *, commits_call: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything in it is applied, or nothing. With
        ``commits_call`` (the transaction publishes a call's effects) the call's liveness
        is checked last, inside the transaction: a dead call rolls back."""
        self._check_file()
        with self._write_lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    if commits_call:
                        check_commit()
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.OperationalError as error:
                raise StoreUnavailableError(f"{self._path}: {error}") from error

    def _catalog(self, conn: sqlite3.Connection, name: str) -> sqlite3.Row:
        verify_catalog(name)
        row = self._catalog_row(conn, name)
        if row is None:
            raise NotFoundError(f"catalog {name!r} does not exist")
        return row

    def _catalog_row(self, conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
        """The catalog's row, its epoch checked against what this handle saw before."""
        verify_catalog(name)
        row = conn.execute("SELECT * FROM catalogs WHERE name = ?", (name,)).fetchone()
        self._epochs.check(name, None if row is None else row["epoch"])
        return row

    # -- lifecycle ----------------------------------------------------------------------
    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1 FROM catalogs LIMIT 1").fetchall()

    def probe(self) -> None:
        self._epochs.raise_if_lost()
        # A write: a full disk refuses it ("database or disk is full") while reads work.
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO store_info (key, value) VALUES ('probe', ?)",
                         (repr(time.time()),))
        if self._raw_files is not None:
            self._raw_files.probe()

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- catalogs and items -------------------------------------------------------------
    def create_catalog(
        self, name: str, encoder: EncoderIdentity, raw_dtype: str = "<f4"
    ) -> CatalogState:
        verify_catalog(name)
        with self._write() as conn:
            self._insert_catalog(conn, name, encoder, raw_dtype)
            return self._state(self._catalog(conn, name))

    def _insert_catalog(self, conn: sqlite3.Connection, name: str, encoder: EncoderIdentity,
                        raw_dtype: str) -> None:
        check_raw_dtype(raw_dtype)
        conn.execute(
            "INSERT OR IGNORE INTO catalogs (name, encoder_name, encoder_dim, raw_dtype, "
            "block_rows, created_at, epoch, raw_files) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, encoder.name, encoder.dim, raw_dtype, self._block_rows, time.time(),
             new_epoch(), int(self._raw_files is not None)),
        )

    @staticmethod
    def _state(row: sqlite3.Row) -> CatalogState:
        encoder = EncoderIdentity(row["encoder_name"], row["encoder_dim"])
        return CatalogState(row["name"], encoder, row["item_count"], row["active_version"],
                            row["raw_dtype"], row["epoch"])

    def get_catalog(self, name: str) -> CatalogState | None:
        with self._read() as conn:
            row = self._catalog_row(conn, name)
            return None if row is None else self._state(row)

    def describe(self, name: str) -> CatalogSnapshot | None:
        with self._read() as conn:
            row = self._catalog_row(conn, name)
            if row is None:
                return None
            return CatalogSnapshot(self._state(row), self._versions(conn, row),
                                   self._totals(row))

    def find_rows(self, name: str, ids: Sequence[str]) -> np.ndarray:
        with self._read() as conn:
            self._catalog(conn, name)
            found = _lookup(conn, name, "item_id", "row", ids)
        return np.array([found.get(id_, -1) for id_ in ids], dtype=np.int64)

    def text_hashes(self, name: str, rows: np.ndarray) -> list[str]:
        wanted = [int(row) for row in np.asarray(rows).ravel()]
        with self._read() as conn:
            self._catalog(conn, name)
            found = _lookup(conn, name, "row", "text_hash", wanted)
        missing = [row for row in wanted if row not in found]
        if missing:
            raise ValueError(f"row {missing[0]} is not in catalog {name!r}")
        return [found[row] for row in wanted]

    def catalog_names(self) -> list[str]:
        with self._read() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM catalogs ORDER BY name")]

    def put_texts(self, name: str, hashes: Sequence[str], texts: Sequence[str]) -> None:
        with self._write() as conn:
            self._insert_texts(conn, name, dict(zip(hashes, texts, strict=True)))

    @staticmethod
    def _insert_texts(conn: sqlite3.Connection, name: str, texts: dict[str, str]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO item_texts (catalog, text_hash, text) VALUES (?, ?, ?)",
            ((name, text_hash, text) for text_hash, text in texts.items()))

    def texts_of(self, name: str, hashes: Sequence[str]) -> list[str | None]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(hashes))
        with self._read() as conn:
            for i in range(0, len(unique), _IN_CHUNK):
                chunk = unique[i : i + _IN_CHUNK]
                found.update(conn.execute(
                    f"SELECT text_hash, text FROM item_texts WHERE catalog = ? AND text_hash "
                    f"IN ({','.join('?' * len(chunk))})", (name, *chunk)).fetchall())
        return [found.get(digest) for digest in hashes]

    def item_ids(self, name: str, start: int, stop: int) -> list[str]:
        with self._read() as conn:
            self._catalog(conn, name)
            cursor = conn.execute(
                "SELECT item_id FROM items WHERE catalog = ? AND row >= ? AND row < ? ORDER BY row",
                (name, max(start, 0), stop),
            )
            return [id_ for (id_,) in cursor.fetchall()]

    def commit_items(self, name: str, changes: ItemChanges, request: RequestRecord | None = None,
                     *, create: tuple[EncoderIdentity, str] | None = None) -> int:
        written: list[tuple[str, str]] = []  # (epoch, file) of block files this commit wrote
        try:
            return self._commit_items(name, changes, request, create, written)
        except StoreUnavailableError:
            raise  # the commit may have happened: its files stay (collected if unreferenced)
        except BaseException:
            if self._raw_files is not None:
                for epoch, file in written:
                    self._raw_files.discard(name, epoch, [file])
            raise

    def _commit_items(self, name: str, changes: ItemChanges, request: RequestRecord | None,
                      create: tuple[EncoderIdentity, str] | None,
                      written: list[tuple[str, str]]) -> int:
        with self._write(commits_call=True) as conn:
            catalog = self._catalog_row(conn, name)
            if catalog is None and create is not None:
                # Created with its first items, atomically; its epoch is recorded as seen
                # by the next read, once the transaction has committed.
                self._insert_catalog(conn, name, *create)
                catalog = conn.execute("SELECT * FROM catalogs WHERE name = ?",
                                       (name,)).fetchone()
            if catalog is None:
                raise NotFoundError(f"catalog {name!r} does not exist")
            count = catalog["item_count"]
            if count != changes.base_count:
                raise ConflictError(
                    f"catalog {name!r} has {count} items, the upsert expected {changes.base_count}"
                )
            check_changes(changes, catalog["encoder_dim"], count)
            new_rows = range(count, count + len(changes.new_ids))
            try:
                conn.executemany(
                    "INSERT INTO items (catalog, row, item_id, text_hash) VALUES (?, ?, ?, ?)",
                    zip(
                        [name] * len(new_rows),
                        new_rows,
                        changes.new_ids,
                        changes.new_text_hashes,
                        strict=True,
                    ),
                )
            except sqlite3.IntegrityError as error:
                raise ValueError("an item id of the upsert already has a row") from error
            rows = np.asarray(changes.changed_rows, dtype=np.int64)
            conn.executemany(
                "UPDATE items SET text_hash = ? WHERE catalog = ? AND row = ?",
                zip(changes.changed_text_hashes, [name] * len(rows), rows.tolist(), strict=True),
            )
            if catalog["raw_files"]:
                self._commit_blocks(conn, catalog, changes, written)
            elif len(new_rows):
                self._put_rows(conn, name, catalog, np.asarray(new_rows), changes.new_vectors)
            if len(rows) and not catalog["raw_files"]:
                order = np.argsort(rows)
                vectors = np.asarray(changes.changed_vectors)[order]
                self._put_rows(conn, name, catalog, rows[order], vectors)
            conn.execute("UPDATE catalogs SET item_count = ? WHERE name = ?", (new_rows.stop, name))
            self._insert_texts(conn, name, changes.texts)
            if request is not None:
                self._record_request(conn, name, request)
        return new_rows.stop

    def _files(self, catalog: sqlite3.Row) -> RawFileStore:
        if self._raw_files is None:
            raise StoreUnavailableError(
                f"catalog {catalog['name']!r} keeps its raw vectors in a raw store: start the "
                "server with its --raw-store-url")
        return self._raw_files

    @staticmethod
    def _manifest(conn: sqlite3.Connection, name: str) -> list[BlockEntry]:
        return [BlockEntry(*row) for row in conn.execute(
            "SELECT start, stop, file, size, crc32 FROM raw_files WHERE catalog = ? "
            "ORDER BY start", (name,)).fetchall()]

    def _commit_blocks(self, conn: sqlite3.Connection, catalog: sqlite3.Row,
                       changes: ItemChanges, written: list[tuple[str, str]]) -> None:
        """Write the upsert's block files, then change the manifest in this transaction."""
        name, epoch = catalog["name"], catalog["epoch"]
        plan = self._files(catalog).plan_commit(
            name, epoch, self._manifest(conn, name), changes, catalog["encoder_dim"],
            catalog["raw_dtype"])
        written.extend((epoch, file) for file in plan.files)
        now = time.time()
        conn.executemany("DELETE FROM raw_files WHERE catalog = ? AND start = ?",
                         [(name, entry.start) for entry in plan.retired])
        conn.executemany("INSERT INTO raw_files (catalog, start, stop, file, size, crc32) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         [(name, e.start, e.stop, e.file, e.size, e.crc32) for e in plan.added])
        conn.executemany("INSERT OR REPLACE INTO raw_retired (catalog, file, retired_at) "
                         "VALUES (?, ?, ?)", [(name, e.file, now) for e in plan.retired])

    @staticmethod
    def _record_request(conn: sqlite3.Connection, name: str, request: RequestRecord) -> None:
        """Store a committed call's outcome in the commit's transaction (expired ones go)."""
        conn.execute("DELETE FROM requests WHERE catalog = ? AND expires_at < ?",
                     (name, time.time()))
        try:
            conn.execute(
                "INSERT INTO requests (catalog, request_id, fingerprint, outcome, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, request.request_id, request.fingerprint, json.dumps(request.outcome),
                 request.expires_at),
            )
        except sqlite3.IntegrityError as error:
            raise ConflictError(f"request {shown(request.request_id)} was committed by a "
                                "concurrent call") from error

    def find_request(self, name: str, request_id: str) -> RequestRecord | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT fingerprint, outcome, expires_at FROM requests "
                "WHERE catalog = ? AND request_id = ? AND expires_at >= ?",
                (name, request_id, time.time()),
            ).fetchone()
        if row is None:
            return None
        return RequestRecord(request_id, row["fingerprint"], json.loads(row["outcome"]),
                             row["expires_at"])

    def _put_rows(
        self,
        conn: sqlite3.Connection,
        name: str,
        catalog: sqlite3.Row,
        rows: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        """Write vectors of sorted ``rows`` (existing rows or the next new ones) into their
        raw blocks, each block read and written once."""
        block_rows, dim = catalog["block_rows"], catalog["encoder_dim"]
        vectors = np.asarray(vectors, dtype=catalog["raw_dtype"])
        for block, part in _blocks_of(rows, block_rows):
            found = conn.execute(
                "SELECT data FROM raw_blocks WHERE catalog = ? AND block = ?", (name, block)
            ).fetchone()
            stored = np.frombuffer(found[0] if found else b"", dtype=catalog["raw_dtype"])
            within = rows[part] - block * block_rows
            data = np.zeros((max(len(stored) // dim, int(within.max()) + 1), dim), stored.dtype)
            data[: len(stored) // dim] = stored.reshape(-1, dim)
            data[within] = vectors[part]
            conn.execute(
                "INSERT OR REPLACE INTO raw_blocks (catalog, block, data) VALUES (?, ?, ?)",
                (name, block, data.tobytes()),
            )

    @staticmethod
    def _get_rows(
        conn: sqlite3.Connection,
        query: str,
        params: tuple,
        rows: np.ndarray,
        block_rows: int,
        dim: int,
        dtype: str,
    ) -> np.ndarray:
        """Vectors of sorted ``rows`` from row blocks (``query`` selects one block's data,
        its last parameter being the block), as float32."""
        out = np.empty((len(rows), dim), dtype=np.float32)
        for block, part in _blocks_of(rows, block_rows):
            data = conn.execute(query, (*params, block)).fetchone()[0]
            stored = np.frombuffer(data, dtype=dtype).reshape(-1, dim)
            out[part] = stored[rows[part] - block * block_rows]
        return out

    def _raw(self, conn: sqlite3.Connection, name: str, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of sorted unique ``rows``, from the store or its block files."""
        catalog = self._catalog(conn, name)
        if catalog["raw_files"]:
            found = self._files(catalog).read_rows(
                name, catalog["epoch"], check_manifest(self._manifest(conn, name),
                                                       catalog["item_count"]),
                rows, catalog["encoder_dim"], catalog["raw_dtype"])
            return found.astype(np.float32)
        query = "SELECT data FROM raw_blocks WHERE catalog = ? AND block = ?"
        return self._get_rows(
            conn,
            query,
            (name,),
            rows,
            catalog["block_rows"],
            catalog["encoder_dim"],
            catalog["raw_dtype"],
        )

    def read_raw(self, name: str, start: int, stop: int) -> np.ndarray:
        with self._read() as conn:
            count = self._catalog(conn, name)["item_count"]
            start, stop = max(start, 0), min(stop, count)
            return self._raw(conn, name, np.arange(start, max(start, stop)))

    def raw_blocks(self, name: str, count: int) -> RowBlocks:
        with self._read() as conn:
            catalog = self._catalog(conn, name)
            manifest = self._manifest(conn, name) if catalog["raw_files"] else None
        if manifest is None:
            return super().raw_blocks(name, count)
        return self._files(catalog).row_blocks(
            name, catalog["epoch"], manifest, min(count, catalog["item_count"]),
            catalog["encoder_dim"], catalog["raw_dtype"])

    def read_raw_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        with self._read() as conn:
            count = self._catalog(conn, name)["item_count"]
            if len(rows) and (rows.min() < 0 or rows.max() >= count):
                raise ValueError(f"a row is outside catalog {name!r}")
            unique, inverse = np.unique(rows, return_inverse=True)
            return self._raw(conn, name, unique)[inverse]

    # -- versions -----------------------------------------------------------------------
    def write_version(self, name: str, new: NewVersion, activate: bool,
                      request: RequestRecord | None = None, *,
                      lock_owner: str | None = None) -> PublishedVersion:
        with self._read() as conn:
            catalog = self._catalog(conn, name)
            check_new_version(new, catalog["encoder_dim"], catalog["item_count"])
        created_at = time.time()
        record = record_json(new, created_at)
        version = self._write_payload(name, new, created_at)
        activated_at = time.time() if activate else None
        try:
            previous = self._publish(name, version, record, activated_at, request, lock_owner)
        except (ConflictError, CallEnded):  # nothing published: drop the payload now
            with self._write() as conn:
                self._drop_payload(conn, name, version)
            raise
        return PublishedVersion(
            parse_record(version, record, version if activate else 0, activated_at), previous)

    @staticmethod
    def _drop_payload(conn: sqlite3.Connection, name: str, version: int) -> None:
        conn.execute("DELETE FROM reduced_blocks WHERE catalog = ? AND version = ?",
                     (name, version))
        conn.execute("DELETE FROM versions WHERE catalog = ? AND version = ? AND published = 0",
                     (name, version))

    def _write_payload(self, name: str, new: NewVersion, started: float) -> int:
        """Allocate a version number and write W, μ and the reduced vectors, unpublished."""
        reduced = np.ascontiguousarray(new.reduced, dtype="<f4")
        with self._write() as conn:
            catalog = self._catalog(conn, name)
            version = catalog["last_version"] + 1
            conn.execute("UPDATE catalogs SET last_version = ? WHERE name = ?", (version, name))
            conn.execute(
                "INSERT INTO versions (catalog, version, published, started_at, components, "
                "mean) VALUES (?, ?, 0, ?, ?, ?)",
                (
                    name,
                    version,
                    started,
                    pack_array(np.asarray(new.components, dtype=np.float64)),
                    pack_array(np.asarray(new.mean, dtype=np.float64)),
                ),
            )
            block_rows = catalog["block_rows"]
            conn.executemany(
                "INSERT INTO reduced_blocks (catalog, version, block, data) VALUES (?, ?, ?, ?)",
                (
                    (name, version, block, reduced[start : start + block_rows].tobytes())
                    for block, start in enumerate(range(0, len(reduced), block_rows))
                ),
            )
        return version

    def _publish(self, name: str, version: int, record: str, activated_at: float | None,
                 request: RequestRecord | None, lock_owner: str | None) -> int:
        """Make the version visible (and active, with ``activated_at``) in one transaction
        that also checks the lock owner and the call's liveness, with ``request``'s record;
        returns the previously active version."""
        with self._write(commits_call=True) as conn:
            previous = self._catalog(conn, name)["active_version"]
            if lock_owner is not None and conn.execute(
                    "SELECT 1 FROM refit_locks WHERE catalog = ? AND owner = ? "
                    "AND expires_at > ?", (name, lock_owner, time.time())).fetchone() is None:
                raise ConflictError(
                    f"the refit of {name!r} no longer holds the refit lock (its lease ran out "
                    "and another refit may have taken it): nothing was published; refit again")
            published = conn.execute(
                "UPDATE versions SET published = 1, record = ?, activated_at = ? "
                "WHERE catalog = ? AND version = ? AND published = 0",
                (record, activated_at, name, version),
            ).rowcount
            if not published:
                raise ConflictError(
                    f"version {version} of {name!r} was garbage-collected before it was "
                    "published (the refit outlived collect_garbage's min_age_seconds); refit again"
                )
            if activated_at is not None:
                conn.execute(
                    "UPDATE catalogs SET active_version = ? WHERE name = ?", (version, name)
                )
            if request is not None:
                outcome = {**request.outcome, "version": version,
                           "previous_active_version": previous}
                self._record_request(conn, name, replace(request, outcome=outcome))
        return previous

    def versions(self, name: str) -> list[VersionRecord]:
        with self._read() as conn:
            return self._versions(conn, self._catalog(conn, name))

    @staticmethod
    def _versions(conn: sqlite3.Connection, catalog: sqlite3.Row) -> list[VersionRecord]:
        rows = conn.execute(
            "SELECT version, record, activated_at FROM versions "
            "WHERE catalog = ? AND published = 1 ORDER BY version",
            (catalog["name"],),
        ).fetchall()
        active = catalog["active_version"]
        return [parse_record(v, record, active, at) for v, record, at in rows]

    def activate(self, name: str, version: int) -> int:
        with self._write(commits_call=True) as conn:
            previous = self._catalog(conn, name)["active_version"]
            self._record(conn, name, version)
            if previous != version:
                conn.execute(
                    "UPDATE catalogs SET active_version = ? WHERE name = ?", (version, name)
                )
                conn.execute(
                    "UPDATE versions SET activated_at = ? WHERE catalog = ? AND version = ?",
                    (time.time(), name, version),
                )
        return previous

    @staticmethod
    def _record(conn: sqlite3.Connection, name: str, version: int) -> dict:
        found = conn.execute(
            "SELECT record FROM versions WHERE catalog = ? AND version = ? AND published = 1",
            (name, version),
        ).fetchone()
        if found is None:
            raise NotFoundError(f"catalog {name!r} has no version {version}")
        return json.loads(found[0])

    def read_projection(self, name: str, version: int) -> tuple[np.ndarray, np.ndarray]:
        with self._read() as conn:
            self._catalog(conn, name)
            self._record(conn, name, version)
            components, mean = conn.execute(
                "SELECT components, mean FROM versions WHERE catalog = ? AND version = ?",
                (name, version),
            ).fetchone()
        return unpack_array(components), unpack_array(mean)

    def read_reduced(self, name: str, version: int, start: int, stop: int) -> np.ndarray:
        with self._read() as conn:
            block_rows = self._catalog(conn, name)["block_rows"]
            record = self._record(conn, name, version)
            start, stop = max(start, 0), min(stop, int(record["item_count"]))
            query = (
                "SELECT data FROM reduced_blocks WHERE catalog = ? AND version = ? AND block = ?"
            )
            rows = np.arange(start, max(start, stop))
            return self._get_rows(
                conn, query, (name, version), rows, block_rows, int(record["dim"]), "<f4"
            )

    def collect_garbage(self, name: str, min_age_seconds: float) -> int:
        with self._write() as conn:
            self._catalog(conn, name)
            stale = [
                version
                for (version,) in conn.execute(
                    "SELECT version FROM versions WHERE catalog = ? AND published = 0 "
                    "AND started_at <= ?",
                    (name, time.time() - min_age_seconds),
                ).fetchall()
            ]
            for version in stale:
                self._drop_payload(conn, name, version)
        self._collect_files(name, min_age_seconds)
        return len(stale)

    def _collect_files(self, name: str, min_age_seconds: float) -> None:
        """Delete block files nothing references any more (replaced, or never committed)."""
        with self._read() as conn:
            catalog = self._catalog(conn, name)
            if not catalog["raw_files"] or self._raw_files is None:
                return
            referenced = {entry.file for entry in self._manifest(conn, name)}
            retired = dict(conn.execute("SELECT file, retired_at FROM raw_retired "
                                        "WHERE catalog = ?", (name,)).fetchall())
        deleted = self._raw_files.collect(name, catalog["epoch"], referenced, retired,
                                          min_age_seconds)
        with self._write() as conn:
            conn.executemany("DELETE FROM raw_retired WHERE catalog = ? AND file = ?",
                             [(name, file) for file in deleted])

    # -- co-occurrence ------------------------------------------------------------------
    def apply_pair_batches(self, name: str, batches: Sequence[PairBatch]) -> PushOutcome:
        applied = pairs = 0
        weight = 0.0
        with self._write(commits_call=True) as conn:
            count = self._catalog(conn, name)["item_count"]
            for batch in batches:
                check_pair_batch(batch, count)
            for batch in batches:
                new = conn.execute(
                    "INSERT OR IGNORE INTO pair_batches (catalog, worker_id, batch_id) "
                    "VALUES (?, ?, ?)",
                    (name, batch.worker_id, batch.batch_id),
                ).rowcount
                if not new:
                    continue
                blob = pack_pairs(batch.rows, batch.cols, np.asarray(batch.weights, np.float32))
                conn.execute("INSERT INTO pair_log (catalog, pairs) VALUES (?, ?)", (name, blob))
                applied += 1
                pairs += len(batch.rows)
                weight += float(np.sum(batch.weights, dtype=np.float64))
            conn.execute(
                "UPDATE catalogs SET pairs = pairs + ?, weight = weight + ?, "
                "batches = batches + ? WHERE name = ?",
                (pairs, weight, applied, name),
            )
            totals = self._totals(self._catalog(conn, name))
        return PushOutcome(applied, len(batches) - applied, pairs, weight, totals)

    def _log(self, name: str) -> tuple[int, list[bytes]]:
        """The co-occurrence log: its last sequence number and its blobs."""
        with self._read() as conn:
            self._catalog(conn, name)
            rows = conn.execute(
                "SELECT seq, pairs FROM pair_log WHERE catalog = ? ORDER BY seq", (name,)
            ).fetchall()
        return (rows[-1][0] if rows else 0), [blob for _, blob in rows]

    def _replace_log(self, name: str, last_seq: int, entries: int, counts: sp.csr_matrix) -> bool:
        """Replace the log entries up to ``last_seq`` by one merged blob, unless another
        compaction removed some of them meanwhile."""
        upper = sp.triu(counts, k=1).tocoo()
        merged = pack_pairs(upper.row, upper.col, upper.data.astype(np.float64))
        with self._write() as conn:
            (still,) = conn.execute(
                "SELECT COUNT(*) FROM pair_log WHERE catalog = ? AND seq <= ?", (name, last_seq)
            ).fetchone()
            if still != entries:
                return False
            conn.execute("DELETE FROM pair_log WHERE catalog = ? AND seq <= ?", (name, last_seq))
            conn.execute("INSERT INTO pair_log (catalog, pairs) VALUES (?, ?)", (name, merged))
        return True

    def read_counts(self, name: str, n_items: int) -> sp.csr_matrix:
        last_seq, blobs = self._log(name)
        counts = counts_from_pairs(*pair_arrays(blobs), n_items)
        if len(blobs) > self._compact_after:  # the merge is done already: keep it
            self._replace_log(name, last_seq, len(blobs), counts)
        return counts

    def compact_counts(self, name: str) -> int:
        last_seq, blobs = self._log(name)
        if len(blobs) < 2:
            return 0
        state = self.get_catalog(name)
        assert state is not None  # _log found it; catalogs are never deleted
        counts = counts_from_pairs(*pair_arrays(blobs), state.item_count)
        return len(blobs) if self._replace_log(name, last_seq, len(blobs), counts) else 0

    def cooccurrence_totals(self, name: str) -> CooccurrenceTotals:
        with self._read() as conn:
            return self._totals(self._catalog(conn, name))

    @staticmethod
    def _totals(catalog: sqlite3.Row) -> CooccurrenceTotals:
        return CooccurrenceTotals(catalog["pairs"], catalog["weight"], catalog["batches"])

    # -- refit lock ---------------------------------------------------------------------
    def acquire_refit_lock(self, name: str, owner: str, lease_seconds: float) -> bool:
        verify_catalog(name)
        now = time.time()
        with self._write() as conn:
            held = conn.execute(
                "SELECT 1 FROM refit_locks WHERE catalog = ? AND expires_at > ?", (name, now)
            ).fetchone()
            if held:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO refit_locks (catalog, owner, expires_at) VALUES (?, ?, ?)",
                (name, owner, now + lease_seconds),
            )
        return True

    def renew_refit_lock(self, name: str, owner: str, lease_seconds: float) -> bool:
        verify_catalog(name)
        now = time.time()
        with self._write() as conn:
            return bool(
                conn.execute(
                    "UPDATE refit_locks SET expires_at = ? "
                    "WHERE catalog = ? AND owner = ? AND expires_at > ?",
                    (now + lease_seconds, name, owner, now),
                ).rowcount
            )

    def release_refit_lock(self, name: str, owner: str) -> None:
        verify_catalog(name)
        with self._write() as conn:
            conn.execute("DELETE FROM refit_locks WHERE catalog = ? AND owner = ?", (name, owner))


def _lookup(
    conn: sqlite3.Connection, name: str, key: str, value: str, keys: Sequence[Any]
) -> dict[Any, Any]:
    """``{key: value}`` of the catalog's items whose ``key`` column is in ``keys``, queried in
    chunks that stay under SQLite's bound-parameter limit."""
    found: dict[Any, Any] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _IN_CHUNK):
        chunk = unique[i : i + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(conn.execute(
            f"SELECT {key}, {value} FROM items WHERE catalog = ? AND {key} IN ({marks})",
            (name, *chunk),
        ).fetchall())
    return found
