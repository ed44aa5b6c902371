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
    from swarmguard.structures.score_null import SCALE_ROWS
    rows = SCALE_ROWS                              # a round large enough for its scale to be kept
    rel.admit(np.arange(1.0, rows + 1.0), scale=3.0)
    back = ScoreNull.from_bytes(rel.to_bytes())
    assert back.relative and back.last_scale == 3.0 and back.min_null == 10 and back.count == rows
    # the four top scores over 3 are >= (rows - 3) / 3
    np.testing.assert_array_equal(back.p_values(np.array([rows - 3.0]), 3.0), [5 / (rows + 1)])
    with pytest.raises(InvalidInputError):
        a.merge(rel)
    other = ScoreNull(min_null=10, relative=True)
    other.merge(back)                              # a null with no scale takes the other's
    assert other.last_scale == 3.0 and other.count == rows
    with pytest.raises(InvalidInputError):
        ScoreNull.from_bytes(rel.to_bytes()[:12])
    with pytest.raises(InvalidInputError):
        ScoreNull(relative=1)


# ---------------------------------------------------------------- resolution: the floor and the fewest flags
@pytest.mark.parametrize("n, tests, q, levels", [(1999, 2000, 0.01, 1), (1999, 2000, 0.01, 2), (38000, 2000, 0.01, 2),
                                                 (5000, 20000, 0.05, 1), (1234, 777, 0.1, 3)])
def test_the_fewest_flags_is_the_smallest_group_bh_rejects_on_floor_p_values(n, tests, q, levels):
    """``fewest_flags`` against exact rational arithmetic and against Benjamini-Hochberg itself: a round
    whose first R scores lie beyond every null score (each at the floor 1/(n+1), times ``levels``) gets
    those R flagged when R reaches the bound, and none when it is one short."""
    import math
    from fractions import Fraction

    null = ScoreNull(min_null=n)
    assert null.p_floor is None and null.fewest_flags(tests, q, levels) is None     # warming up
    null.admit(np.random.default_rng(n).standard_normal(n))
    assert null.count == n and null.p_floor == 1.0 / (n + 1)
    fewest = null.fewest_flags(tests, q, levels)
    # the smallest R with levels / (n + 1) <= q R / tests, exactly (q as the float it is)
    want = next(R for R in range(1, 10 * tests) if Fraction(levels, n + 1) <= Fraction(q) * R / tests)
    assert fewest == want == math.ceil(Fraction(levels * tests) / (Fraction(q) * (n + 1)))
    for R, flagged in ((fewest, True), (fewest - 1, False)):
        if not 0 < R <= tests:
            continue
        scores = np.concatenate([np.full(R, 100.0), np.full(tests - R, -100.0)])
        p = np.minimum(1.0, levels * null.p_values(scores))
        np.testing.assert_allclose(p[:R], min(1.0, levels / (n + 1)), rtol=1e-15)
        mask, _ = benjamini_hochberg(p, q)
        assert bool(mask[:R].all()) is flagged and not mask[R:].any()


def test_fewest_flags_refuses_bad_arguments():
    null = ScoreNull(min_null=3)
    null.admit(np.arange(5.0))
    for bad in ({"tests": 0, "q": 0.1}, {"tests": True, "q": 0.1}, {"tests": 10, "q": 0.0},
                {"tests": 10, "q": 1.5}, {"tests": 10, "q": "0.1"}, {"tests": 10, "q": 0.1, "levels": 0}):
        with pytest.raises(InvalidInputError):
            null.fewest_flags(**bad)


def _exact_median(values) -> float:
    from fractions import Fraction
    v = sorted(Fraction(float(x)) for x in values)
    mid = len(v) // 2
    return float(v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2)


