"""The guide's public classes (validation of user input happens here, once)."""

from ..lazy_import import exports_on_first_use

# Each public name's module, imported when the name is first read (swarmguard.lazy_import:
# a Ray actor imports a few of these modules, not all of them).
_EXPORTS = {
    "DEFAULT_SCORING": "..structures.scoring_modes",
    "SCORING_MODES": "..structures.scoring_modes",
    **dict.fromkeys(["ConsistencyModel", "QuorumUnavailableError", "StatisticalCAPResolver", "StatisticalUpdate",
                     "SyncReport", "UnknownRegionError", "compute_confidence_factor", "widened_threshold"], ".cap"),
    "StableBayesianConsensus": ".consensus",
    "DistributedBehavioralDetector": ".detector",
    "p_value_log_odds": ".detector",
    "DetectorSettings": ".detector_settings",
    **dict.fromkeys(["Engine", "ItemResult", "RoundBatch", "RoundResult", "ScoredRound"], ".engine"),
    **dict.fromkeys(["BayesianEvidence", "EvidenceType", "map_to_evidence_type"], ".evidence_types"),
    "InProcessEngine": ".inprocess",
    "BehavioralData": ".protocol",
    "BehavioralDistributedProtocol": ".protocol",
    "HierarchicalStatisticalTree": ".tree",
}
# every module of the package reads as its attribute, as when this file imported them all
_SUBMODULES = ["backends", "behavior", "cap", "cap_checkpoint", "cap_links", "cap_types", "cap_views", "consensus",
               "consensus_ingest", "consensus_merge", "consensus_rules", "detector", "detector_decision",
               "detector_item", "detector_rounds", "detector_settings", "engine", "evidence_batch",
               "evidence_types", "inprocess", "item_score", "part_settings", "protocol", "protocol_item", "tree",
               "tree_inputs", "tree_secondary", "tree_state"]

__getattr__, __dir__ = exports_on_first_use(__name__, globals(), _EXPORTS, _SUBMODULES)
del exports_on_first_use

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
