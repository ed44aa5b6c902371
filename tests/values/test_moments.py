import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard import (
    DimensionMismatchError,
    InsufficientDataError,
    InvalidInputError,
    InvalidTypeError,
    Moments,
    NonFiniteError,
    SwarmGuardError,
)
from tests._exact import exact_mean_cov, exact_std, nist_numacc, significant_digits


def moments_by_chunks(values: np.ndarray, cuts: list[int], order: list[int]) -> Moments:
    """Split rows at ``cuts``, build each chunk's moments, merge them in ``order``."""
    chunks = np.split(values, cuts)
    parts = [Moments.from_array(c) for c in chunks if len(c)]
    total = Moments(values.shape[1])
    for i in order:
        if i < len(parts):
            total += parts[i]
    return total


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_nist_numacc_std_matches_exact_to_13_digits_in_any_order_and_split(k):
    values, cert_mean, cert_sd = nist_numacc(k)
    exact = exact_std(values)
    rng = random.Random(k)
    for trial in range(12):
        vals = list(values)
        if trial:
            rng.shuffle(vals)
        arr = np.array(vals)[:, None]
        one_by_one = Moments(1)
        for v in vals:
            one_by_one.update([v])
        batch = Moments.from_array(arr)
        cuts = sorted(rng.sample(range(1, len(vals)), min(len(vals) - 1, rng.randint(1, 9))))
        order = list(range(len(cuts) + 1))
        rng.shuffle(order)
        merged = moments_by_chunks(arr, cuts, order)
        for m in (one_by_one, batch, merged):
            assert significant_digits(m.std()[0], exact) >= 13, (k, trial, m.std()[0], exact)
            # Certified values: the float64 inputs are not the decimal ones, so
            # agreement is bounded by their representation error (~1e-9 at 1e7).
            assert m.mean[0] == pytest.approx(cert_mean, rel=1e-15)
            assert m.std()[0] == pytest.approx(cert_sd, rel=1e-7)


def test_raw_sums_of_squares_would_fail_numacc4():
    # Why the shifted form exists: the textbook formula loses every digit here.
    values, _, _ = nist_numacc(4)
    x = np.array(values)
    naive_var = (np.sum(x * x) - np.sum(x) ** 2 / x.size) / (x.size - 1)
    exact_var = exact_std(values) ** 2
    assert naive_var < 0 or significant_digits(naive_var, exact_var) < 3
    assert significant_digits(Moments.from_array(x[:, None]).variance()[0], exact_var) >= 13


