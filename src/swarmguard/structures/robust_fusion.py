"""Byzantine-robust fusion of per-source totals, and source reputation.

Trimming rule
-------------
For one agent, let ``n`` sources report, with exact per-source totals
``t_(1) <= ... <= t_(n)`` (each the correctly rounded sum of that source's
contributions), and ``f = floor(threshold * n)`` with ``0 <= threshold < 1/2``.
Drop the ``f`` lowest and ``f`` highest totals and scale the rest to ``n``
sources::

    robust = prior + n / (n - 2 f) * sum(t_(f+1) .. t_(n-f))

Bound. If at most ``f`` of the ``n`` sources are Byzantine (send anything
finite), each kept total lies in ``[h_min, h_max]``, the range of the honest
sources' totals: among the ``f + 1`` lowest totals at least one is honest, so
``t_(f+1) >= h_min``; symmetrically ``t_(n-f) <= h_max``. Hence the kept mean
lies in ``[h_min, h_max]`` and ``robust - prior`` in ``[n h_min, n h_max]``:
the range that honest sources alone would give, scaled to ``n`` sources.
The kept sum is exact and correctly rounded; the scaling and the prior add
two more roundings (so the bound holds up to 2 ulp). The *interval*
``[prior + n t_(f+1), prior + n t_(n-f)]`` is reported; under the same
assumption it lies inside the honest range too.

Flagging rule (reputation)
--------------------------
A lie that matters is far outside what the other sources say about the same
agent. For an agent with ``n >= MIN_SOURCES`` (5) sources, let ``med`` be the
median of its per-source totals and ``scale`` the median absolute deviation
from ``med`` (the mean absolute deviation if that is 0), raised to at least
``SCALE_FLOOR`` (1) times the median ``scale`` over the agents fused together
(one shard), because with few sources the MAD can dip far below the noise
width. Source ``j`` is a *far-low* outlier on the agent if
``t_j < med - FAR * scale`` and *far-high* if ``t_j > med + FAR * scale``,
``FAR = 50``. The median and MAD break down only when half the sources lie, so
colluders pushing an agent together (3 framers among 9 sources, more than the
``f`` that trimming tolerates) are still far out. Agents with fewer than
``MIN_SOURCES`` sources do not count.

Null: peers on the same agents. Let ``k`` be the number of far-low outliers
on an agent. ``k``, ``med`` and ``scale`` depend only on the agents' multisets
of totals, not on who sent which. If an agent's sources are exchangeable (same
noise law, any law: Cauchy, ties, skewed), then given the multisets the
assignment of totals to sources is a uniform random permutation, so each
source is a far-low outlier there with probability exactly ``mu = k / n``
(likewise high): the source is compared with its peers' empirical rate on the
same agents, not with a theoretical rate. Byzantine sources on an agent do not
raise an honest source's chance as long as they are far out at least as often
as the average source there (the lies that move the fusion); liars that sit
in the middle can raise it by at most a factor ``n / (n - b)`` (``b`` liars).

Test. With noise independent across agents, a source's far-low count ``O`` is
a sum of independent Bernoulli(``mu_a``) over its agents (a Poisson-binomial
with known means). Chernoff's bound
``P(O >= o) <= exp(-lam o) prod_a (1 + mu_a (e**lam - 1))``, valid for every
``lam >= 0``, is taken at the best of a fixed grid ``LAMBDAS``.
:func:`flag_sources` flags a source when the bound for its far-low or its
far-high count is at most ``rate / 2``: an exchangeable (honest) source is
flagged with probability at most ``rate``. Unlike a Bernstein bound around a
worst-case rate, Chernoff's bound stays sharp when a source is far out on
nearly every agent where it lies: each such agent multiplies the bound by
about ``mu_a`` (3/9 for one of 3 framers among 9 sources), so a few dozen lies
flag a source that is honest on every other agent.

Peeling (what the consensus does, :func:`peel_sources`). Colluders share
their agents' far outliers (3 framers: ``mu = 3/n`` each). So: flag, remove
the flagged sources' totals, recount (``mu`` of a framer left alone is now
``1/(n - 2)``), flag again; at most ``PEEL_PASSES`` (3) passes, each at the
per-source rate ``false_flag_rate / (PEEL_PASSES * S)`` for ``S`` sources. A
pass is skipped unless some unflagged source's bound is already at most
``PEEL_HINT`` (1e-2): skipping never adds a flag, and it saves the recount
when nothing else looks suspicious.
Guarantee: the chance that *any* honest source is ever flagged is at most
``false_flag_rate``. Proof sketch: given the agents' multisets and the liars'
totals, only the assignment of honest totals to honest labels is random; a
liar's counts and chances depend on its own totals and the multisets only, so
as long as no honest source has been flagged, the removal set of every pass
is fixed, and each pass is a valid test at the per-source rate. Hence
``P(some honest source flagged) <= sum over passes and honest sources of the
per-source rate <= false_flag_rate``.

Noisier honest sources. Exchangeability is an assumption. An honest source
whose light-tailed noise is a few times wider than its peers' (tested:
Gaussian up to 5x, Laplace up to 3x) is practically never ``FAR`` MADs out
(about 34 of the peers' standard deviations for Gaussian noise), so it is not
flagged either. Not covered: a source with heavier tails than its peers.
Liars that only shade their reports by a few noise widths are not flagged:
they are indistinguishable from a noisy honest source, and trimming bounds
their effect anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..values.exact_sum import exact_group_sums

__all__ = ["FusionResult", "fuse", "bernstein_tail", "chernoff_log_tail", "flag_sources", "SourceEvents",
           "FAR", "MIN_SOURCES", "SCALE_FLOOR", "PEEL_PASSES", "PEEL_HINT", "peel_sources", "far_outlier_events"]

FAR = 50.0  # far outlier: more than FAR median absolute deviations from the median
SCALE_FLOOR = 1.0  # scale >= SCALE_FLOOR x the median scale over the agents fused together
MIN_SOURCES = 5  # agents with fewer sources do not count for reputation
# Chernoff exponents tried (any lam >= 0 gives a valid bound): geometric, 0.01 .. 40
LAMBDAS = np.geomspace(0.01, 40.0, 48)
PEEL_PASSES = 3  # flag, recount without the flagged, flag again (at most this many passes)
PEEL_HINT = 1e-2  # recount only while an unflagged source has a tail bound at most this


@dataclass
class SourceEvents:
    """Far-outlier counts per source row, and what exchangeable sources would get.

    ``log_mgf_low[s, g]`` is ``sum_a log(1 + mu_a (exp(LAMBDAS[g]) - 1))`` over the
    agents ``a`` that source ``s`` reported on (``mu_a``: chance of a far-low
    outlier there); additive over agents, so shards are summed with ``+=``.
    """

    reports: np.ndarray  # agents the source reported on
    low: np.ndarray  # far-low outlier counts
    high: np.ndarray
    expected_low: np.ndarray  # sum of mu over those agents
    expected_high: np.ndarray
    log_mgf_low: np.ndarray  # (S, len(LAMBDAS))
    log_mgf_high: np.ndarray

    _FIELDS = ("reports", "low", "high", "expected_low", "expected_high", "log_mgf_low", "log_mgf_high")

    @classmethod
    def zeros(cls, n_sources: int) -> SourceEvents:
        z = [np.zeros(n_sources) for _ in range(5)]
        return cls(*z, np.zeros((n_sources, LAMBDAS.size)), np.zeros((n_sources, LAMBDAS.size)))

    def __iadd__(self, other: SourceEvents) -> SourceEvents:
        for name in self._FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs.shape[0] > mine.shape[0]:
                pad = np.zeros((theirs.shape[0] - mine.shape[0],) + mine.shape[1:])
                mine = np.concatenate([mine, pad])
            mine[: theirs.shape[0]] += theirs
            setattr(self, name, mine)
        return self


@dataclass
class FusionResult:
    """Per-agent fused values (arrays over the agents of one call)."""

    log_odds: np.ndarray  # robust (or plain sum) log-odds
    low: np.ndarray  # robust interval
    high: np.ndarray
    n_sources: np.ndarray
    trimmed: np.ndarray  # f per side
    pair_low_event: np.ndarray  # far-low outlier, per pair, in the order given
    pair_high_event: np.ndarray
    pair_low_mu: np.ndarray  # chance of a far-low outlier for an exchangeable source
    pair_high_mu: np.ndarray


def fuse(pair_agent: np.ndarray, pair_total: np.ndarray, n_agents: int, threshold: float,
         prior: float) -> FusionResult:
    """Trimmed, scaled fusion of per-source totals for many agents at once.

    Parameters
    ----------
    pair_agent : (P,) int64, agent (0..n_agents-1) of each (agent, source) pair
    pair_total : (P,) float64, exact per-source totals
    threshold : float in [0, 0.5)
    prior : float, prior log-odds

    Examples
    --------
    >>> import numpy as np
    >>> r = fuse(np.zeros(5, int), np.array([1.0, 1.2, 0.9, 1e9, -1e9]), 1, 0.33, 0.0)
    >>> r.trimmed.tolist(), r.log_odds.tolist()
    ([1], [5.166666666666667])
    """
    pair_agent = np.asarray(pair_agent, dtype=np.int64)
    n = np.bincount(pair_agent, minlength=n_agents).astype(np.int64)
    f = np.floor(threshold * n).astype(np.int64)
    order = _sort_within_agents(pair_agent, pair_total, n_agents)
    start = np.concatenate([[0], np.cumsum(n)[:-1]]) if n_agents else np.zeros(0, np.int64)
    rank = np.empty(pair_agent.size, dtype=np.int64)
    rank[order] = np.arange(pair_agent.size) - start[pair_agent[order]]
    pa_n, pa_f = n[pair_agent], f[pair_agent]
    kept = (rank >= pa_f) & (rank < pa_n - pa_f)
    kept_sum = exact_group_sums(pair_agent[kept], pair_total[kept], n_agents)
    has = n > 0
    sorted_total = pair_total[order]
    lo_pos = np.minimum(start + f, max(pair_agent.size - 1, 0))
    hi_pos = np.maximum(start + n - f - 1, 0)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.where(has, n / np.maximum(n - 2 * f, 1), 0.0)
        log_odds = prior + kept_sum * scale
        low = np.where(has, prior + n * sorted_total[lo_pos] if pair_agent.size else prior, prior)
        high = np.where(has, prior + n * sorted_total[hi_pos] if pair_agent.size else prior, prior)
    log_odds = np.where(has, log_odds, prior)
    events = _far_outliers(pair_agent, pair_total, n_agents, n, start, sorted_total)
    return FusionResult(log_odds, low, high, n, f, *events)


def _far_outliers(pair_agent, pair_total, n_agents, n, start, sorted_total):
    """Far-low/high outlier flags per pair and their per-agent chances ``k / n``
    (see the module docstring); every quantity but the flags depends on the
    agent's multiset of totals only."""
    P = pair_agent.size
    if P == 0:
        z = np.zeros(0)
        return z.astype(bool), z.astype(bool), z, z
    has = n > 0
    mid_lo = np.where(has, start + (n - 1) // 2, 0)
    mid_hi = np.where(has, start + n // 2, 0)
    with np.errstate(over="ignore", invalid="ignore"):  # infinite totals: NaN compares False
        med = 0.5 * sorted_total[mid_lo] + 0.5 * sorted_total[mid_hi]
        dev = pair_total - med[pair_agent]
        absdev = np.abs(dev)
        order = _sort_within_agents(pair_agent, absdev, n_agents)
        sorted_dev = absdev[order]
        mad = 0.5 * sorted_dev[mid_lo] + 0.5 * sorted_dev[mid_hi]
        mean_dev = np.bincount(pair_agent, weights=absdev, minlength=n_agents) / np.maximum(n, 1)
        scale = np.where(mad > 0, mad, mean_dev)
        enough = n >= MIN_SOURCES
        typical = scale[enough & np.isfinite(scale)]
        if SCALE_FLOOR > 0 and typical.size:  # few sources: the MAD can dip far below the noise width
            scale = np.maximum(scale, SCALE_FLOOR * np.median(typical))
        counted = enough[pair_agent]
        reach = (FAR * scale)[pair_agent]
        low_event = counted & (dev < -reach)
        high_event = counted & (dev > reach)
    k_low = np.bincount(pair_agent, weights=low_event, minlength=n_agents)
    k_high = np.bincount(pair_agent, weights=high_event, minlength=n_agents)
    denom = np.maximum(n, 1)
    return low_event, high_event, (k_low / denom)[pair_agent], (k_high / denom)[pair_agent]


def far_outlier_events(pair_agent: np.ndarray, pair_source: np.ndarray, pair_total: np.ndarray,
                       n_agents: int, n_sources: int) -> SourceEvents:
    """:func:`source_events` of the far outliers alone, without fusing (for peeling)."""
    pair_agent = np.asarray(pair_agent, dtype=np.int64)
    n = np.bincount(pair_agent, minlength=n_agents).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(n)[:-1]]) if n_agents else np.zeros(0, np.int64)
    sorted_total = pair_total[_sort_within_agents(pair_agent, pair_total, n_agents)]
    return _events(pair_source, *_far_outliers(pair_agent, pair_total, n_agents, n, start, sorted_total),
                   n_sources)


