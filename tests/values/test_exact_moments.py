"""Exact moments: integer sums checked against fractions.Fraction, bit for bit."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.errors import DimensionMismatchError, InvalidInputError, NonFiniteError
from swarmguard.values import (
    cross_sum_kernels as em,  # the kernels (exact_moments reads them there)
)
from swarmguard.values import (
    exact_moments as moments,  # ExactMoments' lazy-fold policy (_FOLD_ROWS)
)
from swarmguard.values.exact_moments import ExactMoments, exact_cross_sums


def fraction_sums(X, w):
    n, k = X.shape
    F = [[Fraction(float(v)) for v in row] for row in X.tolist()]
    s1 = [sum(F[i][c] * int(w[i]) for i in range(n)) for c in range(k)]
    ia, ib = np.triu_indices(k)
    s2 = [sum(F[i][a] * F[i][b] * int(w[i]) for i in range(n)) for a, b in zip(ia.tolist(), ib.tolist(), strict=True)]
    return s1, s2


def as_fractions(s1, e1, s2, e2):
    return [[v * Fraction(2) ** e1 for v in s1], [v * Fraction(2) ** e2 for v in s2]]


def exact_stats(rows):
    """Count, mean and centred co-moment of rows, in rationals."""
    F = [[Fraction(float(v)) for v in r] for r in rows]
    n, k = len(F), len(F[0])
    mean = [sum(r[c] for r in F) / n for c in range(k)]
    m2 = [[sum((r[a] - mean[a]) * (r[b] - mean[b]) for r in F) for b in range(k)] for a in range(k)]
    return n, mean, m2


def assert_correctly_rounded(m: ExactMoments, rows):
    """mean and M2 are float(exact value): correctly rounded, so bit-identical to the reference."""
    n, mean, m2 = exact_stats(rows)
    assert m.count == n
    assert m.mean().tolist() == [float(v) for v in mean]
    assert m.m2().tolist() == [[float(v) for v in r] for r in m2]
    assert m.m2_diagonal().tolist() == [float(m2[c][c]) for c in range(len(mean))]


def data(rng, kind, n, k):
    if kind == "normal":
        return rng.normal(size=(n, k)) + 1e3
    if kind == "wide":          # every binade from 1e-300 to 1e99 in one batch
        return rng.normal(size=(n, k)) * 10.0 ** rng.integers(-300, 99, size=(n, k))
    if kind == "integers":
        return np.round(rng.normal(size=(n, k)) * 100)
    X = rng.normal(size=(n, k)) * 1e10          # subnormals, zeros, signed zeros
    X[::3] = 5e-324
    X[1::4] = 0.0
    X[2::5] = -0.0
    return X


def combined(parts, k):
    """The exact sum of (s1, e1, s2, e2) parts, as one (s1, e1, s2, e2)."""
    total = ExactMoments(k)
    for part in parts:
        total._add_sums(0, *part)
    return total._s1, total._e1, total._s2, total._e2


class Routes:
    """Counts the rows each exact route receives (spies on the sliced and the limb path)."""

    def __init__(self, monkeypatch):
        self.sliced = self.limbs = 0
        sliced, limbs = em._sliced_sums, em._limb_sums

        def spy_sliced(Xt, *args):
            self.sliced += Xt.shape[1]
            return sliced(Xt, *args)

        def spy_limbs(Xt, w):
            self.limbs += Xt.shape[1]
            return limbs(Xt, w)

        monkeypatch.setattr(em, "_sliced_sums", spy_sliced)
        monkeypatch.setattr(em, "_limb_sums", spy_limbs)


def route_sums(path, X, w, monkeypatch):
    """Exact sums of X's rows through one route, checking the route was the one taken."""
    n, k = X.shape
    if path == "small":
        return em._small_sums(X.tolist(), w.tolist(), k)
    if path == "sliced":     # one grid per column for spreads up to ~500 binades (no band cut, no limbs)
        monkeypatch.setattr(em, "_MAX_SLICES", 30)
    if path == "limbs":      # no band pass: every row by limbs
        monkeypatch.setattr(em, "_BAND_PASSES", 0)
    routes = Routes(monkeypatch)
    got = combined(em._chunk_sums(X, w.astype(np.int64)), k)
    if path == "sliced":
        assert (routes.sliced, routes.limbs) == (n, 0)
    if path == "limbs":
        assert (routes.sliced, routes.limbs) == (0, n)
    assert routes.sliced + routes.limbs == n
    return got


