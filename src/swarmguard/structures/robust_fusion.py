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
For every (agent, source), the source is a *low outlier* if its total is
strictly below ``t_(f+1)`` and a *high outlier* if strictly above ``t_(n-f)``.
If honest sources are exchangeable for an agent (same noise law, any law, even
Cauchy) and at most ``f`` sources are Byzantine, an honest source is a low
outlier with probability at most ``p = f / (n - f)`` (at most ``f`` honest
sources can be among the ``f`` lowest, and it is any of the ``>= n - f`` honest
ones with equal chance); likewise for high. Over the ``m`` agents a source
reports on, with independent noise across agents, the count ``O`` of low (or
high) outliers has mean at most ``E = sum p`` and variance at most
``V = sum p (1 - p)``. Bernstein's inequality bounds
``P(O - E >= x) <= exp(-x**2 / (2 (V + x / 3)))``. A source is flagged when that
bound, for its low or its high count, is at most ``false_flag_rate / 2``, so an
honest source is flagged with probability at most ``false_flag_rate`` (per
source; with S sources, at most ``S * false_flag_rate`` false flags expected).
A liar that always pushes the same way is an outlier on (almost) every agent
and is flagged after a few dozen agents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..values.exact_sum import exact_group_sums

__all__ = ["FusionResult", "fuse", "bernstein_tail", "flag_sources", "SourceEvents"]


@dataclass
class SourceEvents:
    """Outlier counts per source row (summed over agents)."""

    reports: np.ndarray  # agents the source reported on
    low: np.ndarray  # strict low-outlier counts
    high: np.ndarray
    expected: np.ndarray  # sum of p over those agents (per side)
    variance: np.ndarray  # sum of p (1 - p)

    @classmethod
    def zeros(cls, n_sources: int) -> SourceEvents:
        z = [np.zeros(n_sources) for _ in range(5)]
        return cls(*z)

    def __iadd__(self, other: SourceEvents) -> SourceEvents:
        for name in ("reports", "low", "high", "expected", "variance"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs.size > mine.size:
                mine = np.concatenate([mine, np.zeros(theirs.size - mine.size)])
            mine[: theirs.size] += theirs
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
    pair_low_event: np.ndarray  # per pair, in the order given
    pair_high_event: np.ndarray
    pair_p: np.ndarray


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
    t_lo = sorted_total[lo_pos][pair_agent] if pair_agent.size else pair_total
    t_hi = sorted_total[hi_pos][pair_agent] if pair_agent.size else pair_total
    low_event = (pair_total < t_lo) & (pa_f > 0)
    high_event = (pair_total > t_hi) & (pa_f > 0)
    p = np.where(pa_f > 0, pa_f / np.maximum(pa_n - pa_f, 1), 0.0)
    return FusionResult(log_odds, low, high, n, f, low_event, high_event, p)


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
    """Outlier counts of each source over the agents of one fusion."""
    def per_source(w):
        return np.bincount(pair_source, weights=w, minlength=n_sources).astype(np.float64)
    return SourceEvents(
        reports=np.bincount(pair_source, minlength=n_sources).astype(np.float64),
        low=per_source(fusion.pair_low_event.astype(np.float64)),
        high=per_source(fusion.pair_high_event.astype(np.float64)),
        expected=per_source(fusion.pair_p),
        variance=per_source(fusion.pair_p * (1.0 - fusion.pair_p)),
    )


def bernstein_tail(observed: np.ndarray, expected: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Upper bound on ``P(O >= observed)`` for a sum of independent [0, 1] variables
    with mean ``expected`` and variance ``variance`` (1 where observed <= expected)."""
    x = np.maximum(np.asarray(observed, float) - expected, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.where(x > 0, -x * x / (2.0 * (variance + x / 3.0)), 0.0)
    return np.exp(exponent)


def flag_sources(events: SourceEvents, false_flag_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, tail bound) per source row: see the module docstring."""
    tail = np.minimum(bernstein_tail(events.low, events.expected, events.variance),
                      bernstein_tail(events.high, events.expected, events.variance))
    return tail <= false_flag_rate / 2.0, tail
