"""The CAP resolver's value types.

:class:`ConsistencyModel` (how the resolver trades consistency for
availability), :class:`StatisticalUpdate` (one agent observation, as the guide
builds it) and :class:`SyncReport` (what one anti-entropy round shipped). All
three stay importable from :mod:`swarmguard.api.cap`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import InvalidInputError

__all__ = ["ConsistencyModel", "StatisticalUpdate", "SyncReport"]


class ConsistencyModel(Enum):
    """How the resolver trades consistency for availability.

    ``STATISTICAL``: always accept; report a confidence factor and widened bounds.
    ``STRONG``: accept only where the region reaches a majority of regions (CP);
    the write is applied at every reachable replica before the call returns.
    ``EVENTUAL``: always accept; report no confidence and no bounds.
    """

    STATISTICAL = "statistical"
    STRONG = "strong"
    EVENTUAL = "eventual"

    @classmethod
    def coerce(cls, value: Any) -> ConsistencyModel:
        """Accept a member or its name/value as text (``"strong"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value.lower() in (member.value, member.name.lower()):
                    return member
        raise InvalidInputError(
            f"unknown consistency model {value!r}; use one of "
            + ", ".join(f"ConsistencyModel.{m.name}" for m in cls)
        )


@dataclass(frozen=True)
class StatisticalUpdate:
    """One agent observation, as the guide builds it.

    ``update_id`` and ``agent_id`` are ints or strings; ``timestamp`` is the
    observation's time (it orders writes: last writer wins); ``source_partition``
    is the region that accepts the update.
    """

    update_id: Hashable
    agent_id: Hashable
    timestamp: float
    feature_vector: Any
    anomaly_score: float
    source_partition: str


@dataclass(frozen=True)
class SyncReport:
    """What one :meth:`~swarmguard.api.cap.StatisticalCAPResolver.sync` round shipped."""

    pairs: int
    rows_shipped: int
    bytes_shipped: int
    seconds: float
