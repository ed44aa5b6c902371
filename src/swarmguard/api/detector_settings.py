"""``DetectorSettings``: the detector's parameters, one list for every backend.

The in-process :class:`~swarmguard.api.detector.DistributedBehavioralDetector`
and the Ray detector take the same parameters; this dataclass is where they
are named, defaulted and checked, so that the two can never drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError, InvalidTypeError
from ..structures.scoring_modes import DEFAULT_SCORING
from ..validation import check_finite_float, check_fraction, check_key, check_positive_int
from .cap import ConsistencyModel
from .consensus import PROBATION_EVIDENCE

__all__ = ["DetectorSettings", "REQUIRE"]

REQUIRE = ("both", "anomaly", "consensus", "either")


@dataclass(frozen=True)
class DetectorSettings:
    """Parameters of a :class:`~swarmguard.api.detector.DistributedBehavioralDetector`.

    Every field has the guide's default. Hierarchical statistics:
    ``branching_factor``, ``feature_dimensions`` (None: the first batch decides),
    ``significance_level``, ``fdr`` (Benjamini–Hochberg rate for batches, None:
    per-agent cut), ``shrinkage``, ``warm_up``, ``score_levels``
    ("population" or "all"), ``scoring`` (a scoring mode,
    :data:`swarmguard.SCORING_MODES`), ``window_rounds`` (score against the members
    written in the last rounds, :mod:`swarmguard.structures.window`; None: all), ``calibrate`` (calibrated p-values from
    an empirical null, :class:`~swarmguard.api.protocol.BehavioralDistributedProtocol`). Consensus: ``byzantine_threshold``,
    ``partition_size``, ``prior_probability``, ``probation_evidence`` (Sybil
    resistance, see :class:`~swarmguard.api.consensus.StableBayesianConsensus`). CAP: ``consistency_model``,
    ``max_staleness_seconds``, ``confidence_decay_rate``, ``clock``,
    ``regions`` (known up front; others join when they first write),
    ``auto_sync_seconds``. Decision: ``isolate_probability``, ``require``,
    ``own_evidence_cap``, ``node_id``, ``default_region``.

    >>> s = DetectorSettings(require="either")
    >>> s.require, s.significance_level
    ('either', 0.001)
    >>> DetectorSettings(require="all")
    Traceback (most recent call last):
    ...
    swarmguard.errors.InvalidInputError: require must be one of ('both', 'anomaly', 'consensus', 'either'), got 'all'
    """

    branching_factor: int = 10
    feature_dimensions: int | None = None
    significance_level: float = 1e-3
    fdr: float | None = None
    shrinkage: float | str = "auto"
    warm_up: int | None = None
    score_levels: str = "population"
    scoring: str = DEFAULT_SCORING
    window_rounds: int | None = None
    calibrate: bool = False
    byzantine_threshold: float = 0.33
    partition_size: int = 10000
    prior_probability: float = 0.01
    probation_evidence: int = PROBATION_EVIDENCE
    consistency_model: Any = ConsistencyModel.STATISTICAL
    max_staleness_seconds: float = 5.0
    confidence_decay_rate: float = 0.1
    clock: Callable[[], float] | None = None
    isolate_probability: float = 0.9
    require: str = "both"
    own_evidence_cap: float = 3.0
    node_id: str = "detector"
    default_region: str = "default"
    regions: Sequence[str] | None = None
    auto_sync_seconds: float | None = 1.0

    def __post_init__(self) -> None:
        # Only what the detector itself owns; the tree, protocol, consensus and
        # resolver check their own parameters when they are built.
        set_ = object.__setattr__
        set_(self, "consistency_model", ConsistencyModel.coerce(self.consistency_model))
        if self.require not in REQUIRE:
            raise InvalidInputError(f"require must be one of {REQUIRE}, got {self.require!r}")
        set_(self, "isolate_probability", check_fraction(self.isolate_probability, "isolate_probability"))
        cap = check_finite_float(self.own_evidence_cap, "own_evidence_cap")
        if cap < 0:
            raise InvalidInputError("own_evidence_cap must be >= 0")
        set_(self, "own_evidence_cap", cap)
        set_(self, "probation_evidence", check_positive_int(self.probation_evidence, "probation_evidence"))
        # The consensus's rule for a source id (at most MAX_ID_LENGTH characters, no NUL), here
        # so that the settings refuse it themselves; the detector's own ids made from it stay
        # valid however long it is (api.detector.own_id_prefix).
        set_(self, "node_id", check_key(self.node_id, "node_id"))
        if self.clock is not None and not callable(self.clock):
            raise InvalidTypeError(f"clock must be callable, got {self.clock!r}")
        if self.regions is not None:
            if isinstance(self.regions, (str, bytes)):
                raise InvalidTypeError("regions must be a list of region names, not one string")
            set_(self, "regions", tuple(self.regions))

    @classmethod
    def from_params(cls, settings: DetectorSettings | None, params: dict[str, Any]) -> DetectorSettings:
        """``settings`` with ``params`` replaced (or new settings from ``params``), typed errors."""
        if settings is not None and not isinstance(settings, cls):
            raise InvalidTypeError(f"settings must be DetectorSettings, got {type(settings).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise InvalidTypeError(f"unknown detector parameters {unknown}; known: {sorted(names)}")
        return dataclasses.replace(settings, **params) if settings is not None else cls(**params)

    def to_params(self) -> dict[str, Any]:
        """The fields as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def signature_parameters(cls) -> list[inspect.Parameter]:
        """The fields as keyword-only parameters (for the detectors' ``__signature__``)."""
        return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                  annotation=f.type) for f in dataclasses.fields(cls)]
