"""Refits as long-running operations that the server owns (StartRefit).

``start`` checks the request and takes the catalog's refit lock in the caller's thread, so
every error a caller can cause comes back from StartRefit itself; the fit then runs on a
thread of its own, tied to no call: the caller may disconnect, and any number of callers
may follow it (GetRefitOperation, WatchRefitOperation) until it ends and a while after. The
refit lock, renewed while the fit runs, keeps other refits of the catalog out on every
replica; if this process dies, the lease expires and the operation is gone with it.

Operations live in this process's memory: their names carry the replica's id so that a
caller that reaches another replica gets NOT_FOUND rather than someone else's refit. At most
``max_kept`` finished ones are kept, each for ``keep_seconds``; running ones are bounded by
the refit lock (one per catalog).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.call_lifetime import SHUTTING_DOWN, CallEnded, CallLifetime, running
from server.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from server.service.catalog_service import CatalogService
from server.service.refit_progress import RefitProgress, Stopped
from server.stores.base import VersionRecord
from server.validation import FitRequest

log = logging.getLogger(__name__)
REPLICA = uuid.uuid4().hex[:12]
NAME = re.compile(r"refits/[0-9a-f]{12}/[0-9a-f]{32}")
KEEP_SECONDS = 3600.0
MAX_KEPT = 1000


class RefitBug(ServiceError):
    """A refit that failed for no reason a caller caused: reported as INTERNAL."""


@dataclass(frozen=True)
class OperationState:
    """A snapshot of one operation, as GetRefitOperation reports it."""

    name: str
    catalog: str
    request: Any  # the RefitProjectionRequest it runs (echoed back)
    phase: str
    fraction: float
    created_at: float
    updated_at: float
    result: tuple[VersionRecord, int] | None = None  # (version, previous active version)
    error: ServiceError | None = None  # why it failed (RefitBug: a bug, INTERNAL)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


class _Operation:
    def __init__(self, name: str, catalog: str, request: Any, progress: RefitProgress) -> None:
        self.name, self.catalog, self.request = name, catalog, request
        self.progress = progress
        self.created_at = time.time()
        self.result: tuple[VersionRecord, int] | None = None
        self.error: ServiceError | None = None
        self.finished_at: float | None = None
        # The operation's own lifetime (no deadline): the work is tied to no call, only to
        # the server, which ends it at shutdown.
        self.lifetime = CallLifetime(None)

    def state(self) -> OperationState:
        phase, fraction = self.progress.state
        if self.result is not None or self.error is not None:
            phase, fraction = "done", 1.0
        return OperationState(self.name, self.catalog, self.request, phase, fraction,
                              self.created_at, self.progress.updated_at, self.result,
                              self.error)


class RefitOperations:
    """The refit operations of one server process."""

    def __init__(self, service: CatalogService,
                 on_progress: Callable[[str, str, float], None] | None = None,
                 on_done: Callable[[VersionRecord], None] | None = None,
                 keep_seconds: float = KEEP_SECONDS, max_kept: int = MAX_KEPT) -> None:
        self._service = service
        self._on_progress = on_progress
        self._on_done = on_done
        self._keep_seconds, self._max_kept = keep_seconds, max_kept
        self._operations: dict[str, _Operation] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def start(self, catalog: str, request: FitRequest, activate: bool,
              echo: Any) -> OperationState:
        """Check the request and take the lock here (errors raise), then fit on a thread
        of the server's own; the operation's first state."""
        lease = self._service.begin_refit(catalog, request, activate,
                                          getattr(echo, "request_id", ""))
        name = f"refits/{REPLICA}/{uuid.uuid4().hex}"
        listener = None
        if self._on_progress is not None:
            report = self._on_progress

            def listener(phase: str, fraction: float) -> None:
                report(catalog, phase, fraction)

        operation = _Operation(name, catalog, echo, RefitProgress(listener))
        with self._lock:
            self._forget_expired()
            self._operations[name] = operation
        thread = threading.Thread(target=self._run, args=(operation, lease, activate),
                                  name=f"refit-{catalog}", daemon=True)
        self._threads.add(thread)
        thread.start()
        log.info("catalog %s: refit operation %s started", catalog, name)
        return operation.state()

    def _run(self, operation: _Operation, lease: Any, activate: bool) -> None:
        try:  # the result is set before the phase says done: no "done" without an outcome
            with running(operation.lifetime):  # ended at shutdown: nothing half-committed
                operation.result = self._service.run_refit(lease, activate, operation.progress)
            if self._on_done is not None:
                self._on_done(operation.result[0])
        except Stopped as stopped:
            operation.error = Unavailable(f"{stopped}; nothing was written, start again")
        except CallEnded as ended:
            operation.error = Unavailable(f"{ended.message}; nothing was written, start again")
        except ServiceError as error:
            operation.error = error
        except Exception as error:  # a bug: logged once, with the operation as incident id
            log.exception("refit operation %s failed", operation.name)
            operation.error = RefitBug(f"internal error (incident {operation.name}): "
                                       f"{type(error).__name__}")
        finally:
            operation.finished_at = time.time()
            operation.progress.enter("done")
            self._threads.discard(threading.current_thread())
            if operation.error is not None:
                log.warning("catalog %s: refit operation %s failed: %s: %s",
                            operation.catalog, operation.name,
                            type(operation.error).__name__, operation.error.message)

    def get(self, name: str) -> OperationState:
        if not NAME.fullmatch(name):
            raise InvalidArgument("an operation name looks like refits/<replica>/<id>, as "
                                  "StartRefit returned it")
        with self._lock:
            self._forget_expired()
            operation = self._operations.get(name)
        if operation is None:
            where = "" if name.split("/")[1] == REPLICA else (
                " (it was started by another server replica: ask that one)")
            raise NotFound(f"no refit operation {name}{where}")
        return operation.state()

    def stop(self, reason: str = "the server is shutting down", wait_seconds: float = 10.0
             ) -> None:
        """Ask running refits to stop at their next phase boundary and wait for them (a
        fit phase can outlast the wait: then the process exits and the lease expires)."""
        with self._lock:
            active = [op for op in self._operations.values() if op.finished_at is None]
        for operation in active:
            operation.progress.stop(reason)
            operation.lifetime.end(SHUTTING_DOWN, reason)
        deadline = time.monotonic() + wait_seconds
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0))

    def _forget_expired(self) -> None:
        """Drop finished operations past their keep time, and the oldest finished ones
        beyond ``max_kept`` (called with the lock held)."""
        now = time.time()
        finished = sorted((op.finished_at, name) for name, op in self._operations.items()
                          if op.finished_at is not None)
        excess = len(finished) - self._max_kept
        for index, (finished_at, name) in enumerate(finished):
            if index < excess or now - finished_at > self._keep_seconds:
                del self._operations[name]

