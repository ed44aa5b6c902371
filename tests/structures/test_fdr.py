from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import false_discovery_control

from swarmguard.errors import InvalidInputError
from swarmguard.structures.fdr import benjamini_hochberg


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200), st.sampled_from([0.01, 0.05, 0.2]))
def test_matches_scipy_adjusted_p_values(p, q):
    p = np.array(p)
    mask, cut = benjamini_hochberg(p, q)
    np.testing.assert_array_equal(mask, false_discovery_control(p, method="bh") <= q)
    if mask.any():
        assert cut == p[mask].max()
    else:
        assert cut == 0.0


def test_empty_input():
    mask, cut = benjamini_hochberg(np.array([]), 0.05)
    assert mask.size == 0 and cut == 0.0


def _step_up_exact(p, q):
    """BH's step-up rule in exact rational arithmetic: reject the k smallest p-values,
    k the largest rank with p_(k) <= k q / m (Benjamini & Hochberg 1995, eq. 1); also
    whether some p_(i) lies within rounding (1e-12 relative) of its bound i q / m."""
    ranked = sorted(Fraction(x) for x in p)
    m, fq = len(ranked), Fraction(q)
    bounds = [i * fq / m for i in range(1, m + 1)]
    k = max((i for i in range(1, m + 1) if ranked[i - 1] <= bounds[i - 1]), default=0)
    near = any(abs(r - b) <= b * Fraction(1, 10**12) for r, b in zip(ranked, bounds, strict=True))
    return (ranked[k - 1] if k else None), near


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200), st.sampled_from([0.01, 0.05, 0.2]))
def test_matches_the_step_up_rule_in_exact_arithmetic(p, q):
    # ranks and cut-offs with ties, zeros and ones, against the definition rather than SciPy
    exact_cut, near_a_bound = _step_up_exact(p, q)
    assume(not near_a_bound)        # within rounding of k q / m, floating point decides the side
    mask, cut = benjamini_hochberg(np.array(p), q)
    if exact_cut is None:
        assert not mask.any() and cut == 0.0
    else:
        assert cut == float(exact_cut)
        np.testing.assert_array_equal(mask, np.array(p) <= cut)


def test_published_example_benjamini_hochberg_1995():
    # the 15 p-values of Benjamini & Hochberg (1995), section 4: at q = 0.05 the
    # procedure rejects the four smallest (p <= 0.0095)
    p = np.array([0.0201, 0.7590, 0.0001, 0.0344, 0.0004, 0.3240, 0.0019, 0.6528, 0.0095,
                  0.0278, 0.4262, 1.0, 0.0298, 0.5719, 0.0459])
    mask, cut = benjamini_hochberg(p, 0.05)
    assert cut == 0.0095
    assert sorted(p[mask].tolist()) == [0.0001, 0.0004, 0.0019, 0.0095]


def test_one_p_value_is_rejected_at_q_or_below():
    assert benjamini_hochberg(np.array([0.05]), 0.05)[0].tolist() == [True]
    assert benjamini_hochberg(np.array([0.0501]), 0.05)[0].tolist() == [False]


@pytest.mark.parametrize("bad", [np.nan, -0.1, 1.5])
def test_a_p_value_outside_0_1_is_a_typed_error_and_the_input_is_unchanged(bad):
    p = np.array([0.01, bad, 0.5])
    before = p.copy()
    with pytest.raises(InvalidInputError):
        benjamini_hochberg(p, 0.05)
    np.testing.assert_array_equal(p, before)
