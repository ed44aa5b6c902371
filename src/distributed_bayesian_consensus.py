"""The guide's flat module name for Solution 2; it only re-exports swarmguard.

>>> from distributed_bayesian_consensus import StableBayesianConsensus, BayesianEvidence, EvidenceType
"""

from swarmguard.api.consensus import StableBayesianConsensus
from swarmguard.api.evidence_types import BayesianEvidence, EvidenceType, map_to_evidence_type
from swarmguard.errors import DuplicateEvidenceError, SwarmGuardError, UnknownEvidenceTypeError

__all__ = [
    "StableBayesianConsensus",
    "BayesianEvidence",
    "EvidenceType",
    "map_to_evidence_type",
    "SwarmGuardError",
    "DuplicateEvidenceError",
    "UnknownEvidenceTypeError",
]