def test_a_small_rounds_own_median_scales_that_round_only_and_a_large_round_sets_the_kept_scale():
    """A relative null's scale, against an exact median (sorted, in rational arithmetic): a first round
    under SCALE_ROWS rows is divided by its own median and is not kept (it used to become every later
    small batch's yardstick); each round of at least SCALE_ROWS rows sets the kept scale, and a later
    large round refreshes it; small batches after one use it, and admitting them leaves it."""
    from fractions import Fraction

    from swarmguard.structures.score_null import SCALE_ROWS
    r = np.random.default_rng(33)
    null = ScoreNull(k=250, min_null=10, relative=True)       # exact over the first rounds
    small1, small2 = r.chisquare(4, 101), 3.0 * r.chisquare(4, 60)
    assert null.scale_of(small1) == _exact_median(small1)
    null.admit(small1)
    assert null.last_scale is None and null.exact
    # the next small round: its own median, not the first's; p-values are the exact conformal ranks
    assert null.scale_of(small2) == _exact_median(small2)
    held = [Fraction(float(np.float32(x / _exact_median(small1)))) for x in small1]
    got = null.p_values(small2)
    want = [Fraction(1 + sum(h >= Fraction(float(np.float32(x / _exact_median(small2)))) for h in held),
                     len(held) + 1) for x in small2]
    assert [Fraction(float(p)) for p in got] == [Fraction(float(np.float64(w))) for w in want]
    null.admit(small2)
    assert null.last_scale is None
    big1, big2 = 2.0 * r.chisquare(4, SCALE_ROWS), 5.0 * r.chisquare(4, SCALE_ROWS + 1)
    null.admit(big1)
    assert null.last_scale == _exact_median(big1)
    few = r.chisquare(4, 7)
    assert null.scale_of(few) == _exact_median(big1) != _exact_median(few)
    null.admit(few)                                          # a small batch leaves the kept scale as it was
    assert null.last_scale == _exact_median(big1)
    null.admit(big2)
    assert null.last_scale == _exact_median(big2) and null.scale_of(few) == _exact_median(big2)
    back = ScoreNull.from_bytes(null.to_bytes())
    assert back.last_scale == _exact_median(big2)


@pytest.mark.parametrize("q, levels, n1, tests", [(0.3, 1, 4, 6), (0.3, 1, 4, 48), (0.01, 1, 105, 21),
                                                  (0.01, 1, 105, 42), (0.05, 3, 82, 41), (0.1, 3, 41, 41),
                                                  (0.2, 3, 41, 41), (0.5, 2, 40, 10), (0.01, 2, 2000, 2000)])
def test_the_fewest_flags_at_an_exact_tie_is_what_bh_itself_flags(q, levels, n1, tests):
    """Where levels · tests / (q (n + 1)) is a whole number R in decimals (6 / (0.3 · 4) = 5), the
    exact ratio with q as a float lies a hair off R, and BH's floats can fall either side of it:
    ``fewest_flags`` must be the smallest group :func:`benjamini_hochberg` flags on floor p-values
    (R flagged, R - 1 not), not the rational ceiling (which said 6 here while BH flags 5)."""
    null = ScoreNull(min_null=1)
    null.admit(np.arange(float(n1 - 1)))
    assert null.count + 1 == n1
    fewest = null.fewest_flags(tests, q, levels)

    def flags(R):
        p = np.concatenate([np.full(R, min(1.0, null.p_values(np.array([1e9]))[0] * levels)), np.ones(tests - R)])
        mask, _ = benjamini_hochberg(p, q)
        return bool(mask[:R].all()) if R else False

    assert fewest <= tests and flags(fewest) and not flags(fewest - 1)


def test_the_fewest_flags_agrees_with_bh_over_a_grid_of_small_nulls():
    import math
    from fractions import Fraction
    rng = np.random.default_rng(5)
    ties = 0
    for _ in range(400):
        q = float(rng.choice([0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5]))
        levels, n1, tests = int(rng.integers(1, 4)), int(rng.integers(2, 80)), int(rng.integers(1, 60))
        null = ScoreNull(min_null=1)
        null.admit(np.arange(float(n1 - 1)))
        fewest = null.fewest_flags(tests, q, levels)
        floor = min(1.0, (1.0 / n1) * levels)        # as the protocol combines the levels: p_min * n_levels
        smallest = next((R for R in range(1, tests + 1)
                         if benjamini_hochberg(np.concatenate([np.full(R, floor), np.ones(tests - R)]), q)[0][:R].all()),
                        None)
        exact = Fraction(levels * tests) / (Fraction(q) * n1)
        if smallest is None:
            assert fewest > tests and fewest >= math.ceil(exact)
        else:
            assert fewest == smallest
        ties += abs(exact - round(exact)) < Fraction(1, 10**9)
    assert ties > 10        # not vacuous: the grid has exact decimal ties


@pytest.mark.parametrize("q, levels, n1", [(0.03, 3, 100), (0.06, 3, 50), (0.12, 3, 25), (0.015, 3, 200)])
@pytest.mark.parametrize("tests", [1, 6, 1000])
def test_a_tie_at_every_member_flagged_is_decided_by_bh_too(q, levels, n1, tests):
    """levels / (q (n + 1)) = 1 in decimals, so the fewest flags is ``tests`` itself; with q as a
    float the rational ratio is a hair above it (ceil: tests + 1, "nothing can be flagged"), yet
    the floor p-value times the levels is q to the last bit and BH flags every member."""
    null = ScoreNull(min_null=1)
    null.admit(np.arange(float(n1 - 1)))
    floor = float(np.minimum(1.0, null.p_values(np.array([1e9])) * np.float64(levels))[0])
    mask, _ = benjamini_hochberg(np.full(tests, floor), q)
    want = tests if mask.all() else None
    assert want == tests                                      # not vacuous: BH does flag them all
    assert null.fewest_flags(tests, q, levels) == want
    # one member fewer flagged is not enough (the rest at p = 1)
    if tests > 1:
        p = np.concatenate([np.full(tests - 1, floor), [1.0]])
        assert not benjamini_hochberg(p, q)[0].any()


