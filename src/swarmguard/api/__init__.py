"""Public API: the guide's classes with their names, async methods and sync twins."""

from .consensus import StableBayesianConsensus
from .evidence_types import BayesianEvidence, EvidenceType, map_to_evidence_type

__all__ = ["StableBayesianConsensus", "BayesianEvidence", "EvidenceType", "map_to_evidence_type"]
