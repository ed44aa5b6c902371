import numpy as np
import pytest

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