@pytest.mark.parametrize("kind, path", [
    (kind, path) for kind in ["normal", "wide", "integers", "tiny"] for path in ["small", "sliced", "limbs", "banded"]
    if not (path == "sliced" and kind in ("wide", "tiny"))   # spreads beyond one grid: banded, limbs
])
def test_cross_sums_equal_fractions(kind, path, monkeypatch):
    rng = np.random.default_rng(hash((kind, path)) % 2**32)
    for trial in range(6):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        X = data(rng, kind, n, k)
        w = rng.choice([-1, 1], size=n)
        got = route_sums(path, X, w, monkeypatch)
        assert as_fractions(*got) == list(fraction_sums(X, w)), (kind, path, trial)


def hostile(rng, n, k, kind):
    """Magnitude spreads that defeat one slicing grid per column."""
    if kind == "issue":        # the issue's reproducer: 2**-990 .. 2**320 in every column
        return rng.normal(size=(n, k)) * np.exp2(rng.integers(-990, 320, size=(n, k)))
    if kind == "mixed":        # +-huge and +-tiny side by side, zeros, subnormals, the extremes
        X = rng.choice([-1.0, 1.0], size=(n, k)) * rng.choice(
            [1e99, 3e-300, 5e-324, 2.2250738585072014e-308, 1.0, 0.0, 1.7976931348623157e308,
             7.0e-320, 1e-5, 123456789.0], size=(n, k))
        return X * (0.5 + 0.5 * rng.random((n, k)))      # stays finite at the float maximum
    if kind == "clusters":     # two magnitude clusters and a few strays: band passes, then limbs
        X = rng.normal(size=(n, k)) * np.where(rng.random((n, 1)) < 0.5, 1e-200, 1e80)
        X[:: 7] *= 1e-90
        return X
    X = rng.normal(size=(n, k))    # ordinary rows with one outlier row that stretches a column
    X[n // 2, 0] = 1e95
    return X


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["issue", "mixed", "clusters", "outlier", "outlier sliced"]),
       st.sampled_from(["banded", "limbs"]))
def test_hostile_spreads_equal_fractions_on_every_route(seed, kind, path):
    if kind == "outlier sliced":      # a 1e95 outlier among normal values still fits one grid of 30 slices
        kind, path = "outlier", "sliced"
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(7, 70)), int(rng.integers(1, 5))
    X = hostile(rng, n, k, kind)
    w = rng.choice([-1, 1], size=n)
    with pytest.MonkeyPatch.context() as mp:
        got = route_sums(path, X, w, mp)
    assert as_fractions(*got) == list(fraction_sums(X, w)), (kind, path)
    assert as_fractions(*exact_cross_sums(X, w)) == list(fraction_sums(X, w))


def test_band_passes_take_the_clusters_and_the_limbs_the_strays(monkeypatch):
    monkeypatch.setattr(em, "_BAND_PASSES", 2)
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 3)) * np.where(np.arange(300)[:, None] < 150, 1e-200, 1e80)
    X[::50] = rng.normal(size=(6, 3)) * np.array([1e-300, 1e-120, 1e-40, 1e10, 1e200, 1e280])[:, None]
    X[::50, 0] = 0.0                     # zeros fit every band; the other columns stray
    w = rng.choice([-1, 1], size=300)
    routes = Routes(monkeypatch)
    got = combined(em._chunk_sums(X, w.astype(np.int64)), 3)
    assert (routes.sliced, routes.limbs) == (294, 6)
    assert as_fractions(*got) == list(fraction_sums(X, w))


def test_the_issue_spread_goes_to_the_limbs_and_stays_exact(monkeypatch):
    monkeypatch.setattr(em, "_LIMB_CELLS", 64)     # several limb steps
    rng = np.random.default_rng(12)
    X = hostile(rng, 400, 4, "issue")
    w = rng.choice([-1, 1], size=400)
    routes = Routes(monkeypatch)
    got = exact_cross_sums(X, w)
    assert routes.limbs == 400
    assert as_fractions(*got) == list(fraction_sums(X, w))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["issue", "mixed", "clusters", "outlier"]))
def test_hostile_rows_in_any_split_and_order_give_the_exact_statistics(seed, kind):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    rows = hostile(rng, int(rng.integers(7, 60)), k, kind)
    extra = hostile(rng, int(rng.integers(7, 30)), k, kind)
    whole = ExactMoments(k)
    whole._add_rows(rows, np.ones(len(rows), np.int64))
    parts = ExactMoments(k)
    order = rng.permutation(np.concatenate([rows, extra]))
    for chunk in np.array_split(order, int(rng.integers(1, 6))):
        if len(chunk):
            parts._add_rows(chunk, np.ones(len(chunk), np.int64))
    parts._add_rows(rng.permutation(extra), -np.ones(len(extra), np.int64))
    assert parts == whole
    n, mean, m2 = exact_stats(rows.tolist())
    assert whole.count == n
    assert whole.mean().tolist() == [float(v) for v in mean]
    assert whole.m2().tolist() == [[rounded(v) for v in r] for r in m2]


