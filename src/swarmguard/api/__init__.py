"""The guide's public classes (validation of user input happens here, once)."""

from ..structures.scoring_modes import DEFAULT_SCORING, SCORING_MODES
from .cap import (
    ConsistencyModel,
    QuorumUnavailableError,
    StatisticalCAPResolver,
    StatisticalUpdate,
    SyncReport,
    UnknownRegionError,
    compute_confidence_factor,
    widened_threshold,
)
from .consensus import StableBayesianConsensus
from .detector import DistributedBehavioralDetector, p_value_log_odds
from .detector_settings import DetectorSettings
from .engine import Engine, ItemResult, RoundBatch, RoundResult, ScoredRound
from .evidence_types import BayesianEvidence, EvidenceType, map_to_evidence_type
from .inprocess import InProcessEngine
from .protocol import BehavioralData, BehavioralDistributedProtocol
from .tree import HierarchicalStatisticalTree

__all__ = [
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
    "DistributedBehavioralDetector",
    "DetectorSettings",
    "p_value_log_odds",
    "Engine",
    "InProcessEngine",
    "RoundBatch",
    "ScoredRound",
    "RoundResult",
    "ItemResult",
    "SCORING_MODES",
    "DEFAULT_SCORING",
]
