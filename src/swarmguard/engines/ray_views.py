"""The Ray engine's ``tree``, ``protocol``, ``consensus`` and ``cap_resolver``: views over its actors.

The guide's attribute names work on both backends: on Ray each is a view that
answers as the in-process part does, from the actors (the views hold no state
of their own).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from ..api.cap import ConsistencyModel, SyncReport
from ..api.evidence_types import BayesianEvidence
from ..errors import InvalidInputError, UnknownAgentError
from ..structures.robust_fusion import SourceEvents
from ..structures.score_null import ScoreNull
from ..structures.significance import resolve_fdr, significance_cut
from ..validation import check_key
from .ray_system import hash_partition

# Each view holds the RayEngine that made it (`det`); the type is not imported here,
# since ray_engine imports this module and the two must not import each other.


def _under_the_engines_lock(cls: type) -> type:
    """Run every public method and property of a view under the engine's lock (the detector's
    re-entrant lock): a reader in one thread must not meet a half-done ``ingest_evidence`` or
    round of another (the review of fix/txn2 saw ``StaleShardError`` from exactly that). Async
    methods are left alone: they only call the locked synchronous ones, and no lock is held
    across an ``await``."""
    def locked(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            with self._det._lock:
                return fn(self, *args, **kwargs)
        return wrapper

    for name, value in list(vars(cls).items()):
        if name.startswith("_") and name != "__len__":
            continue
        if isinstance(value, property):
            setattr(cls, name, property(locked(value.fget), value.fset and locked(value.fset)))
        elif inspect.isfunction(value) and not inspect.iscoroutinefunction(value):
            setattr(cls, name, locked(value))
    return cls

__all__ = ["RayTreeView", "RayCapView", "RayConsensusView", "RayProtocolView"]


@_under_the_engines_lock
class RayTreeView:
    """The Ray engine's ``tree``: the population as the root aggregator last merged it."""

    def __init__(self, det: Any):
        self._det = det

    @property
    def feature_dimensions(self) -> int | None:
        return self._det.feature_dimensions

    def __len__(self) -> int:
        return len(self._det._routes)

    def get_global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        """Population statistics from the root aggregator's last merge (as the tree's)."""
        return self._det.global_statistics(ddof)


@_under_the_engines_lock
class RayCapView:
    """The Ray engine's ``cap_resolver``: the region actors' replicas and links, answering as
    :class:`~swarmguard.api.cap.StatisticalCAPResolver` does for code written against it."""

    def __init__(self, det: Any):
        self._det = det

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        self._det.partition(groups)

    def heal(self) -> None:
        self._det.heal()

    def sync(self) -> SyncReport:
        return self._det.sync()

    def confidence_factor(self, region: str) -> float | None:
        return self._det.confidence_factor(region)

    def visible_regions(self, region: str) -> list[str]:
        """Regions whose links to ``region`` deliver now (``region`` included), sorted."""
        return self._det._topology.visible(region)

    @property
    def is_partitioned(self) -> bool:
        return self._det.is_partitioned

    @property
    def consistency_model(self) -> ConsistencyModel:
        return self._det.consistency_model

    @property
    def regions(self) -> list[str]:
        return self._det.regions