@pytest.mark.parametrize("n1, tests, levels", [(2, 3, 1), (10, 100, 2), (1000, 100000, 3)])
def test_at_q_one_bh_flags_a_lone_floor_p_value(n1, tests, levels):
    # fewest_flags accepts q = 1; BH's adjusted p-values are clipped at 1, so every one is <= q
    null = ScoreNull(min_null=1)
    null.admit(np.arange(float(n1 - 1)))
    floor = min(1.0, null.p_floor * levels)
    mask, _ = benjamini_hochberg(np.concatenate([[floor], np.ones(tests - 1)]), 1.0)
    assert mask[0]
    assert null.fewest_flags(tests, 1.0, levels) == 1


def test_the_fewest_flags_is_bhs_own_at_ties_over_a_large_swarm():
    """10^5 tests, q in {0.1, 0.05, 0.01, 0.3}, nulls at and beside an exact decimal tie
    L m / (q (n + 1)) = R: R' = fewest_flags floor p-values (the rest at 1) are all flagged by
    :func:`benjamini_hochberg`, R' - 1 are not (or, above m, not even all m)."""
    import math
    from fractions import Fraction
    m = 100_000
    checked = 0
    for q in (0.1, 0.05, 0.01, 0.3):
        for levels in (1, 2, 3):
            for R in (m // 10, m // 2, m):
                tie = Fraction(levels * m) / (Fraction(str(q)) * R)
                for n1 in sorted({math.floor(tie) - 1, math.floor(tie), math.ceil(tie), math.ceil(tie) + 1}):
                    null = ScoreNull(min_null=1)
                    null.admit(np.arange(float(n1 - 1)))
                    floor = float(np.minimum(1.0, null.p_values(np.array([1e9])) * np.float64(levels))[0])
                    fewest = null.fewest_flags(m, q, levels)

                    def flagged(k, floor=floor, q=q):
                        p = np.ones(m)
                        p[:k] = floor
                        return k > 0 and bool(benjamini_hochberg(p, q)[0][:k].all())

                    if fewest <= m:
                        assert flagged(fewest) and not flagged(fewest - 1), (q, levels, n1)
                    else:
                        assert not flagged(m), (q, levels, n1)
                    checked += 1
    assert checked >= 100


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_null_still_warming_up_refuses_non_finite_scores_too(bad):
    # the warm check came first: a NaN score was answered None ("warming up") instead of refused
    null = ScoreNull(min_null=10)
    null.admit(np.arange(3.0))
    assert not null.warm
    with pytest.raises(NonFiniteError):
        null.p_values(np.array([1.0, bad]))
    with pytest.raises(NonFiniteError):
        null.p_value_bounds(np.array([bad]))
    assert null.p_values(np.array([1.0])) is None and null.count == 3


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, "x"])
def test_a_relative_null_still_warming_up_refuses_a_bad_scale_too(scale):
    # as non-finite scores (above): the warm check came first and a bad scale was answered None
    null = ScoreNull(min_null=10, relative=True)
    null.admit(np.arange(1.0, 4.0))
    assert not null.warm
    with pytest.raises(InvalidInputError, match="scale"):
        null.p_values(np.array([1.0, 2.0]), scale=scale)
    assert null.p_values(np.array([1.0]), scale=2.0) is None and null.count == 3
    null.admit(np.arange(1.0, 20.0))
    with pytest.raises(InvalidInputError, match="scale"):      # as it is once warm
        null.p_values(np.array([1.0, 2.0]), scale=scale)


@pytest.mark.parametrize("std_devs", [0, 4, 2.5, True])
def test_p_value_bounds_refuse_a_width_req_does_not_define_warm_or_not(std_devs):
    null = ScoreNull(min_null=10)
    null.admit(np.arange(3.0))
    with pytest.raises(InvalidInputError, match="std_devs"):
        null.p_value_bounds(np.array([1.0]), std_devs=std_devs)
    null.admit(np.arange(30.0))
    with pytest.raises(InvalidInputError, match="std_devs"):
        null.p_value_bounds(np.array([1.0]), std_devs=std_devs)
    lo, hi = null.p_value_bounds(np.array([1.0]), std_devs=3)
    assert lo[0] <= hi[0]
