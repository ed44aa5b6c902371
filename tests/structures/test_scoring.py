import numpy as np
import pytest

from swarmguard import NonFiniteError
from swarmguard.structures.scoring import LeaveOneOutScorer


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, "auto"])
def test_every_member_scored_leave_one_out_in_one_factorisation(shrinkage):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 3)) + 1e4
    mu = X.mean(axis=0)
    S = (X - mu).T @ (X - mu)
    sc = LeaveOneOutScorer(60, mu, S, shrinkage=shrinkage)
    d2, shares = sc.score_many(X - mu, explain=True)
    lam = 3 / 60 if shrinkage == "auto" else shrinkage
    target = X.var(axis=0, ddof=1)
    for i in range(60):
        others = np.delete(X, i, axis=0)
        reg = (1 - lam) * np.cov(others.T) + np.diag(lam * target + 1e-9 * target)
        diff = X[i] - others.mean(axis=0)
        assert d2[i] == pytest.approx(diff @ np.linalg.solve(reg, diff), rel=1e-9)
    np.testing.assert_allclose(shares.sum(axis=1), d2, rtol=1e-10)
    one, one_shares = sc.score(X[5] - mu)
    assert one == pytest.approx(d2[5], rel=1e-12)
    np.testing.assert_allclose(one_shares, shares[5], rtol=1e-10)


def test_too_small_populations_score_zero_not_nan():
    sc = LeaveOneOutScorer(2, np.zeros(2), np.eye(2))
    assert not sc.ok
    assert sc.score(np.ones(2))[0] == 0.0
    assert np.all(sc.score_many(np.ones((3, 2))) == 0.0)


def test_co_moments_that_never_factorise_score_against_the_diagonal_not_an_untyped_error():
    # An indefinite co-moment (|correlation| 1000: no population has it; the ridge,
    # raised up to 10 times the target, cannot repair it) used to end in a bare
    # FloatingPointError; it now scores against the diagonal target alone.
    m2 = np.array([[1.0, 1000.0], [1000.0, 1.0]]) * 99.0
    sc = LeaveOneOutScorer(100, np.zeros(2), m2, shrinkage=0.0)
    e = np.array([3.0, -1.0])
    d2, _ = sc.score(e)
    target = np.diag(m2) / 99.0 * (1.0 + 1e-9)
    c = 100 / (99 * 98)                               # Sherman–Morrison: Σ = A - c e eᵀ, A = diag target
    t = float(e @ (e / target))
    assert d2 == pytest.approx((100 / 99) ** 2 * t / (1 - c * t), rel=1e-12)


def test_non_finite_co_moments_raise_the_typed_error():
    with pytest.raises(NonFiniteError):
        LeaveOneOutScorer(100, np.zeros(2), np.array([[np.inf, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("k", [-450, -100, 450])
def test_scores_are_bitwise_invariant_under_a_power_of_two_scaling_of_the_moments(k):
    # Within the range where squares stay normal floats (the tree's per-feature
    # units keep them near 1): every operation scales exactly.
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 3))
    mu = X.mean(axis=0)
    E = X - mu
    ref = LeaveOneOutScorer(50, mu, E.T @ E).score_many(E, explain=True)
    Es = np.ldexp(E, k)
    got = LeaveOneOutScorer(50, np.ldexp(mu, k), Es.T @ Es).score_many(Es, explain=True)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def _scorer_in_units(X: np.ndarray, exponents: np.ndarray, shrinkage: float) -> np.ndarray:
    """Leave-one-out D² from moments in units 2**exponents, as the tree hands them over."""
    D = np.ldexp(X - X.mean(axis=0), -exponents)
    mu = D.mean(axis=0)
    E = D - mu
    return LeaveOneOutScorer(X.shape[0], mu, E.T @ E, shrinkage).score_many(E)


@pytest.mark.parametrize("shrinkage", [0.0, 0.2])
def test_the_variance_floor_is_taken_in_power_of_two_units_as_the_exact_reference_takes_it(shrinkage):
    # Reproducer: the exact reference floored each variance at 1e-12 of the mean variance
    # in the caller's units, where a 1e10 feature floors a unit one at 5e7 (3% of its
    # distance), while the scorer, given the tree's units, floors in those. Both now
    # follow the documented rule: the floor is 1e-12 of the mean variance in the
    # power-of-two units.
    from tests._exact import exact_loo_squared_distance, power_of_two_exponents
    rng = np.random.default_rng(21)
    X = rng.normal(size=(30, 3)) * np.array([1e10, 1.0, 1e-300])
    e = power_of_two_exponents(X)
    d2 = _scorer_in_units(X, e, shrinkage)
    for i in (0, 7, 29):
        assert d2[i] == pytest.approx(exact_loo_squared_distance(X, i, shrinkage), rel=1e-10)
    # Where the floor binds (a feature whose spread is 1e-9 of its unit: a unit chosen
    # when the feature was wider), scorer and reference agree on the same units.
    Y = rng.normal(size=(30, 2)) * np.array([1.0, 1e-9])
    stale = np.array([1, 1])
    d2 = _scorer_in_units(Y, stale, shrinkage)
    for i in (0, 7, 29):
        exact = exact_loo_squared_distance(Y, i, shrinkage, exponents=stale)
        assert d2[i] == pytest.approx(exact, rel=1e-9)
        unfloored = exact_loo_squared_distance(Y, i, shrinkage, var_floor=0.0, exponents=stale)
        assert abs(exact - unfloored) > 1e-6 * unfloored      # the floor does bind here


@pytest.mark.parametrize("m2", [np.diag([1.5e308, 1.5e308]), np.array([[1.0, np.nan], [np.nan, 1.0]]),
                                np.diag([np.inf, -np.inf])])
def test_co_moments_whose_trace_overflows_or_is_not_a_number_are_a_non_finite_error(m2):
    # The trace is summed in Python (math.fsum raises OverflowError where a NumPy sum
    # gave inf): still the typed error, never an untyped OverflowError or a NaN score.
    with pytest.raises(NonFiniteError):
        LeaveOneOutScorer(100, np.zeros(2), m2)
