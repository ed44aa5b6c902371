"""The engine protocol: what :class:`~swarmguard.api.detector.DistributedBehavioralDetector` drives.

The detector owns the decision rule (own evidence, consensus, the isolation
rule) once; an *engine* holds the state and does the work below it: it updates
and scores a round, writes it to the regions' replicas, stores evidence,
answers the consensus, and cuts, heals and syncs the links between regions.
Two engines implement :class:`Engine`: :class:`~swarmguard.api.inprocess.InProcessEngine`
(the default) and the Ray engine (:class:`swarmguard.engines.ray_engine.RayEngine`,
``backend="ray"``).

The values that cross the protocol are typed: a round comes in as a
:class:`RoundBatch` (checked once, by the detector, at the boundary), goes back
as a :class:`ScoredRound` (scores, anomaly cut, confidence factors) and leaves
the detector as a :class:`RoundResult`. Results are readable by key, as the
guide reads them (``result["action"]``), and by attribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..validation import CheckedFeatures

__all__ = ["Engine", "RoundBatch", "ScoredRound", "RoundResult", "ItemResult", "FieldMapping",
           "register_scores"]

T = TypeVar("T")


def register_scores(d2: np.ndarray) -> np.ndarray:
    """The squared distances ``d2`` as an engine writes them into the CAP registers: any below
    0 (rounding on a dot-product path, ``e·A⁻¹e`` summed from signed terms) as 0.

    A ``swarmguard serve`` peer refuses a whole delta holding a score below 0 (its chi-square
    ``ln p`` is NaN), so one written here would cut the node off from every peer on every
    sync. The detector's own results keep the values computed. The scorers already give
    none below 0 (:func:`~swarmguard.structures.scoring.nonnegative_d2`); kept for any other
    producer of ``d2``. ``d2`` itself when none is below 0 (no copy on the common path)."""
    if d2.size and d2.min() < 0.0:
        return np.maximum(d2, 0.0)
    return d2


class FieldMapping(Mapping):
    """A dataclass readable as a read-only mapping of its fields (``result["action"]``)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self._field_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_names")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))
            cls._names = names
        return names

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return {k: getattr(self, k) for k in self._field_names()}


@dataclass(frozen=True, eq=False)
class RoundBatch:
    """One round's input, checked by every part's rules before anything changes.

    ``X`` (n, d) float64, ``agent_ids`` as the replicas take them, ``regions``
    a NumPy string array with its distinct ``region_names`` (sorted) and each
    row's ``region_index`` into them, ``cohorts`` as the tree takes them (None:
    the regions), ``timestamp`` (finite), ``now`` (the processing time of every
    write of the round, read once), ``fdr`` (the false-discovery level, None:
    the per-agent level) and ``stay`` (rows whose known agents keep their place
    in the tree: the per-item path's data without a cohort; None: none).
    ``features`` is ``X`` as the validator issued it
    (:class:`~swarmguard.validation.CheckedFeatures`, ``X`` its read-only
    matrix): the in-process parts take it without checking it again.
    """

    X: np.ndarray
    agent_ids: np.ndarray
    regions: np.ndarray
    region_names: np.ndarray
    region_index: np.ndarray
    cohorts: Any
    timestamp: float
    now: float
    fdr: float | None
    stay: np.ndarray | None = None
    features: CheckedFeatures | None = None

    @property
    def size(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True, eq=False)
class ScoredRound:
    """What an engine hands back for a round: the scores, the anomaly cut and the regions' views.

    Arrays aligned with ``agent_ids``: ``mahalanobis_squared``, ``p_value``,
    ``decision_p_value``, ``is_anomaly`` (the cut applied), ``confidence`` (the
    agent's region's confidence factor); ``p_value_cutoff`` and
    ``threshold_squared`` (the cut); per region of the batch (``region_names``)
    ``region_confidence``; ``accepted`` (CAP writes taken); ``timestamp``;
    ``detail``: what an engine keeps for its own per-item answer (or None);
    ``null_score`` and ``null_scale`` (``calibrate=True``; None otherwise):
    what the round's rows entered the score null with, ``null_count`` and
    ``null_p_floor`` the null they were tested against (see :class:`RoundResult`).
    """

    agent_ids: np.ndarray
    mahalanobis_squared: np.ndarray
    p_value: np.ndarray
    decision_p_value: np.ndarray
    is_anomaly: np.ndarray
    p_value_cutoff: float
    threshold_squared: float
    confidence: np.ndarray
    region_names: np.ndarray
    region_confidence: np.ndarray
    accepted: int
    timestamp: float
    detail: Any = None
    null_score: np.ndarray | None = None
    null_scale: float | None = None
    null_count: int | None = None
    null_p_floor: float | None = None


