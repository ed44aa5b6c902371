"""The consensus's rules that both engines apply: who votes (probation), when the founding ends, a row's answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .part_settings import FOUNDING_QUORUM

__all__ = ["consensus_at", "voting_sources", "founding_ends"]


def consensus_at(consensus: Mapping[str, Any], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability and ``consensus_reached`` of the rows at ``positions`` of a
    ``consensus_many`` result (-1: no evidence for that agent, NaN / False), as the
    engines hand them to the detector's decision.

    >>> consensus_at({"probability": np.array([0.2, 0.9]), "consensus_reached": np.array([False, True])},
    ...              np.array([1, -1]))
    (array([0.9, nan]), array([ True, False]))
    """
    have = positions >= 0
    probability = np.full(positions.shape[0], np.nan)
    reached = np.zeros(positions.shape[0], dtype=bool)
    probability[have] = consensus["probability"][positions[have]]
    reached[have] = consensus["consensus_reached"][positions[have]]
    return probability, reached


def voting_sources(base: np.ndarray | None, covered_counts: np.ndarray | None, probation: int) -> np.ndarray | None:
    """Mask of the sources that vote (None: every source, while the founding lasts or with
    ``probation`` 1): the base sources (founding or trusted) and every source with evidence on
    at least ``probation`` distinct agents that base sources report on (``covered_counts``,
    from :class:`~swarmguard.structures.covered_counts.CoveredCounts`)."""
    if base is None or probation <= 1:
        return None
    return np.asarray(base, dtype=bool) | (np.asarray(covered_counts) >= probation)


def founding_ends(counts: np.ndarray, trusted: np.ndarray, probation: int, quorum: int = FOUNDING_QUORUM) -> bool:
    """Whether accepted evidence counts per source (after a call) end the founding: some
    untrusted source has ``probation`` of them, and at least ``quorum`` untrusted sources have
    some (one early identity, or two, cannot end it alone)."""
    counts = np.asarray(counts)
    untrusted = counts[~np.asarray(trusted, dtype=bool)]
    return (probation > 1 and bool((untrusted >= probation).any())
            and int(np.count_nonzero(untrusted)) >= quorum)