def _sort_within_agents(agent: np.ndarray, total: np.ndarray, n_agents: int) -> np.ndarray:
    """Order by agent, then total. Ties among equal totals may come in any order:
    every use below (kept sum, order statistics, strict comparisons) depends on
    the values only, so the results do not."""
    if n_agents > (1 << 16):
        return np.lexsort((total, agent))
    by_total = np.argsort(total)
    # Stable radix sort on 16-bit agent numbers keeps the total order within agents.
    return by_total[np.argsort(agent[by_total].astype(np.uint16), kind="stable")]


def source_events(pair_source: np.ndarray, fusion: FusionResult, n_sources: int) -> SourceEvents:
    """Far-outlier counts of each source over the agents of one fusion, with the
    Chernoff log-MGF sums that :func:`flag_sources` needs."""
    return _events(pair_source, fusion.pair_low_event, fusion.pair_high_event, fusion.pair_low_mu,
                   fusion.pair_high_mu, n_sources)


def _events(pair_source, low_event, high_event, low_mu, high_mu, n_sources) -> SourceEvents:
    pair_source = np.asarray(pair_source, dtype=np.int64)

    def per_source(w):
        return np.bincount(pair_source, weights=w, minlength=n_sources).astype(np.float64)

    def log_mgf(mu):
        # mu = k / n takes few distinct values: count pairs per (source, value), then
        # one small matrix product (memory S x values, not pairs x LAMBDAS).
        nz = mu > 0  # agents without far outliers add log(1) = 0
        if not nz.any():
            return np.zeros((n_sources, LAMBDAS.size))
        values, which = np.unique(mu[nz], return_inverse=True)
        counts = np.bincount(pair_source[nz] * values.size + which.ravel(),
                             minlength=n_sources * values.size).reshape(n_sources, values.size)
        return counts @ np.log1p(values[:, None] * np.expm1(LAMBDAS)[None, :])

    return SourceEvents(
        reports=np.bincount(pair_source, minlength=n_sources).astype(np.float64),
        low=per_source(low_event.astype(np.float64)),
        high=per_source(high_event.astype(np.float64)),
        expected_low=per_source(low_mu),
        expected_high=per_source(high_mu),
        log_mgf_low=log_mgf(low_mu),
        log_mgf_high=log_mgf(high_mu),
    )


