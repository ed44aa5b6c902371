"""The empirical score null: conformal p-values, admission, merge, bytes, and honest FDR."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.errors import InvalidInputError, NonFiniteError
from swarmguard.structures.fdr import benjamini_hochberg
from swarmguard.structures.score_null import ScoreNull


def _conformal(null: np.ndarray, s: np.ndarray) -> np.ndarray:
    null32, s32 = null.astype(np.float32), s.astype(np.float32)
    return (1 + (null32[None, :] >= s32[:, None]).sum(1)) / (null.size + 1)


def test_p_values_are_the_conformal_ranks():
    r = np.random.default_rng(0)
    scores = r.chisquare(4, 40)
    null = ScoreNull(min_null=40)
    assert null.p_values(scores) is None          # warming up
    null.admit(scores)
    assert null.warm and null.exact
    q = np.concatenate([scores, [0.0, 1e6]])
    np.testing.assert_array_equal(null.p_values(q), _conformal(scores, q))


def test_p_values_at_the_top_of_a_large_null_are_exact():
    scores = np.random.default_rng(1).standard_t(3, 200_000) ** 2
    null = ScoreNull()
    null.admit(scores)
    assert not null.exact
    ranked = np.sort(scores)
    top = ranked[-20:]                        # the top (about 2k scores) is kept exactly
    np.testing.assert_array_equal(null.p_values(top), _conformal(scores, top))
    upper = ranked[-5000:]                    # below it, a count off by a small fraction of itself
    np.testing.assert_allclose(null.p_values(upper), _conformal(scores, upper), rtol=0.1)   # measured: at most 5 %


def test_admission_leaves_flags_out_but_puts_the_lowest_q_share_back():
    null = ScoreNull(min_null=5)
    null.admit(np.arange(5.0))
    s = np.array([1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0])
    flagged = s >= 10.0                             # 10 flags: ceil(0.25 * 10) = 3 go back in
    assert null.admit(s, flagged, q=0.25) == 2 + 3
    np.testing.assert_array_equal(null.p_values(np.array([12.0, 12.5])), [2 / 11, 1 / 11])


def test_bad_input_leaves_the_null_as_it_was():
    null = ScoreNull(min_null=2)
    null.admit(np.array([1.0, 2.0]))
    before = null.to_bytes()
    with pytest.raises(NonFiniteError):
        null.admit(np.array([1.0, np.inf]))
    with pytest.raises(InvalidInputError):
        null.admit(np.array([1.0, 2.0]), flagged=np.array([True]))
    with pytest.raises(InvalidInputError):
        null.admit(np.array([1.0]), q=2.0)
    assert null.to_bytes() == before
    with pytest.raises(InvalidInputError):
        ScoreNull.from_bytes(before[:-1])


def test_merge_and_bytes():
    a, b = ScoreNull(min_null=10), ScoreNull(min_null=10)
    a.admit(np.arange(30.0))
    b.admit(np.arange(30.0, 50.0))
    a.merge(b)
    back = ScoreNull.from_bytes(a.to_bytes())
    assert back.count == 50 and back.min_null == 10
    np.testing.assert_array_equal(back.p_values(np.array([45.0])), [6 / 51])


# ---------------------------------------------------------------- honest FDR on a heavy-tailed population
# Features: Student-t with 3 degrees of freedom (two correlated) and log-normal. Planted anomalies: 5 % of the
# agents, shifted in 2 random features by 50 robust standard deviations (median absolute deviation x 1.4826) from
# an onset round on; every round draws fresh behaviour. The score is a robust (trimmed) Mahalanobis distance,
# whose χ² p-values flag ~80 % false members at fdr=0.01 here; the calibrated ones are tested.

N, D, FRAC, SHIFT, WARM, ROUNDS = 20_000, 8, 0.05, 50.0, 2, 8


def _draw(r, lab, feat, sign):
    X = np.empty((N, D))
    X[:, : D // 2] = r.standard_t(3, size=(N, D // 2))
    X[:, D // 2:] = r.lognormal(0.0, 0.75, size=(N, D - D // 2))
    X[:, 1] += 0.5 * X[:, 0]
    scale = np.median(np.abs(X - np.median(X, 0)), 0) * 1.4826
    rows = np.flatnonzero(lab)
    for c in range(2):
        X[rows, feat[rows, c]] += sign[rows, c] * SHIFT * scale[feat[rows, c]]
    return X


def _robust_distance(X):
    """Squared Mahalanobis distance to the mean and covariance of the 90 % closest rows (two re-weightings)."""
    keep = np.ones(len(X), dtype=bool)
    for _ in range(3):
        mu, cov = X[keep].mean(0), np.cov(X[keep].T)
        E = X - mu
        d2 = np.einsum("ij,ij->i", E @ np.linalg.inv(cov), E)
        keep = d2 <= np.quantile(d2, 0.9)
    return d2


def _stream(seed, q):
    r = np.random.default_rng(seed)
    lab = np.zeros(N, dtype=bool)
    lab[r.choice(N, int(FRAC * N), replace=False)] = True
    feat = np.stack([r.choice(D, 2, replace=False) for _ in range(N)])
    sign = r.choice([-1.0, 1.0], size=(N, 2))
    null = ScoreNull(min_null=WARM * N)
    false = flags = hits = 0
    for t in range(ROUNDS):
        s = _robust_distance(_draw(r, lab & (t >= WARM), feat, sign))
        p = null.p_values(s)
        if p is None:                       # warm-up rounds: no decisions, every score enters
            null.admit(s)
            continue
        flagged, _ = benjamini_hochberg(p, q)
        null.admit(s, flagged, q)
        false += int((flagged & ~lab).sum())
        flags += int(flagged.sum())
        hits += int((flagged & lab).sum())
    return false / max(flags, 1), hits / (lab.sum() * (ROUNDS - WARM))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("q", [0.01, 0.05])
def test_realised_fdr_is_at_most_q_on_a_heavy_tailed_population(seed, q):
    fdr, recall = _stream(seed, q)
    assert fdr <= q
    assert recall >= 0.95


def test_scores_beyond_float32_are_the_largest_not_an_error():
    # a robust distance of a far outlier against near-singular trimmed moments passed 3.4e38
    # and the null refused it -- after the round had been written to the tree
    null = ScoreNull(min_null=3)
    assert null.admit(np.array([1.0, 2.0, 3.0, 1e39])) == 4
    np.testing.assert_array_equal(null.p_values(np.array([2.5, 1e39, 1e300])), [3 / 5, 2 / 5, 2 / 5])
    np.testing.assert_array_equal(null.p_values(np.array([4.0])), [2 / 5])


def test_after_a_per_member_cut_the_expected_false_flags_go_back_in():
    null = ScoreNull(min_null=2)
    null.admit(np.array([1.0, 2.0]))
    s = np.arange(100, dtype=float)                 # 100 members, the top 10 flagged
    flagged = s >= 90
    # a cut at alpha = 0.05 flags about 0.05 * 100 = 5 normal members: the 5 lowest flags go back
    # (ceil(0.05 * 10) = 1 would leave four of the expected false ones out)
    assert null.admit(s, flagged, alpha=0.05) == 90 + 5
    np.testing.assert_array_equal(null.p_values(np.array([94.0, 95.0])), [2 / 98, 1 / 98])
    before = null.to_bytes()
    for bad in (-0.1, 1.5, "0.05"):
        with pytest.raises(InvalidInputError):
            null.admit(s, flagged, alpha=bad)
    assert null.to_bytes() == before


def test_p_value_bounds_hold_the_exact_conformal_p_values():
    # REQ's a-priori 3σ bounds, mapped to p-values, around the exact (1 + #{null >= s}) / (n + 1)
    rng = np.random.default_rng(12)
    null = ScoreNull(min_null=50)
    assert null.p_value_bounds(np.array([1.0])) is None           # warming up
    admitted = rng.standard_t(3, 5000) ** 2
    null.admit(admitted)
    assert not null.exact                                          # compacted: estimates only
    s = np.concatenate([rng.standard_t(3, 500) ** 2, [0.0, 1e6]])
    lo, hi = null.p_value_bounds(s)
    kept = np.sort(admitted.astype(np.float32))
    exact = (1.0 + kept.size - np.searchsorted(kept, s.astype(np.float32), side="left")) / (kept.size + 1.0)
    assert np.all(lo <= hi) and 0 < np.max((hi - lo) / lo) < 0.2
    assert np.mean((lo - 1e-12 <= exact) & (exact <= hi + 1e-12)) >= 0.99
    p = null.p_values(s)
    assert np.mean((lo - 1e-12 <= p) & (p <= hi + 1e-12)) >= 0.99
    assert p[-2] == 1.0 and exact[-1] == 1.0 / (kept.size + 1)     # below and above every score


# ---------------------------------------------------------------- relative nulls (scores over their batch's median)
def test_a_relative_null_compares_each_score_over_its_batchs_median():
    from swarmguard.structures.score_null import SCALE_ROWS
    r = np.random.default_rng(20)
    a = r.chisquare(4, 2 * SCALE_ROWS)
    b = 0.1 * r.chisquare(4, SCALE_ROWS)             # a round whose distances all shrank tenfold
    null = ScoreNull(min_null=a.size, relative=True)
    assert null.last_scale is None and null.scale_of(a) == float(np.median(a))
    null.admit(a)
    assert null.last_scale == float(np.median(a))
    got = null.p_values(b)
    # compacted (REQ keeps the top exactly, the rest within a small fraction: see the tests above)
    assert not null.exact
    np.testing.assert_allclose(got, _conformal(a / np.median(a), b / np.median(b)), rtol=0.1)
    top = np.sort(a / np.median(a))[-20:] * np.median(b)      # b-scale scores at the top of the null
    np.testing.assert_array_equal(null.p_values(top, float(np.median(b))),
                                  _conformal(a / np.median(a), top / np.median(b)))
    # an absolute null sees the shrunken round as far below its own: every p-value near 1
    absolute = ScoreNull(min_null=a.size)
    absolute.admit(a)
    assert absolute.scale_of(b) == 1.0 and np.median(absolute.p_values(b)) > 0.9 > np.median(got)
    # a batch under SCALE_ROWS rows is measured with the last admitted round's scale, not its own median
    few = np.sort(a)[-5:]
    np.testing.assert_array_equal(null.p_values(few), _conformal(a / np.median(a), few / np.median(a)))
    # an explicit scale is used as given; a bad one is refused before anything changes
    np.testing.assert_array_equal(null.p_values(few, 2.0), _conformal(a / np.median(a), few / 2.0))
    before = null.to_bytes()
    for bad in (0.0, -1.0, np.nan, np.inf, "1"):
        with pytest.raises(InvalidInputError):
            null.admit(b, scale=bad)
    assert null.to_bytes() == before


def test_a_relative_nulls_scale_falls_back_when_the_median_is_zero():
    null = ScoreNull(relative=True)
    s = np.zeros(600)
    assert null.scale_of(s) == 1.0
    s[:100] = 6.0                                   # median 0, mean 1
    assert null.scale_of(s) == pytest.approx(1.0)
    s[:100] = 12.0
    assert null.scale_of(s) == pytest.approx(2.0)


def test_relative_and_absolute_nulls_keep_their_bytes_and_do_not_merge():
    a = ScoreNull(min_null=10)
    a.admit(np.arange(30.0))
    # an absolute null's bytes are the version-1 layout: min_null, then the sketch
    assert a.to_bytes()[:8] == (10).to_bytes(8, "little")
    assert not ScoreNull.from_bytes(a.to_bytes()).relative
    rel = ScoreNull(min_null=10, relative=True)
    assert ScoreNull.from_bytes(rel.to_bytes()).last_scale is None
    rel.admit(np.arange(1.0, 31.0), scale=3.0)
    back = ScoreNull.from_bytes(rel.to_bytes())
    assert back.relative and back.last_scale == 3.0 and back.min_null == 10 and back.count == 30
    np.testing.assert_array_equal(back.p_values(np.array([27.0]), 3.0), [5 / 31])   # 27..30 over 3 are >= 9
    with pytest.raises(InvalidInputError):
        a.merge(rel)
    other = ScoreNull(min_null=10, relative=True)
    other.merge(back)                              # a null with no scale takes the other's
    assert other.last_scale == 3.0 and other.count == 30
    with pytest.raises(InvalidInputError):
        ScoreNull.from_bytes(rel.to_bytes()[:12])
    with pytest.raises(InvalidInputError):
        ScoreNull(relative=1)
