"""The streamed moments' tasks on Ray.

The block source is put in the object store once and every task gets a reference to it, so a
source that only says where its blocks are (a file store's URL and manifest) costs nothing to
ship; each task reads its own blocks. The task descriptions (per-block norms, the block's
slice of the graph's upper triangle) go through the object store with the tasks. Results are
yielded as they finish; the D × D reductions happen in the caller.

``ray.init`` runs on first use: with no address, ``RAY_ADDRESS`` if set, else a local Ray on
this machine; ``ray://host:10001`` connects through Ray Client. Workers of a remote cluster
need this package (the same version) installed, since tasks refer to its functions by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from server.fit_engines import FitEngineError
from server.recpca.row_blocks import RowBlocks

_init_lock = threading.Lock()


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:  # the `ray` extra is not installed
        raise FitEngineError(
            "the Ray fit engine needs Ray: pip install 'tfllmer-service[ray]'") from error
    return ray


class RayEngine:
    """``Run`` on a Ray cluster. ``init_options`` go to ``ray.init`` (``num_cpus`` for a local
    Ray, for example); ``max_retries`` is how often a task lost with its worker is rerun;
    ``max_in_flight`` caps the tasks submitted at once (a fit's share of a shared cluster,
    and of its object store), None: all of them."""

    def __init__(self, address: str | None = None, *, max_retries: int = 3,
                 max_in_flight: int | None = None, **init_options: Any) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.address = address
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.init_options = init_options

    def ensure_started(self) -> None:
        ray = _ray()
        with _init_lock:
            if not ray.is_initialized():
                try:
                    ray.init(address=self.address, **self.init_options)
                except Exception as error:  # ConnectionError, or Ray's own errors
                    where = self.address or "a local Ray"
                    raise FitEngineError(f"cannot start Ray at {where}: {error}") from error

    def __call__(self, function: Callable[[RowBlocks, Any], Any], source: RowBlocks,
                 tasks: Sequence[Any]) -> Iterator[Any]:
        ray = _ray()
        self.ensure_started()
        remote = ray.remote(max_retries=self.max_retries)(function)
        source_ref = ray.put(source)
        waiting = list(reversed(tasks))  # submitted from the end of this list
        pending: list[Any] = []
        try:
            while waiting or pending:
                while waiting and (self.max_in_flight is None
                                   or len(pending) < self.max_in_flight):
                    pending.append(remote.remote(source_ref, waiting.pop()))
                done, pending = ray.wait(pending, num_returns=1)
                yield _result(ray, done[0])
        finally:
            for ref in pending:  # a failure, or the caller stopped early: stop the rest
                ray.cancel(ref)


def _result(ray: Any, ref: Any) -> Any:
    """A task's value; its ``ValueError`` (bad data) is raised as such, anything else the
    cluster reports becomes a ``FitEngineError`` that says which task and why."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, ValueError):
            raise ValueError(str(cause)) from error
        raise FitEngineError(
            f"a fit task failed on Ray: {type(cause).__name__}: {cause}") from error
    except ray.exceptions.RayError as error:  # a worker or node lost beyond its retries
        raise FitEngineError(f"a fit task was lost on Ray: {type(error).__name__}: "
                             f"{str(error).splitlines()[0]}") from error
