"""Which catalogs (by epoch) a store handle has seen, so that a store that lost or replaced
them is detected instead of trusted.

Every catalog gets a random epoch when it is created. A handle records the epoch of each
catalog it reads; later, a catalog that is missing, or present with another epoch, means
the backend lost its data (Redis restarted empty or flushed, the SQLite file replaced) or
someone re-created the catalog over it. Serving from what the process remembers would then
hand out vectors and counts that no longer exist. Detection is sticky: once a handle has
seen a loss, it keeps raising ``DataLostError`` for that catalog and reports it in
``probe`` until the process restarts, so an operator has to look."""

from __future__ import annotations

import secrets
import threading

from server.stores.base import DataLostError


def new_epoch() -> str:
    return secrets.token_hex(16)


class EpochWatch:
    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self._lost: dict[str, str] = {}  # catalog -> what happened to it
        self._lock = threading.Lock()

    def check(self, name: str, epoch: str | None) -> None:
        """Record ``name``'s epoch as the store has it now (None: no such catalog); raise
        ``DataLostError`` if that contradicts what this handle saw before."""
        with self._lock:
            lost = self._lost.get(name)
            seen = self._seen.get(name)
            if lost is None and seen is not None and epoch != seen:
                lost = ("vanished from the store" if epoch is None
                        else "was replaced in the store by another catalog of that name")
                self._lost[name] = lost
            elif lost is None and seen is None and epoch is not None:
                self._seen[name] = epoch
        if lost is not None:
            raise DataLostError(
                f"the store lost catalog {name!r}: it {lost} (restarted empty, flushed or "
                "restored from elsewhere?); restart the server after restoring or re-ingesting")

    def lose_store(self, why: str) -> None:
        with self._lock:
            self._lost.setdefault("", why)

    def raise_if_lost(self) -> None:
        with self._lock:
            lost = dict(self._lost)
        if lost:
            what = lost.pop("", None) or f"catalogs {sorted(lost)} vanished or were replaced"
            raise DataLostError(f"the store lost data this server had seen: {what}")
