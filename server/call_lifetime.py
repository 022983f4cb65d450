"""A call's lifetime, checked where its effects become visible.

gRPC can cancel a handler coroutine (client cancel, passed deadline, server shutdown), but
not the worker thread that does the call's work: without a check that thread would encode,
fit and then commit for a caller that was already told the call failed. Each mutating call
therefore runs under a ``CallLifetime`` (absolute deadline, cancel flag), made current in a
context variable that ``asyncio.to_thread`` copies into the worker thread. Long work calls
``check_alive()`` between steps (encoder batches, fit phases) to stop early, and the stores
call it inside the atomic step that publishes the call's effects (the SQLite transaction
before ``COMMIT``; in the Lua scripts on Redis, against Redis's clock, and right before an
``EXEC``), so a dead call changes nothing and a live one commits completely.

A commit needs ``commit_margin_seconds`` of deadline left: the response must still reach the
caller, or it would be told DEADLINE_EXCEEDED about a call that committed. A retry with the
same ``request_id`` covers the case no margin can (a response lost in the network).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Why a call may no longer commit; each maps to the gRPC status the caller already sees.
CANCELLED = "CANCELLED"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
SHUTTING_DOWN = "UNAVAILABLE"


class CallEnded(Exception):
    """The call was cancelled, passed its deadline or was stopped by a shutdown: nothing of
    it may be committed. ``code`` names the gRPC status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CallLifetime:
    """The deadline (``time.time()`` seconds; None: none) and cancel flag of one call."""

    def __init__(self, deadline: float | None, commit_margin_seconds: float = 0.0) -> None:
        self.deadline = deadline
        self.margin = commit_margin_seconds
        self._ended = threading.Event()
        self._code = CANCELLED
        self._message = "the call was cancelled"

    def end(self, code: str = CANCELLED, message: str = "the call was cancelled") -> None:
        """Mark the call dead (idempotent: the first reason wins)."""
        if not self._ended.is_set():
            self._code, self._message = code, message
            self._ended.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def check(self, *, committing: bool = False) -> None:
        """Raise ``CallEnded`` unless the call may go on (``committing``: and commit now)."""
        if self._ended.is_set():
            raise CallEnded(self._code, self._message)
        if self.deadline is not None:
            left = self.deadline - time.time()
            if left <= (self.margin if committing else 0.0):
                raise deadline_passed()


_CURRENT: contextvars.ContextVar[CallLifetime | None] = contextvars.ContextVar(
    "call_lifetime", default=None)


@contextmanager
def running(lifetime: CallLifetime) -> Iterator[CallLifetime]:
    """Make ``lifetime`` current for the code (and worker threads started) inside."""
    token = _CURRENT.set(lifetime)
    try:
        yield lifetime
    finally:
        _CURRENT.reset(token)


def current() -> CallLifetime | None:
    return _CURRENT.get()


def check_alive() -> None:
    """Between steps of long work: stop a dead call early (no-op outside a call)."""
    lifetime = _CURRENT.get()
    if lifetime is not None:
        lifetime.check()


def check_commit() -> None:
    """Inside a store's atomic commit step: refuse to publish a dead call's effects."""
    lifetime = _CURRENT.get()
    if lifetime is not None:
        lifetime.check(committing=True)


def commit_deadline_ms() -> int:
    """The latest unix time, in milliseconds, at which the current call may still commit,
    for stores that check it on their own clock inside the atomic step (Redis scripts); 0:
    no deadline."""
    lifetime = _CURRENT.get()
    if lifetime is None or lifetime.deadline is None:
        return 0
    return int((lifetime.deadline - lifetime.margin) * 1000)


def deadline_passed() -> CallEnded:
    """What a store raises when its own deadline check refused the commit."""
    return CallEnded(DEADLINE_EXCEEDED, "the call's deadline passed before it could commit")
