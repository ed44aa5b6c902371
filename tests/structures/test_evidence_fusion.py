"""Byzantine trimming bound and the reputation (flagging) rule."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.structures.robust_fusion import (
    LAMBDAS,
    bernstein_tail,
    chernoff_log_tail,
    flag_sources,
    fuse,
    peel_sources,
    source_events,
)

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


def _flags(agent, source, total, n_sources, rate=1e-6):
    r = fuse(agent, total, int(agent.max()) + 1, 0.33, 0.0)
    events = source_events(source, r, n_sources)
    flagged, tail = flag_sources(events, rate)
    return flagged, tail, events


def _peel(agent, source, total, n_sources, rate=1e-6, never=None):
    n_agents = int(agent.max()) + 1
    events = source_events(source, fuse(agent, total, n_agents, 0.33, 0.0), n_sources)
    return peel_sources(events, [(agent, source, total, n_agents)], n_sources, rate, never=never)


def _swarm(rng, n_agents=3000, n_sources=30, per_agent=8, noise_scale=None, liars=(), framed=0,
           whitewashed=0):
    """A world like ``swarmguard simulate``'s: each agent gets ``per_agent`` random
    sources, honest totals are the agent's truth plus noise (``noise_scale[s]`` per
    source); liars report honestly except that triples of them add +120 on
    ``framed`` agents (extra reports) and each of them reports -200 instead of the
    truth on the ``whitewashed`` agents it sees."""
    noise_scale = np.ones(n_sources) if noise_scale is None else noise_scale
    agent = np.repeat(np.arange(n_agents), per_agent)
    source = np.concatenate([rng.choice(n_sources, size=per_agent, replace=False) for _ in range(n_agents)])
    total = rng.normal(0, 3, size=n_agents)[agent] + rng.normal(size=agent.size) * noise_scale[source]
    liars = np.asarray(liars, dtype=np.int64)
    if liars.size:
        lying = np.isin(source, liars) & (agent < whitewashed)  # whitewash: agents 0 .. whitewashed-1
        total[lying] = -200.0
        targets = rng.choice(np.arange(whitewashed, n_agents), size=framed, replace=False)
        extra_agent, extra_source = [], []
        for a in targets:  # three liars not already reporting on the agent
            free = np.setdiff1d(liars, source[agent == a])
            extra_source.append(rng.choice(free, size=min(3, free.size), replace=False))
            extra_agent.append(np.full(extra_source[-1].size, a))
        agent = np.concatenate([agent, *extra_agent])
        source = np.concatenate([source, *extra_source])
        total = np.concatenate([total, np.full(agent.size - total.size, 120.0)])
    return agent, source, total


def test_colluding_framers_are_flagged_and_noisier_honest_sources_are_not():
    # 6 liars, honest on ~97% of their agents; honest sources 2x-5x noisier than their peers.
    rng = np.random.default_rng(3)
    scale = np.ones(30)
    scale[[0, 1, 2, 3]] = [2.0, 3.0, 5.0, 2.0]
    liars = (7, 11, 19, 23, 26, 29)
    agent, source, total = _swarm(rng, noise_scale=scale, liars=liars, framed=90, whitewashed=60)
    flagged, tail, events = _flags(agent, source, total, 30)
    assert flagged.tolist() == [s in liars for s in range(30)], tail
    # The noisier honest sources are not even close to the threshold.
    assert tail[[0, 1, 2, 3]].min() > 1e-2
    # Peeling (what the consensus does) flags the same sources; a trusted liar never.
    peeled, _ = _peel(agent, source, total, 30)
    assert peeled.tolist() == flagged.tolist()
    never = np.zeros(30, dtype=bool)
    never[7] = True
    assert _peel(agent, source, total, 30, never=never)[0].tolist() == [s in liars[1:] for s in range(30)]


def test_peeling_flags_the_framer_left_alone_once_its_accomplices_are_flagged():
    # 4 liars frame agents in threes: liar 3 joins only 12 framings, too few to stand out
    # next to two accomplices (each costs the null 3/11), but once the others are
    # removed it is the lone far outlier on those agents (1/9 each).
    rng = np.random.default_rng(12)
    agent, source, total = _swarm(rng, n_agents=3000, per_agent=8)
    liars = np.array([0, 1, 2, 3])
    extra_agent, extra_source = [], []
    for i, a in enumerate(rng.choice(3000, size=140, replace=False)):
        group = [0, 1, 3] if i < 12 else [0, 1, 2]
        extra_agent += [a] * 3
        extra_source += group
    keep = ~(np.isin(source, liars) & np.isin(agent, extra_agent))  # framers report once
    agent = np.concatenate([agent[keep], extra_agent])
    source = np.concatenate([source[keep], extra_source])
    total = np.concatenate([total[keep], np.full(len(extra_agent), 120.0)])
    single, single_tail = flag_sources(source_events(source, fuse(agent, total, 3000, 0.33, 0.0), 30),
                                       1e-6 / (3 * 30))
    peeled, tail = _peel(agent, source, total, 30)
    assert single.tolist() == [s in (0, 1, 2) for s in range(30)], single_tail[:4]
    assert peeled.tolist() == [s in (0, 1, 2, 3) for s in range(30)], tail[:4]


def test_lone_liars_hiding_among_many_honest_reports_are_flagged():
    # Each liar lies on 25 of its ~800 agents (3%) and is honest elsewhere.
    rng = np.random.default_rng(5)
    agent, source, total = _swarm(rng, liars=(4, 9), framed=0, whitewashed=100)
    flagged, tail, _ = _flags(agent, source, total, 30)
    assert flagged.tolist() == [s in (4, 9) for s in range(30)], tail


def test_noisier_honest_sources_are_not_flagged():
    # Exchangeability broken on purpose: a few honest sources are noisier than their
    # peers (Gaussian up to 5x, Laplace up to 3x). Far outliers (50 MADs) stay out of
    # their reach, so none is flagged; the expected far-outlier count is tiny.
    rng = np.random.default_rng(9)
    for noise, factors in ((rng.normal, [1.5, 2.0, 3.0, 4.0, 5.0]), (rng.laplace, [1.5, 2.0, 2.5, 3.0, 3.0])):
        scale = np.ones(30)
        scale[:5] = factors
        agent = np.repeat(np.arange(3000), 10)
        source = np.concatenate([rng.choice(30, size=10, replace=False) for _ in range(3000)])
        total = rng.normal(0, 3, size=3000)[agent] + noise(size=agent.size) * scale[source]
        flagged, tail, events = _flags(agent, source, total, 30)
        assert not flagged.any(), tail.min()
        assert events.low[:5].sum() + events.high[:5].sum() <= 1


noise_laws = st.sampled_from(["normal", "cauchy", "rounded", "laplace", "lognormal", "two-point"])


@given(st.integers(0, 2**32 - 1), noise_laws, st.integers(5, 12), st.integers(6, 25))
@settings(max_examples=15, deadline=None)
def test_exchangeable_honest_sources_are_never_flagged(seed, law, per_agent, n_sources):
    # Any noise law (skewed, heavy-tailed, tied) and any per-agent spread: sources are
    # exchangeable on each agent, so none may be flagged (bound: n_sources * 1e-6).
    rng = np.random.default_rng(seed)
    n_agents = 800
    per_agent = min(per_agent, n_sources)
    agent = np.repeat(np.arange(n_agents), per_agent)
    source = np.argsort(rng.random((n_agents, n_sources)), axis=1)[:, :per_agent].ravel()
    spread = rng.lognormal(0, 2, size=n_agents)[agent]
    draw = {"normal": lambda k: rng.normal(size=k), "cauchy": lambda k: rng.standard_cauchy(size=k),
            "rounded": lambda k: np.round(rng.normal(size=k)), "laplace": lambda k: rng.laplace(size=k),
            "lognormal": lambda k: rng.lognormal(0, 3, size=k),
            "two-point": lambda k: (rng.random(k) < 0.05) * 1e6}[law]
    total = rng.normal(0, 3, size=n_agents)[agent] + spread * draw(agent.size)
    flagged, tail, events = _flags(agent, source, total, n_sources)
    assert not flagged.any(), (law, tail.min())
    assert not _peel(agent, source, total, n_sources)[0].any()
    if law in ("cauchy", "lognormal"):  # heavy tails: far outliers do happen
        assert events.low.sum() + events.high.sum() > 0


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40), st.data())
@settings(max_examples=60, deadline=None)
def test_chernoff_bound_is_above_the_exact_poisson_binomial_tail(mu, data):
    # Exact tail by convolution; the bound must lie above it at every count.
    pmf = np.array([1.0])
    for p in mu:
        pmf = np.convolve(pmf, [1.0 - p, p])
    log_mgf = np.log1p(np.array(mu)[:, None] * np.expm1(LAMBDAS)[None, :]).sum(axis=0)
    k = data.draw(st.integers(0, len(mu)))
    exact = pmf[k:].sum()
    bound = math.exp(chernoff_log_tail(np.array([k]), log_mgf[None, :])[0])
    assert exact <= bound * (1 + 1e-9) + 1e-300


def test_chernoff_bound_is_tight_enough_for_framers():
    # One of 3 framers among 9 sources on 40 agents: P = (1/3)**40, about e**-44.
    mu = np.full(40, 3 / 9)
    log_mgf = np.log1p(mu[:, None] * np.expm1(LAMBDAS)[None, :]).sum(axis=0)
    assert chernoff_log_tail(np.array([40.0]), log_mgf[None, :])[0] < math.log(1e-6 / 2)


def test_infinite_totals_do_not_blind_the_other_agents():
    # An agent whose exact sums overflowed (±inf) gives NaN deviations; the rest of the
    # shard must still see its far outliers.
    rng = np.random.default_rng(2)
    agent, source, total = _swarm(rng, n_agents=400, liars=(5,), whitewashed=0, framed=0)
    total[source == 5] = 1e6
    total[agent == 0] = np.array([np.inf, np.inf, np.inf, np.inf, np.inf, -np.inf, 1.0, 2.0])
    flagged, tail, events = _flags(agent, source, total, 30)
    assert flagged.tolist() == [s == 5 for s in range(30)], tail
    assert _peel(agent, source, total, 30)[0].tolist() == flagged.tolist()
