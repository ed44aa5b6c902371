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

import resource
import uuid
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..api.cap import compute_confidence_factor
from ..api.consensus import StableBayesianConsensus
from ..api.tree import HierarchicalStatisticalTree
from ..errors import DuplicateEvidenceError, StaleShardError, SwarmGuardError, UnknownAgentError
from ..structures.evidence import CoveredCounts
from ..structures.replica import RegionReplica
from ..structures.robust_fusion import SourceEvents, count_flagged_pairs, far_outlier_events
from ..structures.scoring import combine_levels, score_population
from ..structures.slot_tree import MAX_UNIT_EXPONENT, scale_outer
from ..values.moments import Moments, combine_groups
from ..values.version_vector import VersionVector

__all__ = ["StaleShardError", "RegionShard", "RootAggregator", "EvidenceShard", "score_rows",
           "moments_from_state", "merge_scaled"]


_PROCESS = uuid.uuid4().hex      # differs in every process: a restarted actor has a new one


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


def score_rows(X: np.ndarray, row_paths: Sequence[tuple[str, ...]], row_path_index: np.ndarray,
               population: Moments, cohorts: dict[tuple[str, ...], Moments], shrinkage: Any,
               warm_up: int, score_levels: str, exponents: dict[Any, np.ndarray] | None = None
               ) -> dict[str, Any]:
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
    ``decision_p_value``, ``levels`` (per row, how many levels were combined)
    and ``any_warm`` (some level was out of warm-up).
    """
    def deviations(rows: np.ndarray, m: Moments, key: Any) -> np.ndarray:
        D = np.subtract(rows, m.shift)
        if exponents is not None:
            D *= np.ldexp(1.0, -exponents[key])      # exact: powers of two
        D -= m.offset
        return D

    d2, p, warm, _ = score_population(deviations(X, population, ()), float(population.count), population.offset,
                                      population.m2, shrinkage, warm_up)
    if score_levels != "all":
        return {"mahalanobis_squared": d2, "p_value": p, "decision_p_value": p, "any_warm": warm,
                "levels": np.ones(X.shape[0], dtype=np.int64)}

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
                    yield prefix, rows, float(c.count), c.offset, c.m2, deviations(X[rows], c, prefix)

    decision_p, any_warm, n_levels, _ = combine_levels(p, warm, groups(), shrinkage, warm_up)
    return {"mahalanobis_squared": d2, "p_value": p, "decision_p_value": decision_p,
            "any_warm": any_warm, "levels": n_levels.astype(np.int64)}


def _for_scoring(merged: dict[str, Any], need: set[tuple[str, ...]]):
    """(population, cohorts, exponents) to score against: the power-of-two scaled merge when present."""
    scaled = merged.get("scaled")
    src = scaled if scaled is not None else merged
    cohorts = {p: src["cohorts"][p] for p in need}
    return src["population"], cohorts, (scaled["exponents"] if scaled is not None else None)


class _Versioned:
    """The ``expect`` bookkeeping shared by every shard."""

    seq: int

    def _check(self, expect: int) -> None:
        if expect != self.seq:
            raise StaleShardError(f"{type(self).__name__} holds state {self.seq}, caller expects {expect}")

    def _step(self, expect: int) -> None:
        self._check(expect)
        self.seq += 1

    def ping(self) -> int:
        return self.seq

    def incarnation(self) -> str:
        """An id of the process this shard lives in (a restarted actor has another)."""
        return _PROCESS

    def peak_memory_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RegionShard(_Versioned):
    """One or more regions: their agents' part of the tree and their CAP replicas.

    The tree is a :class:`HierarchicalStatisticalTree` of this shard's agents
    (with their cohorts); the replicas are :class:`RegionReplica` objects, one
    per hosted region. Every shard hears of every region (:meth:`add_regions`),
    hosted or not, so that its replicas see the whole swarm.
    """

    def __init__(self, start: float, *, branching_factor: int = 10, feature_dimensions: int | None = None,
                 max_staleness_seconds: float = 5.0, confidence_decay_rate: float = 0.1,
                 statistical: bool = True):
        self.start = float(start)
        self.branching_factor = branching_factor
        self.feature_dimensions = feature_dimensions
        self.max_staleness_seconds = max_staleness_seconds
        self.confidence_decay_rate = confidence_decay_rate
        self.statistical = statistical
        self._fresh()

    def _fresh(self) -> None:
        self.seq = 0
        self.tree = HierarchicalStatisticalTree(self.branching_factor, self.feature_dimensions)
        self.replicas: dict[str, RegionReplica] = {}
        self.born: dict[str, float] = {}          # every region of the swarm, in birth order
        self._batch: dict[str, Any] | None = None

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
        nodes = self.tree.node_states()
        if nodes is None:
            return {"population": None, "cohorts": {}}
        shift, scale = nodes["shift"], nodes["exponent"]
        # Moments in the caller's units (statistics) and in the tree's internal
        # power-of-two units with their exponent (scoring: no squares underflow).
        n, off, m2 = nodes["population"]
        cohorts = {path: moments_from_state(cn, shift, coff, cm2, scale)
                   for path, (cn, coff, cm2) in nodes["cohorts"].items()}
        scaled_cohorts = {path: moments_from_state(cn, shift, coff, cm2)
                          for path, (cn, coff, cm2) in nodes["cohorts"].items()}
        return {"population": moments_from_state(n, shift, off, m2, scale), "cohorts": cohorts,
                "scaled": {"exponent": scale, "population": moments_from_state(n, shift, off, m2),
                           "cohorts": scaled_cohorts}}

    def update(self, expect: int, agent_ids: np.ndarray, X: np.ndarray, cohorts: Any,
               regions: np.ndarray) -> dict[str, Any]:
        """Write a batch into this shard's tree; return its population and cohort moments."""
        self._check(expect)
        slots, ids, rows = self.tree.update_rows(agent_ids, X, cohorts)
        self.seq += 1
        paths, path_index = self.tree.slot_cohorts(slots)
        self._batch = {"ids": ids, "X": rows, "regions": np.asarray(regions), "paths": paths,
                       "path_index": path_index}
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

    def score(self, expect: int, merged: dict[str, Any], shrinkage: Any, warm_up: int,
              score_levels: str) -> dict[str, Any]:
        """Score the last batch against the merged moments the root aggregator sent."""
        self._check(expect)
        b = self._batch
        need = {p[:k] for p in b["paths"] for k in range(1, len(p) + 1)}
        population, cohorts, exponents = _for_scoring(merged, need)
        out = score_rows(b["X"], b["paths"], b["path_index"], population,
                         cohorts, shrinkage, warm_up, score_levels, exponents)
        out["first_cohort"] = b["paths"][int(b["path_index"][0])] if len(b["ids"]) else None
        return out

    def score_all(self, expect: int, merged: dict[str, Any], shrinkage: Any, warm_up: int,
                  score_levels: str) -> dict[str, Any]:
        """Score every agent of the shard (in slot order); ``agent_ids`` says who."""
        self._check(expect)
        slots, ids, X = self.tree.occupied_rows()
        paths, path_index = self.tree.slot_cohorts(slots)
        need = {p[:k] for p in paths for k in range(1, len(p) + 1)}
        population, cohorts, exponents = _for_scoring(merged, need)
        out = score_rows(X, paths, path_index, population, cohorts, shrinkage, warm_up, score_levels, exponents)
        out["agent_ids"] = np.array(ids.tolist())
        return out

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
            self.replicas = {name: RegionReplica.from_dict(r) for name, r in state["replicas"].items()}
            self.born = dict(state["born"])
        self.seq = seq
        return self.seq


