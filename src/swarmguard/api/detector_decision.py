"""The detector's decision rule and the guide's helpers around it.

:meth:`~swarmguard.api.detector.DistributedBehavioralDetector.should_trigger_response`
(anomaly widened by the confidence factor, consensus, combined by ``require``), the
detector's own evidence (:func:`p_value_log_odds`, ``create_evidence``, its ids from
:func:`own_id_prefix`) and the CAP update of one observation
(``create_statistical_update``): a part of the detector's class.
"""

from __future__ import annotations

import hashlib
import math  # noqa: F401  (used by the doctests)
from collections.abc import Hashable
from typing import Any

import numpy as np

from ..lazy_import import module_on_first_use
from ..locking import synchronized
from ..structures.chi2 import chi2_logsf
from ..validation import MAX_ID_LENGTH, check_finite_float
from .cap_types import StatisticalUpdate
from .consensus import BayesianEvidence, EvidenceType
from .protocol import read_behavior

# imported on first use: see swarmguard.lazy_import
_special = module_on_first_use("scipy.special")

__all__ = ["DetectorDecision", "p_value_log_odds", "own_id_prefix"]


# What the detector appends to its node id to make its own ids: ":<number>:<index>" (two
# numbers below 10**20, so 42 characters at most; ":u<number>" for update ids is shorter).
_OWN_ID_SUFFIX = 42


def own_id_prefix(node_id: Any) -> str:
    """How the detector's own ids start (evidence ``<prefix>:<n>``, ``<prefix>:<n>:<i>``,
    updates ``<prefix>:u<n>``): the node id itself, or, for a node id so long that the ids
    would pass ``MAX_ID_LENGTH``, its first characters and a digest of the whole, so the
    ids are valid by construction and distinct node ids keep distinct prefixes.

    >>> own_id_prefix("detector")
    'detector'
    >>> len(own_id_prefix("n" * 999)) + _OWN_ID_SUFFIX <= MAX_ID_LENGTH
    True
    """
    text = str(node_id)
    if len(text) + _OWN_ID_SUFFIX <= MAX_ID_LENGTH:
        return text
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{text[:MAX_ID_LENGTH - _OWN_ID_SUFFIX - len(digest) - 1]}~{digest}"



