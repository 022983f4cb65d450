"""Raw vectors in immutable Arrow IPC block files, apart from the serving store.

A catalog's raw vectors are read only by refits and cold-start projections, yet at D = 4096
they are the largest thing a catalog holds (1M items × 4096 × float16 = 8.2 GB). With
``--raw-store-url`` they live in a directory or a bucket as row-block files, and the catalog
store (Redis or SQLite) keeps only the *manifest*: which file holds which rows, with its size
and CRC-32. The manifest changes in the same atomic step as the items (``commit_items``).

Layout: ``<root>/<catalog>/<epoch>/<uuid>.arrow``, one Arrow IPC file per block with a single
record batch whose column ``vector`` is a fixed-size list of the raw dtype; its schema
metadata repeats the block's first row, row count, width and dtype.

Write order keeps every crash harmless: a block file is written completely under a fresh
name (locally: a temporary file, fsync, rename; on an object store a single PUT is atomic)
before the commit that references it. A crash before the commit leaves an unreferenced file,
collected by ``collect_garbage`` once it is older than the age guard; a crash after it loses
nothing. Blocks are never modified: an upsert that changes rows of a block, or appends to a
short last block, writes replacements and *retires* the old files in its commit (the commit
records when), and the collector deletes retired files only after the age guard, so a refit
still reading an older manifest finds its files.

A block that is missing, truncated or does not match its manifest entry raises
``CorruptDataError`` (DATA_LOSS): never wrong vectors. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from server.stores.base import CorruptDataError, ItemChanges, StoreUnavailableError

BLOCK_SUFFIX = ".arrow"
TEMP_PREFIX = ".tmp-"
PROBE_FILE = ".probe"  # at the root, beside the catalogs' directories
DEFAULT_BLOCK_BYTES = 16 * 2**20  # ~48 blocks for 1M × 384 float16: small enough to stream
_ARROW_TYPES = {"<f2": pa.float16(), "<f4": pa.float32()}


@dataclass(frozen=True)
class BlockEntry:
    """One manifest entry: rows ``[start, stop)`` are in ``file`` (a name in the catalog's
    directory) of ``size`` bytes whose CRC-32 is ``crc32``."""

    start: int
    stop: int
    file: str
    size: int
    crc32: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: bytes | str) -> BlockEntry:
        try:
            fields = json.loads(text)
            entry = cls(int(fields["start"]), int(fields["stop"]), str(fields["file"]),
                        int(fields["size"]), int(fields["crc32"]))
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptDataError("a raw block manifest entry does not decode") from error
        if entry.stop <= entry.start or "/" in entry.file or not entry.file:
            raise CorruptDataError("a raw block manifest entry is inconsistent")
        return entry


@dataclass(frozen=True)
class BlockChanges:
    """What one commit does to a manifest: the entries it adds and the files it retires."""

    added: list[BlockEntry]
    retired: list[BlockEntry]

    @property
    def files(self) -> list[str]:
        return [entry.file for entry in self.added]


def check_manifest(entries: Sequence[BlockEntry], count: int) -> list[BlockEntry]:
    """Entries sorted by row, checked to cover ``[0, count)`` without gaps or overlaps."""
    ordered = sorted(entries, key=lambda entry: entry.start)
    expected = 0
    for entry in ordered:
        if entry.start != expected:
            raise CorruptDataError(
                f"the raw block manifest has a gap or overlap at row {expected}")
        expected = entry.stop
    if expected < count:
        raise CorruptDataError(
            f"the raw block manifest covers {expected} rows, the catalog has {count}")
    return ordered


def _encode_block(vectors: np.ndarray, start: int, dtype: str) -> bytes:
    data = np.ascontiguousarray(vectors, dtype=dtype)
    rows, dim = data.shape
    values = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1), _ARROW_TYPES[dtype]),
                                               dim)
    metadata = {"start": str(start), "rows": str(rows), "dim": str(dim), "dtype": dtype}
    batch = pa.record_batch([values], names=["vector"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema.with_metadata(metadata)) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def _decode_block(data: bytes, entry: BlockEntry, dim: int, dtype: str) -> np.ndarray:
    """The vectors of a verified block file's bytes, or ``CorruptDataError``."""
    where = f"raw block file {entry.file} (rows {entry.start}..{entry.stop})"
    if len(data) != entry.size or (zlib.crc32(data) & 0xFFFFFFFF) != entry.crc32:
        raise CorruptDataError(f"{where} is truncated or damaged")
    try:
        reader = pa.ipc.open_file(pa.py_buffer(data))
        metadata = {key.decode(): value.decode()
                    for key, value in (reader.schema.metadata or {}).items()}
        batch = reader.get_batch(0) if reader.num_record_batches == 1 else None
    except (pa.ArrowException, UnicodeDecodeError) as error:
        raise CorruptDataError(f"{where} does not decode") from error
    rows = entry.stop - entry.start
    expected = {"start": str(entry.start), "rows": str(rows), "dim": str(dim), "dtype": dtype}
    if batch is None or metadata != expected or batch.num_rows != rows:
        raise CorruptDataError(f"{where} does not hold the rows its manifest names")
    column = batch.column(0)
    if column.type != pa.list_(_ARROW_TYPES[dtype], dim) or column.null_count:
        raise CorruptDataError(f"{where} has the wrong vector type")
    values = column.values.to_numpy(zero_copy_only=True)
    return values.reshape(rows, dim)