class RootAggregator(_Versioned):
    """The root of the tree across machines: merges the shards' moments.

    Stateless between rounds but for the last merge (kept for
    :meth:`population`): a restart loses nothing that the next merge does not
    rebuild, so it needs no checkpoint.
    """

    def __init__(self) -> None:
        self.seq = 0
        self.last: dict[str, Any] | None = None

    def merge(self, expect: int, *summaries: dict[str, Any]) -> dict[str, Any]:
        """Population and cohort moments of the union of the shards' summaries."""
        self._check(expect)
        pops = [s["population"] for s in summaries if s["population"] is not None]
        population = Moments.merge_all(pops)
        by_path: dict[tuple[str, ...], list[Moments]] = {}
        for s in summaries:
            for path, m in s["cohorts"].items():
                by_path.setdefault(path, []).append(m)
        cohorts = {p: (ms[0] if len(ms) == 1 else Moments.merge_all(ms)) for p, ms in by_path.items()}
        self.last = {"population": population, "cohorts": cohorts}
        scaled = [s["scaled"] for s in summaries if s["population"] is not None]
        if scaled and all(sc is not None for sc in scaled):
            pop_s, pop_e = merge_scaled([(sc["population"], sc["exponent"]) for sc in scaled])
            parts: dict[tuple[str, ...], list[tuple[Moments, np.ndarray]]] = {}
            for sc in scaled:
                for path, m in sc["cohorts"].items():
                    parts.setdefault(path, []).append((m, sc["exponent"]))
            merged_c = {p: merge_scaled(ps) for p, ps in parts.items()}
            exponents: dict[Any, np.ndarray] = {(): pop_e, **{p: e for p, (_, e) in merged_c.items()}}
            self.last["scaled"] = {"population": pop_s, "cohorts": {p: m for p, (m, _) in merged_c.items()},
                                   "exponents": exponents}
        return self.last

    def population(self) -> Moments | None:
        return None if self.last is None else self.last["population"]

    def restore(self, seq: int, state: Any = None) -> int:
        """Nothing to restore: the next merge rebuilds everything."""
        self.seq, self.last = 0, None
        return self.seq


