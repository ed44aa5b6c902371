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
