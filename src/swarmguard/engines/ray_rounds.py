"""The Ray engine's rounds: a batch scored on the actors, its CAP writes, the per-item one-row round.

A round's path is described in :mod:`swarmguard.engines.ray_engine` (*A round*): the
shards update their trees, the root merges their moments, the shards score their rows,
the driver applies the false-discovery cut and drives the CAP writes in the in-process
resolver's order; the detector then decides. A part of
:class:`~swarmguard.engines.ray_engine.RayEngine`'s class.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from typing import Any

import numpy as np

from ..api.cap import ConsistencyModel
from ..api.engine import ItemResult, RoundBatch, ScoredRound, register_scores
from ..api.protocol import read_behavior
from ..api.tree import HierarchicalStatisticalTree
from ..errors import InvalidInputError, InvalidTypeError, UnknownAgentError
from ..structures.significance import chi2_threshold, significance_cut
from ..validation import as_feature_vector, check_cohort, check_finite_float
from ..values.agent_index import check_wire_id
from ..values.version_vector import check_region_name
from .ray_log import round_record, validate_ids

__all__ = ["RayRounds"]


class RayRounds:
    """Rounds of :class:`~swarmguard.engines.ray_engine.RayEngine` (a part of its class)."""

    def score_round(self, batch: RoundBatch) -> ScoredRound:
        """A round on the actors, up to the decision (the detector's): engine-side checks first.

        The batch's ``stay`` marks rows whose known agents keep their place in the
        tree (the per-item path's data without a cohort), written to their
        region's replica all the same.
        """
        X, ids, regions, cohorts, ts, now = (batch.X, batch.agent_ids, batch.regions, batch.cohorts,
                                             batch.timestamp, batch.now)
        names, inverse, q, stay = batch.region_names, batch.region_index, batch.fdr, batch.stay
        n, d = X.shape
        ids = validate_ids(ids)
        order = [check_region_name(r) for r in names.tolist()]
        if self.consistency_model is ConsistencyModel.STRONG:
            self._topology.require_quorum(order)
        if np.unique(ids).size != n:
            raise InvalidInputError("agent_ids holds the same id twice in one batch")
        if self._route_kind is not None and n and self._route_kind != ids.dtype.kind:
            raise InvalidTypeError("the Ray backend keeps one kind of agent id: these are "
                                   f"{'strings' if ids.dtype.kind == 'U' else 'ints'}, earlier ones were not")
        if cohorts is None:
            cohorts = regions
        HierarchicalStatisticalTree.check_cohorts(cohorts, n)     # the tree's own check, on the driver
        if isinstance(cohorts, (str, tuple)):
            cohorts = [cohorts] * n if isinstance(cohorts, tuple) else np.full(n, cohorts)
        elif not (isinstance(cohorts, np.ndarray) and cohorts.dtype.kind == "U"):
            cohorts = list(cohorts)
        # Everything above only reads: a refused round changes nothing.
        if self._dim is None:
            self._dim = d
        self._place([*self._topology.declared, *order])
        self._announce(self._topology.declared, self._start)
        region_shard = np.array([self._shard_of_region[r] for r in order], dtype=np.int64)
        shard = region_shard[inverse]
        if stay is not None and stay.any():
            known = self._shard_of_agents(ids)
            shard = np.where(stay & (known >= 0), known, shard)
        moved = self._route(ids, shard)
        ray = self.ray
        clock = [time.perf_counter()]
        phases: dict[str, float] = {}

        def lap(name: str) -> None:
            t = time.perf_counter()
            phases[name] = t - clock[0]
            clock[0] = t
        lap("validate")
        for s, gone in moved.items():
            self.sys.call(self.region_shards[s], "remove", gone, mutating=True)
            self._summaries.pop(s, None)
        # ---- 1. each shard updates its tree (arrays through the object store)
        rows_of = {s: np.flatnonzero(shard == s) for s in np.unique(shard).tolist()}
        calls = []
        for s, rows in rows_of.items():
            part_c = cohorts[rows] if isinstance(cohorts, np.ndarray) else [cohorts[i] for i in rows.tolist()]
            # big parts go through the object store once (and stay there for replay); small ones inline
            put = ray.put if rows.size * d >= 4096 else (lambda a: a)
            calls.append((self.region_shards[s], "update",
                          (put(ids[rows]), put(np.ascontiguousarray(X[rows])), part_c, regions[rows], stay is None),
                          True))
        targets = list(rows_of)
        if self._window_rounds is not None and stay is None:
            # a batch opens a round on the one in-process tree: on every shard here, rows or not
            idle = [s for s in range(len(self.region_shards)) if s not in rows_of]
            calls += [(self.region_shards[s], "advance_round", (), True) for s in idle]
            targets += idle
        summaries = dict(zip(targets, self._gather(calls), strict=True))
        self._summaries.update(summaries)
        lap("update")
        # ---- 2. the root merges every shard's moments (untouched shards' are those they last sent)
        rest = [s for s in range(len(self.region_shards)) if s not in self._summaries]
        for s, value in zip(rest, self._gather([(self.region_shards[s], "summary", (), False) for s in rest]),
                            strict=True):
            self._summaries[s] = value
        summaries = self._summaries
        merged = self.sys.call(self.root, "merge", *[summaries[s] for s in range(len(self.region_shards))])
        self._last_merge = merged
        merged_ref = ray.put(merged)
        lap("merge")
        trimmed_ref = None
        if self._trimmed:
            # ---- 2b. robust scoring: the round's rows are judged against the merged full
            # population (as the in-process tree judges a batch against the moments that hold
            # it), each shard counts its kept rows in its trimmed moments, the root merges those
            judged = self._gather([(self.region_shards[s], "judge", (merged_ref,), True) for s in rows_of])
            self._summaries.update(zip(rows_of, judged, strict=True))
            self._last_trimmed = self.sys.call(self.root, "merge_trimmed",
                                               *[summaries[s] for s in range(len(self.region_shards))])
            trimmed_ref = ray.put(self._last_trimmed)
            lap("trim")
        window_ref = None
        if self._window_rounds is not None:
            self._last_window = self.sys.call(self.root, "merge_window",
                                              *[summaries[s] for s in range(len(self.region_shards))])
            window_ref = ray.put(self._last_window)
        calibrating = self._null is not None and stay is None
        # ---- 3. shards score their rows against the population and their cohorts, once: the
        # null (calibrate=True) is the driver's, applied below to every row at once
        score_args = (merged_ref, self.shrinkage, self.warm_up, self.score_levels, trimmed_ref, window_ref)
        scored = self._gather([(self.region_shards[s], "score", score_args, False) for s in rows_of])
        d2 = np.empty(n)
        p = np.empty(n)
        decision_p = np.empty(n)
        levels = np.empty(n, dtype=np.int64)
        cohort_p_min = np.empty(n) if self.score_levels == "all" else None
        any_warm = population_warm = False
        first_cohort = None
        for rows, res in zip(rows_of.values(), scored, strict=True):
            d2[rows], p[rows], decision_p[rows], levels[rows] = (res["mahalanobis_squared"], res["p_value"],
                                                                  res["decision_p_value"], res["levels"])
            if cohort_p_min is not None:
                cohort_p_min[rows] = res["cohort_p_min"]
            any_warm |= res["any_warm"]
            population_warm |= res["population_warm"]     # the same merged moments on every shard
            if rows[0] == 0:
                first_cohort = res["first_cohort"]
        null_scale = null_count = null_p_floor = None
        if calibrating:
            # the null the round is tested against, as in process (before it admits the round)
            null_count, null_p_floor = self._null.count, self._null.p_floor
            # a round's rows are tested against the null of the earlier rounds (a relative null:
            # their distances over the median of the whole round's, as in process): the driver takes
            # the scale, the shards calibrate the rows they kept from the pass, in parallel (the
            # per-item path, a one-row round, keeps the mode's own p-values and leaves the null alone)
            null_scale = self._null.scale_of(d2)
            if self._null.warm:
                null_ref = ray.put(self._null.to_bytes())
                calibrated = self._gather([(self.region_shards[s], "calibrate",
                                            ("score", null_ref, null_scale, *score_args), False) for s in rows_of])
                p, decision_p = np.empty(n), np.empty(n)
                for rows, res in zip(rows_of.values(), calibrated, strict=True):
                    p[rows], decision_p[rows] = res["p_value"], res["decision_p_value"]
        lap("score")
        decision = significance_cut(decision_p, d2, d, q=q, alpha=self.significance_level, any_warm=any_warm)
        flagged_mask, cut, thr2 = decision.flagged, decision.cut, decision.threshold_squared
        if calibrating and any_warm:
            # the round's members enter the null after its decision, flags left out but the expected
            # false ones (swarmguard.structures.score_null), in the batch's order, as in process (a
            # round under warm_up, nobody judged, stays out as in process)
            flagged_null = flagged_mask if self._null.warm else None
            if q is not None:
                self._null.admit(d2, flagged_null, q, scale=null_scale)
            else:
                self._null.admit(d2, flagged_null, alpha=self.significance_level, scale=null_scale)
        # ---- 4. CAP: each region's writes, in the in-process resolver's order
        region_cf, accepted = self._cap_writes(order, inverse, register_scores(d2), ts, ids, X, shard,
                                                region_shard, now)
        confidence = region_cf[inverse]
        lap("cap")
        self._phases, self._phase_clock = phases, clock
        return ScoredRound(ids, d2, p, decision_p, flagged_mask, cut, thr2, confidence, names, region_cf, accepted,
                           ts, detail={"any_warm": any_warm, "p_cut": cut, "levels": levels,
                                       "first_cohort": first_cohort},
                           null_score=d2 if calibrating else None, null_scale=null_scale,
                           null_count=null_count, null_p_floor=null_p_floor)

    def round_done(self, scored: ScoredRound) -> None:
        """After the detector's evidence and decision: count the round, checkpoint when due."""
        phases, clock = self._phases, self._phase_clock

        def lap(name: str) -> None:
            t = time.perf_counter()
            phases[name] = t - clock[0]
            clock[0] = t
        lap("evidence+consensus")
        self._rounds += 1
        self._last_detail = scored.detail
        # Every checkpoint_every rounds' worth of rows: whole-swarm rounds checkpoint every
        # checkpoint_every rounds, per-item calls every checkpoint_every x swarm size calls
        # (or sooner, when an actor's replay log reaches MAX_LOG calls).
        if self._maybe_checkpoint(scored.agent_ids.shape[0]):
            lap("checkpoint")
        self.last_round_seconds = phases

    def _cap_writes(self, order: list[str], inverse: np.ndarray, d2: np.ndarray, ts: float, ids: np.ndarray,
                    X: np.ndarray, shard: np.ndarray, region_shard: np.ndarray, now: float):
        """Each region's writes and view, as the in-process resolver orders them.

        ``now`` is the round's processing time, read from the clock (and
        checked) before anything changed: every write, view and the automatic
        sync of the round use it, as in process.

        Serial until this round's automatic sync has run (it ships what was
        written before it) and the last new region was born (the regions
        before it do not see it), and under STRONG throughout (each write goes
        through to every reachable replica before the next region writes);
        after that, every actor writes its regions at once.
        """
        region_cf = np.ones(len(order))
        accepted = 0
        strong = self.consistency_model is ConsistencyModel.STRONG
        # A region's rows are in its host's last batch, unless some stayed on another actor's tree.
        extra = []
        for k in range(len(order)):
            rows = np.flatnonzero(inverse == k)
            extra.append((ids[rows], X[rows]) if (shard[rows] != region_shard[k]).any() else None)
        synced = self.auto_sync_seconds is None
        now = self._time.advance(now)
        k = 0
        while k < len(order) and (strong or not synced or any(r not in self._topology.born for r in order[k:])):
            name = order[k]
            h = self.region_shards[self._shard_of_region[name]]
            self._announce([name], now)          # a new region is born as it first writes
            view = None
            sync_due = not synced and now - self._last_sync >= self.auto_sync_seconds
            if strong:
                (count, refs) = self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, True, None,
                                              extra[k], mutating=True, num_returns=2)
                for peer in self._topology.reachable(name):
                    if peer != name:
                        self.sys.call(self.region_shards[self._shard_of_region[peer]], "merge_registers",
                                      peer, refs[1], mutating=True)
            elif sync_due:
                count = self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, False, None, extra[k],
                                      mutating=True)
            else:       # the write and the view in one call (the clock reading is the same)
                count, view = self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, False,
                                            now, extra[k], mutating=True)
            accepted += count
            if sync_due:
                self._sync(now)        # inside the round: no checkpoint until the round is whole
                synced = True
            if view is None:
                view = self.sys.call(h, "cap_view", name, now)
            cf = view["confidence_factor"]
            region_cf[k] = 1.0 if cf is None else cf
            k += 1
        rest = list(range(k, len(order)))
        replies = self._gather([(self.region_shards[self._shard_of_region[order[j]]], "cap_write",
                                 (order[j], d2[inverse == j], ts, now, False, now, extra[j]), True)
                                for j in rest])
        for j, (count, view) in zip(rest, replies, strict=True):
            accepted += count
            cf = view["confidence_factor"]
            region_cf[j] = 1.0 if cf is None else cf
        return region_cf, accepted

    # ------------------------------------------------------------------ per item (the guide's loop)
    def process_item(self, agent_id: Hashable, behavioral_data: Any) -> ItemResult:
        """The guide's main loop for one observation, on the actors (a one-row round).

        Returns what the in-process detector returns: ``agent_id``, ``action``,
        ``confidence``, ``evidence`` (the agent's consensus, None before any
        evidence) and ``anomaly`` (the anomaly test: ``is_anomaly``, distances,
        p-values, threshold, cohort, population count, warm-up). The row's
        anomaly cut is the significance level (no false-discovery batch); the
        decision is the detector's round's. Each call is a few actor round
        trips: use ``process_round`` for volume.
        """
        det = self.det
        data_id, features, cohort = read_behavior(behavioral_data)
        agent_id = check_wire_id(agent_id, "agent_id")       # the replicas' rule, as in process
        if check_wire_id(data_id, "behavioral_data.agent_id") != agent_id:
            raise InvalidInputError(f"agent_id {agent_id!r} differs from the data's agent_id {data_id!r}: "
                                    "the tree and the replicas would update different agents")
        x = as_feature_vector(features, self._dim)
        path = check_cohort(cohort)
        region = path[0] if path else self.settings.default_region
        ts = det._given_timestamp(behavioral_data)     # None: the round reads the clock, once
        if ts is not None:
            ts = check_finite_float(ts, "timestamp")
        uid = behavioral_data.get("id") if isinstance(behavioral_data, dict) else getattr(behavioral_data, "id", None)
        if uid is not None:
            check_wire_id(uid, "update id")     # refused as in process (the actors key writes by round)
        args = {"agent_ids": [agent_id], "X": x[None, :], "regions": region, "cohorts": [path], "timestamp": ts,
                "fdr": None}
        res = self._logged("item", lambda: round_record(**args),
                           lambda: det._run_round(**args, stay=np.array([path is None])))
        detail = self._last_detail
        d2 = float(res["mahalanobis_squared"][0])
        merged = self._last_merge["population"] if self._last_merge else None
        alpha = self.significance_level / int(detail["levels"][0])     # per level, as in process
        thr2 = chi2_threshold(alpha, self._dim)
        anomaly = {
            "agent_id": agent_id,
            "is_anomaly": bool(res["is_anomaly"][0]),
            "mahalanobis_distance": math.sqrt(d2),
            "mahalanobis_squared": d2,
            "p_value": float(res["p_value"][0]),
            "decision_p_value": float(res["decision_p_value"][0]),
            "threshold": math.sqrt(thr2),
            "threshold_squared": thr2,
            "significance_level": alpha,
            "decision_cutoff": self.significance_level,
            "cohort": detail["first_cohort"],
            "population_count": 0 if merged is None else int(merged.count),
            "warming_up": not detail["any_warm"],
        }
        try:
            evidence = self.consensus.consensus(agent_id)
        except UnknownAgentError:
            evidence = None
        return ItemResult(agent_id=agent_id, action=str(res["action"][0]), confidence=float(res["confidence"][0]),
                          evidence=evidence, anomaly=anomaly)
