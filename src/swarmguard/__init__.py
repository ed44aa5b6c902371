"""swarmguard: find misbehaving agents in very large populations.

Three parts, one mergeable state model:

1. hierarchical aggregation (``HierarchicalStatisticalTree``, ``BehavioralDistributedProtocol``),
2. Bayesian evidence consensus,
3. statistical CAP resolution.
"""

from .api.backends import register_backend
from .lazy_import import exports_on_first_use

# Each public name's module, imported when the name is first read (swarmguard.lazy_import:
# every module of the package runs this file first, a Ray actor's shard module too, and an
# actor needs a few parts of the API, not all of them).
_EXPORTS = {
    **dict.fromkeys(["DEFAULT_SCORING", "SCORING_MODES", "BayesianEvidence", "BehavioralData",
                     "BehavioralDistributedProtocol", "ConsistencyModel", "DetectorSettings",
                     "DistributedBehavioralDetector", "EvidenceType", "HierarchicalStatisticalTree",
                     "StableBayesianConsensus", "StatisticalCAPResolver", "StatisticalUpdate", "SyncReport",
                     "compute_confidence_factor", "map_to_evidence_type", "p_value_log_odds",
                     "widened_threshold"], ".api"),
    **dict.fromkeys(["DimensionMismatchError", "DuplicateEvidenceError", "EmptyInputError", "EvidenceStoreError",
                     "InsufficientDataError", "InvalidInputError", "InvalidTypeError", "MalformedInputError",
                     "MissingFieldError", "NonFiniteError", "OutputPathError", "QuorumUnavailableError",
                     "SwarmGuardError", "UnknownAgentError", "UnknownCohortError", "UnknownEvidenceTypeError",
                     "UnknownRegionError"], ".errors"),
    "Moments": ".values",
}
# the modules that read as attributes of the package, as when this file imported the API
_SUBMODULES = ["api", "errors", "id_validation", "lazy_import", "locking", "structures", "validation", "values"]

__getattr__, __dir__ = exports_on_first_use(__name__, globals(), _EXPORTS, _SUBMODULES)
del exports_on_first_use


def _ray_engine() -> type:
    # Imported on first use: the engines layer sits above api, and Ray is an optional extra.
    from .engines.ray_engine import RayEngine
    return RayEngine


register_backend("ray", _ray_engine)

__version__ = "0.1.0"

__all__ = [
    "SCORING_MODES",
    "DEFAULT_SCORING",
    "SwarmGuardError",
    "InvalidInputError",
    "InvalidTypeError",
    "DimensionMismatchError",
    "NonFiniteError",
    "EmptyInputError",
    "UnknownAgentError",
    "UnknownCohortError",
    "InsufficientDataError",
    "Moments",
    "HierarchicalStatisticalTree",
    "BehavioralDistributedProtocol",
    "BehavioralData",
    "StatisticalCAPResolver",
    "ConsistencyModel",
    "StatisticalUpdate",
    "SyncReport",
    "QuorumUnavailableError",
    "UnknownRegionError",
    "compute_confidence_factor",
    "widened_threshold",
    "StableBayesianConsensus",
    "BayesianEvidence",
    "EvidenceType",
    "map_to_evidence_type",
    "DuplicateEvidenceError",
    "EvidenceStoreError",
    "MissingFieldError",
    "UnknownEvidenceTypeError",
    "DistributedBehavioralDetector",
    "DetectorSettings",
    "p_value_log_odds",
    "MalformedInputError",
    "OutputPathError",
]