def rounded(v: Fraction) -> float:
    """float(v), or +-inf beyond the float range (what correct rounding gives; float() raises)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def test_alternating_1e10_keeps_a_true_zero_variance_and_the_exact_mean():
    """The issue's reproducer: +-1e10 written 20,000 times; incremental float moments went negative."""
    m = ExactMoments(1)
    rows = [[3.0], [4.5], [6.0]]
    m.add_rows(rows)
    value = 1e10
    m.add_rows([[value]])
    for _ in range(20_000):
        m.add_rows([[-value]], [1])
        m.remove_rows([[value]])
        value = -value
    assert m.count == 4
    assert_correctly_rounded(m, rows + [[value]])
    assert (m.m2_diagonal() >= 0).all()
    m.remove_rows([[value]])
    assert_correctly_rounded(m, rows)
    assert m.mean().tolist() == [4.5] and m.m2()[0, 0] == 4.5


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_order_and_split_gives_the_same_state_bit_for_bit(seed):
    rng = random.Random(seed)
    k = rng.randint(1, 4)
    scale = rng.choice([1.0, 1e-200, 1e50])
    rows = [[rng.gauss(0, 1) * scale * 10 ** rng.randint(-8, 8) for _ in range(k)] for _ in range(rng.randint(2, 40))]
    extra = [[rng.gauss(0, 1) for _ in range(k)] for _ in range(rng.randint(0, 10))]
    a = ExactMoments(k)
    a.add_rows(rows)
    b = ExactMoments(k)
    order = rows + extra
    rng.shuffle(order)
    i = 0
    while i < len(order):   # batches of any size, one row at a time, removals in between
        j = i + rng.randint(1, 9)
        b.add_rows(order[i:j])
        i = j
    if extra:   # take the extra rows out again, in another order
        rng.shuffle(extra)
        b.remove_rows(extra)
    assert a == b
    assert a.mean().tolist() == b.mean().tolist() and a.m2().tolist() == b.m2().tolist()
    assert a.to_moments() == b.to_moments()
    assert_correctly_rounded(b, rows)
    if extra:
        parts = ExactMoments(k)
        parts.add_rows(extra)
        whole = ExactMoments(k)
        whole.add_rows(rows + extra)
        assert ExactMoments.merge_all([parts, b], k) == whole


def test_to_moments_matches_the_exact_statistics():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 3)) * [1e-5, 1.0, 1e7] + [0.0, 1e7, -3.0]
    m = ExactMoments(3)
    m.add_rows(X)
    mom = m.to_moments()
    n, mean, m2 = exact_stats(X.tolist())
    assert mom.count == n
    assert mom.mean.tolist() == [float(v) for v in mean]
    assert mom.m2.tolist() == [[float(v) for v in r] for r in m2]
    assert (mom.variance() >= 0).all()


def test_a_co_moment_beyond_the_float_range_is_inf_not_an_error():
    # features are refused at 1e100 and beyond, anomaly scores are not: the replica adds them unchecked
    m = ExactMoments(1)
    m._add_rows(np.array([[1e300], [-1e300]]), np.ones(2, np.int64))
    assert m.mean().tolist() == [0.0]
    assert m.m2_diagonal().tolist() == [math.inf]


def test_bad_rows_change_nothing():
    m = ExactMoments(2)
    m.add_rows([[1.0, 2.0]])
    before = m.copy()
    for args, error in [(([[1.0, 2.0, 3.0]],), DimensionMismatchError),
                        (([[np.nan, 1.0]],), InvalidInputError),
                        (([[1.0, 2.0]], [2]), InvalidInputError),
                        (([[1.0, 2.0], [1.0, 2.0]], [-1, -1]), InvalidInputError)]:
        with pytest.raises(error):
            m.add_rows(*args)
        assert m == before


def test_many_rows_are_cut_into_exact_chunks(monkeypatch):
    monkeypatch.setattr(em, "_CHUNK_CELLS", 64 * em._MAX_SLICES * 2)   # chunks of 64 rows for k = 2
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 2)) * 10.0 ** rng.integers(-20, 20, size=(300, 2))
    got = exact_cross_sums(X)
    assert as_fractions(*got) == list(fraction_sums(X, np.ones(300, np.int64)))


