"""The detector's batch path: ``process_round`` and observer evidence in bulk.

:class:`DetectorRounds` is a part of
:class:`~swarmguard.api.detector.DistributedBehavioralDetector` (its methods run
on the detector's state and under its lock): a round is checked once, scored
by the engine and decided here; ``ingest_evidence`` adds observer evidence in
bulk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DuplicateEvidenceError
from ..locking import synchronized
from ..structures.chi2 import chi2_logsf
from ..structures.significance import resolve_fdr
from ..validation import as_name_array, check_feature_matrix, unique_names
from ..values.agent_index import as_wire_id_array
from .consensus import EvidenceType
from .detector_decision import p_value_log_odds
from .engine import RoundBatch, RoundResult, ScoredRound

__all__ = ["DetectorRounds"]


class DetectorRounds:
    """The batch path of :class:`~swarmguard.api.detector.DistributedBehavioralDetector`
    (a part of its class)."""

    # ------------------------------------------------------------------ batch
    @synchronized
    def ingest_evidence(self, *args: Any, **kwargs: Any) -> int:
        """Observer evidence in bulk: :meth:`StableBayesianConsensus.add_evidence_batch`
        (on Ray: routed to the evidence partitions, all or nothing)."""
        return self.engine.ingest_evidence(*args, **kwargs)

    @synchronized
    def process_round(self, agent_ids: Any, X: Any, regions: Any, *, cohorts: Any = None,
                      timestamp: float | None = None, fdr: Any = "default") -> RoundResult:
        """One round for many agents through all three parts, with array operations.

        ``agent_ids`` (n,) ints (the fast path) or strings, ``X`` (n, d),
        ``regions`` (n,) region names (a NumPy string array) or one name;
        ``cohorts`` places agents in the tree (default: their regions).
        Returns a :class:`~swarmguard.api.engine.RoundResult`, read by key:
        arrays aligned with ``agent_ids``: ``action`` ("isolate" /
        "monitor"), ``isolate`` (bool), ``is_anomaly``, ``mahalanobis_squared``,
        ``p_value``, ``probability`` (consensus; NaN where no evidence yet),
        ``confidence`` (the agent's region's confidence factor) and
        ``region_confidence`` (per region).
        """
        args = {"agent_ids": agent_ids, "X": X, "regions": regions, "cohorts": cohorts, "timestamp": timestamp,
                "fdr": fdr}
        return self.engine.run("round", args, lambda: self._run_round(**args))

    def _run_round(self, agent_ids: Any, X: Any, regions: Any, cohorts: Any, timestamp: Any, fdr: Any,
                   stay: np.ndarray | None = None) -> RoundResult:
        """A round on the engine: checked once here, scored there, decided here (one transaction:
        every part's checks first, so a refused round changes nothing)."""
        batch = self._check_round(agent_ids, X, regions, cohorts, timestamp, fdr, stay)
        scored = self.engine.score_round(batch)
        result = self._finish_round(scored)
        self.engine.round_done(scored)
        return result

    def _check_round(self, agent_ids: Any, X: Any, regions: Any, cohorts: Any, timestamp: Any,
                     fdr: Any = "default", stay: np.ndarray | None = None) -> RoundBatch:
        """A round's inputs checked by the rules of every part (shared by every engine).

        ``ids`` as the replicas take them
        (:func:`~swarmguard.values.agent_index.as_wire_id_array`: ints in int64,
        strings without NUL, object arrays of either), ``regions`` a NumPy
        string array (object arrays of ``str`` accepted), ``cohorts`` an object
        array of ``str`` turned into a string array (the tree's fast path), a
        finite timestamp (the clock's reading when None), the false-discovery
        level and ``now``, the processing time for every write of the round
        (:meth:`_call_times`: the clock read once).
        """
        features = check_feature_matrix(X, self.feature_dimensions, copy=False)   # once: the parts trust it
        X = features.X
        n = X.shape[0]
        regions = as_name_array(regions, n, "regions")
        ts, now = self._call_times(timestamp)
        ids = as_wire_id_array(agent_ids, n, "agent_ids")
        if isinstance(cohorts, np.ndarray) and cohorts.dtype == object and cohorts.ndim == 1 and set(
                map(type, cohorts.tolist())) == {str}:
            # all names (a pandas column): the tree's string-array fast path; paths or None stay per row
            cohorts = as_name_array(cohorts, n, "cohorts")
        q = resolve_fdr(fdr, self.settings.fdr)
        names, inverse = unique_names(regions)     # one region: no n copies of its name
        return RoundBatch(X, ids, regions, names, inverse, cohorts, ts, now, q, stay, features)

    def _own_sources(self, n: int) -> np.ndarray:
        """``n`` copies of the node id as a source column: a tuple id (the consensus takes
        tuples) in an object array, since ``np.full`` would spread its items over the rows."""
        if not isinstance(self.node_id, tuple):
            return np.full(n, self.node_id)
        sources = np.empty(n, dtype=object)
        sources.fill(self.node_id)
        return sources

    def _finish_round(self, scored: ScoredRound) -> RoundResult:
        """Steps 2 and 4 of a round, on any engine: own evidence, consensus, decision, result."""
        ids, d2, confidence, ts = scored.agent_ids, scored.mahalanobis_squared, scored.confidence, scored.timestamp
        flagged_mask = scored.is_anomaly
        n = ids.shape[0]
        # Solution 2: the detector's own evidence for the anomalous agents
        flagged = np.flatnonzero(flagged_mask)
        self.last_round_evidence = None
        if flagged.size:
            log_p = chi2_logsf(d2[flagged], self.feature_dimensions)
            columns = (ids[flagged], EvidenceType.BEHAVIORAL_ANOMALY,
                       np.minimum(p_value_log_odds(log_p), self.own_evidence_cap),
                       confidence[flagged], np.full(flagged.size, ts), self._own_sources(flagged.size))
            for _ in range(1000):
                start = self._next_evidence_number()
                eids = np.array([f"{self._own_prefix}:{start}:{i}" for i in range(flagged.size)])
                try:
                    self.engine.add_evidence(eids, *columns)
                    # what a replicating host ships on (serve's evidence ledger): the rows as added
                    self.last_round_evidence = (eids, columns[0], columns[2], columns[3], columns[4], columns[5])
                    break
                except DuplicateEvidenceError:
                    continue        # an observer used one of these ids (all or nothing): the next number
            else:
                raise DuplicateEvidenceError(f"observers hold 1000 of {self.node_id!r}'s evidence id ranges")
        rows = self.engine.consensus_rows(ids)
        if rows is None:
            probability, reached = np.full(n, np.nan), np.zeros(n, dtype=bool)
        else:
            probability, reached = rows
        # Step 4: the decision
        anomaly = self._anomaly_holds(flagged_mask, scored.decision_p_value, scored.p_value_cutoff, confidence)
        consensus = reached & (np.nan_to_num(probability, nan=0.0) >= self.isolate_probability)
        isolate = {"both": anomaly & consensus, "either": anomaly | consensus,
                   "anomaly": anomaly, "consensus": consensus}[self.require]
        return RoundResult(
            agent_ids=ids,
            action=np.where(isolate, "isolate", "monitor"),
            isolate=isolate,
            is_anomaly=flagged_mask,
            mahalanobis_squared=d2,
            p_value=scored.p_value,
            decision_p_value=scored.decision_p_value,
            probability=probability,
            consensus_reached=reached,
            confidence=confidence,
            region_confidence=dict(zip(np.asarray(scored.region_names).tolist(),
                                       np.asarray(scored.region_confidence).tolist(), strict=True)),
            accepted=scored.accepted,
            threshold_squared=scored.threshold_squared,
            null_score=scored.null_score,
            null_scale=scored.null_scale,
            null_count=scored.null_count,
            null_p_floor=scored.null_p_floor,
        )
