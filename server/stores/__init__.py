"""Store backends behind one interface, and ``open_store`` to pick one from a URL."""

from __future__ import annotations

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
    StoreError,
    StoreUnavailableError,
    VersionRecord,
)
from server.stores.local_store import LocalStore
from server.stores.raw_files import RawFileStore
from server.stores.redis_store import RedisStore

__all__ = [
    "CatalogSnapshot",
    "CatalogState",
    "CatalogStore",
    "ConflictError",
    "CooccurrenceTotals",
    "CorruptDataError",
    "DataLostError",
    "EncoderIdentity",
    "IdField",
    "ItemChanges",
    "LocalStore",
    "NewVersion",
    "NotFoundError",
    "PairBatch",
    "PublishedVersion",
    "PushOutcome",
    "RawFileStore",
    "RedisStore",
    "RequestRecord",
    "StoreError",
    "StoreUnavailableError",
    "VersionRecord",
    "open_store",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def open_store(url_or_path: str, raw_store_url: str = "") -> CatalogStore:
    """``redis://``, ``rediss://`` (TLS), ``unix://`` and Redis Cluster
    (``redis+cluster://``, ``rediss+cluster://``) URLs open a ``RedisStore``; anything
    else a ``LocalStore`` on that file, also as ``sqlite:///relative`` or ``sqlite:////abs``
    (SQLAlchemy's spelling). With ``raw_store_url`` (a directory, ``file://``, ``s3://``,
    ``gs://``…), catalogs created from then on keep their raw vectors in block files there
    and the store keeps their manifest."""
    raw_files = RawFileStore(raw_store_url) if raw_store_url else None
    if url_or_path.startswith(_REDIS_SCHEMES):
        return RedisStore(url_or_path, raw_files=raw_files)
    return LocalStore(url_or_path.removeprefix("sqlite:///"), raw_files=raw_files)
