"""The detector's per-item path: the guide's ``process_agent_behavior`` loop.

:class:`DetectorItemPath` is a part of
:class:`~swarmguard.api.detector.DistributedBehavioralDetector` (its methods run
on the detector's state and under its lock): one observation is checked
against every part's rules, then written, scored and decided. Where a part's
public method was replaced (on its class or on the instance), the path calls
it as the guide's loop does instead of taking its own shortcut.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ..errors import DuplicateEvidenceError, InvalidInputError
from ..locking import synchronized
from ..validation import as_feature_vector, check_cohort
from ..values.agent_index import check_wire_id
from .cap import StatisticalCAPResolver
from .cap_types import StatisticalUpdate
from .consensus import StableBayesianConsensus
from .detector_decision import DetectorDecision
from .engine import ItemResult
from .protocol import BehavioralData, read_behavior

__all__ = ["DetectorItemPath"]


def _not_replaced(obj: Any, name: str, function: Callable[..., Any]) -> bool:
    """Whether ``obj.<name>`` is ``function`` itself: neither ``obj``'s class nor ``obj``
    (an attribute set on the instance, e.g. a wrapper that counts or injects faults)
    replaced it. Only then may the per-item path skip the public method for its own
    shortcut; otherwise it calls ``obj.<name>`` as the guide's loop does."""
    return getattr(type(obj), name, None) is function and name not in getattr(obj, "__dict__", ())


# The methods the per-item path may shortcut, as defined (taken once, at import): compared with
# the class attribute at call time, a method replaced on its class (a test's monkeypatch, a
# wrapper installed on the class) reads as replaced and is called. Read at call time instead,
# the replacement would be compared with itself and silently skipped.
_OWN_RULE = DetectorDecision.should_trigger_response
_OWN_HANDLE_UPDATE = StatisticalCAPResolver.handle_update_sync
_OWN_CONSENSUS_SYNC = StableBayesianConsensus.distributed_evidence_consensus_sync
_OWN_CONSENSUS = StableBayesianConsensus.consensus



