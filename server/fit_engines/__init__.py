"""Where a refit's moments are computed: this process (the default) or a Ray cluster.

An engine is a ``server.recpca.streamed.Run``: it maps a task function over task
descriptions and yields the results. ``None`` means the single-process path
(``compute_moments``). Ray is an optional extra (``pip install '.[ray]'``), imported only
when the Ray engine is chosen.
"""

from __future__ import annotations

from typing import Literal

from server.recpca.streamed import Run

FitEngineName = Literal["local", "ray"]
FIT_ENGINES: tuple[str, ...] = ("local", "ray")


class FitEngineError(RuntimeError):
    """The engine itself failed (a worker or node lost, the cluster unreachable), as opposed
    to bad data, which the fit's tasks report as ``ValueError``."""


def fit_engine(name: str, ray_address: str = "") -> Run | None:
    """The engine ``name`` selects; ``ray_address`` is ``ray://host:port``, ``auto``, or empty
    (``RAY_ADDRESS`` if set, else a local Ray started on first use)."""
    if name == "local":
        return None
    if name == "ray":
        from server.fit_engines.ray_engine import RayEngine

        return RayEngine(ray_address or None)
    raise ValueError(f"fit engine must be one of {FIT_ENGINES}, got {name!r}")
