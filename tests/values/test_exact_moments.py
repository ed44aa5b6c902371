"""Exact moments: integer sums checked against fractions.Fraction, bit for bit."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.errors import DimensionMismatchError, InvalidInputError
from swarmguard.values import exact_moments as em
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


@pytest.mark.parametrize("kind", ["normal", "wide", "integers", "tiny"])
@pytest.mark.parametrize("path", ["small", "sliced", "integer slices"])
def test_cross_sums_equal_fractions(kind, path, monkeypatch):
    rng = np.random.default_rng(hash((kind, path)) % 2**32)
    if path == "integer slices":   # force the integer slicing even where float scaling is exact
        monkeypatch.setattr(em, "_slice_columns", lambda X, beta: None)
    for trial in range(6):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        X = data(rng, kind, n, k)
        w = rng.choice([-1, 1], size=n)
        if path == "small":
            got = em._small_sums(X.tolist(), w.tolist(), k)
        else:
            got = em._sliced_sums(X, w.astype(np.int64))
        assert as_fractions(*got) == list(fraction_sums(X, w)), (kind, path, trial)


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
    monkeypatch.setattr(em, "_CHUNK_CELLS", 64 * 8 * 2)   # chunks of 64 rows for k = 2
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 2)) * 10.0 ** rng.integers(-20, 20, size=(300, 2))
    got = exact_cross_sums(X)
    assert as_fractions(*got) == list(fraction_sums(X, np.ones(300, np.int64)))
