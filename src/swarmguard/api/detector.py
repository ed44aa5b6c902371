"""``DistributedBehavioralDetector``: the guide's three parts working together."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import math  # noqa: F401  (used by the doctests)
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

from ..errors import DuplicateEvidenceError, InvalidInputError
from ..lazy_import import AttributeOnFirstUse, module_on_first_use
from ..locking import Locked, synchronized
from ..structures.chi2 import chi2_logsf
from ..structures.significance import resolve_fdr
from ..validation import (
    MAX_ID_LENGTH,
    as_feature_vector,
    as_name_array,
    check_cohort,
    check_feature_matrix,
    check_finite_float,
    unique_names,
)
from ..values.agent_index import as_wire_id_array, check_wire_id
from .cap import StatisticalCAPResolver, StatisticalUpdate
from .consensus import BayesianEvidence, EvidenceType, StableBayesianConsensus
from .detector_settings import DetectorSettings
from .engine import Engine, ItemResult, RoundBatch, RoundResult, ScoredRound
from .inprocess import InProcessEngine
from .protocol import BehavioralData, read_behavior

# imported on first use: see swarmguard.lazy_import (chi2 for callers that read it from here)
chi2 = AttributeOnFirstUse("scipy.stats", "chi2")
_special = module_on_first_use("scipy.special")

__all__ = ["DistributedBehavioralDetector", "DetectorSettings", "p_value_log_odds", "BACKENDS",
           "register_backend"]

BACKENDS = ("inprocess", "ray")

T = TypeVar("T")

# Loaders of the engines of other backends, by name. The engines layer sits above this one,
# so it is never imported here: the package root registers a loader that imports it on first
# use (see swarmguard/__init__.py).
_BACKEND_LOADERS: dict[str, Callable[[], Callable[..., Engine]]] = {}


def register_backend(name: str, loader: Callable[[], Callable[..., Engine]]) -> None:
    """Make ``DistributedBehavioralDetector(backend=name, **options)`` drive the engine
    ``loader()(settings, **options)`` (an :class:`~swarmguard.api.engine.Engine` class
    whose ``OPTIONS`` names its own parameters, such as Ray's ``address`` and
    ``region_workers``); ``loader`` runs on first use."""
    if name not in BACKENDS or name == "inprocess":
        raise InvalidInputError(f"backend must be one of {BACKENDS[1:]}, got {name!r}")
    _BACKEND_LOADERS[name] = loader


def _engine_class(backend: Any) -> Callable[..., Engine]:
    """The engine of ``backend`` (a class with ``OPTIONS``, the names of its own parameters)."""
    if isinstance(backend, str) and backend == "inprocess":
        return InProcessEngine
    loader = _BACKEND_LOADERS.get(backend) if isinstance(backend, str) else None
    if loader is None:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return loader()


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


def _not_replaced(obj: Any, name: str, function: Callable[..., Any]) -> bool:
    """Whether ``obj.<name>`` is ``function`` itself: neither ``obj``'s class nor ``obj``
    (an attribute set on the instance, e.g. a wrapper that counts or injects faults)
    replaced it. Only then may the per-item path skip the public method for its own
    shortcut; otherwise it calls ``obj.<name>`` as the guide's loop does."""
    return getattr(type(obj), name, None) is function and name not in getattr(obj, "__dict__", ())


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


