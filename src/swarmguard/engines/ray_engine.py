"""The Ray backend: regions, the root aggregator and evidence partitions as actors.

Layout (one driver, a few long-lived actors; never one actor per agent)
-----------------------------------------------------------------------
* ``RegionShard`` actors: each hosts one or more regions (``region_workers``
  packs the regions onto that many actors, round-robin): its agents' part of
  the tree (a :class:`HierarchicalStatisticalTree` of those agents, with their
  cohorts) and each hosted region's CAP replica.
* one ``RootAggregator`` actor: merges the shards' population and cohort
  moments (Chan's k-way formula, :meth:`Moments.merge_all`) into the
  population's, and hands them back for scoring: every agent is scored
  leave-one-out against the whole population and its cohorts, as in process.
* ``EvidenceShard`` actors (``evidence_partitions``): the exact evidence of the
  agents hashed to each (int ids: ``id mod P``; others: CRC-32 of ``str(id)``).

A round (:meth:`RayDistributedBehavioralDetector.process_round`): the driver
splits the batch by shard and puts each part into the object store (arrays,
never per-agent objects); shards update their trees and return their moments;
the root merges them; shards score their rows; the driver applies the
false-discovery cut over all rows, drives the CAP writes and anti-entropy in
the in-process resolver's order, routes the detector's own evidence to the
partitions and runs the two-step consensus (per-source outlier counts from
every partition, flags on the driver, per-agent results from the partitions).

Same answers
------------
Exact parts are bit-identical to the in-process engine (evidence sums,
per-agent fusion, CAP registers and version vectors, confidence factors).
Moments are merged in another order than in the in-process tree, so they
agree to rounding (~1e-15 relative); decisions (isolation, anomaly flags,
consensus reached, flagged sources) agree unless a score lies within rounding
of its cut. ``tests/engines`` checks both on a seeded simulation.

Fault tolerance
---------------
Actors are created with ``max_restarts``; a restarted actor re-runs its
constructor (empty). Every call carries the number of state-changing calls the
driver has seen the shard apply; a shard that disagrees raises
:class:`StaleShardError`. The driver keeps, per shard, a checkpoint (the
shard's values, ``to_dict`` / ``export_evidence``, returned by the actor and so
owned by the driver in the object store) taken every ``checkpoint_every``
rounds, and a replay log of the state-changing calls since (their arguments
are object refs, so replay ships nothing new). On an actor error or a stale
shard, it waits for the restart, restores the checkpoint, replays the log and
re-issues the call.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import chi2

from ..api.cap import ConsistencyModel
from ..api.detector import _positions, p_value_log_odds
from ..api.evidence_types import EvidenceType
from ..errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidTypeError,
    MissingDependencyError,
    SwarmGuardError,
)
from ..structures.fdr import benjamini_hochberg
from ..structures.robust_fusion import SourceEvents, peel_sources
from ..validation import as_feature_matrix, check_finite_float, check_fraction
from .shards import EvidenceShard, RegionShard, RootAggregator, StaleShardError

__all__ = ["RayDistributedBehavioralDetector", "import_ray", "LinkFaults"]

_REQUIRE = ("both", "anomaly", "consensus", "either")


def import_ray():
    """``import ray``, or a :class:`MissingDependencyError` saying how to get it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised where Ray is absent
        raise MissingDependencyError(
            "the Ray backend needs Ray: pip install 'swarmguard[ray]' (or pip install 'ray>=2.9')") from exc
    return ray


