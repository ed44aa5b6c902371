"""Byzantine trimming bound and the reputation (flagging) rule."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.structures.robust_fusion import bernstein_tail, flag_sources, fuse, source_events

honest_value = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
liar_value = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False) | st.sampled_from(
    [1e300, -1e300, 0.0])


@given(st.integers(1, 40), st.floats(0.0, 0.49), st.data())
@settings(max_examples=300, deadline=None)
def test_trimmed_fusion_stays_in_the_honest_range(n, threshold, data):
    f = math.floor(threshold * n)
    honest = data.draw(st.lists(honest_value, min_size=n - f, max_size=n - f))
    liars = data.draw(st.lists(liar_value, min_size=f, max_size=f))
    totals = np.array(data.draw(st.permutations(honest + liars)))
    prior = data.draw(st.floats(-10, 10))
    r = fuse(np.zeros(n, dtype=np.int64), totals, 1, threshold, prior)
    assert r.trimmed[0] == f
    lo, hi = Fraction(n) * Fraction(min(honest)), Fraction(n) * Fraction(max(honest))
    # Exact kept sum, then two roundings (scale, prior): allow 4 ulp of the magnitude.
    slack = Fraction(4 * math.ulp(max(abs(float(lo)), abs(float(hi)), abs(prior), 1e-300)))
    estimate = Fraction(float(r.log_odds[0])) - Fraction(prior)
    assert lo - slack <= estimate <= hi + slack
    for end in (r.low[0], r.high[0]):
        assert lo - slack <= Fraction(float(end)) - Fraction(prior) <= hi + slack


def test_no_trimming_below_the_threshold_is_the_plain_sum():
    totals = np.array([0.1, 0.2, 0.3])
    r = fuse(np.zeros(3, dtype=np.int64), totals, 1, 0.3, 0.0)  # f = floor(0.9) = 0
    assert r.trimmed[0] == 0 and r.log_odds[0] == math.fsum(totals)


def test_many_agents_at_once_equal_one_at_a_time():
    rng = np.random.default_rng(1)
    agent = np.sort(rng.integers(0, 50, size=600))
    total = rng.standard_cauchy(size=600)
    together = fuse(agent, total, 50, 0.33, -1.0)
    for a in range(50):
        alone = fuse(np.zeros((agent == a).sum(), dtype=np.int64), total[agent == a], 1, 0.33, -1.0)
        assert together.log_odds[a] == alone.log_odds[0]
        assert together.low[a] == alone.low[0] and together.high[a] == alone.high[0]


def _simulate(rng, n_agents, n_sources, noise, liars=(), per_agent=10, scale_of=None):
    agent = np.repeat(np.arange(n_agents), per_agent)
    source = np.concatenate([rng.choice(n_sources, size=per_agent, replace=False) for _ in range(n_agents)])
    truth = rng.normal(0, 3, size=n_agents)[agent]
    total = truth + noise(agent.size)
    for liar in liars:
        total[source == liar] = 1e6  # always pushes up
    return agent, source, total


def test_honest_but_noisy_sources_are_not_flagged():
    rng = np.random.default_rng(7)
    noises = [lambda k: rng.standard_cauchy(size=k) * 5.0,  # heavy tails
              lambda k: rng.normal(0, 50, size=k),  # noise far above the signal
              lambda k: np.round(rng.normal(0, 1, size=k))]  # many ties
    for noise in noises:
        agent, source, total = _simulate(rng, 3000, 30, noise)
        r = fuse(agent, total, 3000, 0.33, 0.0)
        flagged, tail = flag_sources(source_events(source, r, 30), 1e-6)
        assert not flagged.any(), tail.min()


def test_liars_are_flagged_and_honest_peers_are_not():
    rng = np.random.default_rng(11)
    agent, source, total = _simulate(rng, 400, 20, lambda k: rng.normal(0, 1, size=k), liars=(3, 17))
    r = fuse(agent, total, 400, 0.33, 0.0)
    flagged, _ = flag_sources(source_events(source, r, 20), 1e-6)
    assert flagged.tolist() == [s in (3, 17) for s in range(20)]


def test_bernstein_tail_bounds_a_binomial_tail():
    # P(Binomial(200, 0.3) >= k) must lie below the bound for every k.
    n, p = 200, 0.3
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    for k in range(0, n + 1, 5):
        exact = sum(pmf[k:])
        bound = bernstein_tail(np.array([k]), np.array([n * p]), np.array([n * p * (1 - p)]))[0]
        assert exact <= bound + 1e-12
