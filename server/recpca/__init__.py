"""Rec-PCA: pure numerics (numpy/scipy, torch on CUDA), no I/O."""

from server.recpca.fit import (
    DEFAULT_RETENTION,
    DEFAULT_WHITENING,
    FitDiagnostics,
    FitResult,
    FitSettings,
    diagnose,
    fit_projection,
    fit_recpca,
    fit_recpca_streamed,
    plain_pca,
)
from server.recpca.graph import GraphOptions, NormalizedGraph, build_graph
from server.recpca.moments import Moments, compute_moments
from server.recpca.projection import Projection, transform_together

__all__ = [
    "DEFAULT_RETENTION",
    "DEFAULT_WHITENING",
    "FitDiagnostics",
    "FitResult",
    "FitSettings",
    "GraphOptions",
    "Moments",
    "NormalizedGraph",
    "Projection",
    "build_graph",
    "compute_moments",
    "diagnose",
    "fit_projection",
    "fit_recpca",
    "fit_recpca_streamed",
    "plain_pca",
    "transform_together",
]
