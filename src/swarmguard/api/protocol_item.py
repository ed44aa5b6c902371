"""The protocol's per-item scoring: one agent's score dict from the tree's moments.

:class:`~swarmguard.api.protocol.BehavioralDistributedProtocol` scores one
agent at a time (the guide's ``update_agent_behavior`` / ``score_agent``) by
leave-one-out Mahalanobis distance against the population, or against each
cohort on the agent's path; the population-only plain mode has a hot path with
no per-level loop, and the trimmed, windowed and sketch modes score the one row
through the batch path (:meth:`_score_slots`). This mixin holds those methods;
the state lives on the protocol.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from ..lazy_import import module_on_first_use
from ..structures.feature_shares import CorrelationRoot, DeferredParts
from ..structures.scoring import LeaveOneOutScorer
from ..structures.scoring_modes import SKETCH_MODES, TRIMMED_MODES
from ..structures.significance import chi2_threshold as _chi2_threshold
from ..structures.trimming import TRIM_QUANTILE
from .item_score import ItemScore

__all__ = ["ItemScoring"]

_special = module_on_first_use("scipy.special")   # imported on first use: see swarmguard.lazy_import

Path = tuple[str, ...]
_MAX_KEPT_ROOTS = 4096


class ItemScoring:
    """Per-item scoring methods of :class:`~swarmguard.api.protocol.BehavioralDistributedProtocol`
    (a mixin: no state of its own)."""

    def _subset(self):
        """The moments a subset mode scores against: ``(tree, counted(slots), state(cid), quantile)``
        (trimmed moments, or windowed ones), or None when agents are scored against all members."""
        tree = self.tree
        if self.scoring in TRIMMED_MODES:
            if tree._trim is None:
                # a tree swapped in after construction (``protocol.tree = other``, as code written
                # against the guide does) has not been asked for its trimmed moments yet
                tree.keep_trimmed_moments()
            return tree._trim.tree, tree._trim.kept, tree._trimmed_state, TRIM_QUANTILE
        if tree._win is not None:
            return tree._win.tree, tree._win.inside, tree._window_state, None
        return None

    def _correlation_root(self, cid: int) -> CorrelationRoot:
        """The kept ``P^(-1/2)`` of level ``cid``'s population for its feature shares: the per-item
        path's cache (issue 11), refreshed by :class:`CorrelationRoot` itself when that population's
        correlations drift, so it needs no invalidation (and is not part of any state)."""
        roots = self.__dict__.setdefault("_correlation_roots", {})
        root = roots.get(cid)
        if root is None:
            if len(roots) >= _MAX_KEPT_ROOTS:      # many cohorts scored one by one: bounded memory
                roots.clear()
            root = roots[cid] = CorrelationRoot()
        return root

    def _score_slot(self, agent_id: Hashable, slot: int, x: np.ndarray) -> dict[str, Any]:
        win = self.tree._win
        if self.scoring in TRIMMED_MODES or self.scoring in SKETCH_MODES or (win is not None and (
                self.score_levels != "population" or not win.inside(np.array([slot]))[0])):
            return self._score_slot_trimmed(agent_id, slot, x)
        tree = self.tree
        # a window: a member inside (one just written is) is scored leave-one-out against the
        # window's moments on the hot path; the count reported is still every member's
        base = tree._tree if win is None else win.tree
        cohorts = tree._cohorts
        d = x.shape[0]
        own = int(cohorts.page_owner[slot // cohorts.page_size])
        # Root first, the agent's own cohort last.
        level_ids = [0] if self.score_levels == "population" else cohorts.ancestors(own)[::-1]
        alpha = self.significance_level / len(level_ids)
        thr2 = _chi2_threshold(alpha, d)
        warm_up = self.warm_up
        dx = base.deviations(x)      # from the shift (keeps the digits), in the tree's units
        if self.score_levels == "population":      # the hot path, without the per-level loop
            n, off, m2 = base.root_state()
            scorer = LeaveOneOutScorer(n, off, m2, self.shrinkage)
            d2, parts = scorer.score_deferred(dx - off, self._correlation_root(0))
            p = float(_special().chdtrc(d, d2))
            dist = math.sqrt(d2)
            warm = n >= warm_up
            flagged = warm and scorer.ok and p < alpha
            count = int(n) if win is None else int(tree._tree.root_state()[0])
            # the feature parts are computed when first read (ItemScore): most callers never do
            info = ItemScore.deferred({
                "agent_id": agent_id,
                "is_anomaly": flagged,
                "mahalanobis_distance": dist,
                "mahalanobis_squared": d2,
                "p_value": p,
                "decision_p_value": p,
                "threshold": math.sqrt(thr2),
                "threshold_squared": thr2,
                "significance_level": alpha,
                "decision_cutoff": self.significance_level,
                "cohort": cohorts.paths[own],
                "population_count": count,
                "warming_up": not warm,
                "levels": [ItemScore.deferred({
                    "cohort": (), "count": count, "mahalanobis_squared": d2, "mahalanobis_distance": dist,
                    "p_value": p, "is_anomaly": flagged, "warming_up": not warm}, parts)],
            }, parts, "levels")
            if win is not None:
                info["in_window"] = True
            return info
        levels = []
        parts0 = None
        for cid in level_ids:
            n, off, m2 = tree._cohort_state(cid)
            scorer = LeaveOneOutScorer(n, off, m2, self.shrinkage)
            d2, parts = scorer.score_deferred(dx - off, self._correlation_root(cid))
            if parts0 is None:
                parts0 = parts              # the population's, the result's own
            p = float(_special().chdtrc(d, d2))
            warm = n >= warm_up             # every level warms up on its own members
            levels.append(ItemScore.deferred({
                "cohort": cohorts.paths[cid],
                "count": int(n),
                "mahalanobis_squared": d2,
                "mahalanobis_distance": math.sqrt(d2),
                "p_value": p,
                "is_anomaly": warm and scorer.ok and p < alpha,
                "warming_up": not warm,
            }, parts))
        live = [lv["p_value"] for lv in levels if not lv["warming_up"]]
        decision_p = min(1.0, min(live) * len(level_ids)) if live else 1.0
        return self._item_result(agent_id, levels, decision_p, thr2, alpha, cohorts.paths[own], top_parts=parts0)

    def _item_result(self, agent_id: Hashable, levels: list[dict[str, Any]], decision_p: float, thr2: float,
                     alpha: float, cohort: Path, top_parts: DeferredParts | None = None) -> dict[str, Any]:
        """The per-item score dict of one agent from its levels' scores (``levels[0]``: the population);
        ``top_parts``: the population's parts still to compute (then ``levels[0]`` holds them too)."""
        top = levels[0]
        fields = {
            "agent_id": agent_id,
            "is_anomaly": any(lv["is_anomaly"] for lv in levels),
            "mahalanobis_distance": top["mahalanobis_distance"],
            "mahalanobis_squared": top["mahalanobis_squared"],
            "p_value": top["p_value"],
            "decision_p_value": decision_p,
            "threshold": math.sqrt(thr2),
            "threshold_squared": thr2,
            "significance_level": alpha,
            "decision_cutoff": self.significance_level,
            "cohort": cohort,
            "population_count": top["count"],
            "warming_up": top["warming_up"],
        }
        if top_parts is not None:
            fields["levels"] = levels
            return ItemScore.deferred(fields, top_parts, "levels")
        fields["feature_contributions"] = top["feature_contributions"]
        fields["levels"] = levels
        return fields

    def _score_slot_trimmed(self, agent_id: Hashable, slot: int, x: np.ndarray) -> dict[str, Any]:
        """:meth:`_score_slot` of a trimmed mode: the batch scoring of one row, as the per-item dict."""
        tree = self.tree
        cohorts = tree._cohorts
        own = int(cohorts.page_owner[slot // cohorts.page_size])
        n_levels = 1 if self.score_levels == "population" else len(cohorts.ancestors(own))
        alpha = self.significance_level / n_levels
        thr2 = _chi2_threshold(alpha, x.shape[0])
        ids = np.empty(1, dtype=object)
        ids[0] = agent_id
        # the per-item path keeps the mode's own p-values in every mode (calibration is a batch's,
        # documented; the hot path of the plain mode has none either)
        res = self._score_slots(ids, np.array([slot]), None, True, rows=x[None, :], flush=False, calibrate=False)
        pop_warming = bool(res["levels"][()]["warming_up"]) if "levels" in res else bool(res["warming_up"])
        levels = [{"cohort": (), "count": res["population_count"],
                   "mahalanobis_squared": float(res["mahalanobis_squared"][0]),
                   "mahalanobis_distance": float(res["mahalanobis_distance"][0]),
                   "p_value": float(res["p_value"][0]),
                   "is_anomaly": (not pop_warming) and float(res["p_value"][0]) < alpha,
                   "warming_up": pop_warming,
                   "feature_contributions": res["feature_contributions"][0]}]
        for path, lv in res.get("levels", {}).items():
            if path == ():
                continue
            levels.append({"cohort": path, "count": lv["count"],
                           "mahalanobis_squared": float(lv["mahalanobis_squared"][0]),
                           "mahalanobis_distance": math.sqrt(float(lv["mahalanobis_squared"][0])),
                           "p_value": float(lv["p_value"][0]),
                           "is_anomaly": (not lv["warming_up"]) and float(lv["p_value"][0]) < alpha,
                           "warming_up": lv["warming_up"], "feature_contributions": None})
        levels[1:] = sorted(levels[1:], key=lambda lv: len(lv["cohort"]))
        extra = {}
        if "in_window" in res:     # a stale member is scored but not judged (see _score_slots)
            extra["in_window"] = bool(res["in_window"][0])
            if not extra["in_window"]:
                for lv in levels:
                    lv["is_anomaly"] = False
        return extra | self._item_result(agent_id, levels, float(res["decision_p_value"][0]), thr2, alpha,
                                         cohorts.paths[own])
