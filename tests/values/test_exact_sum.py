"""ExactSum against exact arithmetic: math.fsum and fractions.Fraction, bit for bit."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.errors import InvalidInputError, InvalidTypeError, NonFiniteError
from swarmguard.values.exact_sum import (
    ExactSum,
    ExactSumOverflowError,
    exact_group_sums,
    float_limbs,
    limbs_to_fraction,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
# Bounded so no exact sum of <= 60 terms leaves the float range.
bounded = st.floats(min_value=-1e306, max_value=1e306, allow_nan=False)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def fsum_bits(values) -> bytes:
    return bits(math.fsum(values))


@given(st.lists(bounded, max_size=60))
@settings(max_examples=300, deadline=None)
def test_get_equals_fsum_bitwise_and_fraction_exactly(values):
    acc = ExactSum()
    acc.update_many(values)
    assert bits(acc.get()) == fsum_bits(values)
    assert acc.to_fraction() == sum((Fraction(v) for v in values), Fraction(0))
    assert acc.count == len(values)


@given(st.lists(bounded, min_size=1, max_size=60), st.randoms(use_true_random=False),
       st.integers(min_value=1, max_value=7))
@settings(max_examples=200, deadline=None)
def test_shuffled_and_repartitioned_states_are_identical(values, rnd, n_parts):
    reference = ExactSum()
    reference.update_many(values)
    shuffled = list(values)
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.randint(0, len(shuffled)) for _ in range(n_parts - 1))
    parts = []
    for lo, hi in zip([0, *cuts], [*cuts, len(shuffled)], strict=True):
        part = ExactSum()
        for v in shuffled[lo:hi]:  # one at a time in some parts, batch in others
            part.update(v) if rnd.random() < 0.5 else part.update_many([v])
        parts.append(part)
    merged = ExactSum()
    for p in reversed(parts):
        merged += p
    assert merged == reference
    assert bits(merged.get()) == bits(reference.get()) == fsum_bits(values)
    assert ExactSum.merge_all(parts) == reference


@given(st.lists(st.floats(min_value=-1e15, max_value=1e15, allow_nan=False), min_size=1, max_size=40),
       st.lists(st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False), max_size=10))
@settings(max_examples=200, deadline=None)
def test_cancellation_against_fraction(big, small):
    # +x and -x for every big term cancel exactly; only the small terms remain.
    values = big + small + [-x for x in big]
    acc = ExactSum()
    acc.update_many(np.array(values))
    exact = sum((Fraction(v) for v in small), Fraction(0))
    assert acc.to_fraction() == exact
    assert acc.get() == float(exact)  # Fraction -> float is correctly rounded
    assert bits(acc.get()) == fsum_bits(values)


def test_naive_sum_fails_where_exact_does_not():
    values = [1e15, 0.1, -1e15] * 1000 + [1e-300]
    naive = float(np.sum(np.array(values)))
    acc = ExactSum()
    acc.update_many(values)
    exact = sum((Fraction(v) for v in values), Fraction(0))
    assert acc.get() == float(exact)
    assert naive != float(exact)


@pytest.mark.parametrize("values", [
    [5e-324, 5e-324, -5e-324],
    [2.2250738585072014e-308, -5e-324],  # normal -> subnormal boundary
    [1.0, 2.0**-53],  # a tie: rounds to even
    [1.0, 2.0**-53, 5e-324],  # the sticky bit breaks the tie upwards
    [1.0 + 2.0**-52, 2.0**-53],  # a tie rounding up to even
    [1e300, 1e300, -1e300, 1e-300],
    [1.7976931348623157e308, -1e292],
    [-0.0, -0.0],
    [0.1] * 10,
])
def test_edge_cases(values):
    acc = ExactSum()
    acc.update_many(values)
    assert bits(acc.get()) == fsum_bits(values)


def test_overflow_is_a_typed_error():
    acc = ExactSum()
    acc.update_many([1.7976931348623157e308, 1.7976931348623157e308])
    with pytest.raises(ExactSumOverflowError):
        acc.get()
    with pytest.raises(OverflowError):
        math.fsum([1.7976931348623157e308, 1.7976931348623157e308])
    # fsum fails on intermediate overflow; the exact sum is finite and returned.
    acc.update(-1.7976931348623157e308)
    assert acc.get() == 1.7976931348623157e308


def test_revert_and_subtract_are_exact_inverses():
    rng = np.random.default_rng(3)
    values = rng.normal(size=200) * 10.0 ** rng.integers(-50, 50, size=200)
    acc = ExactSum()
    acc.update_many(values)
    part = ExactSum()
    part.update_many(values[:50])
    rest = acc - part
    assert bits(rest.get()) == fsum_bits(values[50:].tolist())
    rest.revert_many(values[50:100])
    rest.revert(float(values[100]))
    assert bits(rest.get()) == fsum_bits(values[101:].tolist())


def test_float_limbs_are_exact():
    rng = np.random.default_rng(5)
    values = rng.normal(size=500) * 2.0 ** rng.integers(-1074, 1000, size=500)
    values = np.concatenate([values[np.isfinite(values)], [5e-324, -0.0, 1.7976931348623157e308]])
    first, limb = float_limbs(values)
    assert np.abs(limb).max() < 2**26
    for i, v in enumerate(values.tolist()):
        exact = sum(Fraction(int(limb[j, i])) * Fraction(2) ** int(26 * (first[i] + j) - 1074)
                    for j in range(3))
        assert exact == Fraction(v)


@given(st.lists(st.tuples(st.integers(0, 4), bounded), max_size=80))
@settings(max_examples=150, deadline=None)
def test_grouped_sums_equal_fsum_per_group(pairs):
    groups = np.array([g for g, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs], dtype=np.float64)
    result = exact_group_sums(groups, values, 5)
    for g in range(5):
        assert bits(float(result[g])) == fsum_bits([v for k, v in pairs if k == g])


def test_grouped_sums_with_prior_term():
    groups = np.array([0, 0, 1])
    values = np.array([1e16, 1.0, 3.0])
    result = exact_group_sums(groups, values, 3, extra=1.0)
    assert result.tolist() == [math.fsum([1e16, 1.0, 1.0]), 4.0, 1.0]


def test_serialisation_round_trip_and_validation():
    acc = ExactSum()
    acc.update_many([1e300, -3.0, 1e-300])
    again = ExactSum.from_bytes(acc.to_bytes())
    assert again == acc and bits(again.get()) == bits(acc.get())
    assert limbs_to_fraction(again.limbs) == acc.to_fraction()
    with pytest.raises(InvalidInputError):
        ExactSum.from_bytes(b"not an archive")
    state = acc.to_dict()
    state["limbs"] = state["limbs"] + (1 << 30)  # not normalised
    with pytest.raises(InvalidInputError):
        ExactSum.from_dict(state)
    with pytest.raises(InvalidInputError):
        ExactSum.from_dict({"version": 1})


def test_bad_input_leaves_state_unchanged():
    acc = ExactSum()
    acc.update_many([1.0, 2.0])
    before = acc.copy()
    for bad in ([1.0, float("nan")], [float("inf")], [[1.0]], ["a"], "1.0"):
        with pytest.raises((NonFiniteError, InvalidTypeError, InvalidInputError)):
            acc.update_many(bad)
    for bad in (float("nan"), "x", None, True):
        with pytest.raises((NonFiniteError, InvalidTypeError)):
            acc.update(bad)
    with pytest.raises(InvalidInputError):
        acc.revert_many([1.0, 2.0, 3.0])
    assert acc == before


@given(st.lists(st.tuples(st.integers(0, 30), bounded | st.sampled_from([-0.0, 0.0, 5e-324])), max_size=60),
       st.sampled_from([None, 0.0, -0.0, 1.5, -1e300]))
@settings(max_examples=200, deadline=None)
def test_grouped_fast_path_for_small_groups_is_still_fsum(pairs, extra):
    # Many groups of one or two terms take the float fast path; the rest the limbs.
    groups = np.array([g for g, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs], dtype=np.float64)
    result = exact_group_sums(groups, values, 31, extra=extra)
    for g in range(31):
        terms = [v for k, v in pairs if k == g] + ([] if extra is None else [extra])
        assert bits(float(result[g])) == fsum_bits(terms)


# ------------------------------------------------------------- certified float path
@given(st.lists(st.integers(0, 7), min_size=1, max_size=200),
       st.sampled_from(["normal", "ties", "cancel", "wide", "tiny"]), st.integers(0, 2**32 - 1),
       st.sampled_from([None, 0.5, -1e16]))
@settings(max_examples=150, deadline=None)
def test_certified_path_is_fsum_bit_for_bit(groups, kind, seed, extra):
    # Groups of 3..64 terms take the certified float path; whatever it cannot prove
    # (ties, cancellation, zero, extreme ranges) must fall back and still be fsum.
    rng = np.random.default_rng(seed)
    n = len(groups)
    if kind == "normal":
        values = rng.normal(size=n) * rng.uniform(size=n)
    elif kind == "ties":  # few significant bits: sums land exactly on half-ulps
        values = rng.integers(-8, 8, size=n) * 2.0 ** rng.integers(-60, 3, size=n) + rng.choice([0.0, 1.0], n)
    elif kind == "cancel":
        values = rng.choice([1e16, -1e16, 1.0, -1.0, 2.0**-53, 3.0], size=n)
    elif kind == "wide":
        values = rng.normal(size=n) * 2.0 ** rng.integers(-1000, 1000, size=n)
    else:
        values = rng.normal(size=n) * 2.0**-1060
    g = np.array(groups, dtype=np.int64)
    result = exact_group_sums(g, values, 8, extra=extra)
    for k in range(8):
        terms = values[g == k].tolist() + ([] if extra is None else [extra])
        assert bits(float(result[k])) == fsum_bits(terms)


def test_certified_path_certifies_ordinary_sums_and_defers_the_rest():
    from swarmguard.values.exact_sum import _certified_group_sums

    rng = np.random.default_rng(3)
    counts = rng.integers(3, 70, size=2000)  # some groups above the 64-term limit
    group = np.repeat(np.arange(counts.size), counts)
    values = rng.normal(size=group.size) * rng.uniform(size=group.size)
    sums, done = _certified_group_sums(group, values, counts, None)
    assert not done[counts > 64].any()
    assert done[counts <= 64].mean() > 0.99
    for k in np.flatnonzero(done)[:200]:
        assert bits(float(sums[k])) == fsum_bits(values[group == k].tolist())
    # An exact zero and an exact tie are never guessed: zero is deferred, a tie is
    # proven only when the error terms add up exactly.
    zero = np.array([1.0, -1.0, 0.5, -0.5])
    _, done_zero = _certified_group_sums(np.zeros(4, np.int64), zero, np.array([4]), None)
    assert not done_zero[0]
    tie = np.array([1.0, 2.0**-53, 2.0**-80, -(2.0**-80)])
    s, ok = _certified_group_sums(np.zeros(4, np.int64), tie, np.array([4]), None)
    assert not ok[0] or bits(float(s[0])) == fsum_bits(tie.tolist())
