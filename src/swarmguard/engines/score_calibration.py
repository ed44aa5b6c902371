"""Calibrated p-values on the Ray engine, from one scoring pass of the shards.

With ``calibrate=True`` a row's population-level p-value becomes its calibrated
one (:meth:`~swarmguard.structures.score_null.ScoreNull.p_values`) before the
levels are combined, as in process. The default mode's null is *relative*: it
compares each distance over the median distance of the whole batch, every
shard's rows together, which only the driver sees. So the shards score their
rows once, without the null, and keep with their scores what the levels need
besides the population's p-value (:func:`~swarmguard.engines.shard_math.score_rows`:
``population_warm`` and, with ``score_levels="all"``, ``cohort_p_min``, each
row's smallest p-value over its live cohort levels); the driver takes the
median and sends it with the null's bytes to the shards, which turn their
rows' population-level p-values into calibrated ones (in parallel: the REQ rank
queries cost more than the scoring) and recombine the levels with the rule of
:func:`~swarmguard.structures.scoring.combine_levels` (a minimum and one
product: the same floats as the in-process combination), on the scores they
kept from the pass (:meth:`~swarmguard.engines.shards.RegionShard.calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..structures.score_null import ScoreNull

__all__ = ["CalibratedScores", "calibrate_scores", "recombine_levels"]


@dataclass(frozen=True, eq=False)
class CalibratedScores:
    """A batch's p-values after the null.

    ``p_value`` and ``decision_p_value`` (calibrated where the null is warm, the
    mode's own otherwise), ``parametric_p_value`` (the mode's; None where the
    null is not warm, as in process), ``null_score`` (what the null compares:
    the distance) and ``null_scale`` (what it divides them by: the batch's
    median distance for a relative null, 1 for an absolute one).
    """

    p_value: np.ndarray
    decision_p_value: np.ndarray
    parametric_p_value: np.ndarray | None
    null_score: np.ndarray
    null_scale: float


def recombine_levels(p_population: np.ndarray, population_warm: bool, cohort_p_min: np.ndarray | None,
                     n_levels: np.ndarray) -> np.ndarray:
    """Bonferroni over the levels, as :func:`~swarmguard.structures.scoring.combine_levels`:
    each row's smallest live p-value (the population's when warm, ``cohort_p_min``: its
    cohorts' smallest, 1 where none is live) times its number of levels, capped at 1.
    ``cohort_p_min`` None: the population level only (the population's p-value decides)."""
    if cohort_p_min is None:
        return p_population
    p_min = p_population if population_warm else np.ones_like(p_population)
    return np.minimum(1.0, np.minimum(p_min, cohort_p_min) * n_levels.astype(np.float64))


def calibrate_scores(null: ScoreNull, d2: np.ndarray, p: np.ndarray, decision_p: np.ndarray,
                     population_warm: bool, cohort_p_min: np.ndarray | None,
                     n_levels: np.ndarray, scale: float | None = None) -> CalibratedScores:
    """Rows' calibrated p-values against ``null``, from one scoring pass.

    ``d2``, ``p``, ``decision_p``, ``n_levels`` and ``cohort_p_min`` (None with
    ``score_levels="population"``) are a shard's rows, or several shards'
    concatenated in any order (the p-values are row by row); ``scale`` what a
    relative null divides them by (default :meth:`ScoreNull.scale_of` these
    rows: a shard is given the driver's, the median of the whole batch). While
    the null warms up the mode's p-values stand.
    """
    if scale is None:
        scale = null.scale_of(d2)
    calibrated = null.p_values(d2, scale)
    if calibrated is None:
        return CalibratedScores(p, decision_p, None, d2, scale)
    return CalibratedScores(calibrated, recombine_levels(calibrated, population_warm, cohort_p_min, n_levels),
                            p, d2, scale)
