"""``BehavioralDistributedProtocol``: update the tree and score agents (Solution 1).

This module holds the protocol's settings, its public entry points and its batch
scoring; one agent's scoring is in :mod:`swarmguard.api.protocol_item`, the
guide's input record :class:`BehavioralData` in :mod:`swarmguard.api.behavior`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ..locking import Locked, synchronized_with
from ..structures.cauchy_combination import cauchy_combine
from ..structures.chi2 import chi2_sf
from ..structures.score_null import ScoreNull
from ..structures.scoring import LeaveOneOutScorer, combine_levels, score_population
from ..structures.scoring_modes import DEFAULT_SCORING, SKETCH_MODES, TRIMMED_MODES
from ..structures.significance import resolve_fdr, significance_cut
from ..structures.tail_scores import tail_evidence
from ..structures.trimming import TrimmedScorer, score_trimmed_population, trimmed_level_scorer
from ..validation import (
    as_feature_matrix,
    as_feature_vector,
    check_agent_id,
    check_cohort,
)
from .behavior import BehavioralData, read_behavior  # re-exported: they lived here
from .part_settings import validate_protocol_settings
from .protocol_item import ItemScoring
from .tree import HierarchicalStatisticalTree, Path

__all__ = ["BehavioralData", "BehavioralDistributedProtocol", "read_behavior"]


class BehavioralDistributedProtocol(ItemScoring, Locked):
    """Score agents by leave-one-out Mahalanobis distance as their behaviour arrives.

    Parameters
    ----------
    tree : HierarchicalStatisticalTree
    significance_level : float, default 1e-3
        Per-agent level α: an agent is anomalous when its χ²(d) p-value is
        below α (below α / L when scored at L levels, Bonferroni).
    fdr : float, optional
        Batch methods control the false-discovery rate at this level
        (Benjamini–Hochberg) instead of using α; each batch call may override.
    shrinkage : float in [0, 1] or "auto", default "auto"
        Shrinkage of the covariance toward its diagonal (0 turns it off; "auto"
        is min(1, d / n)); see :mod:`swarmguard.structures.scoring`.
    warm_up : int, optional
        No agent is flagged while the population has fewer members; default
        ``min(1000, 100 * d)``.
    score_levels : "population" or "all", default "population"
        Score against the whole population only, or also against the agent's
        own cohort and every ancestor cohort (each level is reported).
    calibrate : bool, default False
        Calibrated p-values (:mod:`swarmguard.structures.score_null`): the
        population-level p-value of a batch becomes its score's rank among the
        scores of members not flagged in earlier rounds
        (:meth:`update_and_score_many` admits each round's scores after its
        decision, but not a round scored while the population is under ``warm_up``:
        nobody is judged there), ``(1 + #{null >= s}) / (n_null + 1)``, once the null holds
        1,000 scores; until then the mode's own p-value decides. Cohort levels
        keep their own p-values; the per-item path too, in every mode. The batch reports
        ``parametric_p_value`` (the mode's), ``null_score`` (the distance, or ``-log p``
        for the tail modes) and ``null_scale`` (what the null holds is
        ``null_score / null_scale``: in the default mode the batch's median
        distance, so a round whose anomalies inflate the covariance is compared on
        the scale of its own members; 1 in the other modes), ``null_count`` (the scores the
        null held when the batch was scored) and ``null_p_floor`` (its smallest p-value,
        ``1 / (null_count + 1)``; None while it warms up: a null of ``n`` lets
        Benjamini–Hochberg flag no group smaller than
        :meth:`~swarmguard.structures.score_null.ScoreNull.fewest_flags` on the
        population level; the cohort levels of ``score_levels="all"`` keep the mode's
        own p-values, which have no floor).
    scoring : str, default "mahalanobis"
        What an agent is scored against (:data:`swarmguard.SCORING_MODES`):
        ``"mahalanobis"``, the population's moments; ``"robust"``, its trimmed
        moments (members not flagged under the full moments,
        :mod:`swarmguard.structures.trimming`), which the tree then keeps.
        Distances are reported under the same names in every mode. A tree built
        with ``window_rounds`` is scored against its *windowed* moments (the
        members written in the last rounds, :mod:`swarmguard.structures.window`):
        members inside the window leave-one-out, stale members as outsiders
        (with ``"robust"``, the trimmed moments of the members inside; with
        ``"tails"``/``"fused"``, sketches of the members inside); stale
        members are scored but never flagged, nor counted in the FDR procedure
        (``in_window`` in the results).

    Every public method runs under the protocol's lock and then its tree's
    (:mod:`swarmguard.locking`): a protocol may be shared between threads, and
    so may its tree, used directly at the same time. Async methods take the
    locks only inside their synchronous body.

    Examples
    --------
    >>> import asyncio, numpy as np
    >>> tree = HierarchicalStatisticalTree(feature_dimensions=2)
    >>> protocol = BehavioralDistributedProtocol(tree, warm_up=10)
    >>> rng = np.random.default_rng(0)
    >>> tree.update_many(np.arange(200), rng.normal(size=(200, 2)))
    >>> info = asyncio.run(protocol.update_agent_behavior(BehavioralData(7, [9.0, -9.0])))
    >>> info["is_anomaly"], info["p_value"] < 1e-10
    (True, True)
    """

    def __init__(
        self,
        tree: HierarchicalStatisticalTree,
        *,
        significance_level: float = 1e-3,
        fdr: float | None = None,
        shrinkage: float | str = "auto",
        warm_up: int | None = None,
        score_levels: str = "population",
        scoring: str = DEFAULT_SCORING,
        calibrate: bool = False,
    ):
        super().__init__()
        if not isinstance(tree, HierarchicalStatisticalTree):
            raise InvalidTypeError(f"tree must be a HierarchicalStatisticalTree, got {type(tree).__name__}")
        self.tree = tree
        checked = validate_protocol_settings(significance_level=significance_level, fdr=fdr, shrinkage=shrinkage,
                                             warm_up=warm_up, score_levels=score_levels, scoring=scoring,
                                             calibrate=calibrate)
        self.significance_level = checked.significance_level
        self.fdr = checked.fdr
        self.shrinkage = checked.shrinkage
        self._warm_up = checked.warm_up
        self.score_levels = checked.score_levels
        self.scoring = checked.scoring
        # the empirical null of the population-level scores (swarmguard.structures.score_null)
        # (relative for the plain moments, which hold the round's anomalies and so shrink every
        # distance while they are there: swarmguard.structures.score_null, "Relative scores")
        self.null: ScoreNull | None = (ScoreNull(relative=self.scoring == "mahalanobis") if checked.calibrate
                                       else None)
        if self.scoring in TRIMMED_MODES:
            tree.keep_trimmed_moments()
        if self.scoring in SKETCH_MODES:
            tree.keep_tail_sketches()

    @property
    def warm_up(self) -> int:
        """Population size below which nobody is flagged."""
        if self._warm_up is not None:
            return self._warm_up
        d = self.tree.feature_dimensions or 10
        return min(1000, 100 * d)

    # ------------------------------------------------------------------ streaming
    async def update_agent_behavior(self, behavioral_data: Any) -> dict[str, Any]:
        """Update the tree with one observation and score that agent (``anomaly_info``)."""
        return self.update_agent_behavior_sync(behavioral_data)

    @synchronized_with("tree")
    def update_agent_behavior_sync(self, behavioral_data: Any) -> dict[str, Any]:
        """Synchronous twin of :meth:`update_agent_behavior`."""
        agent_id, features, cohort = read_behavior(behavioral_data)
        agent_id = check_agent_id(agent_id)
        x = as_feature_vector(features, self.tree.feature_dimensions)
        path = check_cohort(cohort)
        return self._update_checked(agent_id, x, path)

    @synchronized_with("tree")
    def _update_checked(self, agent_id: Hashable, x: np.ndarray, path: Path | None) -> dict[str, Any]:
        """:meth:`update_agent_behavior_sync` on values already checked by the tree's rules
        (:func:`check_agent_id`, :func:`as_feature_vector`, :func:`check_cohort`): the
        detector's per-item path, which checks them once for all its parts."""
        slot = self.tree._update_one(agent_id, x, path)
        return self._score_slot(agent_id, slot, x)

    async def score_agent(self, agent_id: Any) -> dict[str, Any]:
        """Score a known agent without changing anything."""
        return self.score_agent_sync(agent_id)

    @synchronized_with("tree")
    def score_agent_sync(self, agent_id: Any) -> dict[str, Any]:
        """Synchronous twin of :meth:`score_agent`."""
        slot = self.tree._slot(agent_id)
        return self._score_slot(check_agent_id(agent_id), slot, self.tree._tree.X[slot])

    @synchronized_with("tree")
    def score_vectors(self, X: Any) -> dict[str, Any]:
        """Score vectors that are *not* in the tree against the population, changing nothing.

        Each row is scored against the population's moments as they are (for
        ``scoring="robust"`` its trimmed moments), not leave-one-out: what an
        agent would score before its vector is added (prequential use).
        Returns ``mahalanobis_squared``, ``mahalanobis_distance``, ``p_value``
        (χ²(d)), ``is_anomaly`` (p-value below the significance level once the
        population is out of warm-up) and ``population_count``.
        """
        tree = self.tree
        if tree._tree is None or len(tree) == 0:
            raise InvalidInputError("the tree is empty: nothing to score against")
        X = as_feature_matrix(X, tree.feature_dimensions)
        tree._tree.flush()
        n_pop = tree._tree.root_state()[0]
        n_warm = self._warm_count(n_pop)
        subset = self._subset()
        if subset is not None:
            sub = subset[0]
            sub.flush()
            n, off, m2 = sub.root_state()
            E = sub.deviations(X) - off
            scorer = TrimmedScorer(n, off, m2, self.shrinkage, quantile=subset[3])
        else:
            n, off, m2 = tree._tree.root_state()
            E = tree._tree.deviations(X) - off
            scorer = TrimmedScorer(n, off, m2, self.shrinkage, quantile=None)
        d2 = scorer.score_many(E, np.zeros(X.shape[0], dtype=bool)) if scorer.ok else np.zeros(X.shape[0])
        p = chi2_sf(d2, X.shape[1])
        # the moments scored against must hold a covariance (>= 3 members), as a cohort's must
        # (_trimmed_group_scorer): trimmed moments can be far smaller than the population
        warm = bool(n_warm >= self.warm_up and scorer.ok and scorer.inside.ok)
        extra: dict[str, Any] = {}
        if self.scoring in SKETCH_MODES:      # vectors from outside: counted in, (W + 1) / (n + 1)
            p, extra = self._with_tails(p, tree._tree.deviations(X), 0, members=False)
            extra.pop("_feature_scores")
        return {**extra, "mahalanobis_squared": d2, "mahalanobis_distance": np.sqrt(d2), "p_value": p,
                "is_anomaly": (p < self.significance_level) & warm, "population_count": int(round(n_pop)),
                "warming_up": not warm}

    # ------------------------------------------------------------------ batch
    @synchronized_with("tree")
    def score_many(self, agent_ids: Any = None, *, fdr: float | None | str = "default",
                   explain: bool = False) -> dict[str, Any]:
        """Score many known agents at once (all agents when ``agent_ids`` is None).

        Returns a dict of arrays aligned with ``agent_ids``: ``mahalanobis_squared``,
        ``mahalanobis_distance``, ``p_value``, ``is_anomaly``, and the decision
        rule used (``threshold_squared``, ``p_value_cutoff``, ``method``); with
        ``explain=True`` also ``feature_contributions`` (n, d). With
        ``score_levels="all"``, ``levels`` maps each cohort path to the rows
        scored against it and their scores; an agent's ``p_value`` is then its
        smallest level p-value times its number of levels (Bonferroni, capped at 1).
        """
        tree = self.tree
        if tree._tree is None:
            raise InvalidInputError("the tree is empty: nothing to score")
        fdr = self._resolve_fdr(fdr)
        if agent_ids is None:
            slots = np.flatnonzero(tree._tree.occupied)
            ids = tree._ids_at_slot[slots]
            if slots.size == 0:
                raise InvalidInputError("the tree is empty: nothing to score")
        else:
            slots, ids = tree.slots_of(agent_ids)
        return self._score_slots(ids, slots, fdr, explain)

    @synchronized_with("tree")
    def update_and_score_many(self, agent_ids: Any, X: Any, cohorts: Any = None, *,
                              fdr: float | None | str = "default", explain: bool = False) -> dict[str, Any]:
        """:meth:`HierarchicalStatisticalTree.update_many`, then :meth:`score_many` on those agents."""
        fdr_level = self._resolve_fdr(fdr)       # validate before any change
        slots, ids, rows = self.tree._update_many(agent_ids, X, cohorts)
        out = self._score_slots(ids, slots, fdr_level, explain, rows=rows)
        if self.null is not None and not out["warming_up"]:
            # the round's members enter the null after its decision, flags left out (but the
            # expected false ones, the lowest: ceil(q R) under BH, ceil(alpha m) under a
            # per-member cut -- swarmguard.structures.score_null). A round scored in a population
            # under warm_up (nobody judged) stays out: its distances, against the moments of a few
            # members (0 for a lone one), are no draws of the null later rounds are ranked in, and
            # they would count towards min_null (a run of one-agent rounds made a null of zeros
            # that flagged every member of the next full round)
            flagged = out["is_anomaly"] if self.null.warm else None
            scale = out["null_scale"]
            if fdr_level is not None:
                self.null.admit(out["null_score"], flagged, fdr_level, scale=scale)
            else:
                self.null.admit(out["null_score"], flagged, alpha=self.significance_level, scale=scale)
        return out

    def _resolve_fdr(self, fdr: Any) -> float | None:
        return resolve_fdr(fdr, self.fdr)

    def _score_slots(self, ids: np.ndarray, slots: np.ndarray, fdr: Any, explain: bool,
                     rows: Any = None, flush: bool = True, calibrate: bool = True) -> dict[str, Any]:
        """Score the agents at ``slots``; ``rows`` may hold their vectors (just written).
        ``flush=False`` (the per-item path): the roots as they are, current to the last change.
        ``calibrate=False`` (the per-item path): the mode's own p-values, never the null's."""
        q = self._resolve_fdr(fdr)
        tree = self.tree
        if flush:
            tree._tree.flush()
        d = tree.feature_dimensions
        n_pop, off, m2 = tree._tree.root_state()
        score_group = None
        subset = self._subset()
        if subset is not None:
            d2, p, warm, shares, DX, kept = self._trimmed_population(slots, rows, n_pop, explain, flush)
        else:
            # Deviations from the shift first, in the tree's units (a power of two
            # per feature, so nothing squared under- or overflows): the digits
            # below the data's magnitude survive, as in the moments.
            if rows is not None:
                DX = tree._tree.row_deviations(rows)
            else:
                DX = np.take(tree._tree.X, slots, axis=0)
                DX -= tree._tree.shift
                DX *= tree._tree.unit
            if self.score_levels == "population":
                # DX is this call's own array and the levels below need it no more: in place
                E = np.subtract(DX, off, out=DX)
                d2, p, warm, shares = score_population(E, n_pop, off, m2, self.shrinkage, self.warm_up, explain,
                                                       overwrite=True)
                tree._tree.keep_scratch(E)   # read no more (no result is a view of it): the next round's scratch
            else:
                d2, p, warm, shares = score_population(DX - off, n_pop, off, m2, self.shrinkage, self.warm_up,
                                                       explain)
        out: dict[str, Any] = {"agent_ids": ids, "population_count": int(round(n_pop))}
        calibrated = False
        if self.scoring in SKETCH_MODES:
            DT = tree._tree.deviations(rows if rows is not None else np.take(tree._tree.X, slots, axis=0))
            # with a window the sketches hold its members only: a stale member's value is not in
            # them and is counted in as an outsider's, (W + 1) / (n + 1), as its distance is
            sketched = True if tree._win is None else tree._win.inside(slots)
            p, tail_out = self._with_tails(p, DT, 0, members=sketched)
            feature_scores = tail_out.pop("_feature_scores")
            if explain and self.scoring == "tails":      # each feature's share of the tail score
                shares = feature_scores
            out.update(tail_out)
            score_group = self._tail_group_scorer(score_group, DT, sketched)
        if self.null is not None and calibrate:
            null_score = d2 if self.scoring not in SKETCH_MODES else -np.log(np.maximum(p, 1e-300))
            out["null_score"] = null_score
            out["null_scale"] = scale = self.null.scale_of(null_score)
            # what the null can resolve: its smallest p-value bounds what BH can flag (score_null)
            out["null_count"], out["null_p_floor"] = self.null.count, self.null.p_floor
            p_cal = self.null.p_values(null_score, scale)
            if p_cal is not None:
                out["parametric_p_value"] = p
                p, calibrated = p_cal, True
        if self.score_levels == "all":
            trimmed_counts: dict[Path, float] | None = None
            if subset is not None:
                trimmed_counts = {}
                trimmed = self._trimmed_group_scorer(kept, trimmed_counts)
                score_group = self._tail_group_scorer(trimmed, DT, sketched) if self.scoring in SKETCH_MODES else trimmed
            groups = self._cohort_groups(slots, DX, trimmed_counts)
            decision_p, any_warm, _, levels = combine_levels(p, warm, groups, self.shrinkage, self.warm_up,
                                                             score=score_group)
            out["levels"] = {(): {"rows": np.arange(slots.size), "count": int(round(n_pop)),
                                  "mahalanobis_squared": d2, "p_value": p, "warming_up": not warm}}
            out["levels"].update(levels)
        else:
            decision_p = p
            any_warm = warm
        if tree._win is None:
            decision = significance_cut(decision_p, d2, d, q=q, alpha=self.significance_level, any_warm=any_warm)
            flagged = decision.flagged
        else:
            # A member outside the window has no behaviour in it: its distance (from its last
            # vector to the population now) is reported, but it is not judged, and it takes no
            # part in the false-discovery procedure.
            live = tree._win.inside(slots)
            out["in_window"] = live
            decision = significance_cut(decision_p[live], d2[live], d, q=q, alpha=self.significance_level,
                                        any_warm=any_warm)
            flagged = np.zeros(slots.size, dtype=bool)
            flagged[live] = decision.flagged
        cut, thr2, method = decision.cut, decision.threshold_squared, decision.method
        out.update({
            "mahalanobis_squared": d2,
            "mahalanobis_distance": np.sqrt(d2),
            "p_value": p,
            "decision_p_value": decision_p,
            "is_anomaly": flagged,
            "threshold_squared": thr2,
            "threshold": float(np.sqrt(thr2)),
            "p_value_cutoff": cut,
            "method": method if not calibrated else method + ", calibrated",
            "warming_up": not any_warm,
        })
        if explain:
            out["feature_contributions"] = shares
        return out

    def _trimmed_population(self, slots: np.ndarray, rows: Any, n_pop: float, explain: bool,
                            flush: bool = True):
        """Rows scored against the population's trimmed moments: ``(d2, p, warm, shares, DX, kept)``,
        ``DX`` the rows' deviations in the trimmed tree's units, ``kept`` whether each is counted."""
        tree = self.tree
        sub, counted, _, quantile = self._subset()
        if flush:
            sub.flush()
        if rows is not None:
            DX = sub.deviations(rows)
        else:
            DX = sub.deviations(np.take(tree._tree.X, slots, axis=0))
        kept = counted(slots)
        n_t, off, m2 = sub.root_state()
        # as a cohort's level: kept members are scored leave-one-out, which needs >= 3 of them
        d2, p, warm, shares = score_trimmed_population(DX - off, n_t, off, m2, kept, self.shrinkage, quantile,
                                                       self._warm_count(n_pop), self.warm_up, explain)
        return d2, p, warm, shares, DX, kept

    def _warm_count(self, n_members: float) -> float:
        """The count the warm-up is judged on: the members inside the window when there is
        one (they are the population scored against), else every member."""
        win = self.tree._win
        return n_members if win is None else win.tree.root_state()[0]

    def _with_tails(self, p_distance: np.ndarray, DT: np.ndarray, cid: int, members: bool):
        """The mode's p-values from the distance's and the rows' tail evidence against cohort ``cid``'s
        sketches (``DT``: deviations in the moments' internal units, as sketched): ``tails``, the tail
        p-value; ``fused``, the Cauchy combination of both. Returns ``(p, report)``."""
        ev = tail_evidence(self.tree._tail_sketches(cid), DT, members=members)
        p = ev.p_value if self.scoring == "tails" else cauchy_combine(np.column_stack([p_distance, ev.p_value]))
        return p, {"tail_score": ev.score, "tail_p_value": ev.p_value, "distance_p_value": p_distance,
                   "_feature_scores": ev.feature_scores}

    def _tail_group_scorer(self, distance_scorer: Any, DT: np.ndarray, sketched: Any = True):
        """For :func:`combine_levels`: a cohort's rows with the mode's p-value against the cohort's sketches."""
        if self.score_levels != "all":
            return distance_scorer
        cohorts = self.tree._cohorts
        shrinkage = self.shrinkage

        def score(key: Path, rows: np.ndarray, count: float, offset: np.ndarray, m2: np.ndarray, E: np.ndarray):
            if distance_scorer is None:
                sc = LeaveOneOutScorer(count, offset, m2, shrinkage)
                cd2, ok = sc.score_many(E), sc.ok
            else:
                cd2, ok = distance_scorer(key, rows, count, offset, m2, E)[:2]
            members = sketched if np.ndim(sketched) == 0 else sketched[rows]
            p, _ = self._with_tails(chi2_sf(cd2, E.shape[1]), DT[rows], cohorts.id_of[key], members=members)
            return cd2, ok, p
        return score

    def _trimmed_group_scorer(self, kept: np.ndarray, trimmed_counts: dict[Path, float]):
        """For :func:`combine_levels`: a cohort's rows scored against its trimmed moments
        (``count`` there is the cohort's members, its kept ones are in ``trimmed_counts``)."""
        return trimmed_level_scorer(trimmed_counts, kept, self.shrinkage, self._subset()[3])

    def _cohort_groups(self, slots: np.ndarray, DX: np.ndarray, trimmed_counts: dict | None = None):
        """Per cohort above the rows: ``(path, rows, count, offset, m2, deviations)`` for
        :func:`~swarmguard.structures.scoring.combine_levels`.

        Rows are grouped by their ancestor at each cohort depth with one stable
        sort per depth (no pass over all rows per cohort).
        """
        tree = self.tree
        cohorts = tree._cohorts
        row_cohort = cohorts.cohort_of_slots(slots)
        n_cohorts = len(cohorts)
        depth = np.array([len(p) for p in cohorts.paths])
        max_depth = int(depth.max()) if n_cohorts else 0
        for k in range(1, max_depth + 1):
            # ancestor at depth k of each cohort (-1 when the cohort is shallower)
            anc = np.full(n_cohorts, -1, dtype=np.int64)
            for cid in range(n_cohorts):
                if depth[cid] >= k:
                    anc[cid] = cohorts.id_of[cohorts.paths[cid][:k]]
            key = anc[row_cohort]
            order = np.argsort(key, kind="stable")
            sorted_key = key[order]
            bounds = np.flatnonzero(np.diff(sorted_key)) + 1
            for group in np.split(order, bounds):
                a = int(key[group[0]])
                if a < 0:
                    continue
                cn, coff, cm2 = tree._cohort_state(a)
                if trimmed_counts is not None:     # the members' count; the kept members' moments
                    tn, coff, cm2 = self._subset()[2](a)
                    trimmed_counts[cohorts.paths[a]] = tn
                    if tree._win is not None:      # a window: the cohort warms up on its members inside
                        cn = tn if self.scoring not in TRIMMED_MODES else tree._window_state(a)[0]
                yield cohorts.paths[a], group, cn, coff, cm2, DX[group] - coff
