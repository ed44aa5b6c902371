"""The state each Ray actor holds: plain classes, importable and testable without Ray.

A *shard* is a unit of state that an engine may place on a worker: a set of
regions (their agents' part of the tree and their CAP replicas), the root
aggregator, or an evidence partition. Shards never hold one object per agent:
batches arrive as NumPy arrays.

Every call carries ``expect``: how many state-changing calls the caller
believes the shard has applied. A shard that does not match (typically a
restarted actor, which re-ran its constructor and so lost its state) raises
:class:`StaleShardError`, and the driver restores it from its last checkpoint
plus the calls logged since (see :mod:`swarmguard.engines.ray_engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..api.cap import compute_confidence_factor
from ..api.tree import HierarchicalStatisticalTree
from ..errors import StaleShardError, SwarmGuardError
from ..structures.replica import RegionReplica
from ..structures.score_null import ScoreNull
from ..values.moments import Moments
from ..values.version_vector import VersionVector
from .evidence_shard import EvidenceShard
from .score_calibration import calibrate_scores
from .shard_base import Versioned
from .shard_math import (
    _for_scoring,
    judge_against,
    merge_scaled,
    merge_summaries,
    moments_from_state,
    score_rows,
    summary_from_states,
)

__all__ = ["StaleShardError", "RegionShard", "RootAggregator", "EvidenceShard", "score_rows",
           "moments_from_state", "merge_scaled"]




class RegionShard(Versioned):
    """One or more regions: their agents' part of the tree and their CAP replicas.

    The tree is a :class:`HierarchicalStatisticalTree` of this shard's agents
    (with their cohorts); the replicas are :class:`RegionReplica` objects, one
    per hosted region. Every shard hears of every region (:meth:`add_regions`),
    hosted or not, so that its replicas see the whole swarm.
    """

    def __init__(self, start: float, *, branching_factor: int = 10, feature_dimensions: int | None = None,
                 max_staleness_seconds: float = 5.0, confidence_decay_rate: float = 0.1,
                 statistical: bool = True, trimmed: bool = False, window_rounds: int | None = None):
        self.start = float(start)
        self.window_rounds = window_rounds   # keep windowed moments (the members of the last rounds)
        self.trimmed = trimmed       # keep trimmed moments, judged against the merged population
        self.branching_factor = branching_factor
        self.feature_dimensions = feature_dimensions
        self.max_staleness_seconds = max_staleness_seconds
        self.confidence_decay_rate = confidence_decay_rate
        self.statistical = statistical
        self._fresh()

    def _fresh(self) -> None:
        self.seq = 0
        self.tree = HierarchicalStatisticalTree(self.branching_factor, self.feature_dimensions,
                                                window_rounds=self.window_rounds)
        if self.trimmed:
            self.tree.judge_trimmed_elsewhere()
        self.replicas: dict[str, RegionReplica] = {}
        self.born: dict[str, float] = {}          # every region of the swarm, in birth order
        self._batch: dict[str, Any] | None = None
        # the last score / score_all answer and the state it was for, read by calibrate
        self._scored: tuple[int, str, dict[str, Any]] | None = None

    def add_regions(self, expect: int, names: Sequence[str], born: Sequence[float], hosted: Sequence[str],
                    dim: int) -> None:
        """New regions of the swarm, in order; this shard hosts (makes a replica for) ``hosted``.

        As the in-process resolver: a newcomer's replica has never heard from
        the others (it knows them as of the start); the others' view of the
        newcomer is complete as of its birth (it had no agents before).
        """
        self._check(expect)
        for name, b in zip(names, born, strict=True):
            if name in self.born:
                continue
            for replica in self.replicas.values():
                replica.know_region(name, float(b))
            if name in hosted:
                replica = RegionReplica(name, int(dim), start_time=float(b))
                for other in self.born:
                    replica.know_region(other, self.start)
                self.replicas[name] = replica
            self.born[name] = float(b)
        self.seq += 1

    # ------------------------------------------------------------------ tree
    def _summary(self) -> dict[str, Any]:
        # Moments in the caller's units (statistics) and in the tree's internal
        # power-of-two units with their exponent (scoring: no squares underflow).
        out = summary_from_states(self.tree.node_states())
        if self.trimmed:     # the kept members' moments too (robust scoring)
            out["trimmed"] = summary_from_states(self.tree.trimmed_node_states())
        if self.window_rounds is not None:     # the members inside the window
            out["window"] = summary_from_states(self.tree.window_node_states())
        return out

    def update(self, expect: int, agent_ids: np.ndarray, X: np.ndarray, cohorts: Any,
               regions: np.ndarray, open_round: bool = True) -> dict[str, Any]:
        """Write a batch into this shard's tree; return its population and cohort moments.
        ``open_round=False``: a per-item call's row, in the window's open round."""
        self._check(expect)
        slots, ids, rows = self.tree.update_rows(agent_ids, X, cohorts, open_round)
        self.seq += 1
        paths, path_index = self.tree.slot_cohorts(slots)
        self._batch = {"ids": ids, "X": rows, "regions": np.asarray(regions), "paths": paths,
                       "path_index": path_index, "slots": slots}
        return self._summary()

    def advance_round(self, expect: int) -> dict[str, Any]:
        """A round this shard has no rows in (a window): open it all the same, as the one
        in-process tree does for every batch; return the summary (members may have left)."""
        self._check(expect)
        self.tree.advance_round()
        self.seq += 1
        return self._summary()

    def judge(self, expect: int, merged: dict[str, Any]) -> dict[str, Any]:
        """Judge the last batch's rows against the merged full population (the trimming rule,
        :func:`~swarmguard.engines.shard_math.judge_against`), count the kept ones in this
        shard's trimmed moments; return the shard's summary (with its trimmed moments)."""
        self._check(expect)
        b = self._batch
        kept = judge_against(b["X"], merged) if len(b["ids"]) else np.zeros(0, dtype=bool)
        self.tree.set_trimmed_flags(b["slots"], kept)
        self.seq += 1
        return self._summary()

    def remove(self, expect: int, agent_ids: np.ndarray) -> None:
        """Remove agents that moved to another shard."""
        self._check(expect)
        for a in np.asarray(agent_ids).tolist():
            self.tree.remove_agent(a)
        self.seq += 1

    def summary(self, expect: int) -> dict[str, Any]:
        self._check(expect)
        return self._summary()

    def _subset_args(self, merged_trimmed: dict[str, Any] | None, merged_window: dict[str, Any] | None,
                     need: set, slots: np.ndarray):
        """The merged subset moments to score against (trimmed, or windowed) and who is counted in them."""
        if merged_window is not None:
            w_pop, w_cohorts, w_exponents = _for_scoring(merged_window, need)
            return w_pop, w_cohorts, w_exponents, self.tree.window_flags(slots)
        if merged_trimmed is None:
            return None
        t_pop, t_cohorts, t_exponents = _for_scoring(merged_trimmed, need)
        return t_pop, t_cohorts, t_exponents, self.tree.trimmed_flags(slots)

    def score(self, expect: int, merged: dict[str, Any], shrinkage: Any, warm_up: int,
              score_levels: str, merged_trimmed: dict[str, Any] | None = None,
              merged_window: dict[str, Any] | None = None) -> dict[str, Any]:
        """Score the last batch against the merged moments the root aggregator sent
        (``merged_trimmed``: against the merged trimmed moments, ``scoring="robust"``;
        ``merged_window``: the merged windowed moments). The mode's own p-values:
        ``calibrate=True`` follows in :meth:`calibrate`."""
        self._check(expect)
        b = self._batch
        need = {p[:k] for p in b["paths"] for k in range(1, len(p) + 1)}
        population, cohorts, exponents = _for_scoring(merged, need)
        out = score_rows(b["X"], b["paths"], b["path_index"], population,
                         cohorts, shrinkage, warm_up, score_levels, exponents,
                         trimmed=self._subset_args(merged_trimmed, merged_window, need, b["slots"]),
                         window=merged_window is not None)
        out["first_cohort"] = b["paths"][int(b["path_index"][0])] if len(b["ids"]) else None
        self._scored = (self.seq, "score", out)
        return out

    def score_all(self, expect: int, merged: dict[str, Any], shrinkage: Any, warm_up: int,
                  score_levels: str, merged_trimmed: dict[str, Any] | None = None,
                  merged_window: dict[str, Any] | None = None) -> dict[str, Any]:
        """Score every agent of the shard (in slot order); ``agent_ids`` says who (with a window,
        ``in_window`` says who is inside it)."""
        self._check(expect)
        slots, ids, X = self.tree.occupied_rows()
        paths, path_index = self.tree.slot_cohorts(slots)
        need = {p[:k] for p in paths for k in range(1, len(p) + 1)}
        population, cohorts, exponents = _for_scoring(merged, need)
        out = score_rows(X, paths, path_index, population, cohorts, shrinkage, warm_up, score_levels, exponents,
                         trimmed=self._subset_args(merged_trimmed, merged_window, need, slots),
                         window=merged_window is not None)
        out["agent_ids"] = np.array(ids.tolist())
        if merged_window is not None:
            out["in_window"] = self.tree.window_flags(slots)
        self._scored = (self.seq, "score_all", out)
        return out

    def calibrate(self, expect: int, kind: str, null: bytes, scale: float, *score_args: Any) -> dict[str, Any]:
        """The rows of the last ``kind`` call (``"score"``: the batch, ``"score_all"``: every
        agent) with calibrated p-values (``calibrate=True``): against the driver's score null
        (:meth:`ScoreNull.to_bytes`), their distances divided by ``scale`` (the driver's
        :meth:`ScoreNull.scale_of` the whole batch), the levels recombined
        (:func:`~swarmguard.engines.score_calibration.calibrate_scores`). Returns ``p_value``
        and ``decision_p_value``. Reads the scores that call kept; a shard that lost them (a
        restarted actor, replayed to the same state) scores again with ``score_args``."""
        self._check(expect)
        kept = self._scored
        if kept is not None and kept[:2] == (self.seq, kind):
            out = kept[2]
        else:
            out = {"score": self.score, "score_all": self.score_all}[kind](expect, *score_args)
        cal = calibrate_scores(ScoreNull.from_bytes(null), out["mahalanobis_squared"], out["p_value"],
                               out["decision_p_value"], out["population_warm"], out.get("cohort_p_min"),
                               out["levels"], scale)
        return {"p_value": cal.p_value, "decision_p_value": cal.decision_p_value}

    # ------------------------------------------------------------------ CAP replicas
    def _replica(self, region: str) -> RegionReplica:
        if region not in self.replicas:
            raise SwarmGuardError(f"region {region!r} is not hosted by this shard")
        return self.replicas[region]

    def cap_write(self, expect: int, region: str, scores: np.ndarray, timestamp: float, now: float,
                  write_through: bool = False, view_at: float | None = None, rows: Any = None):
        """The last batch's rows of ``region`` as that region's writes; returns how many.

        With ``view_at``, returns ``(count, view)``: also the region's view at
        that time (:meth:`cap_view`, saving a call). With ``write_through``
        (STRONG) returns ``(count, entries)``: the registers the write changed,
        for the reachable peers to join. ``rows``: the region's ``(ids, X)``
        when they are not (all) in this shard's last batch.
        """
        self._check(expect)
        if rows is None:
            b = self._batch
            mine = np.flatnonzero(b["regions"] == region)
            ids, X = b["ids"][mine], b["X"][mine]
        else:
            ids, X = rows
        replica = self._replica(region)
        m = int(X.shape[0])
        outcome = replica.update_many(ids, np.full(m, timestamp), X, scores, None, now=now)
        self.seq += 1
        if write_through:
            changed = outcome.changed_rows
            return m, (replica.registers.entries(changed) if changed.shape[0] else None)
        if view_at is not None:
            return m, self._view(region, view_at)
        return m

    def merge_registers(self, expect: int, region: str, entries: Any) -> None:
        """Join a peer's write-through entries into ``region``'s replica (STRONG)."""
        self._check(expect)
        self.seq += 1
        if entries is not None:
            self._replica(region).merge_registers(entries)

    def cap_view(self, expect: int, region: str, now: float) -> dict[str, Any]:
        """Confidence factor and counts of ``region``'s view at ``now``."""
        self._check(expect)
        return self._view(region, now)

    def _view(self, region: str, now: float) -> dict[str, Any]:
        replica = self.replicas.get(region)
        counts = replica.region_counts() if replica else {}
        ages = replica.ages(now) if replica else {}
        cf = compute_confidence_factor(counts, ages, region, self.max_staleness_seconds,
                                       self.confidence_decay_rate) if self.statistical else None
        return {"confidence_factor": cf, "region_counts": counts, "ages": ages}

    def version_of(self, expect: int, region: str) -> dict[str, np.ndarray] | None:
        self._check(expect)
        r = self.replicas.get(region)
        return None if r is None else r.version.to_dict()

    def prepare_delta(self, expect: int, src: str, dst: str, dst_version: Any, now: float):
        """Sender side of one anti-entropy message: ((rows, bytes), delta) for ``dst``."""
        self._check(expect)
        r = self.replicas.get(src)
        self.seq += 1
        if r is None:
            return (0, 0), None
        if dst_version is not None:
            r.acknowledge(dst, VersionVector.from_dict(dst_version))
        delta = r.delta_for(dst, now)
        return (int(delta["registers.seq"].shape[0]), int(sum(v.nbytes for v in delta.values()))), delta

    def merge_delta(self, expect: int, dst: str, delta: Any) -> dict[str, np.ndarray] | None:
        """Receiver side: join the delta; return the acknowledgement (our version)."""
        self._check(expect)
        self.seq += 1
        if delta is None or dst not in self.replicas:
            return None
        return self.replicas[dst].merge_delta(delta).to_dict()

    def acknowledge(self, expect: int, src: str, dst: str, ack: Any) -> None:
        self._check(expect)
        self.seq += 1
        if ack is not None and src in self.replicas:
            self.replicas[src].acknowledge(dst, VersionVector.from_dict(ack))

    def replica(self, expect: int, region: str) -> RegionReplica:
        """The live replica (a copy, for tests and inspection)."""
        self._check(expect)
        return self._replica(region)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, expect: int) -> tuple[int, dict[str, Any]]:
        """(seq, state): the tree's and the replicas' values (``to_dict``), not their objects."""
        self._check(expect)
        state = {"tree": self.tree.to_dict() if len(self.tree) else None,
                 "replicas": {name: r.to_dict() for name, r in self.replicas.items()},
                 "born": dict(self.born)}
        return self.seq, state

    def restore(self, seq: int, state: dict[str, Any] | None) -> int:
        self._fresh()
        if state is not None:
            if state["tree"] is not None:
                self.tree = HierarchicalStatisticalTree.from_dict(dict(state["tree"]))
                if self.trimmed:     # the flags came back with the tree; new ones are still the driver's
                    self.tree.judge_trimmed_elsewhere()
            self.replicas = {name: RegionReplica.from_dict(r) for name, r in state["replicas"].items()}
            self.born = dict(state["born"])
        self.seq = seq
        return self.seq


