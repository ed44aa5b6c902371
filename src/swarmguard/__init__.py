"""swarmguard: find misbehaving agents in very large populations.

Three parts, one mergeable state model:

1. hierarchical aggregation (``HierarchicalStatisticalTree``, ``BehavioralDistributedProtocol``),
2. Bayesian evidence consensus,
3. statistical CAP resolution.
"""

from .api import (
    BehavioralData,
    BehavioralDistributedProtocol,
    ConsistencyModel,
    HierarchicalStatisticalTree,
    QuorumUnavailableError,
    StatisticalCAPResolver,
    StatisticalUpdate,
    SyncReport,
    UnknownRegionError,
    compute_confidence_factor,
    widened_threshold,
)
from .errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
    SwarmGuardError,
    UnknownAgentError,
    UnknownCohortError,
)
from .values import InsufficientDataError, Moments

__version__ = "0.1.0"

__all__ = [
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
]
