"""Each part's constructor settings, checked without building the part.

Both engines check a detector's parameters by the same rules: the in-process
engine by building the parts, the Ray engine (whose parts live on actors) by
calling these functions on the driver before Ray starts. Each function raises
the typed error, with the message, that the part's constructor raises for the
same bad argument (``tests/api/test_part_settings.py`` checks both against each
other), and returns the checked values with their defaults filled in.

>>> validate_protocol_settings(significance_level=0.01).warm_up is None
True
>>> validate_tree_settings(branching_factor=1)
Traceback (most recent call last):
...
swarmguard.errors.InvalidInputError: branching_factor must be >= 2, got 1
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError, InvalidTypeError
from ..structures.scoring import MIN_POPULATION
from ..structures.scoring_modes import DEFAULT_SCORING, check_scoring
from ..validation import (
    check_fraction,
    check_key,
    check_positive_int,
)
from .cap import CapSettings, validate_cap_settings
from .tree import TreeSettings, validate_tree_settings

__all__ = [
    "TreeSettings", "ProtocolSettings", "ConsensusSettings", "CapSettings",
    "validate_tree_settings", "validate_protocol_settings", "validate_consensus_settings",
    "validate_cap_settings", "AGGREGATIONS", "PROBATION_EVIDENCE", "FOUNDING_QUORUM",
]

AGGREGATIONS = ("robust", "sum")
PROBATION_EVIDENCE = 10  # the probation bar: pieces to end the founding, covered agents to earn a vote
FOUNDING_QUORUM = 3      # untrusted sources that must have been seen before the founding can end


@dataclass(frozen=True)
class ProtocolSettings:
    """:class:`~swarmguard.api.protocol.BehavioralDistributedProtocol`'s checked settings
    (``warm_up`` None: the protocol's default, from the tree's dimension)."""

    significance_level: float
    fdr: float | None
    shrinkage: float | str
    warm_up: int | None
    score_levels: str
    scoring: str
    calibrate: bool


def validate_protocol_settings(*, significance_level: Any = 1e-3, fdr: Any = None, shrinkage: Any = "auto",
                               warm_up: Any = None, score_levels: Any = "population",
                               scoring: Any = DEFAULT_SCORING, calibrate: Any = False) -> ProtocolSettings:
    """Check the protocol's constructor arguments (but its tree) as the protocol does."""
    significance_level = check_fraction(significance_level, "significance_level", low_open=True, high_open=True)
    fdr = None if fdr is None else check_fraction(fdr, "fdr", low_open=True, high_open=True)
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise InvalidInputError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}")
    else:
        shrinkage = check_fraction(shrinkage, "shrinkage")
    warm_up = None if warm_up is None else check_positive_int(warm_up, "warm_up", minimum=MIN_POPULATION)
    if score_levels not in ("population", "all"):
        raise InvalidInputError(f"score_levels must be 'population' or 'all', got {score_levels!r}")
    scoring = check_scoring(scoring)
    if not isinstance(calibrate, bool):
        raise InvalidTypeError(f"calibrate must be True or False, got {calibrate!r}")
    return ProtocolSettings(significance_level, fdr, shrinkage, warm_up, score_levels, scoring, calibrate)


@dataclass(frozen=True)
class ConsensusSettings:
    """:class:`~swarmguard.api.consensus.StableBayesianConsensus`'s checked settings (but its store)."""

    byzantine_threshold: float
    partition_size: int
    prior_probability: float
    aggregation: str
    false_flag_rate: float
    min_sources: int
    reputation_refresh_limit: int
    trusted_sources: frozenset
    probation_evidence: int
    founding_quorum: int


def validate_consensus_settings(byzantine_threshold: Any = 0.33, partition_size: Any = 10000,
                                prior_probability: Any = 0.5, *, aggregation: Any = "robust",
                                false_flag_rate: Any = 1e-6, min_sources: Any = 1,
                                reputation_refresh_limit: Any = 200_000, trusted_sources: Any = (),
                                probation_evidence: Any = None, founding_quorum: Any = None) -> ConsensusSettings:
    """Check the consensus's constructor arguments as the consensus does."""
    byzantine_threshold = check_fraction(byzantine_threshold, "byzantine_threshold",
                                         low=0.0, high=0.5, high_open=True)
    partition_size = check_positive_int(partition_size, "partition_size")
    prior_probability = check_fraction(prior_probability, "prior_probability", low_open=True, high_open=True)
    if aggregation not in AGGREGATIONS:
        raise InvalidInputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    false_flag_rate = check_fraction(false_flag_rate, "false_flag_rate", low_open=True, high_open=True)
    min_sources = check_positive_int(min_sources, "min_sources")
    reputation_refresh_limit = check_positive_int(reputation_refresh_limit, "reputation_refresh_limit", minimum=0)
    if isinstance(trusted_sources, (str, bytes)):
        trusted_sources = (trusted_sources,)
    trusted: Sequence[Hashable] = trusted_sources
    trusted_set = frozenset(check_key(t, "trusted_sources") for t in trusted)
    probation_evidence = check_positive_int(
        PROBATION_EVIDENCE if probation_evidence is None else probation_evidence, "probation_evidence")
    founding_quorum = check_positive_int(
        FOUNDING_QUORUM if founding_quorum is None else founding_quorum, "founding_quorum")
    return ConsensusSettings(byzantine_threshold, partition_size, prior_probability, aggregation, false_flag_rate,
                             min_sources, reputation_refresh_limit, trusted_set, probation_evidence,
                             founding_quorum)