class EvidenceShard(_Versioned):
    """One evidence partition: the exact evidence of the agents hashed to it.

    Holds a :class:`StableBayesianConsensus` of its agents' evidence; the
    per-agent fusion is local and exact; source reputation needs every
    partition's outlier counts, so consensus is two calls: :meth:`fuse`
    (outlier counts per source) and :meth:`finish` (given the globally flagged
    sources).
    """

    def __init__(self, **consensus_kwargs: Any):
        self.kwargs = consensus_kwargs
        self._fresh()

    def _fresh(self) -> None:
        self.seq = 0
        self.consensus = StableBayesianConsensus(**self.kwargs)
        self._fused: dict[str, Any] | None = None
        self._established: list[Hashable] | None = None   # sources out of probation, as of the last fuse
        self._covered = CoveredCounts()                   # for the driver's probation (covered_counts)

    def check(self, expect: int, batch: dict[str, Any] | None, every: tuple[Any, Any, np.ndarray], me: int) -> None:
        """Raise as :meth:`add` of ``batch`` would, changing nothing; also refuse the whole
        batch's evidence routed to other partitions (``every``: all ids, their sources,
        their partitions) whose key ``(source, evidence_id)`` this partition holds or
        receives too: the same evidence for another agent."""
        self._check(expect)
        if batch is not None:
            self.consensus.check_evidence_batch(**batch)
        ids, sources, part = every
        away = np.flatnonzero(part != me)
        if away.size == 0:
            return

        def take(col, rows):
            return col[rows] if isinstance(col, np.ndarray) else [col[i] for i in rows.tolist()]

        foreign, foreign_src = take(ids, away), take(sources, away)
        conflict = self.consensus.holds_evidence_many(foreign, foreign_src)
        if batch is not None:
            mine = batch["evidence_ids"]
            # Ids first (vectorised for integer or string arrays), then the few candidates' keys.
            if (isinstance(foreign, np.ndarray) and isinstance(mine, np.ndarray)
                    and foreign.dtype.kind == mine.dtype.kind and foreign.dtype.kind in "iuU"):
                candidates = np.flatnonzero(np.isin(foreign, mine)).tolist()
            else:
                ids_here = set(mine.tolist() if isinstance(mine, np.ndarray) else mine)
                items = foreign.tolist() if isinstance(foreign, np.ndarray) else foreign
                candidates = [i for i, k in enumerate(items) if k in ids_here]
            if candidates:
                def listed(col):
                    return col.tolist() if isinstance(col, np.ndarray) else list(col)
                keys_here = set(zip(listed(batch["source_nodes"]), listed(mine), strict=True))
                f_ids, f_src = listed(foreign), listed(foreign_src)
                for i in candidates:
                    if (f_src[i], f_ids[i]) in keys_here:
                        conflict[i] = True
        if conflict.any():
            i = int(np.flatnonzero(conflict)[0])
            raise DuplicateEvidenceError(f"evidence_id {foreign[i]!r} of source {foreign_src[i]!r} "
                                         f"is given for two different agents")

    def add(self, expect: int, batch: dict[str, Any]) -> int:
        self._check(expect)
        n = self.consensus.add_evidence_batch(**batch)
        self.seq += 1
        return n

    def _rows_mask(self, keys: Sequence[Hashable] | None, default: bool) -> np.ndarray:
        """Per source row of this partition: is its key in ``keys`` (None: ``default``)."""
        sources = self.consensus.ledger.sources.keys()
        if keys is None:
            return np.full(len(sources), default, dtype=bool)
        wanted = set(keys)
        return np.array([k in wanted for k in sources], dtype=bool)

    def agent_consensus(self, expect: int, agent_id: Hashable, flagged: Sequence[Hashable],
                        established: Sequence[Hashable] | None = None) -> dict[str, Any] | None:
        """One agent's consensus (the in-process keys) given the sources flagged and the
        sources out of probation over all partitions (None: every source)."""
        self._check(expect)
        c = self.consensus
        flag = self._rows_mask(flagged, False)
        try:
            return c.consensus_given(agent_id, flag, False, self._rows_mask(established, True))
        except UnknownAgentError:
            return None

    def source_counts(self, expect: int) -> dict[str, Any]:
        """Accepted evidence per source (keyed by source id), for probation over all partitions."""
        self._check(expect)
        ledger = self.consensus.ledger
        n = len(ledger.sources)
        counts = np.zeros(n, dtype=np.int64)
        counts[: min(n, ledger.source_counts.size)] = ledger.source_counts[:n]
        return {"sources": ledger.sources.keys(), "counts": counts}

    def covered_counts(self, expect: int, base: Sequence[Hashable]) -> dict[str, Any]:
        """Per source (keyed by source id): the distinct agents here (up to the probation
        count) it has evidence on that some ``base`` source (founding or trusted, over all
        partitions) reports on, for probation. Each agent lives in one partition, so the
        driver's sum over partitions reaches the probation count exactly when the source's
        count over all agents does."""
        self._check(expect)
        ledger = self.consensus.ledger
        counts = self._covered.counts(ledger, self._rows_mask(base, False), self.consensus.probation_evidence).copy()
        return {"sources": ledger.sources.keys(), "counts": counts}

    def _fuse(self, established: Any = ...) -> dict[str, Any]:
        """The partition's fusion given the sources out of probation over all partitions
        (a list of ids, None for every source; omitted: those of the last :meth:`fuse`)."""
        c = self.consensus
        ledger = c.ledger
        if established is ...:
            established = self._established
        key = None if established is None else frozenset(established)
        if (self._fused is not None and self._fused["version"] == ledger.version
                and self._fused["established_keys"] == key):
            return self._fused
        out, events, pair_agents, pair_sources, shard_pairs = c.fuse_partition(
            need_sum=False, established=self._rows_mask(established, True))
        out.update(shard_pairs=shard_pairs, pair_agents=pair_agents, pair_sources=pair_sources,
                   events=events, version=ledger.version, established_keys=key)
        self._fused = out
        return out

    def fuse(self, expect: int, established: Sequence[Hashable] | None = None) -> dict[str, Any]:
        """Far-outlier events per source (keyed by source id) over this partition's agents,
        given the sources out of probation over all partitions (None: every source)."""
        self._check(expect)
        self._established = None if established is None else list(established)
        ev = self._fuse()["events"]
        return {"sources": self.consensus.ledger.sources.keys(),
                **{name: getattr(ev, name) for name in SourceEvents._FIELDS}}

    def recount(self, expect: int, flagged: Sequence[Hashable]) -> dict[str, Any]:
        """The events again without the flagged sources (one peeling pass, this partition's part)."""
        self._check(expect)
        ledger = self.consensus.ledger
        n_sources = len(ledger.sources)
        flag = self._rows_mask(flagged, False)
        events = SourceEvents.zeros(n_sources)
        for agent, source, total, n_agents in self._fuse()["shard_pairs"]:
            keep = ~flag[source]
            events += far_outlier_events(agent[keep], source[keep], total[keep], n_agents, n_sources)
        return {"sources": ledger.sources.keys(), **{name: getattr(events, name) for name in SourceEvents._FIELDS}}

    def finish(self, expect: int, flagged: Sequence[Hashable]) -> dict[str, Any]:
        """Per-agent consensus given the sources flagged over all partitions."""
        self._check(expect)
        g = self._fuse()
        ledger = self.consensus.ledger
        flag = self._rows_mask(flagged, False)
        n_agents = len(ledger.agents)
        n_flagged = count_flagged_pairs(g["pair_agents"], g["pair_sources"], flag, n_agents)
        log_odds = g["robust"]
        reached = self.consensus.reached(g["n"], g["f"], n_flagged, g["young"])
        return {"agent_ids": ledger.agents.keys_of(np.arange(n_agents, dtype=np.int64)),
                "log_odds": log_odds, "consensus_reached": reached, "evidence_count": g["count"],
                "source_count": g["n"]}

    @property
    def evidence_count(self) -> int:
        return self.consensus.evidence_count

    def count(self, expect: int) -> int:
        self._check(expect)
        return self.consensus.evidence_count

    def fingerprint(self, expect: int) -> dict[str, Any]:
        """The stored evidence as columns (for tests: exact comparison)."""
        self._check(expect)
        return self.consensus.export_evidence()

    def checkpoint(self, expect: int) -> tuple[int, dict[str, Any]]:
        self._check(expect)
        return self.seq, self.consensus.export_evidence()

    def restore(self, seq: int, state: dict[str, Any] | None) -> int:
        self._fresh()
        if state is not None and len(state["log_odds"]):
            self.consensus.add_evidence_batch(**state)
        self.seq = seq
        return self.seq