@_under_the_engines_lock
class RayConsensusView:
    """The Ray engine's ``consensus``: the evidence partitions, merged, answering as
    :class:`~swarmguard.api.consensus.StableBayesianConsensus` does."""

    def __init__(self, det: Any):
        self._det = det

    @property
    def evidence_count(self) -> int:
        return self._det._evidence_total

    async def add_evidence(self, evidence: BayesianEvidence) -> bool:
        """Add one piece of evidence; True if new, False if it was already there."""
        return self.add_evidence_sync(evidence)

    def add_evidence_sync(self, evidence: BayesianEvidence) -> bool:
        """Synchronous twin of :meth:`add_evidence`."""
        e = BayesianEvidence.coerce(evidence)
        return self._det.ingest_evidence([e.evidence_id], [e.agent_id], [e.evidence_type], [e.log_odds],
                                         [e.confidence], [e.timestamp], [e.source_node]) == 1

    def add_evidence_batch(self, *args: Any, **kwargs: Any) -> int:
        """Many pieces of evidence as arrays (:meth:`RayEngine.ingest_evidence`)."""
        return self._det.ingest_evidence(*args, **kwargs)

    async def distributed_evidence_consensus(self, agent_id: Hashable) -> dict[str, Any]:
        """Posterior for one agent (the keys of the in-process ``consensus``)."""
        return self.consensus(agent_id)

    def distributed_evidence_consensus_sync(self, agent_id: Hashable) -> dict[str, Any]:
        """Synchronous twin of :meth:`distributed_evidence_consensus`."""
        return self.consensus(agent_id)

    def consensus(self, agent_id: Hashable) -> dict[str, Any]:
        """Posterior for one agent, from the partition that holds it, with every partition's source flags."""
        det = self._det
        agent_id = check_key(agent_id, "agent_id")
        if not det._evidence_total:
            raise UnknownAgentError(f"no evidence for agent {agent_id!r}")
        full = det._consensus()
        p = int(hash_partition([agent_id], len(det.evidence_shards))[0])
        out = det.sys.call(det.evidence_shards[p], "agent_consensus", agent_id, full["byzantine_nodes"],
                           full["_established"])
        if out is None:
            raise UnknownAgentError(f"no evidence for agent {agent_id!r}")
        return out

    def consensus_many(self) -> dict[str, Any]:
        """Every agent's consensus, as arrays (the partitions' results, concatenated)."""
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


@_under_the_engines_lock
class RayProtocolView:
    """The Ray engine's ``protocol``: every agent scored against the merged moments."""

    def __init__(self, det: Any):
        self._det = det

    @property
    def significance_level(self) -> float:
        return self._det.significance_level

    @property
    def null(self) -> ScoreNull | None:
        """The population's score null (``calibrate=True``; None otherwise), as the in-process
        protocol's ``null``: held on the driver, the live object (read it, don't change it)."""
        return self._det._null

    def score_many(self, agent_ids: Any = None, *, fdr: Any = "default") -> dict[str, Any]:
        """Every agent's scores (ordered by agent id); ``agent_ids`` must be None."""
        det = self._det
        if agent_ids is not None:
            raise InvalidInputError("the Ray backend scores all agents (agent_ids=None) only")
        merged = det._last_merge
        # one pass of the shards; with a warm null (the driver's) the shards then calibrate the
        # rows they kept, divided by the scale of all of them (a relative null's median), as in process
        score_args = (merged, det.shrinkage, det.warm_up, det.score_levels, det._last_trimmed, det._last_window)
        res = det._gather([(h, "score_all", score_args, False) for h in det.region_shards])
        ids = np.concatenate([r["agent_ids"] for r in res])
        order = np.argsort(ids, kind="stable")
        out = {"agent_ids": ids[order]}
        for k in ("mahalanobis_squared", "p_value", "decision_p_value"):
            out[k] = np.concatenate([r[k] for r in res])[order]
        null = det._null
        if null is not None:        # the in-process keys: null_score, null_scale, null_count, null_p_floor, parametric_p_value once warm
            out["null_score"] = out["mahalanobis_squared"]
            out["null_scale"] = scale = null.scale_of(out["null_score"])
            out["null_count"], out["null_p_floor"] = null.count, null.p_floor
            if null.warm:
                null_bytes = null.to_bytes()
                cal = det._gather([(h, "calibrate", ("score_all", null_bytes, scale, *score_args), False)
                                   for h in det.region_shards])
                out["parametric_p_value"] = out["p_value"]
                for k in ("p_value", "decision_p_value"):
                    out[k] = np.concatenate([r[k] for r in cal])[order]
        any_warm = any(r["any_warm"] for r in res)
        if det._last_window is None:
            out["is_anomaly"] = significance_cut(out["decision_p_value"], out["mahalanobis_squared"], det._dim,
                                                 q=resolve_fdr(fdr, det.fdr), alpha=det.significance_level,
                                                 any_warm=any_warm).flagged
        else:       # as in process: a member outside the window is scored, not judged
            live = np.concatenate([r["in_window"] for r in res])[order]
            out["in_window"] = live
            out["is_anomaly"] = np.zeros(live.size, dtype=bool)
            out["is_anomaly"][live] = significance_cut(
                out["decision_p_value"][live], out["mahalanobis_squared"][live], det._dim,
                q=resolve_fdr(fdr, det.fdr), alpha=det.significance_level, any_warm=any_warm).flagged
        return out
