"""Feature shares of a squared distance: the ZCA-cor whitened parts are non-negative, sum to
the score (shares to 1), match an exact computation, and do not depend on the features' units."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest

from swarmguard.structures.feature_shares import whitened_parts, zca_cor_whitening
from swarmguard.structures.scoring import LeaveOneOutScorer
from tests._exact import whitened_share_reference


def _matmul(A, B):
    return [[sum(A[i][k] * B[k][j] for k in range(len(B))) for j in range(len(B[0]))] for i in range(len(A))]


def test_the_whitening_and_the_shares_match_an_exact_computation():
    # A correlation of 24/25 has eigenvalues 49/25 and 1/25 (squares), so P^(-1/2) is rational:
    # Q diag(5/7, 5) Qᵀ with Q the 45° rotation, i.e. [[20/7, -15/7], [-15/7, 20/7]].
    P = [[F(1), F(24, 25)], [F(24, 25), F(1)]]
    root = [[F(20, 7), F(-15, 7)], [F(-15, 7), F(20, 7)]]
    assert _matmul(_matmul(root, root), P) == [[1, 0], [0, 1]]         # (P^(-1/2))² P = I, exactly
    sd = [F(2), F(3)]                                                    # variances 4 and 9
    A = [[P[i][j] * sd[i] * sd[j] for j in range(2)] for i in range(2)]
    W = [[root[i][j] / sd[j] for j in range(2)] for i in range(2)]      # P^(-1/2) V^(-1/2)
    got = zca_cor_whitening(np.array([[float(v) for v in row] for row in A]))
    np.testing.assert_allclose(got, [[float(v) for v in row] for row in W], rtol=1e-13, atol=1e-15)
    for e in ([F(2), F(3, 2)], [F(3), F(-1)], [F(-7, 4), F(0)]):
        z = [sum(W[i][j] * e[j] for j in range(2)) for i in range(2)]
        # |z|² is eᵀA⁻¹e, exactly: W is a whitening
        det = A[0][0] * A[1][1] - A[0][1] ** 2
        quad = (A[1][1] * e[0] ** 2 - 2 * A[0][1] * e[0] * e[1] + A[0][0] * e[1] ** 2) / det
        assert z[0] ** 2 + z[1] ** 2 == quad
        exact = [zj ** 2 / quad for zj in z]
        parts = whitened_parts(np.array([float(v) for v in e]), got, np.float64(float(quad)))
        shares = parts / float(quad)
        np.testing.assert_allclose(shares, [float(s) for s in exact], rtol=1e-12, atol=1e-15)
        assert math.fsum(shares) == pytest.approx(1.0, abs=1e-15)
        # the signed split e_j (A⁻¹e)_j of the same score: one part above all of it, one below 0
        if e == [F(2), F(3, 2)]:      # standardised (1, 1/2): along the correlation, unevenly
            g = [(A[1][1] * e[0] - A[0][1] * e[1]) / det, (A[0][0] * e[1] - A[0][1] * e[0]) / det]
            signed = [e[j] * g[j] / quad for j in range(2)]
            assert signed[0] > 1 and signed[1] < 0 and sum(signed) == 1
            assert all(0 <= float(s) <= 1 for s in exact)
            assert signed == [F(52, 29), F(-23, 29)] and exact == [F(25, 29), F(4, 29)]   # docs/scoring.md


def _correlated(seed=5, n=300, d=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ np.array([[1, .9, 0, 0], [0, .4, 0, 0], [0, 0, 1, -.7], [0, 0, 0, .5]])[:d, :d]
    X[3] += np.array([3.0, -3.0, 0.0, 0.0])[:d]          # against the correlation of f0 and f1
    return X


@pytest.mark.parametrize("shrinkage", [0.0, 0.2, "auto"])
def test_the_scorers_shares_are_in_0_1_sum_to_1_and_match_the_definition(shrinkage):
    X = _correlated()
    mu = X.mean(axis=0)
    S = (X - mu).T @ (X - mu)
    sc = LeaveOneOutScorer(len(X), mu, S, shrinkage)
    d2, parts = sc.score_many(X - mu, explain=True)
    assert (parts >= 0).all()
    for i in (3, 0, 150):
        shares = parts[i] / d2[i]
        assert ((shares >= 0) & (shares <= 1)).all()
        assert math.fsum(shares) == pytest.approx(1.0, abs=1e-12)
        assert math.fsum(parts[i]) == pytest.approx(d2[i], rel=1e-12)
        exact_d2, want = whitened_share_reference(X, i, shrinkage)
        assert d2[i] == pytest.approx(exact_d2, rel=1e-9)
        np.testing.assert_allclose(shares, want, rtol=1e-8, atol=1e-12)
    one_d2, one_parts = sc.score(X[3] - mu)         # the per-item path: the same parts
    np.testing.assert_allclose(one_parts, parts[3], rtol=1e-12)
    # the old signed split of agent 3 leaves [0, 1]: the reason for this definition
    g = np.linalg.solve(sc.chol @ sc.chol.T, X[3] - mu)
    signed = (X[3] - mu) * g / ((X[3] - mu) @ g)
    assert signed.max() > 1 or signed.min() < 0


def test_shares_do_not_depend_on_the_features_units_and_are_standardised_squares_without_correlation():
    X = _correlated()
    mu = X.mean(axis=0)
    S = (X - mu).T @ (X - mu)
    base = LeaveOneOutScorer(len(X), mu, S, 0.1).score_many(X - mu, explain=True)
    units = np.array([1e-2, 7.0, 1.0, 30.0])   # (the variance floor of scoring.py binds past 1e-12 apart)
    Y = X * units
    mu_y = Y.mean(axis=0)
    S_y = (Y - mu_y).T @ (Y - mu_y)
    scaled = LeaveOneOutScorer(len(Y), mu_y, S_y, 0.1).score_many(Y - mu_y, explain=True)
    np.testing.assert_allclose(scaled[0], base[0], rtol=1e-9)
    np.testing.assert_allclose(scaled[1] / scaled[0][:, None], base[1] / base[0][:, None], rtol=1e-7, atol=1e-12)
    # a diagonal matrix: the parts are e_j² / σ_j², scaled to the score
    A = np.diag([4.0, 9.0, 0.25])
    e = np.array([2.0, -3.0, 1.0])
    parts = whitened_parts(e, zca_cor_whitening(A), np.float64(3.0))
    np.testing.assert_allclose(parts, 3.0 * np.array([1.0, 1.0, 4.0]) / 6.0, rtol=1e-14)


def test_a_zero_deviation_has_zero_parts_not_nan():
    parts = whitened_parts(np.zeros((2, 3)), np.eye(3), np.zeros(2))
    assert np.array_equal(parts, np.zeros((2, 3)))