class RawFileStore:
    """Block files under one URL: a local directory (a path or ``file://``) or any
    filesystem pyarrow opens from a URI (``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``)."""

    def __init__(self, url: str, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        if block_bytes < 1:
            raise ValueError("block_bytes must be >= 1")
        self.url = url
        self.block_bytes = block_bytes
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:  # a URL travels, never a live filesystem
        return {"url": self.url, "block_bytes": self.block_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], block_bytes=state["block_bytes"])  # type: ignore[misc]

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            if "://" in self.url:
                self._fs, self._root = pafs.FileSystem.from_uri(self.url)
            else:
                self._fs, self._root = pafs.LocalFileSystem(), str(Path(self.url).absolute())
        return self._fs, self._root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self._filesystem()[0], pafs.LocalFileSystem)

    def directory(self, name: str, epoch: str) -> str:
        return f"{self._filesystem()[1]}/{name}/{epoch}"

    def block_rows(self, dim: int, dtype: str) -> int:
        return max(1, self.block_bytes // (dim * np.dtype(dtype).itemsize))

    def probe(self) -> None:
        """What health reports: ``StoreUnavailableError`` unless a small write to the root
        succeeds (a full disk, a read-only mount or revoked bucket credentials fail here
        before an upsert does). One small file, overwritten each time."""
        fs, root = self._filesystem()
        try:
            if self.is_local:
                Path(root).mkdir(parents=True, exist_ok=True)
            with fs.open_output_stream(f"{root}/{PROBE_FILE}") as out:
                out.write(repr(time.time()).encode())
        except OSError as error:
            raise StoreUnavailableError(f"the raw store refuses writes: {error}") from error

    # -- writing --------------------------------------------------------------------------
    def write_block(self, name: str, epoch: str, start: int, vectors: np.ndarray,
                    dtype: str) -> BlockEntry:
        """Write one block under a fresh name, completely, before anything references it."""
        data = _encode_block(vectors, start, dtype)
        file = f"{uuid.uuid4().hex}{BLOCK_SUFFIX}"
        directory = self.directory(name, epoch)
        fs, _ = self._filesystem()
        try:
            if self.is_local:
                _write_local_atomically(Path(directory), file, data)
            else:
                fs.create_dir(directory, recursive=True)
                with fs.open_output_stream(f"{directory}/{file}") as out:  # one atomic PUT
                    out.write(data)
        except OSError as error:
            raise StoreUnavailableError(f"cannot write a raw block file: {error}") from error
        return BlockEntry(start, start + len(vectors), file, len(data),
                          zlib.crc32(data) & 0xFFFFFFFF)

    def plan_commit(self, name: str, epoch: str, manifest: Sequence[BlockEntry],
                    changes: ItemChanges, dim: int, dtype: str) -> BlockChanges:
        """Write the block files an upsert needs and say how the manifest changes.

        Rows of a changed block and the rows of a short last block that new rows join are
        rewritten as new files; new rows fill blocks of ``block_rows``. Call it with the
        manifest of ``changes.base_count`` rows, checked, inside the commit's optimistic lock.
        """
        target = self.block_rows(dim, dtype)
        ordered = check_manifest(manifest, changes.base_count)
        starts = np.array([entry.start for entry in ordered], dtype=np.int64)
        changed_rows = np.asarray(changes.changed_rows, dtype=np.int64)
        hit = np.unique(np.searchsorted(starts, changed_rows, side="right") - 1)
        touched = {int(i) for i in hit}
        n_new = len(changes.new_ids)
        last = ordered[-1] if ordered else None
        # New rows first top up a short last block (rewritten), then fill blocks of their own.
        merged = 0
        if n_new and last is not None and last.stop - last.start < target:
            merged = min(target - (last.stop - last.start), n_new)
            touched.add(len(ordered) - 1)
        added: list[BlockEntry] = []
        retired = [ordered[i] for i in sorted(touched)]
        try:
            for entry in retired:
                block = np.array(self.read(name, epoch, entry, dim, dtype))
                inside = (changed_rows >= entry.start) & (changed_rows < entry.stop)
                if inside.any():
                    assert changes.changed_vectors is not None
                    block[changed_rows[inside] - entry.start] = np.asarray(
                        changes.changed_vectors)[inside].astype(dtype)
                if merged and entry is last:
                    block = np.concatenate(
                        [block, np.asarray(changes.new_vectors[:merged], dtype=dtype)])
                added.append(self.write_block(name, epoch, entry.start, block, dtype))
            done = merged
            while done < n_new:
                piece = changes.new_vectors[done : done + target]
                added.append(self.write_block(name, epoch, changes.base_count + done, piece,
                                              dtype))
                done += len(piece)
        except BaseException:
            self.discard(name, epoch, [entry.file for entry in added])
            raise
        return BlockChanges(added, retired)

    def discard(self, name: str, epoch: str, files: Iterable[str]) -> None:
        """Best effort: delete files a failed commit wrote (the collector gets any left)."""
        fs, _ = self._filesystem()
        for file in files:
            with contextlib.suppress(OSError):
                fs.delete_file(f"{self.directory(name, epoch)}/{file}")

    # -- reading --------------------------------------------------------------------------
    def read(self, name: str, epoch: str, entry: BlockEntry, dim: int, dtype: str) -> np.ndarray:
        """One verified block in the stored dtype (read only)."""
        fs, _ = self._filesystem()
        path = f"{self.directory(name, epoch)}/{entry.file}"
        try:
            with fs.open_input_stream(path) as stream:
                data = stream.read()
        except FileNotFoundError as error:
            raise CorruptDataError(
                f"raw block file {entry.file} (rows {entry.start}..{entry.stop}) is missing"
            ) from error
        except OSError as error:
            raise StoreUnavailableError(f"cannot read a raw block file: {error}") from error
        return _decode_block(data, entry, dim, dtype)

    def read_rows(self, name: str, epoch: str, manifest: Sequence[BlockEntry],
                  rows: np.ndarray, dim: int, dtype: str) -> np.ndarray:
        """Vectors of sorted unique ``rows`` in the stored dtype, each block read once."""
        out = np.empty((len(rows), dim), dtype=dtype)
        if not len(rows):
            return out
        ordered = sorted(manifest, key=lambda entry: entry.start)
        starts = np.array([entry.start for entry in ordered], dtype=np.int64)
        owner = np.searchsorted(starts, rows, side="right") - 1
        for index in np.unique(owner).tolist():
            entry = ordered[index]
            inside = owner == index
            if index < 0 or rows[inside].max() >= entry.stop:
                raise CorruptDataError("the raw block manifest does not cover the rows read")
            out[inside] = self.read(name, epoch, entry, dim, dtype)[rows[inside] - entry.start]
        return out

    # -- garbage ----------------------------------------------------------------------------
    def collect(self, name: str, epoch: str, referenced: set[str], retired: dict[str, float],
                min_age_seconds: float) -> list[str]:
        """Delete files no manifest entry references: retired ones retired more than
        ``min_age_seconds`` ago, never-committed ones (and temporaries) written that long
        ago. Returns the names deleted (their retirement records can go)."""
        fs, _ = self._filesystem()
        selector = pafs.FileSelector(self.directory(name, epoch), allow_not_found=True)
        now, deleted = time.time(), []
        try:
            infos = fs.get_file_info(selector)
        except OSError as error:
            raise StoreUnavailableError(f"cannot list raw block files: {error}") from error
        for info in infos:
            file = info.base_name
            if info.type != pafs.FileType.File or file in referenced:
                continue
            since = retired.get(file)
            if since is None:
                written = info.mtime.timestamp() if info.mtime is not None else now
                since = written
            if now - since < min_age_seconds:
                continue
            try:
                fs.delete_file(info.path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise StoreUnavailableError(f"cannot delete a raw block file: {error}") from error
            deleted.append(file)
        return deleted

    def row_blocks(self, name: str, epoch: str, manifest: Sequence[BlockEntry], n_rows: int,
                   dim: int, dtype: str) -> FileRowBlocks:
        ordered = check_manifest(manifest, n_rows)
        kept = tuple(entry for entry in ordered if entry.start < n_rows)
        return FileRowBlocks(self, name, epoch, kept, n_rows, dim, dtype)


def _write_local_atomically(directory: Path, file: str, data: bytes) -> None:
    """Temporary file, fsync, rename, fsync of the directory: the name appears complete."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f"{TEMP_PREFIX}{file}"
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, directory / file)
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class FileRowBlocks:
    """Rows ``[0, n_rows)`` of a catalog's block files as ``RowBlocks``; it pickles as the
    store's URL and the manifest, so a task elsewhere reads the blocks itself."""

    def __init__(self, files: RawFileStore, name: str, epoch: str,
                 entries: tuple[BlockEntry, ...], n_rows: int, dim: int, dtype: str) -> None:
        self.files, self.name, self.epoch, self.entries = files, name, epoch, entries
        self._n_rows, self._dim, self._dtype = n_rows, dim, np.dtype(dtype)

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
        return [(entry.start, min(entry.stop, self._n_rows)) for entry in self.entries]

    def read_block(self, index: int) -> np.ndarray:
        entry = self.entries[index]
        block = self.files.read(self.name, self.epoch, entry, self._dim, self._dtype.str)
        return block[: min(entry.stop, self._n_rows) - entry.start]