@st.composite
def badly_conditioned(draw):
    n = draw(st.integers(2, 60))
    d = draw(st.integers(1, 3))
    offset = draw(st.sampled_from([0.0, 1e3, -1e6, 1e8, 3.3e9]))
    spread = draw(st.sampled_from([1.0, 1e-3, 1e-6]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = offset + spread * rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
    return X, seed


@settings(max_examples=60, deadline=None)
@given(badly_conditioned())
def test_merge_order_and_split_agree_with_exact(case):
    X, seed = case
    rng = random.Random(seed)
    n = X.shape[0]
    mean_ex, cov_ex = exact_mean_cov(X)
    cuts = sorted(set(rng.sample(range(1, n), min(n - 1, rng.randint(0, 6))))) if n > 1 else []
    order = list(range(len(cuts) + 1))
    rng.shuffle(order)
    merged = moments_by_chunks(X, cuts, order)
    streamed = Moments(X.shape[1])
    for row in X[rng.sample(range(n), n)]:
        streamed.update(row)
    scale = np.sqrt(np.outer(np.diag(cov_ex), np.diag(cov_ex)))
    for m in (merged, streamed):
        assert m.count == n
        np.testing.assert_allclose(m.mean, mean_ex, rtol=1e-15, atol=1e-12 * np.sqrt(np.diag(cov_ex)).max())
        np.testing.assert_array_less(np.abs(m.covariance() - cov_ex), 1e-12 * scale + 1e-300)


def test_merge_is_associative_and_commutative_to_rounding():
    rng = np.random.default_rng(3)
    a, b, c = (Moments.from_array(rng.normal(loc=5e6, size=(m, 3))) for m in (5, 17, 9))
    left = (a + b) + c
    right = a + (b + c)
    swapped = c + (b + a)
    for m in (right, swapped):
        assert m.count == left.count
        np.testing.assert_allclose(m.mean, left.mean, rtol=1e-15)
        np.testing.assert_allclose(m.m2, left.m2, rtol=1e-11)


def test_revert_is_the_inverse_of_update_and_batch_revert_of_update_many():
    rng = np.random.default_rng(1)
    X = rng.normal(loc=1e5, size=(40, 3))
    m = Moments.from_array(X)
    for row in X[30:][::-1]:
        m.revert(row)
    mean_ex, cov_ex = exact_mean_cov(X[:30])
    np.testing.assert_allclose(m.mean, mean_ex, rtol=1e-14)
    np.testing.assert_allclose(m.covariance(), cov_ex, rtol=1e-9)
    m2 = Moments.from_array(X)
    m2.revert_many(X[:25])
    mean_ex, cov_ex = exact_mean_cov(X[25:])
    np.testing.assert_allclose(m2.covariance(), cov_ex, rtol=1e-9)
    m3 = Moments.from_array(X[:2])
    m3.revert(X[1])
    m3.revert(X[0])
    assert m3.count == 0 and not m3.m2.any()


def test_subtraction_undoes_a_merge():
    rng = np.random.default_rng(2)
    a = Moments.from_array(rng.normal(size=(50, 2)))
    b = Moments.from_array(rng.normal(loc=3, size=(20, 2)))
    back = (a + b) - b
    assert back.count == a.count
    np.testing.assert_allclose(back.mean, a.mean, rtol=1e-13)
    np.testing.assert_allclose(back.m2, a.m2, rtol=1e-12)


def test_statistics_and_ddof():
    X = np.array([[1.0, 2.0], [2.0, 4.0], [4.0, 9.0]])
    m = Moments.from_array(X)
    np.testing.assert_allclose(m.covariance(ddof=0), np.cov(X.T, ddof=0))
    np.testing.assert_allclose(m.covariance(), np.cov(X.T))
    np.testing.assert_allclose(m.variance(), X.var(axis=0, ddof=1))
    np.testing.assert_allclose(m.std(ddof=0), X.std(axis=0))
    with pytest.raises(InsufficientDataError):
        Moments(2).covariance()
    with pytest.raises(InsufficientDataError):
        Moments.from_array(X[:1]).covariance(ddof=1)


def test_serialisation_round_trip_is_exact():
    rng = np.random.default_rng(4)
    m = Moments.from_array(rng.normal(loc=7e7, size=(33, 4)))
    assert Moments.from_bytes(m.to_bytes()) == m
    assert Moments.from_dict(m.to_dict()) == m
    state = m.to_dict()
    state["m2"] = state["m2"][:2]
    with pytest.raises(DimensionMismatchError):
        Moments.from_dict(state)
    with pytest.raises(InvalidInputError):
        Moments.from_bytes(b"not an archive")
    bad = m.to_dict()
    bad["offset"][0] = np.nan
    with pytest.raises(NonFiniteError):
        Moments.from_dict(bad)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m: m.update([1.0, 2.0, 3.0]), DimensionMismatchError),
        (lambda m: m.update([1.0, np.nan]), NonFiniteError),
        (lambda m: m.update([1.0, np.inf]), NonFiniteError),
        (lambda m: m.update(["a", "b"]), InvalidTypeError),
        (lambda m: m.update("ab"), InvalidTypeError),
        (lambda m: m.update_many(np.zeros((0, 2))), InvalidInputError),
        (lambda m: m.update_many(np.ones((3, 3))), DimensionMismatchError),
        (lambda m: m.update_many([[1.0, 2.0], [np.nan, 1.0]]), NonFiniteError),
        (lambda m: m.revert_many(np.ones((50, 2))), InsufficientDataError),
        (lambda m: m.__iadd__(Moments(3)), DimensionMismatchError),
    ],
)
def test_bad_input_is_typed_and_changes_nothing(call, error):
    m = Moments.from_array(np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]]))
    before = m.copy()
    with pytest.raises(error) as info:
        call(m)
    assert isinstance(info.value, SwarmGuardError) and isinstance(info.value, ValueError)
    assert m == before


def test_merge_all_and_from_dict_reject_what_they_cannot_use():
    with pytest.raises(InvalidTypeError):
        Moments.merge_all([1, 2])
    with pytest.raises(InvalidTypeError):
        Moments.merge_all([Moments(2), 3])
    with pytest.raises(DimensionMismatchError):
        Moments.merge_all([Moments(2), Moments(3)])
    m = Moments.from_array(np.array([[1.0], [2.0]]))
    state = m.to_dict()
    state["count"] = np.array(2.7)
    with pytest.raises(InvalidInputError):
        Moments.from_dict(state)
    state = Moments(1).to_dict()
    state["offset"] = np.array([5.0])
    with pytest.raises(InvalidInputError):
        Moments.from_dict(state)
    merged = Moments.merge_all([Moments.from_array(np.array([[1.0], [3.0]])), Moments(1), m])
    assert merged.count == 4 and merged.mean[0] == pytest.approx(1.75)
