"""The shards' arithmetic: merging region moments kept on different unit scales, and scoring rows.

Plain functions the region actors and the root aggregator of
:mod:`swarmguard.engines.shards` use (and the tests use on their own)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..structures.scoring import combine_levels, score_population
from ..structures.slot_tree import MAX_UNIT_EXPONENT, scale_outer
from ..structures.trimming import (
    TRIM_QUANTILE,
    judge_rows,
    score_trimmed_population,
    trim_threshold,
    trimmed_level_scorer,
)
from ..values.moments import Moments, combine_groups

__all__ = ["moments_from_state", "merge_reach_exponent", "merge_scaled", "merge_summaries", "score_rows",
           "judge_against", "summary_from_states"]


def moments_from_state(n: float, shift: np.ndarray, off: np.ndarray, m2: np.ndarray,
                       exponent: np.ndarray | None = None) -> Moments:
    """A :class:`Moments` value from a tree node's (count, offset from ``shift``, M2).

    ``exponent`` (one per feature: the node is kept in units ``2**exponent``)
    converts a node kept in the tree's internal units back to the caller's:
    exact, but for under/overflow of the results themselves (the product of two
    units is never formed as a factor, :func:`~swarmguard.structures.slot_tree.scale_outer`).
    """
    m = Moments(shift.shape[0])
    m.count = int(round(float(n)))
    if m.count:
        off = np.array(off, dtype=np.float64)
        m2 = np.array(m2, dtype=np.float64)
        if exponent is not None:
            off = np.ldexp(off, exponent)
            m2 = scale_outer(m2, exponent)
        m.shift, m.offset, m.m2 = shift.copy(), off, m2
    return m


def merge_reach_exponent(parts: Sequence[tuple[Moments, np.ndarray]], shift: np.ndarray) -> np.ndarray:
    """Per feature, the binary exponent of how far the merged data reach from ``shift``.

    A part reaches ``|shift_i - shift| + (|offset_i| + sqrt(M2_i,jj)) 2**e_i`` at most
    (``sqrt(M2)`` bounds every member's deviation from the part's mean). The
    exponent of the larger term is taken (``frexp`` on each, so a reach far below
    the normal range keeps its exponent); a feature that is 0 everywhere gets the
    placeholder 1, as in the tree. Only parts that hold a feature's data decide
    its unit: a part whose feature is all zeros carries a placeholder exponent
    that says nothing about the data.
    """
    best = np.full(shift.shape[0], np.iinfo(np.int64).min)
    for m, e in parts:
        _, k_shift = np.frexp(np.abs(m.shift - shift))
        spread = np.abs(m.offset) + np.sqrt(np.maximum(m.m2.diagonal(), 0.0))
        _, k_spread = np.frexp(spread)
        k_shift = np.where(m.shift != shift, k_shift, best)
        k_spread = np.where(spread > 0, k_spread + np.asarray(e, dtype=np.int64), best)
        best = np.maximum(best, np.maximum(k_shift, k_spread))
    best = np.where(best == np.iinfo(np.int64).min, 1, best)
    return np.clip(best, -MAX_UNIT_EXPONENT, MAX_UNIT_EXPONENT).astype(np.int64)


def merge_scaled(parts: Sequence[tuple[Moments, np.ndarray]]) -> tuple[Moments, np.ndarray]:
    """Merge moments kept in per-part power-of-two units into units chosen from the parts' reach.

    Each part is ``(m, e)``: ``m.shift`` in the caller's units, ``m.offset`` and
    ``m.m2`` in units ``2**e`` (a shard tree's internal units). The result uses,
    per feature, the units of :func:`merge_reach_exponent`: the exponent of the
    farthest any part's data lie from the common shift, as the tree chooses its
    units from its farthest deviation. Neither the largest part exponent (a
    shard whose feature is all zeros carries the placeholder 1, which made a
    1e-300 feature of the other shards underflow to 0) nor the smallest (a
    huge feature would overflow) would do. Every rescaling is ``ldexp`` by a
    difference of exponents, exact but where a part's digits lie far below the
    others' (negligible against them). Chan's k-way formula, as
    :meth:`Moments.merge_all`.
    """
    live = [(m, e) for m, e in parts if m.count]
    dim = parts[0][0].dim
    result = Moments(dim)
    if not live:
        return result, np.zeros(dim, dtype=np.int64)
    shift = live[0][0].shift
    E = merge_reach_exponent(live, shift)
    counts = np.array([m.count for m, _ in live], dtype=np.float64)
    offsets = np.stack([np.ldexp(m.shift - shift, -E) + np.ldexp(m.offset, e - E) for m, e in live])
    m2s = np.stack([scale_outer(m.m2, e - E) for m, e in live])
    _, off, m2 = combine_groups(counts, offsets, m2s)
    result.count = sum(m.count for m, _ in live)
    result.shift, result.offset, result.m2 = shift.copy(), off, m2
    return result, E


def summary_from_states(nodes: dict[str, Any] | None) -> dict[str, Any]:
    """A shard's summary from a tree's :meth:`node_states` (or :meth:`trimmed_node_states`):
    population and cohort moments in the caller's units, and in the tree's power-of-two
    units with their exponent (``scaled``: what the root merges for scoring)."""
    if nodes is None:
        return {"population": None, "cohorts": {}}
    shift, scale = nodes["shift"], nodes["exponent"]
    n, off, m2 = nodes["population"]
    cohorts = {path: moments_from_state(cn, shift, coff, cm2, scale)
               for path, (cn, coff, cm2) in nodes["cohorts"].items()}
    scaled_cohorts = {path: moments_from_state(cn, shift, coff, cm2)
                      for path, (cn, coff, cm2) in nodes["cohorts"].items()}
    return {"population": moments_from_state(n, shift, off, m2, scale), "cohorts": cohorts,
            "scaled": {"exponent": scale, "population": moments_from_state(n, shift, off, m2),
                       "cohorts": scaled_cohorts}}


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Population and cohort moments of the union of shards' summaries (:func:`summary_from_states`).

    ``population`` and ``cohorts`` in the caller's units (Chan's k-way formula,
    :meth:`Moments.merge_all`), and, when every shard sent its scaled moments,
    ``scaled``: the same merged in power-of-two units (:func:`merge_scaled`),
    with each level's ``exponents``, for scoring.
    """
    pops = [s["population"] for s in summaries if s["population"] is not None]
    population = Moments.merge_all(pops) if pops else None
    by_path: dict[tuple[str, ...], list[Moments]] = {}
    for s in summaries:
        for path, m in s["cohorts"].items():
            by_path.setdefault(path, []).append(m)
    cohorts = {p: (ms[0] if len(ms) == 1 else Moments.merge_all(ms)) for p, ms in by_path.items()}
    out: dict[str, Any] = {"population": population, "cohorts": cohorts}
    scaled = [s["scaled"] for s in summaries if s["population"] is not None]
    if scaled and all(sc is not None for sc in scaled):
        pop_s, pop_e = merge_scaled([(sc["population"], sc["exponent"]) for sc in scaled])
        parts: dict[tuple[str, ...], list[tuple[Moments, np.ndarray]]] = {}
        for sc in scaled:
            for path, m in sc["cohorts"].items():
                parts.setdefault(path, []).append((m, sc["exponent"]))
        merged_c = {p: merge_scaled(ps) for p, ps in parts.items()}
        exponents: dict[Any, np.ndarray] = {(): pop_e, **{p: e for p, (_, e) in merged_c.items()}}
        out["scaled"] = {"population": pop_s, "cohorts": {p: m for p, (m, _) in merged_c.items()},
                         "exponents": exponents}
    return out


def _deviations(rows: np.ndarray, m: Moments, exponent: np.ndarray | None) -> np.ndarray:
    """``(x - shift) * 2**-exponent - offset``: rows' deviations from merged moments' mean, in their units."""
    D = np.subtract(rows, m.shift)
    if exponent is not None:
        D *= np.ldexp(1.0, -exponent)      # exact: powers of two
    D -= m.offset
    return D


def judge_against(X: np.ndarray, merged: dict[str, Any]) -> np.ndarray:
    """The trimming rule (:func:`~swarmguard.structures.trimming.judge_rows`) for rows ``X``
    against the merged *full* population: whether each is kept in the trimmed moments.

    As the in-process tree judges a batch's rows against the full moments that
    include the whole batch, here against the moments merged over every shard.
    """
    population, _, exponents = _for_scoring(merged, set())
    e = None if exponents is None else exponents[()]
    E = _deviations(X, population, e)
    return judge_rows(float(population.count), population.offset, population.m2, E,
                      trim_threshold(X.shape[1]))


def score_rows(X: np.ndarray, row_paths: Sequence[tuple[str, ...]], row_path_index: np.ndarray,
               population: Moments, cohorts: dict[tuple[str, ...], Moments], shrinkage: Any,
               warm_up: int, score_levels: str, exponents: dict[Any, np.ndarray] | None = None,
               trimmed: tuple[Moments, dict[tuple[str, ...], Moments], Any, np.ndarray] | None = None,
               window: bool = False) -> dict[str, Any]:
    """Leave-one-out scores of rows ``X`` against moments that were merged elsewhere.

    The protocol's scoring core (:func:`~swarmguard.structures.scoring.score_population`
    and :func:`~swarmguard.structures.scoring.combine_levels`) on merged moments:
    deviations ``(x - shift) * unit - offset`` against the population, then
    (``score_levels="all"``) against every cohort on the row's path,
    Bonferroni-combined. ``row_paths[row_path_index[i]]`` is row i's cohort
    path. ``exponents`` (``None``: the moments are in the caller's units) maps
    ``()`` and each cohort path to the power-of-two units ``2**e`` its offset
    and co-moment are kept in (:func:`merge_scaled`), so features of any
    magnitude score alike. Returns ``mahalanobis_squared``, ``p_value``,
    ``decision_p_value``, ``levels`` (per row, how many levels were combined),
    ``any_warm`` (some level was out of warm-up), ``population_warm`` (the
    population level was) and, with ``score_levels="all"``, ``cohort_p_min``
    (each row's smallest p-value over its cohort levels out of warm-up, 1 where
    none is): what the driver needs to recombine the levels with calibrated
    population p-values (:mod:`~swarmguard.engines.score_calibration`).

    ``trimmed`` (``scoring="robust"``): ``(population, cohorts, exponents, kept)``,
    the merged *trimmed* moments (:func:`merge_summaries` of the shards'
    trimmed summaries) and whether each row is counted in them. Rows are then
    scored as the in-process protocol scores them
    (:class:`~swarmguard.structures.trimming.TrimmedScorer`: kept rows
    leave-one-out, the others as they are, the consistency factor applied); a
    level warms up on its *members'* count (``population`` / ``cohorts``
    here) and needs three kept members.

    ``window`` (``window_rounds``): ``trimmed`` holds the merged *windowed* moments
    instead (``kept``: whether each row is inside the window); no consistency
    factor, and every level warms up on its members inside the window, as in process.

    ``calibrate=True`` is the driver's (:mod:`~swarmguard.engines.score_calibration`):
    a relative null's scale is the median over every shard's rows, so the rows
    are scored once here, with the mode's own p-values.
    """
    def deviations(rows: np.ndarray, m: Moments, key: Any, units: Any = exponents) -> np.ndarray:
        return _deviations(rows, m, None if units is None else units[key])

    if trimmed is not None:
        t_pop, t_cohorts, t_exponents, kept = trimmed
        quantile = None if window else TRIM_QUANTILE
        d2, p, warm, _ = score_trimmed_population(deviations(X, t_pop, (), t_exponents), float(t_pop.count),
                                                  t_pop.offset, t_pop.m2, kept, shrinkage, quantile,
                                                  float((t_pop if window else population).count), warm_up)
    else:
        d2, p, warm, _ = score_population(deviations(X, population, ()), float(population.count),
                                          population.offset, population.m2, shrinkage, warm_up)
    if score_levels != "all":
        return {"mahalanobis_squared": d2, "p_value": p, "decision_p_value": p, "any_warm": warm,
                "population_warm": warm, "levels": np.ones(X.shape[0], dtype=np.int64)}

    def groups():
        max_depth = max((len(pt) for pt in row_paths), default=0)
        for k in range(1, max_depth + 1):
            prefix_of: dict[tuple[str, ...], list[int]] = {}
            for i, pt in enumerate(row_paths):
                if len(pt) >= k:
                    prefix_of.setdefault(pt[:k], []).append(i)
            for prefix, path_ids in prefix_of.items():
                rows = np.flatnonzero(np.isin(row_path_index, path_ids))
                if rows.size:
                    c = cohorts[prefix]
                    if trimmed is None:
                        yield prefix, rows, float(c.count), c.offset, c.m2, deviations(X[rows], c, prefix)
                    else:      # the members' count; the kept members' moments
                        t = t_cohorts[prefix]
                        yield (prefix, rows, float((t if window else c).count), t.offset, t.m2,
                               deviations(X[rows], t, prefix, t_exponents))

    score_group = None
    if trimmed is not None:      # the in-process protocol's cohort rule, the same core
        score_group = trimmed_level_scorer({key: float(t.count) for key, t in t_cohorts.items()}, kept,
                                           shrinkage, quantile)

    decision_p, any_warm, n_levels, reports = combine_levels(p, warm, groups(), shrinkage, warm_up,
                                                             score=score_group)
    cohort_p_min = np.ones(X.shape[0])
    for level in reports.values():          # the live levels' p-values, as combine_levels took them
        if not level["warming_up"]:
            rows = level["rows"]
            cohort_p_min[rows] = np.minimum(cohort_p_min[rows], level["p_value"])
    return {"mahalanobis_squared": d2, "p_value": p, "decision_p_value": decision_p,
            "any_warm": any_warm, "population_warm": warm, "levels": n_levels.astype(np.int64),
            "cohort_p_min": cohort_p_min}


def _for_scoring(merged: dict[str, Any], need: set[tuple[str, ...]]):
    """(population, cohorts, exponents) to score against: the power-of-two scaled merge when present."""
    scaled = merged.get("scaled")
    src = scaled if scaled is not None else merged
    cohorts = {p: src["cohorts"][p] for p in need}
    return src["population"], cohorts, (scaled["exponents"] if scaled is not None else None)
