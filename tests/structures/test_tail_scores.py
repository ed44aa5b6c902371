"""Cauchy combination and ECOD-like tail evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swarmguard.errors import InvalidInputError
from swarmguard.structures.cauchy_combination import P_CAP, cauchy_combine
from swarmguard.structures.tail_scores import tail_evidence
from swarmguard.structures.tail_sketch import FeatureSketches


def _reference(ps, ws):
    """The Cauchy combination with math.tan / math.atan, one row at a time."""
    t = math.fsum(w * math.tan((0.5 - min(max(p, 1e-300), P_CAP)) * math.pi) for p, w in zip(ps, ws, strict=True))
    return 0.5 - math.atan(t) / math.pi


def test_equal_p_values_combine_to_themselves():
    # perfectly dependent evidence: T = cot(pi p), so the combination returns p
    p = np.logspace(-300, -0.5, 60)
    p[0] = 1e-300
    out = cauchy_combine(np.column_stack([p, p, p]))
    np.testing.assert_allclose(out, p, rtol=1e-12)


def test_against_math_on_moderate_p_values():
    r = np.random.default_rng(0)
    P = r.uniform(1e-3, 1.0, size=(200, 4))
    w = np.array([1.0, 2.0, 3.0, 4.0])
    out = cauchy_combine(P, w)
    ref = np.array([_reference(row, w / w.sum()) for row in P])
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)


def test_combination_is_calibrated_on_uniform_p_values():
    P = np.random.default_rng(1).random((400_000, 8))
    p = cauchy_combine(P)
    for alpha in (0.05, 0.01):
        assert (p <= alpha).mean() <= alpha * 1.05


@pytest.mark.parametrize("bad", [np.array([[0.5, 1.5]]), np.array([[np.nan, 0.1]]), np.zeros((2, 0))])
def test_bad_p_values_are_refused(bad):
    with pytest.raises(InvalidInputError):
        cauchy_combine(bad)


def test_tail_evidence_is_ecod_on_an_exact_sketch():
    r = np.random.default_rng(2)
    X = np.column_stack([r.standard_t(3, 40), r.lognormal(0, 1, 40), -r.lognormal(0, 1, 40)])
    s = FeatureSketches(3)
    s.update_many(X)
    assert s.exact
    e = tail_evidence(s, X)
    X32 = X.astype(np.float32)
    L = (X32[None, :, :] <= X32[:, None, :]).mean(1)
    R = (X32[None, :, :] >= X32[:, None, :]).mean(1)
    skew = s.quantile_skewness()
    S = np.where(skew < 0, L, R)
    ecod = np.max(np.stack([-np.log(L).sum(1), -np.log(R).sum(1), -np.log(S).sum(1)]), axis=0)
    np.testing.assert_allclose(e.score, ecod, rtol=1e-12)
    two_sided = np.minimum(1, 2 * np.minimum(L, R))
    ref = np.array([_reference(row, [1 / 3] * 3) for row in two_sided])
    np.testing.assert_allclose(e.p_value, ref, rtol=1e-9)
    # an outlier in the far tails of two features has the largest score and the smallest p-value
    s.update_many(np.array([[0.0, 1e3, -1e3]]))
    e2 = tail_evidence(s, np.vstack([X, [[0.0, 1e3, -1e3]]]))
    assert np.argmax(e2.score) == 40 and np.argmin(e2.p_value) == 40