class RootAggregator(Versioned):
    """The root of the tree across machines: merges the shards' moments.

    Stateless between rounds but for the last merge (kept for
    :meth:`population`): a restart loses nothing that the next merge does not
    rebuild, so it needs no checkpoint.
    """

    def __init__(self) -> None:
        self.seq = 0
        self.last: dict[str, Any] | None = None

    def merge(self, expect: int, *summaries: dict[str, Any]) -> dict[str, Any]:
        """Population and cohort moments of the union of the shards' summaries
        (:func:`~swarmguard.engines.shard_math.merge_summaries`)."""
        self._check(expect)
        self.last = merge_summaries(summaries)
        return self.last

    def merge_trimmed(self, expect: int, *summaries: dict[str, Any]) -> dict[str, Any]:
        """The same for the shards' trimmed moments (their summaries' ``trimmed`` part)."""
        self._check(expect)
        return merge_summaries([s["trimmed"] for s in summaries])

    def merge_window(self, expect: int, *summaries: dict[str, Any]) -> dict[str, Any]:
        """The same for the shards' windowed moments (their summaries' ``window`` part)."""
        self._check(expect)
        return merge_summaries([s["window"] for s in summaries])

    def population(self) -> Moments | None:
        return None if self.last is None else self.last["population"]

    def restore(self, seq: int, state: Any = None) -> int:
        """Nothing to restore: the next merge rebuilds everything."""
        self.seq, self.last = 0, None
        return self.seq