class DetectorItemPath:
    """The per-item path of :class:`~swarmguard.api.detector.DistributedBehavioralDetector`
    (a part of its class)."""

    # ------------------------------------------------------------------ per item (the guide's loop)
    def _check_item(self, agent_id: Any, behavioral_data: Any) -> tuple[BehavioralData, int, float]:
        """Everything a per-item call's three parts will check, checked before any of them changes.

        Returns the observation with its values validated and normalised (the
        clock read once: the tree, the replica and the evidence get one
        timestamp), a free number for the detector's own evidence id and the
        resolver's processing time (its clock, read and checked here, so that a
        clock gone bad refuses the call before the tree changes).
        """
        data_id, features, cohort = read_behavior(behavioral_data)
        agent = check_wire_id(agent_id, "agent_id")          # the replicas' rule (the tree takes more)
        if data_id is not agent_id and check_wire_id(data_id, "behavioral_data.agent_id") != agent:
            raise InvalidInputError(f"agent_id {agent!r} differs from the data's agent_id {data_id!r}: "
                                    "the tree and the replicas would update different agents")
        x = as_feature_vector(features, self.tree.feature_dimensions)
        path = check_cohort(cohort)
        ts, now = self._call_times(self._given_timestamp(behavioral_data))
        uid = getattr(behavioral_data, "id", None) if not isinstance(behavioral_data, dict) else behavioral_data.get("id")
        if uid is not None:
            uid = check_wire_id(uid, "update id")
        self.cap_resolver.check_writable([path[0] if path else self.default_region])
        # The own evidence id, should the agent be anomalous: one the detector's node has not
        # sent yet (ids are per source: only evidence sent under node_id can hold it). An O(1)
        # lookup: the evidence itself is valid by construction (a wire id at most
        # MAX_ID_LENGTH long whatever the node id, see own_id_prefix; a finite timestamp,
        # capped finite log-odds, a confidence factor in (0, 1]).
        number = self._evidence_number
        for _ in range(1000):
            if not self.consensus.holds_evidence(self.node_id, f"{self._own_prefix}:{number}"):
                break
            number += 1
        else:
            raise DuplicateEvidenceError(f"observers hold 1000 of {self.node_id!r}'s evidence ids")
        return BehavioralData(agent, x, ts, uid, None, None, path), number, now

    async def process_agent_behavior(self, agent_id: Hashable, behavioral_data: Any) -> ItemResult:
        """The guide's main loop for one observation; returns the decision and the details.

        One transaction: the observation is checked against every part's rules
        first (ids the replicas take, a finite timestamp, ``behavioral_data``'s
        ``agent_id`` equal to ``agent_id``, valid names, a writable region, a
        clock that reads a finite number), so a refused call raises a typed
        error and changes nothing. The transaction runs under the detector's
        lock without awaiting anything (a threading lock is never held across
        an ``await``): calls from several threads or tasks are serialised.
        """
        result = self.process_agent_behavior_sync(agent_id, behavioral_data)
        if getattr(self.cap_resolver, "sync_interval_seconds", None) is not None:
            # as the resolver's own async handle_update: once the call is accepted (a refused
            # call raised above and starts nothing)
            self.cap_resolver.start_background_sync()
        return result

    @synchronized
    def process_agent_behavior_sync(self, agent_id: Hashable, behavioral_data: Any) -> ItemResult:
        """Synchronous twin of :meth:`process_agent_behavior` (no event loop needed)."""
        if self.engine.items_as_rounds:        # e.g. Ray: a one-row round, decided by _run_round
            return self.engine.process_item(agent_id, behavioral_data)
        data, number, now = self._check_item(agent_id, behavioral_data)
        agent_id = data.agent_id
        self._evidence_number = number
        # Step 1: Update hierarchical statistics (O(log n)); the values are checked already
        anomaly_info = self.protocol._update_checked(agent_id, data.features, data.cohort)
        # Step 3 first for its confidence factor: Distributed update with CAP resolution
        # (create_statistical_update's fields, from the checked values without reading them again)
        uid = data.id if data.id is not None else f"{self._own_prefix}:u{next(self._update_seq)}"
        region = data.cohort[0] if data.cohort else self.default_region
        score = float(anomaly_info["mahalanobis_squared"])
        if score < 0.0:       # rounding: the registers take it as 0 (swarmguard.api.engine.register_scores)
            score = 0.0
        cap = self.cap_resolver
        own_rule = _not_replaced(self, "should_trigger_response", _OWN_RULE)
        if _not_replaced(cap, "handle_update_sync", _OWN_HANDLE_UPDATE):
            # the resolver's own write, without checking again what _check_item checked; the
            # detector's own rule reads only the confidence factor (a subclass's gets the report)
            cap_result = cap._handle_checked(region, agent_id, data.timestamp, data.features, score, uid, now,
                                             report=not own_rule)
        else:                                                   # a part swapped in: its own method
            update = StatisticalUpdate(update_id=uid, agent_id=agent_id, timestamp=data.timestamp,
                                       feature_vector=data.features, anomaly_score=score, source_partition=region)
            cap_result = cap.handle_update_sync(update, now=now)
        cf = cap_result["confidence_factor"]
        cf = 1.0 if cf is None else cf
        # Step 2: Collect evidence if anomalous
        if anomaly_info["is_anomaly"]:
            evidence = self.create_evidence(agent_id, data, anomaly_info, confidence=cf)
            self.consensus.add_evidence_sync(evidence)
        consensus = self.consensus
        if (_not_replaced(consensus, "distributed_evidence_consensus_sync", _OWN_CONSENSUS_SYNC)
                and _not_replaced(consensus, "consensus", _OWN_CONSENSUS)):
            consensus_result = consensus.consensus_or_none(agent_id)   # no exception for the many unknown
        else:                                                          # a part swapped in: its own method
            try:
                consensus_result = consensus.distributed_evidence_consensus_sync(agent_id)
            except KeyError:
                consensus_result = None
        # Step 4: Make detection decision
        if own_rule:
            isolate = self._decide(anomaly_info, cf, consensus_result)   # its rule, without asking again
        else:                                                            # a subclass's own rule
            isolate = self.should_trigger_response(anomaly_info, cap_result, consensus_result)
        return ItemResult(agent_id=agent_id, action="isolate" if isolate else "monitor", confidence=cf,
                          evidence=consensus_result, anomaly=anomaly_info)