def chernoff_log_tail(observed: np.ndarray, log_mgf: np.ndarray) -> np.ndarray:
    """Natural log of Chernoff's upper bound on ``P(O >= observed)`` for a sum of
    independent [0, 1] variables whose log moment generating function at
    ``LAMBDAS`` is at most ``log_mgf`` (rows: sources); 0 when nothing is gained."""
    observed = np.asarray(observed, float)
    exponents = log_mgf - observed[:, None] * LAMBDAS[None, :]
    return np.minimum(exponents.min(axis=1, initial=0.0), 0.0)


def bernstein_tail(observed: np.ndarray, expected: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Upper bound on ``P(O >= observed)`` for a sum of independent [0, 1] variables
    with mean ``expected`` and variance ``variance`` (1 where observed <= expected)."""
    x = np.maximum(np.asarray(observed, float) - expected, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.where(x > 0, -x * x / (2.0 * (variance + x / 3.0)), 0.0)
    return np.exp(exponent)


def flag_sources(events: SourceEvents, false_flag_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, tail bound) per source row: see the module docstring. The tail
    bound is the smaller of the two sides' Chernoff bounds."""
    log_tail = np.minimum(chernoff_log_tail(events.low, events.log_mgf_low),
                          chernoff_log_tail(events.high, events.log_mgf_high))
    return log_tail <= np.log(false_flag_rate / 2.0), np.exp(log_tail)


def peel_sources(first: SourceEvents, shards: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, int]] | Callable,
                 n_sources: int, false_flag_rate: float, never: np.ndarray | None = None,
                 passes: int = PEEL_PASSES, n_tested: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, tail bound) per source row by peeling (see the module docstring).

    ``first``: the events of every shard; ``shards``: each shard's (pair_agent,
    pair_source, pair_total, n_agents), to recount without the flagged sources —
    or a callable ``recount(flagged) -> SourceEvents`` that does it wherever the
    pairs live (e.g. on remote partitions); ``never``: rows never flagged
    (trusted). Each pass flags at the per-source rate
    ``false_flag_rate / (passes * n_tested)``, so the chance that *any*
    exchangeable source is ever flagged is at most ``false_flag_rate``;
    ``n_tested`` (default ``n_sources``) is how many sources are tested at all:
    sources on probation are not (their events are empty and they are in ``never``).
    """
    if callable(shards):
        recount = shards
    else:
        def recount(flagged: np.ndarray) -> SourceEvents:
            events = SourceEvents.zeros(n_sources)
            for agent, source, total, n_agents in shards:
                keep = ~flagged[source]
                events += far_outlier_events(agent[keep], source[keep], total[keep], n_agents, n_sources)
            return events
    never = np.zeros(n_sources, dtype=bool) if never is None else np.asarray(never, dtype=bool)
    rate = false_flag_rate / (passes * max(n_sources if n_tested is None else n_tested, 1))
    flagged, tail = flag_sources(first, rate)
    flagged &= ~never
    for _ in range(1, passes):
        # Recount only if something was flagged and some other source already looks
        # suspicious (skipping a pass never adds a flag, so the guarantee holds).
        if not flagged.any() or not (~flagged & ~never & (tail <= PEEL_HINT)).any():
            break
        new, new_tail = flag_sources(recount(flagged), rate)
        new &= ~never & ~flagged
        tail = np.where(flagged, tail, new_tail)
        if not new.any():
            break
        flagged |= new
    return flagged, tail


def peel_untrusted(first: SourceEvents, shards: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, int]] | Callable,
                   false_flag_rate: float, trusted: np.ndarray, voting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The consensus's source flags: :func:`peel_sources` with trusted sources never flagged and
    sources on probation (``~voting``, per source row) neither tested nor flagged.

    One rule for every engine: the in-process consensus passes its ledger shards' pairs, the Ray
    driver a recount over the evidence partitions.
    """
    trusted = np.asarray(trusted, dtype=bool)
    voting = np.asarray(voting, dtype=bool)
    return peel_sources(first, shards, trusted.size, false_flag_rate, never=trusted | ~voting,
                        n_tested=int(voting.sum()))


def count_flagged_pairs(pair_agents: list[tuple[int, np.ndarray]], pair_sources: list[np.ndarray],
                        flagged: np.ndarray, n_agents: int) -> np.ndarray:
    """Per agent, how many of its (agent, source) pairs have a flagged source. Only the
    pairs of flagged sources are counted (usually few), chunk by chunk, with no
    concatenation of every pair; ``pair_agents`` holds (first agent row, local agent rows)."""
    bad = np.flatnonzero(flagged)
    if bad.size == 0 or not pair_agents:
        return np.zeros(n_agents, dtype=np.int64)
    hits = []
    for (agent_lo, pa), ps in zip(pair_agents, pair_sources, strict=True):
        hit = flagged[ps] if bad.size > 4 else np.isin(ps, bad)
        hits.append(pa[hit] + agent_lo)
    return np.bincount(np.concatenate(hits), minlength=n_agents).astype(np.int64)