def test_slicing_blocks_and_signs_add_up_exactly(monkeypatch):
    """Many slicing blocks, a block boundary inside each sign's rows, early-ending slices."""
    monkeypatch.setattr(em, "_SLICE_BLOCK_CELLS", 3 * 4 * 7)     # 7 rows per block at 4 slices x 3 columns
    rng = np.random.default_rng(13)
    X = rng.normal(size=(200, 3)) * [1.0, 1e-8, 1e6]
    X[::9, 1] = 0.0
    X[50:80] = np.round(X[50:80])                                  # blocks whose slices end early
    w = np.where(np.arange(200) < 83, -1, 1)                       # removals first, 83 of them
    routes = Routes(monkeypatch)
    got = exact_cross_sums(X, w)
    assert (routes.sliced, routes.limbs) == (200, 0)
    assert as_fractions(*got) == list(fraction_sums(X, w))
    shuffled = rng.permutation(200)                                # signs interleaved: reordered
    assert as_fractions(*exact_cross_sums(X[shuffled], w[shuffled])) == list(fraction_sums(X, w))


@pytest.mark.parametrize("k, budget", [(30, None), (3, 64 * 4)])
def test_wide_rows_split_the_products_into_row_panels_exactly(k, budget, monkeypatch):
    """Many columns (or a tiny one-thread budget): the Gram matrix is built in row panels."""
    if budget is not None:
        monkeypatch.setattr(em, "_ONE_THREAD_GEMM", budget)
    rng = np.random.default_rng(14)
    X = rng.normal(size=(40, k)) * np.exp2(rng.integers(-30, 30, size=(40, k)))
    w = rng.choice([-1, 1], size=40)
    assert as_fractions(*exact_cross_sums(X, w)) == list(fraction_sums(X, w))


@pytest.mark.parametrize("n", [3, 7, 40])        # the small, sliced and limb routes all see the check
@pytest.mark.parametrize("weights", [0, 2, -2, 0.5])
def test_exact_cross_sums_refuses_weights_other_than_plus_minus_one(n, weights):
    """Weight 0 used to read as -1 on the few-rows route and +1 on the others (route-dependent sums)."""
    X = np.ones((n, 2))
    X[0, 0] = 1e300 if n == 40 else 1.0              # a hostile spread sends n = 40 to the limbs
    X[1, 0] = 1e-300 if n == 40 else 1.0
    w = np.ones(n)
    w[-1] = weights
    with pytest.raises(InvalidInputError):
        exact_cross_sums(X, w)
    with pytest.raises(InvalidInputError):
        exact_cross_sums(X, np.ones(n + 1))


