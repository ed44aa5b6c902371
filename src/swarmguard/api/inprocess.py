"""``InProcessEngine``: the guide's three parts in this process (the default engine)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ..values.agent_index import positions_of
from .cap import StatisticalCAPResolver
from .consensus import StableBayesianConsensus, consensus_at
from .detector_settings import DetectorSettings
from .engine import RoundBatch, ScoredRound, register_scores
from .protocol import BehavioralDistributedProtocol
from .tree import HierarchicalStatisticalTree

__all__ = ["InProcessEngine"]

T = TypeVar("T")


class InProcessEngine:
    """The tree, protocol, consensus and CAP resolver of one detector, in process.

    Implements :class:`~swarmguard.api.engine.Engine`; the parts are the
    detector's ``tree``, ``protocol``, ``consensus`` and ``cap_resolver``.
    """

    items_as_rounds = False
    OPTIONS: tuple[str, ...] = ()          # no parameters of its own beyond the settings

    def __init__(self, s: DetectorSettings):
        # Solution 1: O(n log n) aggregation
        self.tree = HierarchicalStatisticalTree(branching_factor=s.branching_factor,
                                                feature_dimensions=s.feature_dimensions,
                                                window_rounds=s.window_rounds)
        self.protocol = BehavioralDistributedProtocol(
            self.tree, significance_level=s.significance_level, fdr=s.fdr, shrinkage=s.shrinkage,
            warm_up=s.warm_up, score_levels=s.score_levels, scoring=s.scoring,
            calibrate=s.calibrate)
        # Solution 2: stable Bayesian consensus
        self.consensus = StableBayesianConsensus(byzantine_threshold=s.byzantine_threshold,
                                                 partition_size=s.partition_size,
                                                 prior_probability=s.prior_probability,
                                                 trusted_sources=[s.node_id],
                                                 probation_evidence=s.probation_evidence)
        # Solution 3: statistical CAP resolver
        self.cap_resolver = StatisticalCAPResolver(consistency_model=s.consistency_model,
                                                   max_staleness_seconds=s.max_staleness_seconds,
                                                   confidence_decay_rate=s.confidence_decay_rate,
                                                   clock=s.clock, regions=s.regions,
                                                   auto_sync_seconds=s.auto_sync_seconds)

    def bind(self, detector: Any) -> None:
        """Nothing to keep: the detector drives the parts directly on the per-item path."""

    @property
    def feature_dimensions(self) -> int | None:
        return self.tree.feature_dimensions

    def run(self, kind: str, args: dict[str, Any], call: Callable[[], T]) -> T:
        return call()

    def processing_time(self) -> float:
        return self.cap_resolver.read_clock()

    def shares_clock(self, detector: Any) -> bool:
        # a configured clock is both; the default clocks differ (time.time and time.monotonic)
        return detector.settings.clock is not None and getattr(self.cap_resolver, "_clock", None) is detector.clock

    def score_round(self, batch: RoundBatch) -> ScoredRound:
        names, inverse = batch.region_names, batch.region_index
        # STRONG refuses before the tree changes: a refused round leaves every part as it was
        self.cap_resolver.check_writable(names.tolist())
        # The features as the detector checked them (CheckedFeatures): neither the tree nor the
        # replicas check them again
        features = batch.X if batch.features is None else batch.features
        # Solution 1: update and score everyone (vectorised), regions as cohorts
        scored = self.protocol.update_and_score_many(
            batch.agent_ids, features, cohorts=batch.regions if batch.cohorts is None else batch.cohorts,
            fdr=batch.fdr)
        ids = scored["agent_ids"]
        d2 = scored["mahalanobis_squared"]
        # Solution 3: each region's updates in one batch; its confidence factor
        region_cf = np.ones(names.size)
        accepted = 0
        for k, name in enumerate(names):
            if names.size == 1:          # every row: no gathered copies (the registers copy what they keep)
                rows_ids, rows_X, rows_d2 = ids, features, d2
            else:
                rows = np.flatnonzero(inverse == k)
                rows_ids, rows_d2 = ids[rows], d2[rows]
                rows_X = features.rows(rows) if batch.features is not None else batch.X[rows]
            res = self.cap_resolver.handle_updates_many(str(name), rows_ids, np.full(rows_ids.size, batch.timestamp),
                                                        rows_X, register_scores(rows_d2), now=batch.now)
            accepted += int(res["accepted"])
            cf = res["confidence_factor"]
            region_cf[k] = 1.0 if cf is None else cf
        return ScoredRound(ids, d2, scored["p_value"], scored["decision_p_value"], scored["is_anomaly"],
                           scored["p_value_cutoff"], scored["threshold_squared"], region_cf[inverse], names,
                           region_cf, accepted, batch.timestamp, null_score=scored.get("null_score"),
                           null_scale=scored.get("null_scale"), null_count=scored.get("null_count"),
                           null_p_floor=scored.get("null_p_floor"))

    def round_done(self, scored: ScoredRound) -> None:
        pass

    def add_evidence(self, *columns: Any) -> int:
        return self.consensus.add_evidence_batch(*columns)

    def ingest_evidence(self, *args: Any, **kwargs: Any) -> int:
        return self.consensus.add_evidence_batch(*args, **kwargs)

    def consensus_rows(self, agent_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.consensus.evidence_count:
            return None
        cons = self.consensus.consensus_many()
        return consensus_at(cons, positions_of(cons["agent_ids"], agent_ids))

    def process_item(self, agent_id: Any, behavioral_data: Any) -> dict[str, Any]:   # pragma: no cover
        raise NotImplementedError("the detector runs the per-item loop on the in-process parts")

    def partition(self, groups: Any) -> None:
        self.cap_resolver.partition(groups)

    def heal(self) -> None:
        self.cap_resolver.heal()

    def sync(self) -> Any:
        return self.cap_resolver.sync()

    def global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        return self.tree.get_global_statistics(ddof)

    def close(self) -> None:
        self.consensus.close()
