"""The guide's flat import name for Solution 3; it only re-exports swarmguard.

>>> from statistical_cap_resolver import StatisticalCAPResolver, ConsistencyModel, StatisticalUpdate
"""

from swarmguard.api.cap import (
    ConsistencyModel,
    QuorumUnavailableError,
    StatisticalCAPResolver,
    StatisticalUpdate,
    SyncReport,
    UnknownRegionError,
    compute_confidence_factor,
    widened_threshold,
)

__all__ = [
    "StatisticalCAPResolver",
    "ConsistencyModel",
    "StatisticalUpdate",
    "SyncReport",
    "QuorumUnavailableError",
    "UnknownRegionError",
    "compute_confidence_factor",
    "widened_threshold",
]