@pytest.mark.parametrize("n", [3, 40])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_exact_cross_sums_refuses_non_finite_values(n, bad):
    """NaN used to come back as the sum 0 (no error) from the sliced route."""
    X = np.ones((n, 2))
    X[n // 2, 1] = bad
    with pytest.raises(NonFiniteError):
        exact_cross_sums(X)
    with pytest.raises(InvalidInputError):
        exact_cross_sums(np.ones(n))                 # 1-D


# ---------------------------------------------------------------- one-row changes, folded lazily
ROW_EXTREMES = [1e-300, 1e300, 5e-324, -1e300, 0.0, -0.0, 1.0 / 3, -7.5, 2.0**-1000, 1e308, -1.7e308]


def upper_fractions(rows, k):
    """Exact (S1, S2 upper triangle) of rows, in fractions."""
    F = [[Fraction(v) for v in r] for r in rows]
    s1 = [sum((r[c] for r in F), Fraction(0)) for c in range(k)]
    s2 = [sum((r[a] * r[b] for r in F), Fraction(0)) for a in range(k) for b in range(a, k)]
    return s1, s2


def eager_change(m: ExactMoments, removed, added):
    """The eager one-row change every product added at once (row_change_sums), for comparison."""
    m._add_sums((added is not None) - (removed is not None), *em.row_change_sums(removed, added))


@given(st.lists(st.tuples(st.integers(0, 4),
                          st.lists(st.one_of(st.sampled_from(ROW_EXTREMES),
                                             st.floats(allow_nan=False, allow_infinity=False, width=64)),
                                   min_size=3, max_size=3),
                          st.booleans()),
                min_size=1, max_size=40),
       st.integers(1, 6))
@settings(max_examples=80, deadline=None)
def test_lazy_one_row_changes_equal_eager_ones_and_fractions(steps, fold_rows):
    """Writes, replacements, reverts and removals on the lazy path (cross products folded every
    ``fold_rows`` pending rows, and at reads) hold the exact sums of the rows held: equal to
    Fraction arithmetic and to the eager path, with reads between writes."""
    old_fold = moments._FOLD_ROWS
    moments._FOLD_ROWS = fold_rows
    try:
        lazy, eager, held = ExactMoments(3), ExactMoments(3), {}
        for i, (agent, row, remove) in enumerate(steps):
            if remove and agent in held:
                old = held.pop(agent)
                lazy._change_row(old, None)
                eager_change(eager, old, None)
            else:
                old = held.get(agent)
                lazy._change_row(old, row)
                eager_change(eager, old, row)
                held[agent] = row
            assert lazy.count == len(held)
            if not held:
                continue
            # the reads that never fold (mean, variances) are exact with rows pending
            n, mean, m2 = exact_stats(list(held.values()))
            assert lazy.mean().tolist() == [rounded(v) for v in mean]
            assert lazy.m2_diagonal().tolist() == [rounded(m2[c][c]) for c in range(3)]
            if i % 3 == 0:                              # a read of every sum folds
                assert lazy.sums() == upper_fractions(held.values(), 3)
                assert not lazy._pending_rows
        assert lazy == eager
        assert lazy.sums() == eager.sums() == upper_fractions(held.values(), 3)
        if held:
            _, _, m2 = exact_stats(list(held.values()))
            assert lazy.m2().tolist() == [[rounded(v) for v in r] for r in m2]
    finally:
        moments._FOLD_ROWS = old_fold


def test_copies_and_merges_carry_the_pending_rows_exactly():
    rng = random.Random(3)
    rows = [[rng.choice(ROW_EXTREMES) if rng.random() < 0.3 else rng.uniform(-1e6, 1e6) for _ in range(4)]
            for _ in range(30)]
    a, b = ExactMoments(4), ExactMoments(4)
    for r in rows[:20]:
        a._change_row(None, r)
    for r in rows[20:]:
        b._change_row(None, r)
    assert a._pending_rows and b._pending_rows        # nothing folded yet
    snapshot = a.copy()
    a._change_row(rows[0], None)                      # the original moves on; the copy keeps its rows
    assert snapshot.sums() == upper_fractions(rows[:20], 4)
    merged = ExactMoments.merge_all([a, b], 4)        # a's pending rows (and b's) travel into the sum
    assert merged.sums() == upper_fractions(rows[1:], 4)
    a += b
    assert a == merged and a.sums() == upper_fractions(rows[1:], 4)
    _, mean, m2 = exact_stats(rows[1:])
    assert merged.mean().tolist() == [rounded(v) for v in mean]
    assert merged.m2().tolist() == [[rounded(v) for v in r] for r in m2]


def test_a_fold_of_many_pending_rows_takes_the_batch_routes_and_stays_exact(monkeypatch):
    """_FOLD_ROWS pending rows fold in one exact batch (sliced or limb route), the
    diagonal counted once: the sums equal Fraction arithmetic at every fold."""
    rng = np.random.default_rng(5)
    X = data(rng, "wide", moments._FOLD_ROWS, 3)         # every binade: the band passes and the limbs
    m, held = ExactMoments(3), []
    for r in X.tolist():
        m._change_row(None, r)
        held.append(r)
    assert not m._pending_rows                         # the last row filled the batch: folded
    for r in held[:7]:
        m._change_row(r, [v / 3 for v in r])           # replacements after the fold, pending
    final = [[v / 3 for v in r] for r in held[:7]] + held[7:]
    assert m.sums() == upper_fractions(final, 3)


@pytest.mark.parametrize("floor", [0, -60, -1100, 3])
def test_row_change_diagonal_equals_the_diagonal_of_row_change_sums(floor):
    """Both routes of row_change_diagonal (values on the target's grid by ldexp, the rest by
    integer ratios: off the grid, too large to scale, a grid above 1) give the integers
    row_change_sums gives at the diagonal pairs, on the same grid."""
    rng = random.Random(11)
    diag = [c * 4 - c * (c - 1) // 2 for c in range(4)]
    for _ in range(200):
        rows = [[rng.choice(ROW_EXTREMES) if rng.random() < 0.4 else rng.uniform(-1e3, 1e3) for _ in range(4)]
                for _ in range(2)]
        for removed, added in ((rows[0], rows[1]), (None, rows[1]), (rows[0], None)):
            s1, e1, dg, e2 = em.row_change_diagonal(removed, added, floor)
            f1, g1, f2, g2 = em.row_change_sums(removed, added, floor)
            assert (s1, e1, e2) == (f1, g1, g2)
            assert dg == [f2[p] for p in diag]
