import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import false_discovery_control

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