@dataclass(frozen=True, eq=False)
class RoundResult(FieldMapping):
    """:meth:`~swarmguard.api.detector.DistributedBehavioralDetector.process_round`'s answer.

    Arrays aligned with ``agent_ids``: ``action`` ("isolate" / "monitor"),
    ``isolate``, ``is_anomaly``, ``mahalanobis_squared``, ``p_value``,
    ``decision_p_value``, ``probability`` (consensus; NaN where no evidence
    yet), ``consensus_reached``, ``confidence`` (the agent's region's
    confidence factor); ``region_confidence`` (a dict per region),
    ``accepted`` (CAP writes taken) and ``threshold_squared`` (the anomaly
    cut). With ``calibrate=True``, ``null_score`` (aligned: what the score null
    compares, the distance, or ``-log p`` in the tail modes) and ``null_scale``
    (what the null holds is ``null_score / null_scale``: the round's median
    distance in the default mode, 1 in the others), ``null_count`` (the scores
    the null held when the round was tested against it) and ``null_p_floor``
    (its smallest p-value ``1 / (null_count + 1)``; None while it warms up), as
    the protocol's batch results report them; all None without ``calibrate``.
    Read by key (``result["action"]``) or by attribute.
    """

    agent_ids: np.ndarray
    action: np.ndarray
    isolate: np.ndarray
    is_anomaly: np.ndarray
    mahalanobis_squared: np.ndarray
    p_value: np.ndarray
    decision_p_value: np.ndarray
    probability: np.ndarray
    consensus_reached: np.ndarray
    confidence: np.ndarray
    region_confidence: dict[str, float]
    accepted: int
    threshold_squared: float
    null_score: np.ndarray | None = None
    null_scale: float | None = None
    null_count: int | None = None
    null_p_floor: float | None = None


@dataclass(frozen=True, eq=False)
class ItemResult(FieldMapping):
    """:meth:`~swarmguard.api.detector.DistributedBehavioralDetector.process_agent_behavior`'s answer.

    ``agent_id`` (as the replicas took it), ``action`` ("isolate" / "monitor"),
    ``confidence`` (the region's confidence factor), ``evidence`` (the agent's
    consensus result, None before any evidence) and ``anomaly`` (the anomaly
    test: ``is_anomaly``, distances, p-values, threshold, cohort, population
    count, warm-up). Read by key as the guide reads its dict
    (``result["action"]``, ``result.get("evidence")``, ``dict(result)``) or by
    attribute; equal to a dict with the same items.

    >>> r = ItemResult(7, "monitor", 1.0, None, {"is_anomaly": False})
    >>> r["action"], r.get("evidence"), "anomaly" in r, sorted(r) == sorted(r.keys()), len(r)
    ('monitor', None, True, True, 5)
    """

    agent_id: Any
    action: str
    confidence: float
    evidence: Any
    anomaly: Any


@runtime_checkable
class Engine(Protocol):
    """What a detector needs from an engine (see the module docstring).

    ``tree``, ``protocol``, ``consensus`` and ``cap_resolver`` are the guide's
    parts (on Ray: views over the actors that answer as the parts do).
    ``items_as_rounds``: the engine answers the per-item call itself
    (:meth:`process_item`, a one-row round); else the detector runs the guide's
    per-item loop on the parts.
    """

    tree: Any
    protocol: Any
    consensus: Any
    cap_resolver: Any
    items_as_rounds: bool
    OPTIONS: tuple[str, ...]     # the engine's own parameters (built as ``Engine(settings, **options)``)

    @property
    def feature_dimensions(self) -> int | None: ...

    def bind(self, detector: Any) -> None:
        """The detector that drives this engine (its clock, its evidence numbers, its rounds)."""

    def run(self, kind: str, args: dict[str, Any], call: Callable[[], T]) -> T:
        """Run one state-changing call of the detector's (``kind``, with its arguments
        ``args``) as a transaction of the engine's (a durable engine logs it)."""

    def processing_time(self) -> float:
        """The clock's reading for the next writes, checked, changing nothing."""

    def shares_clock(self, detector: Any) -> bool:
        """Whether ``detector``'s clock, which stamps observations, is this engine's processing
        clock: then one reading is a call's timestamp and its processing time."""

    def score_round(self, batch: RoundBatch) -> ScoredRound:
        """Update and score a round, write it to the regions' replicas; engine-side
        checks first, so that a refused round changes nothing."""

    def round_done(self, scored: ScoredRound) -> None:
        """The detector finished the round (evidence, decision): e.g. a checkpoint."""

    def add_evidence(self, *columns: Any) -> int:
        """Store evidence columns inside a round (all or nothing); returns how many were new."""

    def ingest_evidence(self, *args: Any, **kwargs: Any) -> int:
        """Store observer evidence as a call of its own (all or nothing)."""

    def consensus_rows(self, agent_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Each agent's consensus probability and whether it was reached (None: no evidence;
        NaN / False for agents without evidence)."""

    def process_item(self, agent_id: Any, behavioral_data: Any) -> ItemResult:
        """The per-item call, when :attr:`items_as_rounds` (the keys of the in-process answer)."""

    def partition(self, groups: Any) -> None: ...

    def heal(self) -> None: ...

    def sync(self) -> Any: ...

    def global_statistics(self, ddof: int = 1) -> dict[str, Any]: ...

    def close(self) -> None: ...
