"""``DistributedBehavioralDetector``: the guide's three parts working together.

This module holds the detector's class, its construction and parts, and the
choice of the engine it drives (``register_backend``, kept in
:mod:`swarmguard.api.backends`); the rest of its class lives beside it, and
every name stays importable from here.

See Also
--------
swarmguard.api.detector_decision : the decision rule and the guide's helpers.
swarmguard.api.detector_item : the per-item path (``process_agent_behavior``).
swarmguard.api.detector_rounds : the batch path (``process_round``, ``ingest_evidence``).
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..lazy_import import AttributeOnFirstUse
from ..locking import Locked, synchronized
from ..validation import check_finite_float
from .backends import BACKENDS, register_backend, registered_engine  # noqa: F401  (the first two: still importable from here)
from .detector_decision import (  # noqa: F401  (_OWN_ID_SUFFIX, _special: still importable from here)
    _OWN_ID_SUFFIX,
    DetectorDecision,
    _special,
    own_id_prefix,
    p_value_log_odds,
)
from .detector_item import DetectorItemPath, _not_replaced  # noqa: F401  (_not_replaced: as above)
from .detector_rounds import DetectorRounds
from .detector_settings import DetectorSettings
from .engine import Engine
from .inprocess import InProcessEngine

# imported on first use: see swarmguard.lazy_import (chi2 for callers that read it from here)
chi2 = AttributeOnFirstUse("scipy.stats", "chi2")

__all__ = ["DistributedBehavioralDetector", "DetectorSettings", "p_value_log_odds", "BACKENDS",
           "register_backend"]

T = TypeVar("T")


def _engine_class(backend: Any) -> Callable[..., Engine]:
    """The engine of ``backend`` (a class with ``OPTIONS``, the names of its own parameters)."""
    if isinstance(backend, str) and backend == "inprocess":
        return InProcessEngine
    return registered_engine(backend)


def _engine_part(name: str, doc: str) -> property:
    """A detector attribute that is its engine's part ``name``: read there, and set there (code
    written against the guide swaps parts in)."""
    def get(self: DistributedBehavioralDetector) -> Any:
        return getattr(self.engine, name)

    def swap(self: DistributedBehavioralDetector, part: Any) -> None:
        setattr(self.engine, name, part)

    return property(get, swap, doc=doc)


class DistributedBehavioralDetector(DetectorItemPath, DetectorRounds, DetectorDecision, Locked):
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
    tree = _engine_part("tree", "Solution 1's population tree (on Ray: a view of the merged moments).")
    protocol = _engine_part("protocol", "Solution 1's scoring protocol.")
    consensus = _engine_part("consensus", "Solution 2's evidence consensus (on Ray: the evidence partitions, merged).")
    cap_resolver = _engine_part(
        "cap_resolver", "Solution 3's statistical CAP resolver (on Ray: the region actors' replicas and links).")

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
        # the last round's own evidence as added, ``(evidence_ids, agent_ids, log_odds,
        # confidences, timestamps, source_nodes)`` arrays (None: it flagged nobody), for a host
        # that replicates it (serve's evidence ledger)
        self.last_round_evidence: tuple | None = None
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

    def _processing_time(self) -> float:
        """The engine's clock, read and checked (finite), changing nothing: the writes'
        processing time, taken before any part changes (a clock gone bad refuses the call)."""
        return self.engine.processing_time()


DistributedBehavioralDetector.__signature__ = inspect.Signature(  # help() and IDEs list the real parameters
    [inspect.Parameter("settings", inspect.Parameter.POSITIONAL_ONLY, default=None),
     inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="inprocess"),
     *DetectorSettings.signature_parameters()])
