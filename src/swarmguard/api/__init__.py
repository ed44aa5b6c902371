"""The guide's public classes (validation of user input happens here, once)."""

from .protocol import BehavioralData, BehavioralDistributedProtocol
from .tree import HierarchicalStatisticalTree

__all__ = ["HierarchicalStatisticalTree", "BehavioralDistributedProtocol", "BehavioralData"]