def p_value_log_odds(log_p: np.ndarray | float) -> np.ndarray | float:
    """Log-odds that a p-value can at most justify: the Sellke–Bayarri–Berger bound.

    For ``p < 1/e`` the Bayes factor against the null is at most
    ``1 / (-e · p · ln p)``; its log, ``-1 - ln p - ln(-ln p)``, is the
    evidence an anomaly test contributes (0 for ``p >= 1/e``). Takes ``ln p``
    so that p-values below 1e-308 still count; finite for every finite
    ``ln p`` (about ``-ln p`` far out) and for ``ln p = -inf`` (the largest
    float), so a caller's cap always applies.

    >>> round(float(p_value_log_odds(math.log(1e-6))), 2)
    10.19
    >>> math.isfinite(p_value_log_odds(-1e300)), math.isfinite(p_value_log_odds(-math.inf))
    (True, True)
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    # -ln p - ln(-ln p) < -ln p: clipping at the most negative float keeps -inf finite
    safe = np.clip(log_p, -np.finfo(np.float64).max, -1.0)
    lo = -1.0 - safe - np.log(-safe)
    out = np.where(log_p < -1.0, lo, 0.0)
    return float(out) if out.ndim == 0 else out



class DetectorDecision:
    """The decision rule and the guide's helpers of
    :class:`~swarmguard.api.detector.DistributedBehavioralDetector` (a part of its class)."""

    # ------------------------------------------------------------------ the guide's helpers
    def _region_of(self, behavioral_data: Any) -> str:
        _, _, cohort = read_behavior(behavioral_data)
        return cohort[0] if cohort else self.default_region

    @staticmethod
    def _given_timestamp(behavioral_data: Any) -> Any:
        """The observation's own timestamp, unchecked (None when it has none)."""
        return behavioral_data.get("timestamp") if isinstance(behavioral_data, dict) else getattr(
            behavioral_data, "timestamp", None)

    def _timestamp_of(self, behavioral_data: Any) -> float:
        """The observation's timestamp (the clock's reading when it has none): a finite number."""
        ts = self._given_timestamp(behavioral_data)
        return check_finite_float(self.clock() if ts is None else ts, "timestamp")

    @synchronized
    def create_evidence(self, agent_id: Hashable, behavioral_data: Any, anomaly_info: dict[str, Any],
                        confidence: float = 1.0) -> BayesianEvidence:
        """The detector's own evidence that ``agent_id`` is compromised, from its anomaly test.

        ``log_odds`` is :func:`p_value_log_odds` of the decision p-value (taken
        in log space from the squared distance, so p-values below 1e-308 still
        count); ``confidence`` defaults to 1 (the region's confidence factor in
        :meth:`process_agent_behavior`).
        """
        # a durable engine logs the id handed out (never handed out twice after a restart)
        return self.engine.run("create_evidence", {}, lambda: self._create_evidence(
            agent_id, behavioral_data, anomaly_info, confidence))

    def _create_evidence(self, agent_id: Hashable, behavioral_data: Any, anomaly_info: dict[str, Any],
                         confidence: float) -> BayesianEvidence:
        d = self.feature_dimensions
        log_p = chi2_logsf(float(anomaly_info["mahalanobis_squared"]), d)
        return BayesianEvidence(
            evidence_id=f"{self._own_prefix}:{self._next_evidence_number()}",
            agent_id=agent_id,
            evidence_type=EvidenceType.BEHAVIORAL_ANOMALY,
            log_odds=min(p_value_log_odds(log_p), self.own_evidence_cap),
            confidence=confidence,
            timestamp=self._timestamp_of(behavioral_data),
            source_node=self.node_id,
        )

    @synchronized
    def create_statistical_update(self, agent_id: Hashable, behavioral_data: Any,
                                  anomaly_score: float | None = None) -> StatisticalUpdate:
        """The CAP update for one observation: its region, features and anomaly score."""
        _, features, _ = read_behavior(behavioral_data)
        uid = getattr(behavioral_data, "id", None) if not isinstance(behavioral_data, dict) else behavioral_data.get("id")
        if anomaly_score is None:
            anomaly_score = (behavioral_data.get("anomaly_score") if isinstance(behavioral_data, dict)
                             else getattr(behavioral_data, "anomaly_score", None)) or 0.0
        return StatisticalUpdate(
            update_id=uid if uid is not None else f"{self._own_prefix}:u{next(self._update_seq)}",
            agent_id=agent_id,
            timestamp=self._timestamp_of(behavioral_data),
            feature_vector=features,
            anomaly_score=float(anomaly_score),
            source_partition=self._region_of(behavioral_data),
        )

    def _anomaly_holds(self, is_anomaly: Any, decision_p: Any, p_cut: float, confidence: Any) -> Any:
        """Anomalous, and significant at the cut-off widened for a stale view.

        The χ² threshold for the cut-off is widened by the confidence factor
        (``widened_threshold(t², cf, squared=True)``, i.e. ``t² / cf²``) and
        turned back into a p-value cut, so it applies to the decision p-value
        whichever level (population or cohort) produced it.
        """
        # (a bool and a float, the per-item path's, are scalars without asking NumPy)
        if ((type(is_anomaly) is bool or np.ndim(is_anomaly) == 0)
                and (type(confidence) is float or np.ndim(confidence) == 0)):
            # One agent (the per-item path): plain floats. Not anomalous, or a fresh view
            # (cf >= 1: the cut itself), needs no χ² quantile at all.
            if not is_anomaly:
                return False
            if p_cut <= 0 or float(confidence) >= 1.0:
                return bool(decision_p <= p_cut) if p_cut > 0 else True
        d = self.feature_dimensions
        cf = np.clip(np.asarray(confidence, dtype=np.float64), 1e-12, 1.0)
        if p_cut <= 0:
            return np.asarray(is_anomaly, dtype=bool)
        # chdtri / chdtrc are what scipy.stats.chi2.isf / .sf evaluate, without their
        # argument broadcasting (about 80 µs a call)
        widened = _special().chdtri(d, p_cut) / (cf * cf)
        # cf = 1: the cut itself (sf(isf(cut)) rounds, and would drop the BH boundary agent by chance)
        cut = np.where(cf >= 1.0, p_cut, _special().chdtrc(d, widened))
        return np.logical_and(is_anomaly, np.asarray(decision_p) <= cut)

    @synchronized
    def should_trigger_response(self, anomaly_info: dict[str, Any], cap_result: dict[str, Any],
                                consensus_result: dict[str, Any] | None = None) -> bool:
        """Whether to isolate, by the rule in the class docstring."""
        cf = cap_result.get("confidence_factor")
        cf = 1.0 if cf is None else cf
        if consensus_result is None:
            try:
                consensus_result = self.consensus.distributed_evidence_consensus_sync(anomaly_info["agent_id"])
            except KeyError:
                consensus_result = None
        return self._decide(anomaly_info, cf, consensus_result)

    def _decide(self, anomaly_info: dict[str, Any], cf: float, consensus_result: dict[str, Any] | None) -> bool:
        """:meth:`should_trigger_response` given the confidence factor and the consensus
        (None: no evidence for the agent), as the per-item path has them at hand."""
        cut = anomaly_info.get("decision_cutoff", anomaly_info["significance_level"])   # for the decision p-value
        anomaly = bool(self._anomaly_holds(anomaly_info["is_anomaly"], anomaly_info["decision_p_value"], cut, cf))
        consensus = bool(consensus_result and consensus_result["consensus_reached"]
                         and consensus_result["probability"] >= self.isolate_probability)
        require = self.require
        if require == "both":
            return anomaly and consensus
        if require == "either":
            return anomaly or consensus
        if require == "anomaly":
            return anomaly
        if require == "consensus":
            return consensus
        raise KeyError(require)          # as the look-up table this replaces
