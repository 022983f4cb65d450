"""Serialized ``GetItemEmbeddings`` messages of whole-catalog pulls, kept for the next pull.

A published version never changes, and neither does a row's item id (item tables are
append-only), so the bytes of a chunk of rows that a version covers are the same for every
pull with the same dtype, chunk size and id option. Serving them again costs a dictionary
look-up instead of a store read, an id fetch, a dtype conversion and a serialization per
chunk. Entries are evicted least recently used first, within a byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

# One chunk: its messages as (serialized bytes, items, vector bytes), in order.
Messages = list[tuple[bytes, int, int]]


class ChunkCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Messages, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Messages | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, messages: Messages) -> None:
        size = sum(len(data) for data, _, _ in messages)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (messages, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
