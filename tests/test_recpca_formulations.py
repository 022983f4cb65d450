"""Property tests of the Rec-PCA formulation options: whitening exponent p and PPMI graph.

The reference formulation (p = 0, identity graph) must be untouched by the options' code
paths; whitening must whiten, stay inside the fitted subspace and treat new items exactly as
fitted ones; PPMI must give a valid graph that no longer rewards popularity.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.recpca import (
    FitSettings,
    GraphOptions,
    Projection,
    fit_recpca,
    plain_pca,
    transform_together,
)
from server.recpca.diagnostics import alignment_at_k
from server.recpca.graph import positive_pmi, transform_counts, validate_counts
from server.recpca.moments import compute_moments
from server.recpca.solve import whitener
from tests.recpca_cases import Case, cases, make_case

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fit(case: Case, whitening: float = 0.0, transform: str = "identity") -> Projection:
    settings_ = FitSettings(dim=case.dim, retention=0.8, whitening=whitening,
                            graph=GraphOptions(transform))  # type: ignore[arg-type]
    return fit_recpca(case.raw, case.counts, settings_, alignment_sample=None).projection


@PROPERTY
@given(cases())
def test_whitening_zero_is_the_reference_formulation(case: Case) -> None:
    reference = fit_recpca(case.raw, case.counts, FitSettings(dim=case.dim, retention=0.8),
                           alignment_sample=None).projection
    zero = _fit(case, 0.0)
    assert zero.whitener is None
    np.testing.assert_array_equal(zero.transform(case.raw), reference.transform(case.raw))


@PROPERTY
@given(cases())
def test_full_whitening_gives_the_retained_coordinates_equal_variance(case: Case) -> None:
    projection = _fit(case, 1.0)
    unit = case.raw / np.linalg.norm(case.raw, axis=1, keepdims=True)
    coordinates = (unit - projection.mean) @ projection.served_map
    covariance = coordinates.T @ coordinates / len(unit)
    values = np.linalg.eigvalsh(covariance)
    # Directions clipped at MIN_VARIANCE_RATIO are the only ones allowed to stay smaller.
    kept = values > 1e-3 * values.max()
    np.testing.assert_allclose(values[kept], values.max(), rtol=1e-6)


@PROPERTY
@given(cases(), st.floats(0.05, 1.0))
def test_whitening_stays_inside_the_fitted_subspace(case: Case, power: float) -> None:
    projection = _fit(case, power)
    basis = projection.components
    served = projection.served_map
    np.testing.assert_allclose(basis @ (basis.T @ served), served, atol=1e-10)
    assert np.linalg.matrix_rank(served) == case.dim


@PROPERTY
@given(cases(), st.floats(0.0, 1.0))
def test_more_whitening_never_makes_the_coordinates_less_isotropic(case: Case, power: float
                                                                  ) -> None:
    moments = compute_moments(case.raw)
    components = _fit(case, 0.0).components
    condition = []
    for p in (power / 2, power):
        served = components if p == 0 else components @ whitener(moments, components, p)
        values = np.linalg.eigvalsh(served.T @ moments.scatter @ served)
        condition.append(values.max() / max(values.min(), 1e-300))
    assert condition[1] <= condition[0] * (1 + 1e-9)


def test_new_items_are_whitened_exactly_like_fitted_ones() -> None:
    case = make_case(3, 60, 12, 5)
    projection = _fit(case, 0.5)
    fitted = projection.transform(case.raw)
    # What a store keeps and serves later items with: the served map, no separate whitener.
    stored = Projection(projection.served_map, projection.mean, projection.lam)
    new = np.random.default_rng(9).standard_normal((7, 12))
    np.testing.assert_allclose(stored.transform(case.raw), fitted, atol=1e-12)
    unit = new / np.linalg.norm(new, axis=1, keepdims=True)
    expected = (unit - projection.mean) @ projection.served_map
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(stored.transform(new), expected, atol=1e-12)


def test_whitened_fit_is_deterministic_and_records_its_exponent() -> None:
    case = make_case(5, 50, 10, 4)
    settings_ = FitSettings(dim=4, retention=0.8, whitening=0.7)
    first, second = (fit_recpca(case.raw, case.counts, settings_, alignment_sample=None)
                     for _ in range(2))
    np.testing.assert_array_equal(first.projection.served_map, second.projection.served_map)
    assert first.diagnostics.whitening == 0.7


@pytest.mark.parametrize("power", [-0.1, 1.5, float("nan")])
def test_whitening_outside_zero_to_one_is_rejected(power: float) -> None:
    with pytest.raises(ValueError, match="whitening"):
        FitSettings(whitening=power)
    case = make_case(1, 30, 6, 3)
    moments = compute_moments(case.raw)
    with pytest.raises(ValueError, match="whitening"):
        whitener(moments, np.eye(6)[:, :3], power)


# --- PPMI ---------------------------------------------------------------------------------


@PROPERTY
@given(cases())
def test_ppmi_gives_a_valid_graph(case: Case) -> None:
    weights = transform_counts(validate_counts(case.counts, len(case.raw)),
                               GraphOptions("ppmi"))
    validate_counts(weights, len(case.raw))  # symmetric, zero diagonal, finite, >= 0
    assert (weights.data > 0).all()


@PROPERTY
@given(cases(), st.floats(0.01, 1000.0))
def test_ppmi_does_not_depend_on_the_scale_of_the_counts(case: Case, scale: float) -> None:
    counts = validate_counts(case.counts, len(case.raw))
    np.testing.assert_allclose(positive_pmi(counts * scale).toarray(),
                               positive_pmi(counts).toarray(), atol=1e-9)


def test_ppmi_removes_the_popularity_that_counts_keep() -> None:
    # Item 0 is a blockbuster seen with everyone; items 1 and 2 are a rare pair seen only
    # together. Raw counts make 0 everyone's strongest neighbour; PPMI ranks the rare pair
    # far above it, and a pair seen less often than chance drops out.
    n = 6
    dense = np.zeros((n, n))
    dense[0, 3:] = dense[3:, 0] = 20.0
    dense[1, 2] = dense[2, 1] = 2.0
    dense[0, 1] = dense[1, 0] = 1.0
    dense[3, 4] = dense[4, 3] = 1.0
    counts = validate_counts(sp.csr_matrix(dense), n)
    ppmi = positive_pmi(counts).toarray()
    assert dense[0, 3] > dense[1, 2] and ppmi[1, 2] > ppmi[0, 3]
    assert ppmi[0, 1] == 0  # 1 mostly goes with 2: 0–1 is below chance
    total = dense.sum()
    expected = np.log(dense[1, 2] * total / (dense[1].sum() * dense[2].sum()))
    assert ppmi[1, 2] == pytest.approx(expected)


def test_a_ppmi_fit_keeps_the_engine_properties() -> None:
    case = make_case(11, 80, 12, 4)
    result = fit_recpca(case.raw, case.counts, FitSettings(dim=4, retention=0.8,
                                                           graph=GraphOptions("ppmi")),
                        alignment_sample=None)
    components = result.projection.components
    np.testing.assert_allclose(components.T @ components, np.eye(4), atol=1e-10)
    diagnostics = result.diagnostics
    assert diagnostics.retained_variance >= 0.8 * diagnostics.pca_retained_variance - 1e-9


@PROPERTY
@given(cases(), st.floats(0.0, 1.0))
def test_a_fit_serves_its_projection_and_scores_plain_pca_in_the_same_pass(
        case: Case, whitening: float) -> None:
    settings_ = FitSettings(dim=case.dim, retention=0.8, whitening=whitening)
    result = fit_recpca(case.raw, case.counts, settings_, alignment_sample=None)
    projection = result.projection
    np.testing.assert_allclose(result.served, projection.transform(case.raw), atol=1e-6)
    pca = plain_pca(result.moments, settings_)
    together = transform_together(case.raw, [projection, pca], block_rows=3)
    np.testing.assert_allclose(together[0], projection.transform(case.raw), atol=1e-6)
    np.testing.assert_allclose(together[1], pca.transform(case.raw), atol=1e-6)
    # The recorded PCA alignment is the one of the PCA vectors, not of the fitted ones.
    pca_vectors = transform_together(case.raw, [projection, pca])[1]
    assert result.diagnostics.pca_alignment == alignment_at_k(pca_vectors, case.counts, 10, None)


def test_only_projections_of_one_fit_are_transformed_together() -> None:
    case = make_case(0, 40, 6, 2)
    projection = _fit(case)
    moved = Projection(projection.components, projection.mean + 1.0, projection.lam)
    with pytest.raises(ValueError, match="share"):
        transform_together(case.raw, [projection, moved])
