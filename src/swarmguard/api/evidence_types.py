"""The guide's ``BayesianEvidence`` record and ``EvidenceType`` enum, validated once here."""

from __future__ import annotations

import datetime as _dt
import operator
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, MissingFieldError, UnknownEvidenceTypeError
from ..validation import check_finite_float, check_fraction, check_key

__all__ = ["EvidenceType", "BayesianEvidence", "map_to_evidence_type", "check_timestamp"]


class EvidenceType(StrEnum):
    """Kinds of observation a source node reports about an agent.

    ==========================  =====================================================
    ``BEHAVIORAL_ANOMALY``      behaviour far from the agent's cohort (e.g. a high
                                Mahalanobis distance from the hierarchical tree)
    ``RESOURCE_USAGE``          unusual CPU, memory, token or API spend
    ``COMMUNICATION_PATTERN``   unusual messaging: peers, volume, timing, channels
    ``POLICY_VIOLATION``        a rule or guard-rail check failed
    ``PEER_REPORT``             another agent reported this agent
    ``STATISTICAL_OUTLIER``     any other test statistic turned into a likelihood ratio
    ==========================  =====================================================

    Every member is also its string value. :meth:`parse` (also exported as
    :func:`map_to_evidence_type`) maps members, values, names, common spellings
    and integer codes to members.

    Examples
    --------
    >>> EvidenceType.parse("Behavioural-Anomaly") is EvidenceType.BEHAVIORAL_ANOMALY
    True
    >>> EvidenceType.parse("policy violation").code
    3
    """

    BEHAVIORAL_ANOMALY = "behavioral_anomaly"
    RESOURCE_USAGE = "resource_usage"
    COMMUNICATION_PATTERN = "communication_pattern"
    POLICY_VIOLATION = "policy_violation"
    PEER_REPORT = "peer_report"
    STATISTICAL_OUTLIER = "statistical_outlier"

    @property
    def code(self) -> int:
        """Stable small integer (definition order) used in arrays and storage."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> EvidenceType:
        """The member whose :attr:`code` is ``code``: an integer in ``[0, len(EvidenceType))``.

        Anything else (a negative code, which Python's indexing would read from the end,
        a code past the last member, a bool, a float, a string) raises
        :class:`~swarmguard.errors.UnknownEvidenceTypeError`.

        >>> EvidenceType.from_code(4)
        <EvidenceType.PEER_REPORT: 'peer_report'>
        """
        if isinstance(code, (bool, np.bool_)):
            raise UnknownEvidenceTypeError(f"no evidence type has code {code!r}")
        try:
            index = operator.index(code)          # ints and NumPy ints; floats and strings refused
        except TypeError as exc:
            raise UnknownEvidenceTypeError(f"no evidence type has code {code!r}") from exc
        if not 0 <= index < len(_MEMBERS):
            raise UnknownEvidenceTypeError(f"no evidence type has code {code!r}: codes are 0 to {len(_MEMBERS) - 1}")
        return _MEMBERS[index]

    @classmethod
    def parse(cls, value: Any) -> EvidenceType:
        """The member for ``value`` (member, value, name, spelling variant or code)."""
        if isinstance(value, EvidenceType):
            return value
        if isinstance(value, bool):
            raise UnknownEvidenceTypeError(f"unknown evidence type {value!r}")
        if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
            return cls.from_code(int(value))
        if not isinstance(value, str):
            raise UnknownEvidenceTypeError(
                f"evidence type must be an EvidenceType, a string or a code, got {type(value).__name__}")
        key = value.strip().lower().replace("-", "_").replace(" ", "_").replace("behaviour", "behavior")
        key = _ALIASES.get(key, key)
        for member in _MEMBERS:
            if key in (member.value, member.name.lower()):
                return member
        known = ", ".join(m.value for m in _MEMBERS)
        raise UnknownEvidenceTypeError(f"unknown evidence type {value!r}; known: {known}")


_MEMBERS = list(EvidenceType)
_CODES = {m: i for i, m in enumerate(_MEMBERS)}
_ALIASES = {
    "behavior": "behavioral_anomaly", "anomaly": "behavioral_anomaly",
    "resource": "resource_usage", "resources": "resource_usage",
    "communication": "communication_pattern", "network": "communication_pattern",
    "policy": "policy_violation", "violation": "policy_violation",
    "peer": "peer_report", "report": "peer_report",
    "outlier": "statistical_outlier", "statistical": "statistical_outlier",
}

map_to_evidence_type = EvidenceType.parse


def check_timestamp(value: Any) -> float:
    """Timestamps: finite seconds (int/float) or a ``datetime`` (timezone-aware or UTC)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.timestamp()
    return check_finite_float(value, "timestamp")


_REQUIRED = ("evidence_id", "agent_id", "evidence_type", "log_odds", "confidence", "timestamp",
             "source_node")


@dataclass(frozen=True)
class BayesianEvidence:
    """One source node's log-likelihood ratio that an agent is compromised.

    Its contribution to the agent's log-odds is ``confidence * log_odds``.
    Every field is required and validated on construction: a bad value raises
    a :class:`~swarmguard.errors.SwarmGuardError` subclass.

    Parameters
    ----------
    evidence_id : hashable (int or str to be storable)
        Unique per source (the key is ``(source_node, evidence_id)``): the same
        evidence again from the same source is ignored, the same source and id
        with other content is rejected; another source's equal id is other evidence.
    agent_id : hashable
    evidence_type : EvidenceType or str
    log_odds : float
        Finite log-likelihood ratio (natural log).
    confidence : float in [0, 1]
    timestamp : float seconds or datetime
    source_node : hashable
        The observer node that produced the evidence.

    Examples
    --------
    >>> e = BayesianEvidence("e1", "agent-7", "peer_report", 2.5, 0.8, 0.0, "node-3")
    >>> e.evidence_type, e.contribution
    (<EvidenceType.PEER_REPORT: 'peer_report'>, 2.0)
    """

    evidence_id: Hashable = None
    agent_id: Hashable = None
    evidence_type: EvidenceType = None
    log_odds: float = None
    confidence: float = None
    timestamp: float = None
    source_node: Hashable = None

    def __post_init__(self) -> None:
        missing = [name for name in _REQUIRED if getattr(self, name) is None]
        if missing:
            raise MissingFieldError(f"BayesianEvidence lacks required field(s): {', '.join(missing)}")
        values = {
            "evidence_id": check_key(self.evidence_id, "evidence_id"),
            "agent_id": check_key(self.agent_id, "agent_id"),
            "evidence_type": EvidenceType.parse(self.evidence_type),
            "log_odds": check_finite_float(self.log_odds, "log_odds"),
            "confidence": check_fraction(self.confidence, "confidence"),
            "timestamp": check_timestamp(self.timestamp),
            "source_node": check_key(self.source_node, "source_node"),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def contribution(self) -> float:
        """``confidence * log_odds`` (one float64 rounding)."""
        return self.confidence * self.log_odds

    @classmethod
    def coerce(cls, value: Any) -> BayesianEvidence:
        """Accept a ``BayesianEvidence`` or a mapping / object with the same fields."""
        if isinstance(value, BayesianEvidence):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(_REQUIRED)
            if unknown:
                raise InvalidTypeError(f"unknown evidence field(s): {', '.join(sorted(map(str, unknown)))}")
            return cls(**value)
        if all(hasattr(value, name) for name in _REQUIRED):
            return cls(**{name: getattr(value, name) for name in _REQUIRED})
        raise InvalidTypeError(f"expected BayesianEvidence, got {type(value).__name__}")
