"""Item id → row of each catalog, kept in process so a look-up needs no store read for ids.

A committed id's row never changes (rows are only appended; an upsert of a known id changes
its vectors, not its row), so an entry stays true for as long as the catalog is the same
catalog: entries are kept per catalog *epoch*, and a catalog seen with another epoch (lost,
re-created) starts empty. Bounded by a total number of entries: whole catalogs are dropped,
least recently used first, and a catalog larger than the bound keeps what it has.

Ids are learnt from the look-ups that miss, and a catalog that fits the bound is then
filled whole (``claim_fill``: one caller reads every id at once), so random look-ups over a
large catalog stop missing after the first one instead of after every id has been asked for.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class RowCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._catalogs: OrderedDict[str, tuple[str, dict[str, int]]] = OrderedDict()
        self._entries = 0
        self._filling: set[str] = set()
        self._lock = threading.Lock()

    def rows(self, name: str, ids: Sequence[str]) -> tuple[str, np.ndarray] | None:
        """The epoch the entries belong to and the row of each id (-1 where unknown), or
        ``None`` when nothing of the catalog is held."""
        with self._lock:
            held = self._catalogs.get(name)
            if held is None:
                return None
            self._catalogs.move_to_end(name)
        epoch, rows = held
        try:  # every id held, the usual case: no per-id Python code
            return epoch, np.fromiter(map(rows.__getitem__, ids), np.int64, len(ids))
        except KeyError:
            return epoch, np.fromiter(map(rows.get, ids, itertools.repeat(-1)), np.int64,
                                      len(ids))

    def add(self, name: str, epoch: str, ids: Sequence[str], rows: np.ndarray) -> None:
        """Remember committed rows (``rows >= 0``) of ``ids`` read from catalog ``name``
        with ``epoch``."""
        with self._lock:
            epoch_held, known = self._catalogs.pop(name, (epoch, {}))
            if epoch_held != epoch:  # another catalog by that name now: start over
                self._entries -= len(known)
                known = {}
            new = {item: row for item, row in zip(ids, rows.tolist(), strict=True)
                   if row >= 0 and item not in known}
            self._make_room(len(new))
            room = max(self.max_entries - self._entries, 0)
            known.update(itertools.islice(new.items(), room))
            self._entries += min(len(new), room)
            self._catalogs[name] = (epoch, known)

    def fill(self, name: str, epoch: str, ids: Sequence[str]) -> None:
        """Hold ``ids`` as every row of catalog ``name`` at ``epoch`` (row ``i`` is
        ``ids[i]``), replacing what was held; the map is built outside the lock, so look-ups
        of other catalogs are not held up while a large one is filled."""
        rows = {item: row for row, item in enumerate(ids)}
        if len(rows) > self.max_entries:
            return
        with self._lock:
            _, known = self._catalogs.pop(name, (epoch, {}))
            self._entries -= len(known)
            self._make_room(len(rows))
            self._catalogs[name] = (epoch, rows)
            self._entries += len(rows)

    def claim_fill(self, name: str, epoch: str, count: int) -> bool:
        """Whether the caller should add every id of catalog ``name`` (``count`` items at
        ``epoch``): fewer are held, they fit the bound, and no other caller is filling it.
        A claim is ended by ``end_fill``."""
        with self._lock:
            held = self._catalogs.get(name)
            held_count = len(held[1]) if held is not None and held[0] == epoch else 0
            if held_count >= count or count > self.max_entries or name in self._filling:
                return False
            self._filling.add(name)
            return True

    def end_fill(self, name: str) -> None:
        with self._lock:
            self._filling.discard(name)

    def _make_room(self, entries: int) -> None:
        """Drop whole catalogs, least recently used first, until ``entries`` more fit (or
        none is left); the caller holds the lock."""
        while self._catalogs and self._entries + entries > self.max_entries:
            _, (_, dropped) = self._catalogs.popitem(last=False)
            self._entries -= len(dropped)

    def drop(self, name: str) -> None:
        """Forget a catalog (its store said it is gone or replaced)."""
        with self._lock:
            held = self._catalogs.pop(name, None)
            if held is not None:
                self._entries -= len(held[1])
