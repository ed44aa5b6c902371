"""One observation of one agent's behaviour, and how the protocol reads it.

:class:`BehavioralData` is the guide's record; :func:`read_behavior` takes the
agent id, the features and the cohort path from it, from any object with those
attributes, or from a mapping (the protocol's and the Ray engine's per-item
entry points share it).

>>> read_behavior({"agent_id": 7, "features": [1.0], "region": "eu"})
(7, [1.0], ('eu',))
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError, InvalidTypeError

__all__ = ["BehavioralData", "read_behavior"]

_MISSING = object()


@dataclass(slots=True)
class BehavioralData:
    """One observation of one agent's behaviour.

    ``features`` is the agent's behaviour vector; ``region`` (or an explicit
    ``cohort`` path) places the agent under named cohorts of the tree.
    """

    agent_id: Hashable
    features: Any
    timestamp: float | None = None
    id: Hashable | None = None
    region: str | None = None
    anomaly_score: float | None = None
    cohort: tuple[str, ...] | None = None


def read_behavior(data: Any) -> tuple[Hashable, Any, tuple[str, ...] | None]:
    """(agent_id, features, cohort path) from a BehavioralData, an object or a mapping.

    The cohort is ``cohort`` when given, else ``(region,)`` when a region is
    given, else None (the agent stays where it is; new agents go to the root).
    """
    if type(data) is BehavioralData:       # the common case, without getattr probing
        cohort = data.cohort
        if cohort is None and data.region is not None:
            if not isinstance(data.region, str):
                raise InvalidTypeError(f"region must be a string, got {data.region!r}")
            cohort = (data.region,)
        return data.agent_id, data.features, cohort
    if isinstance(data, Mapping):
        get = data.get
    else:
        def get(key, default=None):
            return getattr(data, key, default)
    agent_id = get("agent_id", _MISSING)
    features = get("features", _MISSING)
    if agent_id is _MISSING or features is _MISSING:
        raise InvalidInputError(
            "behavioral_data needs 'agent_id' and 'features' "
            f"(got a {type(data).__name__})"
        )
    cohort = get("cohort", None)
    if cohort is None:
        region = get("region", None)
        if region is not None:
            if not isinstance(region, str):
                raise InvalidTypeError(f"region must be a string, got {region!r}")
            cohort = (region,)
    return agent_id, features, cohort
