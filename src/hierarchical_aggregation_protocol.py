"""The guide's module name for Solution 1; re-exports swarmguard's public names."""

from swarmguard import (  # noqa: F401
    BehavioralData,
    BehavioralDistributedProtocol,
    HierarchicalStatisticalTree,
    Moments,
)

__all__ = ["HierarchicalStatisticalTree", "BehavioralDistributedProtocol", "BehavioralData", "Moments"]
