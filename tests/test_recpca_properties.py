"""Properties that ARCHITECTURE §4 requires of Rec-PCA, checked on random problems."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.recpca import FitSettings, build_graph, compute_moments, fit_projection
from server.recpca.solve import lambda_for_retention, scores, solve
from tests.recpca_cases import (
    Case,
    cases,
    dense_reference,
    largest_principal_angle,
    make_case,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAMBDA_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.2, 2.0, 5.0)


def moments_of(case: Case, **kwargs):
    graph = build_graph(case.counts, len(case.raw))
    return compute_moments(case.raw, graph, backend="numpy", **kwargs)


@PROPERTY
@given(cases())
def test_lambda_zero_is_the_pca_subspace_of_normalized_inputs(case: Case) -> None:
    unit = case.raw / np.linalg.norm(case.raw, axis=1, keepdims=True)
    _, singular, vt = np.linalg.svd(unit - unit.mean(axis=0), full_matrices=False)
    if case.dim < len(singular):  # the subspace is only defined with an eigengap
        assume(singular[case.dim - 1] ** 2 - singular[case.dim] ** 2 > 1e-4 * singular[0] ** 2)
    components = solve(moments_of(case), case.dim, 0.0)
    assert largest_principal_angle(vt[: case.dim].T, components) < 1e-6


@PROPERTY
@given(cases(), st.sampled_from(LAMBDA_GRID))
def test_components_are_orthonormal(case: Case, lam: float) -> None:
    components = solve(moments_of(case), case.dim, lam)
    assert components.shape == (case.raw.shape[1], case.dim)
    np.testing.assert_allclose(components.T @ components, np.eye(case.dim), atol=1e-10)


@PROPERTY
@given(cases())
def test_retained_variance_and_graph_tv_never_increase_with_lambda(case: Case) -> None:
    moments = moments_of(case)
    curve = [scores(moments, solve(moments, case.dim, lam)) for lam in LAMBDA_GRID]
    variance = [point.retained_variance for point in curve]
    graph_tv = [point.graph_tv for point in curve]
    assert all(b <= a + 1e-9 for a, b in zip(variance, variance[1:], strict=False))
    assert all(b <= a + 1e-9 for a, b in zip(graph_tv, graph_tv[1:], strict=False))


@PROPERTY
@given(cases(), st.sampled_from(LAMBDA_GRID))
def test_fit_is_deterministic(case: Case, lam: float) -> None:
    first = solve(moments_of(case), case.dim, lam)
    second = solve(moments_of(case), case.dim, lam)
    assert np.array_equal(first, second)
    # Deterministic signs: each column's largest-magnitude entry is positive.
    peaks = first[np.argmax(np.abs(first), axis=0), np.arange(case.dim)]
    assert np.all(peaks > 0)


@PROPERTY
@given(cases(), st.integers(1, 50))
def test_streamed_moments_equal_the_dense_specification(case: Case, block_rows: int) -> None:
    streamed = moments_of(case, block_rows=block_rows)
    in_memory = moments_of(case, block_rows=len(case.raw))
    scatter, graph_variation = dense_reference(case.raw, case.counts)
    for moments in (streamed, in_memory):
        np.testing.assert_allclose(moments.scatter, scatter, atol=1e-12)
        np.testing.assert_allclose(moments.graph_variation, graph_variation, atol=1e-12)
    settings_ = FitSettings(dim=case.dim, lam=0.97)
    np.testing.assert_allclose(
        fit_projection(streamed, settings_).components,
        fit_projection(in_memory, settings_).components,
        atol=1e-8,
    )


@PROPERTY
@given(cases(), st.floats(0.3, 1.0))
def test_retention_budget_is_met(case: Case, retention: float) -> None:
    moments = moments_of(case)
    pca = scores(moments, solve(moments, case.dim, 0.0)).retained_variance
    lam = lambda_for_retention(moments, case.dim, retention)
    kept = scores(moments, solve(moments, case.dim, lam)).retained_variance
    assert lam >= 0
    assert kept >= retention * pca - 1e-12


def test_retention_budget_trades_variance_for_smoothness() -> None:
    moments = moments_of(make_case(seed=7, n=400, raw_dim=24, dim=6))
    lam = lambda_for_retention(moments, 6, 0.8)
    fitted = scores(moments, solve(moments, 6, lam))
    pca = scores(moments, solve(moments, 6, 0.0))
    assert lam > 0
    assert fitted.graph_tv < pca.graph_tv
    # The budget is tight: a slightly larger λ would break it.
    bigger = scores(moments, solve(moments, 6, lam * 1.05)).retained_variance
    assert bigger < 0.8 * pca.retained_variance <= fitted.retained_variance


def test_torch_backend_matches_numpy_within_tolerance() -> None:
    pytest.importorskip("torch")
    case = make_case(seed=3, n=500, raw_dim=32, dim=8)
    graph = build_graph(case.counts, len(case.raw))
    raw = case.raw.astype(np.float32)
    cpu = compute_moments(raw, graph, backend="numpy", block_rows=128)
    torch = compute_moments(raw, graph, backend="torch", device="cpu", block_rows=128)
    scale = np.abs(cpu.scatter).max()
    np.testing.assert_allclose(torch.scatter, cpu.scatter, atol=1e-5 * scale)
    np.testing.assert_allclose(torch.graph_variation, cpu.graph_variation, atol=1e-5 * scale)
    settings_ = FitSettings(dim=8, lam=0.9)
    angle = largest_principal_angle(
        fit_projection(cpu, settings_).components, fit_projection(torch, settings_).components
    )
    assert angle < 1e-3


def test_float32_inputs_agree_with_float64() -> None:
    case = make_case(seed=11, n=600, raw_dim=48, dim=8)
    graph = build_graph(case.counts, len(case.raw))
    exact = compute_moments(case.raw, graph, backend="numpy")
    single = compute_moments(case.raw.astype(np.float32), graph, backend="numpy", block_rows=100)
    scale = np.abs(exact.scatter).max()
    np.testing.assert_allclose(single.scatter, exact.scatter, atol=1e-5 * scale)
    np.testing.assert_allclose(single.graph_variation, exact.graph_variation, atol=1e-5 * scale)


def test_served_vectors_follow_the_formula_for_fitted_and_new_items() -> None:
    case = make_case(seed=5, n=200, raw_dim=16, dim=4)
    projection = fit_projection(moments_of(case), FitSettings(dim=4, retention=0.9))
    new_items = np.random.default_rng(1).standard_normal((7, 16)) * 3
    for raw in (case.raw, new_items):
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        expected = (unit - projection.mean) @ projection.components
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        served = projection.transform(raw, block_rows=3)
        assert served.dtype == np.float32
        np.testing.assert_allclose(served, expected, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-6)