def _actor_errors(ray) -> tuple[type, ...]:
    ex = ray.exceptions
    errs = [ex.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError"):
        if hasattr(ex, name):
            errs.append(getattr(ex, name))
    return tuple(errs)


class LinkFaults:
    """Fault injection: the anti-entropy messages of chosen links are dropped.

    A link is an ordered pair ``(sender, receiver)`` of region names;
    :meth:`drop` with ``both_ways=True`` cuts both directions. A dropped
    message is never delivered (the receiver does not merge the delta, the
    sender gets no acknowledgement), exactly what a lossy network does.
    """

    def __init__(self) -> None:
        self.dropped: set[tuple[str, str]] = set()
        self.messages_dropped = 0

    def drop(self, links: Iterable[tuple[str, str]], both_ways: bool = True) -> None:
        for a, b in links:
            self.dropped.add((a, b))
            if both_ways:
                self.dropped.add((b, a))

    def restore(self, links: Iterable[tuple[str, str]] | None = None, both_ways: bool = True) -> None:
        if links is None:
            self.dropped.clear()
            return
        for a, b in links:
            self.dropped.discard((a, b))
            if both_ways:
                self.dropped.discard((b, a))

    def delivers(self, sender: str, receiver: str) -> bool:
        if (sender, receiver) in self.dropped:
            self.messages_dropped += 1
            return False
        return True


class _Handle:
    """Driver-side record of one actor: its state counter, checkpoint and replay log."""

    def __init__(self, name: str, actor: Any):
        self.name = name
        self.actor = actor
        self.seq = 0                      # state-changing calls submitted
        self.ckpt_seq = 0
        self.ckpt_ref = None              # object ref of the last checkpoint's state (None: empty)
        self.log: list[tuple[int, str, tuple, int]] = []   # (expect, method, args, num_returns)
        self.recoveries = 0


class _ActorSystem:
    """Submits calls to shard actors, logs the state-changing ones, and recovers restarts."""

    def __init__(self, ray, recover_timeout: float = 120.0):
        self.ray = ray
        self.errors = _actor_errors(ray)
        self.recover_timeout = recover_timeout

    def submit(self, h: _Handle, method: str, *args: Any, mutating: bool = False, num_returns: int = 1):
        expect = h.seq
        if mutating:
            h.seq += 1
            h.log.append((expect, method, args, num_returns))
        return (expect, self._remote(h, method, expect, args, num_returns))

    def _remote(self, h: _Handle, method: str, expect: int, args: tuple, num_returns: int):
        fn = getattr(h.actor, method)
        if num_returns != 1:
            fn = fn.options(num_returns=num_returns)
        return fn.remote(expect, *args)

    def _is_stale(self, exc: BaseException) -> bool:
        if isinstance(exc, StaleShardError):
            return True
        cause = getattr(exc, "cause", None)
        return isinstance(cause, StaleShardError)

    def get(self, h: _Handle, pending, method: str, *args: Any, num_returns: int = 1, attempts: int = 5):
        """The value of a submitted call (the first return when several), recovering ``h`` if needed.

        Returns ``(value, refs)``; ``refs`` is the call's ref(s), re-issued after a recovery.
        """
        expect, refs = pending
        for _ in range(attempts):
            first = refs[0] if isinstance(refs, list) else refs
            try:
                return self.ray.get(first), refs
            except Exception as exc:       # noqa: BLE001 - sorted below
                if not (isinstance(exc, self.errors) or self._is_stale(exc)):
                    raise
                self.recover(h, upto=expect)
                refs = self._remote(h, method, expect, args, num_returns)
        raise SwarmGuardError(f"actor {h.name} kept failing after {attempts} recoveries")

    def call(self, h: _Handle, method: str, *args: Any, mutating: bool = False, num_returns: int = 1):
        pending = self.submit(h, method, *args, mutating=mutating, num_returns=num_returns)
        value, refs = self.get(h, pending, method, *args, num_returns=num_returns)
        return (value, refs) if num_returns != 1 else value

    def wait_alive(self, h: _Handle) -> None:
        deadline = time.monotonic() + self.recover_timeout
        while True:
            try:
                self.ray.get(h.actor.ping.remote(), timeout=10)
                return
            except Exception as exc:       # noqa: BLE001
                if time.monotonic() > deadline:
                    raise SwarmGuardError(f"actor {h.name} did not come back: {exc}") from exc
                time.sleep(0.1)

    def recover(self, h: _Handle, upto: int) -> None:
        """Restore ``h``'s actor to the state after its first ``upto`` state-changing calls."""
        ray = self.ray
        for _ in range(5):
            try:
                self.wait_alive(h)
                ray.get(h.actor.restore.remote(h.ckpt_seq, h.ckpt_ref))
                for expect, method, args, nr in h.log:
                    if expect >= upto:
                        break
                    refs = self._remote(h, method, expect, args, nr)
                    ray.get(refs[0] if isinstance(refs, list) else refs)
                h.recoveries += 1
                return
            except Exception as exc:       # noqa: BLE001 - killed again while recovering: retry
                if not (isinstance(exc, self.errors) or self._is_stale(exc)):
                    raise
        raise SwarmGuardError(f"could not recover actor {h.name}")

    def checkpoint(self, h: _Handle) -> None:
        (seq, refs) = self.call(h, "checkpoint", num_returns=2)
        h.ckpt_seq, h.ckpt_ref = seq, refs[1]
        h.log = [e for e in h.log if e[0] >= seq]


def _validate_ids(agent_ids: Any) -> np.ndarray:
    if isinstance(agent_ids, np.ndarray):
        if agent_ids.ndim != 1:
            raise DimensionMismatchError(f"agent_ids must be 1-D, got shape {agent_ids.shape}")
        if agent_ids.dtype.kind in "iu":
            return agent_ids.astype(np.int64, copy=False)
        if agent_ids.dtype.kind == "U":
            return agent_ids
        items = agent_ids.tolist()
    elif isinstance(agent_ids, (str, bytes)) or not hasattr(agent_ids, "__len__"):
        raise InvalidTypeError("agent_ids must be a sequence or array of ids")
    else:
        items = list(agent_ids)
    kinds = set(map(type, items))
    if kinds <= {int}:
        return np.array(items, dtype=np.int64)
    if kinds == {str}:
        return np.array(items, dtype=str)
    raise InvalidTypeError("the Ray backend takes int or str agent ids (a NumPy array is fastest)")


def _hash_partition(keys: Any, parts: int) -> np.ndarray:
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        return np.mod(keys.astype(np.int64), parts)
    items = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    return np.fromiter(((k % parts) if type(k) is int else zlib.crc32(str(k).encode()) % parts for k in items),
                       dtype=np.int64, count=len(items))


def _take(col: Any, rows: np.ndarray):
    if isinstance(col, (str, EvidenceType)):
        return col
    if isinstance(col, np.ndarray):
        return col[rows]
    return [col[i] for i in rows.tolist()]


class RayDistributedBehavioralDetector:
    """:class:`~swarmguard.api.detector.DistributedBehavioralDetector` on a Ray cluster.

    Same decision rule, same :meth:`process_round` signature and return keys.
    ``regions`` must be given (each region's replica and shard are placed at
    start). Extra parameters: ``address`` (a running cluster; default a local
    ``ray.init(num_cpus=2)`` unless Ray is already initialised),
    ``region_workers`` (actors the regions are packed onto; default one per
    region), ``evidence_partitions``, ``checkpoint_every`` (rounds),
    ``max_restarts``, ``actor_cpus`` (CPUs each actor reserves; 0 lets many
    actors share a small machine).
    """

    def __init__(
        self,
        *,
        regions: Sequence[str],
        branching_factor: int = 10,
        feature_dimensions: int | None = None,
        significance_level: float = 1e-3,
        fdr: float | None = None,
        shrinkage: float | str = "auto",
        warm_up: int | None = None,
        score_levels: str = "population",
        byzantine_threshold: float = 0.33,
        partition_size: int = 10000,
        prior_probability: float = 0.01,
        consistency_model: Any = ConsistencyModel.STATISTICAL,
        max_staleness_seconds: float = 5.0,
        confidence_decay_rate: float = 0.1,
        clock: Any = None,
        isolate_probability: float = 0.9,
        require: str = "both",
        own_evidence_cap: float = 3.0,
        node_id: str = "detector",
        default_region: str = "default",
        auto_sync_seconds: float | None = 1.0,
        address: str | None = None,
        region_workers: int | None = None,
        evidence_partitions: int = 2,
        checkpoint_every: int = 5,
        max_restarts: int = 3,
        actor_cpus: float = 0,
    ):
        ray = import_ray()
        self.ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._owns_ray = True
        names = [str(r) for r in regions]
        if not names or len(set(names)) != len(names):
            raise InvalidInputError("regions must be distinct names, at least one")
        model = ConsistencyModel.coerce(consistency_model)
        if model is ConsistencyModel.STRONG:
            raise InvalidInputError("ConsistencyModel.STRONG is not supported by the Ray backend yet")
        if require not in _REQUIRE:
            raise InvalidInputError(f"require must be one of {_REQUIRE}, got {require!r}")
        self.require = require
        self.consistency_model = model
        self.isolate_probability = check_fraction(isolate_probability, "isolate_probability")
        self.own_evidence_cap = check_finite_float(own_evidence_cap, "own_evidence_cap")
        self.node_id = node_id
        self.default_region = default_region
        self.significance_level = significance_level
        self.fdr = fdr
        self.shrinkage = shrinkage
        self._warm_up = warm_up
        self.score_levels = score_levels
        self.feature_dimensions = feature_dimensions
        self.clock = clock or time.time
        self.auto_sync_seconds = auto_sync_seconds
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.faults = LinkFaults()
        self._regions = names
        self._group_of: dict[str, int] | None = None
        self._latest = -math.inf
        self._start = self._now()
        self._last_sync = self._start
        self._evidence_seq = 0
        self._evidence_total = 0
        self._rounds = 0
        self._known_ids = np.zeros(0, dtype=np.int64)
        self._known_shard = np.zeros(0, dtype=np.int64)
        self.sys = _ActorSystem(ray)
        workers = len(names) if region_workers is None else max(1, min(int(region_workers), len(names)))
        opts = {"max_restarts": max_restarts, "max_task_retries": 0, "num_cpus": actor_cpus}
        region_cls = ray.remote(RegionShard).options(**opts)
        hosted = [[names[i] for i in range(len(names)) if i % workers == w] for w in range(workers)]
        statistical = model is ConsistencyModel.STATISTICAL
        self.region_shards = [
            _Handle(f"regions{w}", region_cls.remote(
                hosted[w], names, self._start, branching_factor=branching_factor,
                feature_dimensions=feature_dimensions, max_staleness_seconds=max_staleness_seconds,
                confidence_decay_rate=confidence_decay_rate, statistical=statistical))
            for w in range(workers)]
        self._shard_of_region = {r: w for w in range(workers) for r in hosted[w]}
        self.root = _Handle("root", ray.remote(RootAggregator).options(**opts).remote())
        ev_cls = ray.remote(EvidenceShard).options(**opts)
        self.evidence_shards = [
            _Handle(f"evidence{p}", ev_cls.remote(
                byzantine_threshold=byzantine_threshold, partition_size=partition_size,
                prior_probability=prior_probability, trusted_sources=[node_id]))
            for p in range(max(1, int(evidence_partitions)))]
        from ..api.consensus import StableBayesianConsensus
        ref = StableBayesianConsensus(byzantine_threshold=byzantine_threshold, partition_size=partition_size,
                                      prior_probability=prior_probability)
        self._false_flag_rate = ref.false_flag_rate
        self._trusted = {node_id}
        self._last_merge: dict[str, Any] | None = None
        self._last_consensus: dict[str, Any] | None = None
        self.last_round_seconds: dict[str, float] = {}   # wall time of each phase of the last round
        self.cap_resolver = _CapFacade(self)
        self.consensus = _ConsensusFacade(self)
        self.protocol = _ProtocolFacade(self)

    # ------------------------------------------------------------------ plumbing
    def _now(self) -> float:
        t = check_finite_float(self.clock(), "clock()")
        if t > self._latest:
            self._latest = t
        return self._latest

    @property
    def warm_up(self) -> int:
        if self._warm_up is not None:
            return self._warm_up
        d = self.feature_dimensions or 10
        return min(1000, 100 * d)

    @property
    def handles(self) -> list[_Handle]:
        return [*self.region_shards, self.root, *self.evidence_shards]

    def _gather(self, calls: list[tuple[_Handle, str, tuple, bool]]) -> list[Any]:
        """Submit one call per shard, then collect them, recovering failed shards."""
        pending = [self.sys.submit(h, m, *a, mutating=mut) for h, m, a, mut in calls]
        return [self.sys.get(h, p, m, *a)[0] for (h, m, a, _), p in zip(calls, pending, strict=True)]

    def close(self) -> None:
        """Kill the actors (and shut Ray down if this detector started it)."""
        for h in self.handles:
            try:
                self.ray.kill(h.actor, no_restart=True)
            except Exception:   # noqa: BLE001 - already gone
                pass
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayDistributedBehavioralDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ routing
    def _route(self, ids: np.ndarray, shard: np.ndarray) -> dict[int, np.ndarray]:
        """Record each agent's shard; returns, per old shard, the agents that moved away."""
        moved: dict[int, np.ndarray] = {}
        known = self._known_ids
        if known.size and known.dtype.kind != ids.dtype.kind:
            raise InvalidTypeError("agent ids changed type (int vs str) between rounds")
        hit = np.zeros(ids.size, dtype=bool)
        if known.size:
            pos = np.searchsorted(known, ids)
            pos_c = np.minimum(pos, known.size - 1)
            hit = known[pos_c] == ids
            prev = np.where(hit, self._known_shard[pos_c], -1)
            away = hit & (prev != shard)
            for s in np.unique(prev[away]).tolist():
                moved[int(s)] = ids[away & (prev == s)]
            self._known_shard[pos_c[hit]] = shard[hit]
        if not hit.all():
            new_ids = np.concatenate([known, ids[~hit]]) if known.size else ids[~hit].copy()
            new_shard = np.concatenate([self._known_shard, shard[~hit]])
            order = np.argsort(new_ids, kind="stable")
            self._known_ids, self._known_shard = new_ids[order], new_shard[order]
        return moved

    # ------------------------------------------------------------------ the round
    def process_round(self, agent_ids: Any, X: Any, regions: Any, *, cohorts: Any = None,
                      timestamp: float | None = None, fdr: Any = "default") -> dict[str, Any]:
        """One round for many agents, on the actors; the same result as in process."""
        X = as_feature_matrix(X, self.feature_dimensions)
        if self.feature_dimensions is None:
            self.feature_dimensions = X.shape[1]
        n, d = X.shape
        ids = _validate_ids(agent_ids)
        if ids.shape[0] != n:
            raise DimensionMismatchError(f"{ids.shape[0]} agent ids for {n} rows")
        if np.unique(ids).size != n:
            raise InvalidInputError("agent_ids holds the same id twice in one batch")
        if isinstance(regions, str):
            regions = np.full(n, regions)
        regions = np.asarray(regions)
        if regions.shape != (n,) or regions.dtype.kind != "U":
            raise DimensionMismatchError(f"regions must be {n} region names, got shape {regions.shape}")
        names, inverse = np.unique(regions, return_inverse=True)
        unknown = [str(r) for r in names.tolist() if r not in self._shard_of_region]
        if unknown:
            raise InvalidInputError(f"unknown regions {unknown}; the Ray backend needs every region up front")
        ts = float(self._now()) if timestamp is None else float(timestamp)
        if not math.isfinite(ts):
            raise InvalidInputError("timestamp must be finite")
        q = self.fdr if isinstance(fdr, str) and fdr == "default" else fdr
        if cohorts is None:
            cohorts = regions
        if isinstance(cohorts, (str, tuple)):
            cohorts = [cohorts] * n if isinstance(cohorts, tuple) else np.full(n, cohorts)
        elif not (isinstance(cohorts, np.ndarray) and cohorts.dtype.kind == "U"):
            cohorts = list(cohorts)
            if len(cohorts) != n:
                raise DimensionMismatchError(f"cohorts has {len(cohorts)} entries, expected {n}")
        region_shard = np.array([self._shard_of_region[str(r)] for r in names.tolist()], dtype=np.int64)
        shard = region_shard[inverse.ravel()]
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
        # ---- 1. each shard updates its tree (arrays through the object store)
        rows_of = {s: np.flatnonzero(shard == s) for s in np.unique(shard).tolist()}
        calls = []
        for s, rows in rows_of.items():
            part_c = cohorts[rows] if isinstance(cohorts, np.ndarray) else [cohorts[i] for i in rows.tolist()]
            calls.append((self.region_shards[s], "update",
                          (ray.put(ids[rows]), ray.put(np.ascontiguousarray(X[rows])), part_c,
                           regions[rows]), True))
        summaries = dict(zip(rows_of, self._gather(calls), strict=True))
        lap("update")
        # ---- 2. the root merges every shard's moments (untouched shards report theirs too)
        rest = [s for s in range(len(self.region_shards)) if s not in summaries]
        for s, value in zip(rest, self._gather([(self.region_shards[s], "summary", (), False) for s in rest]),
                            strict=True):
            summaries[s] = value
        merged = self.sys.call(self.root, "merge", *[summaries[s] for s in range(len(self.region_shards))])
        self._last_merge = merged
        merged_ref = ray.put(merged)
        lap("merge")
        # ---- 3. shards score their rows against the population and their cohorts
        scored = self._gather([
            (self.region_shards[s], "score", (merged_ref, self.shrinkage, self.warm_up, self.score_levels), False)
            for s in rows_of])
        d2 = np.empty(n)
        p = np.empty(n)
        decision_p = np.empty(n)
        any_warm = False
        for rows, res in zip(rows_of.values(), scored, strict=True):
            d2[rows], p[rows], decision_p[rows] = (res["mahalanobis_squared"], res["p_value"],
                                                    res["decision_p_value"])
            any_warm |= res["any_warm"]
        lap("score")
        if q is not None:
            flagged_mask, cut = benjamini_hochberg(decision_p, q)
        else:
            cut = self.significance_level
            flagged_mask = decision_p < cut
        if not any_warm:
            flagged_mask = np.zeros(n, dtype=bool)
        if cut > 0:
            thr2 = float(chi2.isf(cut, d))
        elif flagged_mask.any():
            thr2 = float(d2[flagged_mask].min())
        else:
            thr2 = float("inf")
        # ---- 4. CAP: each region's writes, anti-entropy in the in-process resolver's order
        region_cf = np.ones(names.size)
        accepted = 0
        order = names.tolist()
        synced = self.auto_sync_seconds is None
        k = 0
        while k < len(order) and not synced:
            # Serial until this round's automatic sync has run (it ships what was written before it).
            name = order[k]
            h = self.region_shards[self._shard_of_region[name]]
            now = self._now()
            accepted += self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, mutating=True)
            if now - self._last_sync >= self.auto_sync_seconds:
                self.sync()
                synced = True
            cf = self.sys.call(h, "cap_view", name, self._now())["confidence_factor"]
            region_cf[k] = 1.0 if cf is None else cf
            k += 1
        # The rest only touch their own replicas: every actor writes its regions at once.
        rest = list(range(k, len(order)))
        now = self._now()
        writes = self._gather([(self.region_shards[self._shard_of_region[order[j]]], "cap_write",
                                (order[j], d2[inverse == j], ts, now), True) for j in rest])
        views = self._gather([(self.region_shards[self._shard_of_region[order[j]]], "cap_view",
                               (order[j], now), False) for j in rest])
        accepted += int(sum(writes))
        for j, view in zip(rest, views, strict=True):
            cf = view["confidence_factor"]
            region_cf[j] = 1.0 if cf is None else cf
        confidence = region_cf[inverse]
        lap("cap")
        # ---- 5. the detector's own evidence for the flagged agents
        flagged = np.flatnonzero(flagged_mask)
        if flagged.size:
            log_p = chi2.logsf(d2[flagged], d)
            start = self._evidence_seq
            self._evidence_seq += 1
            eids = np.array([f"{self.node_id}:{start}:{i}" for i in range(flagged.size)])
            self.ingest_evidence(eids, ids[flagged], EvidenceType.BEHAVIORAL_ANOMALY,
                                 np.minimum(p_value_log_odds(log_p), self.own_evidence_cap),
                                 confidence[flagged], np.full(flagged.size, ts),
                                 np.full(flagged.size, self.node_id))
        probability = np.full(n, np.nan)
        reached = np.zeros(n, dtype=bool)
        if self._evidence_total:
            cons = self._consensus()
            pos = _positions(cons["agent_ids"], ids)
            have = pos >= 0
            probability[have] = cons["probability"][pos[have]]
            reached[have] = cons["consensus_reached"][pos[have]]
        anomaly = self._anomaly_holds(flagged_mask, decision_p, cut, confidence, d)
        consensus = reached & (np.nan_to_num(probability, nan=0.0) >= self.isolate_probability)
        isolate = {"both": anomaly & consensus, "either": anomaly | consensus,
                   "anomaly": anomaly, "consensus": consensus}[self.require]
        lap("evidence+consensus")
        self._rounds += 1
        if self._rounds % self.checkpoint_every == 0:
            self.checkpoint()
            lap("checkpoint")
        self.last_round_seconds = phases
        return {
            "agent_ids": ids,
            "action": np.where(isolate, "isolate", "monitor"),
            "isolate": isolate,
            "is_anomaly": flagged_mask,
            "mahalanobis_squared": d2,
            "p_value": p,
            "probability": probability,
            "consensus_reached": reached,
            "confidence": confidence,
            "region_confidence": dict(zip(names.tolist(), region_cf.tolist(), strict=True)),
            "accepted": accepted,
            "threshold_squared": thr2,
        }

    @staticmethod
    def _anomaly_holds(is_anomaly, decision_p, p_cut, confidence, d):
        cf = np.clip(np.asarray(confidence, dtype=np.float64), 1e-12, 1.0)
        if p_cut <= 0:
            return np.asarray(is_anomaly, dtype=bool)
        widened = chi2.isf(p_cut, d) / (cf * cf)
        cut = np.where(cf >= 1.0, p_cut, chi2.sf(widened, d))     # as DistributedBehavioralDetector
        return np.logical_and(is_anomaly, np.asarray(decision_p) <= cut)

    # ------------------------------------------------------------------ evidence
    def ingest_evidence(self, evidence_ids: Any, agent_ids: Any, evidence_types: Any, log_odds: Any,
                        confidences: Any, timestamps: Any, source_nodes: Any) -> int:
        """Observer evidence in bulk, routed to the partitions by agent id; returns how many were new."""
        lo = np.asarray(log_odds, dtype=np.float64)
        m = lo.shape[0]
        for name, col in (("evidence_ids", evidence_ids), ("agent_ids", agent_ids),
                          ("confidences", confidences), ("timestamps", timestamps),
                          ("source_nodes", source_nodes)):
            if len(col) != m:
                raise DimensionMismatchError(f"{name} has {len(col)} rows, log_odds has {m}")
        if not isinstance(evidence_types, (str, EvidenceType)) and len(evidence_types) != m:
            raise DimensionMismatchError(f"evidence_types has {len(evidence_types)} rows, log_odds has {m}")
        if m == 0:
            return 0
        keys = agent_ids if isinstance(agent_ids, np.ndarray) else list(agent_ids)
        part = _hash_partition(keys, len(self.evidence_shards))
        calls = []
        for pidx in np.unique(part).tolist():
            rows = np.flatnonzero(part == pidx)
            batch = {"evidence_ids": _take(evidence_ids, rows), "agent_ids": _take(keys, rows),
                     "evidence_types": _take(evidence_types, rows), "log_odds": lo[rows],
                     "confidences": _take(confidences, rows), "timestamps": _take(timestamps, rows),
                     "source_nodes": _take(source_nodes, rows)}
            calls.append((self.evidence_shards[pidx], "add", (self.ray.put(batch),), True))
        added = int(sum(self._gather(calls)))
        self._evidence_total += added
        self._last_consensus = None
        return added

    def _consensus(self) -> dict[str, Any]:
        """Two-step consensus over the partitions (cached until evidence changes)."""
        if self._last_consensus is not None:
            return self._last_consensus
        parts = self._gather([(h, "fuse", (), False) for h in self.evidence_shards])
        index: dict[Hashable, int] = {}
        for ev in parts:
            for k in ev["sources"]:
                index.setdefault(k, len(index))
        keys = list(index)
        n_sources = len(index)

        def merged(replies: list[dict[str, Any]]) -> SourceEvents:
            """The partitions' events summed per source (sources matched by id)."""
            events = SourceEvents.zeros(n_sources)
            for ev in replies:
                rows = np.array([index[k] for k in ev["sources"]], dtype=np.int64)
                local = SourceEvents.zeros(n_sources)
                for name in SourceEvents._FIELDS:
                    getattr(local, name)[rows] = ev[name]
                events += local
            return events

        # The same peeling as StableBayesianConsensus._global_pass, with each recount
        # done by the partitions that hold the pairs.
        def recount(flagged: np.ndarray) -> SourceEvents:
            bad_now = [k for k, f in zip(keys, flagged.tolist(), strict=True) if f]
            return merged(self._gather([(h, "recount", (bad_now,), False) for h in self.evidence_shards]))

        events = merged(parts)
        never = np.array([k in self._trusted for k in keys], dtype=bool)
        flagged, tail = peel_sources(events, recount, n_sources, self._false_flag_rate, never=never)
        bad = [k for k, f in zip(keys, flagged.tolist(), strict=True) if f]
        done = self._gather([(h, "finish", (bad,), False) for h in self.evidence_shards])
        from scipy.special import expit
        agent_ids = np.concatenate([np.asarray(r["agent_ids"]) for r in done]) if done else np.zeros(0)
        log_odds = np.concatenate([r["log_odds"] for r in done])
        with np.errstate(all="ignore"):
            prob = expit(log_odds)
        self._last_consensus = {
            "agent_ids": agent_ids, "probability": prob, "log_odds": log_odds,
            "consensus_reached": np.concatenate([r["consensus_reached"] for r in done]),
            "evidence_count": np.concatenate([r["evidence_count"] for r in done]),
            "source_count": np.concatenate([r["source_count"] for r in done]),
            "byzantine_nodes": bad, "_events": events, "_tail": tail, "_flagged": flagged, "_sources": keys,
        }
        return self._last_consensus

    # ------------------------------------------------------------------ CAP links
    def _reachable(self, region: str) -> list[str]:
        if self._group_of is None:
            return list(self._regions)
        g = self._group_of.get(region)
        return [r for r in self._regions if self._group_of.get(r) == g]

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network into groups (as the in-process resolver's ``partition``)."""
        mapping: dict[str, int] = {}
        for g, group in enumerate(groups):
            for name in group:
                if name not in self._shard_of_region:
                    raise InvalidInputError(f"unknown region {name!r}")
                if name in mapping:
                    raise InvalidInputError(f"region {name!r} appears in more than one group")
                mapping[name] = g
        nxt = max(mapping.values(), default=-1) + 1
        for name in self._regions:
            if name not in mapping:
                mapping[name] = nxt
                nxt += 1
        self._group_of = mapping

    def heal(self) -> None:
        self._group_of = None

    def sync(self) -> dict[str, int]:
        """One anti-entropy round over every delivering link, as Ray calls between region actors.

        For each ordered pair (a, b) that reaches each other: b sends its
        version vector, a ships the delta it does not cover, b acknowledges.
        The delta travels from a's actor to b's through the object store (the
        driver passes only its reference). :attr:`faults` drops the messages
        of chosen links.
        """
        now = self._now()
        self._last_sync = now
        pairs = rows = 0
        for a in self._regions:
            ha = self.region_shards[self._shard_of_region[a]]
            for b in self._reachable(a):
                if b == a:
                    continue
                hb = self.region_shards[self._shard_of_region[b]]
                version = self.sys.call(hb, "version_of", b)
                if not self.faults.delivers(b, a):
                    version = None
                shipped, refs = self.sys.call(ha, "prepare_delta", a, b, version, now, mutating=True,
                                              num_returns=2)
                pairs += 1
                if not self.faults.delivers(a, b):
                    continue
                rows += shipped
                ack = self.sys.call(hb, "merge_delta", b, refs[1], mutating=True)
                if not self.faults.delivers(b, a):
                    continue
                self.sys.call(ha, "acknowledge", a, b, ack, mutating=True)
        return {"pairs": pairs, "rows_shipped": rows}

    def replica(self, region: str):
        """A copy of ``region``'s live replica (for inspection and tests)."""
        return self.ray.get(self.region_shards[self._shard_of_region[region]].actor.replica.remote(region))

    def confidence_factor(self, region: str) -> float | None:
        h = self.region_shards[self._shard_of_region[region]]
        return self.sys.call(h, "cap_view", region, self._now())["confidence_factor"]

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> None:
        """Checkpoint every stateful shard now (also done every ``checkpoint_every`` rounds)."""
        for h in [*self.region_shards, *self.evidence_shards]:
            self.sys.checkpoint(h)

    def get_global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        """Population statistics from the root aggregator's last merge."""
        m = self._last_merge["population"] if self._last_merge else None
        if m is None or m.count == 0:
            dim = self.feature_dimensions or 0
            return {"count": 0, "mean": np.full(dim, np.nan), "covariance": np.full((dim, dim), np.nan)}
        cov = m.m2 / (m.count - ddof) if m.count > ddof else np.full_like(m.m2, np.nan)
        var = np.diagonal(cov).copy()
        return {"cohort": (), "count": m.count, "mean": m.mean, "covariance": cov, "variance": var,
                "std": np.sqrt(np.maximum(var, 0.0)), "ddof": ddof, "moments": m}

    def evidence_fingerprint(self) -> dict[Hashable, tuple]:
        """Every stored evidence, keyed by id: (agent, source, type, log-odds, confidence, time)."""
        out = {}
        for h in self.evidence_shards:
            ev = self.sys.call(h, "fingerprint")
            for row in zip(ev["evidence_ids"], ev["agent_ids"], ev["source_nodes"], ev["evidence_types"],
                           np.asarray(ev["log_odds"]).tolist(), np.asarray(ev["confidences"]).tolist(),
                           np.asarray(ev["timestamps"]).tolist(), strict=True):
                key = row[0].item() if hasattr(row[0], "item") else row[0]
                out[key] = tuple(x.item() if hasattr(x, "item") else x for x in row[1:])
        return out

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of each actor process (MB)."""
        return {h.name: self.ray.get(h.actor.peak_memory_mb.remote()) for h in self.handles}


class _CapFacade:
    """``cap_resolver``-like view for code written against the in-process detector."""

    def __init__(self, det: RayDistributedBehavioralDetector):
        self._det = det

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        self._det.partition(groups)

    def heal(self) -> None:
        self._det.heal()

    def sync(self) -> dict[str, int]:
        return self._det.sync()

    def confidence_factor(self, region: str) -> float | None:
        return self._det.confidence_factor(region)

    @property
    def regions(self) -> list[str]:
        return list(self._det._regions)


class _ConsensusFacade:
    """``consensus``-like view: the merged results of the evidence partitions."""

    def __init__(self, det: RayDistributedBehavioralDetector):
        self._det = det

    @property
    def evidence_count(self) -> int:
        return self._det._evidence_total

    def consensus_many(self) -> dict[str, Any]:
        c = self._det._consensus()
        return {k: v for k, v in c.items() if not k.startswith("_")}

    @property
    def byzantine_nodes(self) -> list[Hashable]:
        return list(self._det._consensus()["byzantine_nodes"])

    def source_reputation(self) -> dict[Hashable, dict[str, Any]]:
        c = self._det._consensus()
        ev: SourceEvents = c["_events"]
        return {k: {"reports": int(ev.reports[i]), "low_outliers": int(ev.low[i]),
                    "high_outliers": int(ev.high[i]), "expected_low_outliers": float(ev.expected_low[i]),
                    "expected_high_outliers": float(ev.expected_high[i]),
                    "tail_bound": float(c["_tail"][i]), "flagged": bool(c["_flagged"][i])}
                for i, k in enumerate(c["_sources"])}


class _ProtocolFacade:
    """``protocol``-like view: scoring of every agent against the merged moments."""

    def __init__(self, det: RayDistributedBehavioralDetector):
        self._det = det

    @property
    def significance_level(self) -> float:
        return self._det.significance_level

    def score_many(self, agent_ids: Any = None, *, fdr: Any = "default") -> dict[str, Any]:
        """Every agent's scores (ordered by agent id); ``agent_ids`` must be None."""
        det = self._det
        if agent_ids is not None:
            raise InvalidInputError("the Ray backend scores all agents (agent_ids=None) only")
        merged = det._last_merge
        res = det._gather([(h, "score_all", (merged, det.shrinkage, det.warm_up, det.score_levels), False)
                           for h in det.region_shards])
        ids = np.concatenate([r["agent_ids"] for r in res])
        order = np.argsort(ids, kind="stable")
        out = {"agent_ids": ids[order]}
        for k in ("mahalanobis_squared", "p_value", "decision_p_value"):
            out[k] = np.concatenate([r[k] for r in res])[order]
        q = det.fdr if isinstance(fdr, str) and fdr == "default" else fdr
        any_warm = any(r["any_warm"] for r in res)
        if q is not None:
            flagged, _ = benjamini_hochberg(out["decision_p_value"], q)
        else:
            flagged = out["decision_p_value"] < det.significance_level
        out["is_anomaly"] = flagged & any_warm
        return out
