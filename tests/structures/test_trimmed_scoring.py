"""The trimmed scoring core both engines call (structures.trimming), against exact arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from swarmguard.structures.chi2 import chi2_sf
from swarmguard.structures.trimming import score_trimmed_population, trimmed_level_scorer


def _exact_d2(x, others):
    """(x - mean)' S⁻¹ (x - mean), S the sample covariance (ddof 1) of ``others``, in Fractions (d = 2)."""
    rows = [[Fraction(v) for v in r] for r in others]
    n = len(rows)
    mean = [sum(r[j] for r in rows) / n for j in range(2)]
    s = [[sum((r[a] - mean[a]) * (r[b] - mean[b]) for r in rows) / (n - 1) for b in range(2)] for a in range(2)]
    det = s[0][0] * s[1][1] - s[0][1] * s[1][0]
    inv = [[s[1][1] / det, -s[0][1] / det], [-s[1][0] / det, s[0][0] / det]]
    e = [Fraction(x[j]) - mean[j] for j in range(2)]
    return float(sum(e[a] * inv[a][b] * e[b] for a in range(2) for b in range(2)))


def _trimmed_inputs(X, kept):
    K = X[kept]
    mean = K.mean(axis=0)
    m2 = (K - mean).T @ (K - mean)
    return float(K.shape[0]), mean, m2, X - mean


def test_kept_rows_leave_one_out_others_as_they_are():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(9, 2)) * [1.0, 3.0]
    kept = np.array([True] * 7 + [False] * 2)
    n, mean, m2, E = _trimmed_inputs(X, kept)
    d2, p, warm, shares = score_trimmed_population(E, n, mean, m2, kept, 0.0, None, warm_count=9, warm_up=9)
    K = X[kept]
    want = [_exact_d2(X[i], np.delete(K, i, axis=0)) for i in range(7)] + [_exact_d2(X[i], K) for i in (7, 8)]
    np.testing.assert_allclose(d2, want, rtol=1e-6)
    np.testing.assert_allclose(p, chi2_sf(np.array(want), 2), rtol=1e-5)
    assert warm is True and shares is None
    # warm-up is judged on the count given (the members), not on the kept ones
    assert score_trimmed_population(E, n, mean, m2, kept, 0.0, None, warm_count=8, warm_up=9)[2] is False


@pytest.mark.parametrize("n_kept, scored", [(1, False), (4, True)])
def test_level_scorer_needs_enough_kept_members(n_kept, scored):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6, 2))
    kept = np.arange(6) < n_kept
    n, mean, m2, E = _trimmed_inputs(X, kept)
    score = trimmed_level_scorer({("eu",): n}, kept, 0.0, None)
    rows = np.arange(6)
    d2, ok = score(("eu",), rows, 6.0, mean, m2, E)[:2]
    if not scored:
        assert ok is False and not d2.any()
    else:
        K = X[kept]
        want = [_exact_d2(X[i], K) for i in range(n_kept, 6)]
        np.testing.assert_allclose(d2[n_kept:], want, rtol=1e-6)
        inside = [_exact_d2(X[i], np.delete(K, i, axis=0)) for i in range(n_kept)]
        np.testing.assert_allclose(d2[:n_kept], inside, rtol=1e-6)
        assert ok is True
