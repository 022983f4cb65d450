"""How far a refit is: its phase and the fraction of the whole refit done.

Phases run in order; each owns a fixed share of the fraction, a rough split of where a
large fit spends its time (the moments and the alignment@k searches of the diagnostics
dominate; reading and writing are store I/O). Within the moments phase the fraction
grows with the rows accumulated. The fraction never decreases. The refit calls ``enter`` at
each phase boundary, which is also where a stop request (a server shutting down) takes
effect: ``Stopped`` is raised before the next phase starts, so nothing is written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from itertools import accumulate

# (phase, share of the whole refit), in order.
PHASES: tuple[tuple[str, float], ...] = (
    ("queued", 0.0),
    ("reading", 0.10),
    ("moments", 0.45),
    ("solve", 0.05),
    ("diagnostics", 0.30),
    ("writing", 0.10),
    ("done", 0.0),
)
PHASE_NAMES = tuple(name for name, _ in PHASES)
_SHARES = dict(PHASES)
_STARTS = dict(zip(PHASE_NAMES, accumulate(_SHARES.values(), initial=0.0), strict=False))


class Stopped(Exception):
    """The refit was asked to stop (shutdown) and did so between two phases."""


class RefitProgress:
    """Thread-safe phase and fraction of one refit; ``listener`` hears every change."""

    def __init__(self, listener: Callable[[str, float], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._phase, self._fraction = "queued", 0.0
        self._listener = listener
        self._stop: str | None = None
        self.updated_at = time.time()

    @property
    def state(self) -> tuple[str, float]:
        with self._lock:
            return self._phase, self._fraction

    def enter(self, phase: str) -> None:
        """Start ``phase`` (its share begins); raises ``Stopped`` if a stop was asked."""
        if self._stop is not None and phase != "done":
            raise Stopped(self._stop)
        self._set(phase, _STARTS[phase] if phase != "done" else 1.0)

    def within(self, done: int, total: int) -> None:
        """Progress inside the current phase: ``done`` of ``total`` units."""
        with self._lock:
            phase = self._phase
        share = _SHARES[phase] * min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        self._set(phase, _STARTS[phase] + share)

    def stop(self, reason: str) -> None:
        """Ask the refit to stop at its next phase boundary."""
        self._stop = reason

    def _set(self, phase: str, fraction: float) -> None:
        with self._lock:
            if phase == self._phase and fraction <= self._fraction:
                return
            self._phase, self._fraction = phase, max(fraction, self._fraction)
            self.updated_at = time.time()
            state = self._phase, self._fraction
        if self._listener is not None:
            self._listener(*state)
