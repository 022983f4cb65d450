"""WatchCatalog's feed: a catalog's version events, seen across server replicas.

Any replica may write or activate a version, so the store is the only place that sees every
change. Each server polls it once per ``poll_seconds`` for each catalog that at least one of
its callers watches (one poller per catalog and process, however many watchers), and each
watcher turns the descriptions it is handed into events by comparing them with the last one
it reported. A watcher's queue holds only the latest description: a slow reader never makes
the server buffer more, and it still learns every new version (they stay in the list); an
activation that was replaced within one poll is the only thing it can miss. Polling works
the same on Redis and on the embedded store shared by processes on one machine, costs one
describe per watched catalog per interval, and needs no Redis keyspace notifications (which
managed Redis offerings often disable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from server.service.catalog_service import CatalogDescription
from server.stores.base import VersionRecord

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5

SNAPSHOT, CREATED, ACTIVATED = "snapshot", "created", "activated"


@dataclass(frozen=True)
class CatalogEvent:
    kind: str  # SNAPSHOT | CREATED | ACTIVATED
    description: CatalogDescription  # the catalog when the event was observed
    version: VersionRecord | None  # the new / newly active version (None: none active)


class WatchClosed(Exception):
    """The server is shutting down: watchers end (UNAVAILABLE; clients reconnect)."""


def active_record(description: CatalogDescription) -> VersionRecord | None:
    active = description.state.active_version
    return next((v for v in description.versions if v.version == active), None)


def changes(before: CatalogDescription, after: CatalogDescription) -> list[CatalogEvent]:
    """New versions (oldest first), then the activation, between two descriptions."""
    known = {record.version for record in before.versions}
    events = [CatalogEvent(CREATED, after, record) for record in after.versions
              if record.version not in known]
    if after.state.active_version != before.state.active_version:
        events.append(CatalogEvent(ACTIVATED, after, active_record(after)))
    return events


@dataclass
class _Feed:
    queues: set[asyncio.Queue[CatalogDescription | BaseException]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class CatalogWatches:
    """The pollers of one server. ``describe`` reads a catalog (a blocking store call, run
    in a worker thread); ``observed`` is told every description read (metrics)."""

    def __init__(self, describe: Callable[[str], CatalogDescription],
                 observed: Callable[[CatalogDescription], None] | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._describe = describe
        self._observed = observed
        self.poll_seconds = poll_seconds
        self._feeds: dict[str, _Feed] = {}
        self._closed = False

    async def follow(self, name: str, first: CatalogDescription
                     ) -> AsyncIterator[CatalogEvent]:
        """Events after ``first`` (a description read when the watch started), forever.
        Raises what a poll raised (the store is down, the catalog was lost) and
        ``WatchClosed`` at shutdown."""
        if self._closed:
            raise WatchClosed("the server is shutting down")
        queue: asyncio.Queue[CatalogDescription | BaseException] = asyncio.Queue(maxsize=1)
        feed = self._feeds.setdefault(name, _Feed())
        feed.queues.add(queue)
        if feed.task is None:
            feed.task = asyncio.create_task(self._poll(name, feed))
        try:
            last = first
            while True:
                found = await queue.get()
                if isinstance(found, BaseException):
                    raise found
                for event in changes(last, found):
                    yield event
                last = found
        finally:
            feed.queues.discard(queue)
            if not feed.queues and self._feeds.get(name) is feed:
                del self._feeds[name]
                if feed.task is not None:
                    feed.task.cancel()

    async def _poll(self, name: str, feed: _Feed) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            found: CatalogDescription | BaseException
            try:
                described = await asyncio.to_thread(self._describe, name)
            except Exception as error:  # handed to the watchers, who end with its status
                found = error
            else:
                found = described
                if self._observed is not None:
                    self._observed(described)
            for queue in list(feed.queues):
                _put_latest(queue, found)

    def close(self) -> None:
        """End every watch (shutdown) and refuse new ones."""
        self._closed = True
        for feed in self._feeds.values():
            if feed.task is not None:
                feed.task.cancel()
            for queue in list(feed.queues):
                _put_latest(queue, WatchClosed("the server is shutting down"))


def _put_latest(queue: asyncio.Queue[CatalogDescription | BaseException],
                item: CatalogDescription | BaseException) -> None:
    """Replace what the queue holds with ``item`` (only the latest state matters)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