class DistributedBehavioralDetector(Locked):
    """The guide's complete example: tree + consensus + CAP resolver, one decision.

    Every argument has the guide's default, so ``DistributedBehavioralDetector()``
    works as written there.

    Decision (:meth:`should_trigger_response`): an agent is isolated when the
    signals named by ``require`` hold:

    * anomaly — the agent is anomalous (p-value below the significance level or
      FDR cut) *and* its squared distance clears the threshold widened by the
      region's confidence factor (``widened_threshold(t², cf, squared=True)``:
      a stale view demands stronger behavioural evidence);
    * consensus — the Bayesian consensus probability that the agent is
      compromised is at least ``isolate_probability`` and the consensus was
      reached (enough trustworthy sources after Byzantine trimming).

    ``require="both"`` (default) needs both, ``"either"`` one of them,
    ``"anomaly"`` / ``"consensus"`` only that one.

    The detector is itself an evidence source (``node_id``): an anomaly adds
    behavioural evidence whose log-odds are the Sellke–Bayarri–Berger bound of
    its p-value (:func:`p_value_log_odds`), capped at ``own_evidence_cap``
    (3 nats, a Bayes factor of 20, by default: with ``require="both"`` the
    anomaly is already one of the two signals, and the cap keeps the detector's
    own test from outvoting the observers), with the region's confidence factor
    as the evidence's confidence. The detector's node is a trusted source of
    the consensus: its reports are conditioned on its test, so they differ from
    its peers' by design and must not get it flagged as Byzantine. Being
    trusted, it always votes, but it does not end the consensus's founding
    (``probation_evidence``): observers seen before some observer has sent that
    many pieces vote too, however few pieces they send.

    Engines: the detector owns this rule once and drives an engine
    (:class:`~swarmguard.api.engine.Engine`) that holds the state:
    ``backend="inprocess"`` (default) the guide's parts in this process
    (:class:`~swarmguard.api.inprocess.InProcessEngine`), ``backend="ray"``
    Ray actors (``swarmguard.engines.ray_engine.RayEngine``, with its own
    options such as ``address`` and ``region_workers``). ``tree``,
    ``protocol``, ``consensus`` and ``cap_resolver`` are the engine's parts
    (on Ray, views that answer as the parts do); the engine's own operations
    are reached through the detector.

    Threads: every public call holds the detector's lock for the whole
    transaction (checks, tree, replicas, evidence, decision), so one detector
    may be shared by the threads of a service; calls are serialised and a
    refused call commits nothing. Async methods do not await while holding it.
    """

    def __init__(self, settings: DetectorSettings | None = None, /, *, backend: str = "inprocess",
                 **params: Any):
        # The engine's own parameters (Ray's address, region_workers, ...) go to the engine; the
        # in-process engine takes none, so they are refused there as unknown settings.
        engine_class = _engine_class(backend)
        options = {k: params.pop(k) for k in list(params) if k in engine_class.OPTIONS}
        s = self._apply_settings(DetectorSettings.from_params(settings, params))
        self.backend = backend
        self.engine: Engine = engine_class(s, **options)
        self.engine.bind(self)

    # ------------------------------------------------------------------ the engine's parts
    @property
    def tree(self) -> Any:
        """Solution 1's population tree (on Ray: a view of the merged moments)."""
        return self.engine.tree

    @tree.setter
    def tree(self, part: Any) -> None:      # code written against the guide swaps parts in
        self.engine.tree = part

    @property
    def protocol(self) -> Any:
        """Solution 1's scoring protocol."""
        return self.engine.protocol

    @protocol.setter
    def protocol(self, part: Any) -> None:      # code written against the guide swaps parts in
        self.engine.protocol = part

    @property
    def consensus(self) -> Any:
        """Solution 2's evidence consensus (on Ray: the evidence partitions, merged)."""
        return self.engine.consensus

    @consensus.setter
    def consensus(self, part: Any) -> None:      # code written against the guide swaps parts in
        self.engine.consensus = part

    @property
    def cap_resolver(self) -> Any:
        """Solution 3's statistical CAP resolver (on Ray: the region actors' replicas and links)."""
        return self.engine.cap_resolver

    @cap_resolver.setter
    def cap_resolver(self, part: Any) -> None:      # code written against the guide swaps parts in
        self.engine.cap_resolver = part

    def __getattr__(self, name: str) -> Any:
        # An engine's own operations (Ray's checkpoint, replica, faults, ...) are the detector's too.
        engine = self.__dict__.get("engine")
        if engine is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return getattr(engine, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object (backend {self.backend!r}) has no "
                                 f"attribute {name!r}") from None

    @synchronized
    def partition(self, groups: Any) -> None:
        """Cut the links between regions into ``groups`` (as ``cap_resolver.partition``)."""
        self.engine.partition(groups)

    @synchronized
    def heal(self) -> None:
        """Restore every link (as ``cap_resolver.heal``)."""
        self.engine.heal()

    @synchronized
    def sync(self) -> Any:
        """One anti-entropy round over every delivering link (as ``cap_resolver.sync``)."""
        return self.engine.sync()

    @synchronized
    def close(self) -> None:
        """Release the engine's resources (Ray: kill the actors)."""
        self.engine.close()

    def __enter__(self) -> DistributedBehavioralDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _apply_settings(self, s: DetectorSettings) -> DetectorSettings:
        """Keep the settings and the decision rule's parameters (shared by every backend)."""
        Locked.__init__(self)
        self.settings = s
        self.clock = s.clock or time.time
        self.isolate_probability = s.isolate_probability
        self.require = s.require
        self.own_evidence_cap = s.own_evidence_cap
        self.node_id = s.node_id
        self._own_prefix = own_id_prefix(s.node_id)
        self.default_region = s.default_region
        self._evidence_number = 0
        self._update_seq = itertools.count()
        return s

    @property
    def feature_dimensions(self) -> int | None:
        """Features per agent (None until the first observation fixes it)."""
        return self.engine.feature_dimensions

    @synchronized
    def get_global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        """The whole population's count, mean and covariance (as the tree's)."""
        return self.engine.global_statistics(ddof)

    def _next_evidence_number(self) -> int:
        k = self._evidence_number
        self._evidence_number += 1
        return k

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

    def _one_clock(self) -> bool:
        """Whether the clock that stamps observations is the engine's processing clock
        (a configured ``clock`` is both): then one reading is a call's timestamp and its
        processing time."""
        return self.engine.shares_clock(self)

    def _call_times(self, timestamp: Any) -> tuple[float, float]:
        """A call's timestamp (``timestamp``, or the clock's reading when None) and processing
        time, both finite, before any part changes: each clock is read once per call, and a
        clock that is both (:meth:`_one_clock`) once for both. The writes take a reading
        earlier than a previous one as that one."""
        if timestamp is None and self._one_clock():
            t = check_finite_float(self.clock(), "clock()")
            return t, t
        ts = check_finite_float(self.clock() if timestamp is None else timestamp, "timestamp")
        return ts, self._processing_time()

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
        cap = self.cap_resolver
        own_rule = _not_replaced(self, "should_trigger_response",
                                 DistributedBehavioralDetector.should_trigger_response)
        if _not_replaced(cap, "handle_update_sync", StatisticalCAPResolver.handle_update_sync):
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
        if (_not_replaced(consensus, "distributed_evidence_consensus_sync",
                          StableBayesianConsensus.distributed_evidence_consensus_sync)
                and _not_replaced(consensus, "consensus", StableBayesianConsensus.consensus)):
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

    def _processing_time(self) -> float:
        """The engine's clock, read and checked (finite), changing nothing: the writes'
        processing time, taken before any part changes (a clock gone bad refuses the call)."""
        return self.engine.processing_time()

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
        )


DistributedBehavioralDetector.__signature__ = inspect.Signature(  # help() and IDEs list the real parameters
    [inspect.Parameter("settings", inspect.Parameter.POSITIONAL_ONLY, default=None),
     inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="inprocess"),
     *DetectorSettings.signature_parameters()])
