"""What the node answers about an agent: its latest window's result (``AgentState``) and the severity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AgentState", "severity_of", "severities", "SEVERITY_FULL_SCALE"]

# -log10(p) at which severity reaches 100 (p = 1e-12; a p-value of 0.1 is severity 8)
SEVERITY_FULL_SCALE = 12.0


def severity_of(log_p: float) -> int:
    """Severity 0–100 from ``ln p`` (the agent's χ² p-value against its population):
    ``round(100 · min(1, −log10 p / 12))``: 0 for p = 1, 25 for p = 1e-3, 50 for p = 1e-6,
    100 for p ≤ 1e-12. Taken in log space, so p-values that underflow still rank.

    >>> severity_of(0.0), severity_of(math.log(1e-3)), severity_of(math.log(1e-6)), severity_of(-1e9)
    (0, 25, 50, 100)
    """
    if not math.isfinite(log_p):
        return 100 if log_p < 0 else 0
    return int(round(100.0 * min(1.0, max(0.0, -log_p / math.log(10.0)) / SEVERITY_FULL_SCALE)))


def severities(log_p: np.ndarray) -> np.ndarray:
    """:func:`severity_of` of every element of ``log_p`` (int64).

    >>> severities(np.array([0.0, math.log(1e-3), -np.inf])).tolist()
    [0, 25, 100]
    """
    decades = np.clip(-np.asarray(log_p, dtype=np.float64) / math.log(10.0), 0.0, SEVERITY_FULL_SCALE)
    out = np.rint(100.0 * decades / SEVERITY_FULL_SCALE).astype(np.int64)
    return np.where(np.isnan(decades), 0, out)


@dataclass
class AgentState:
    """An agent's answer from the last window it was active in.

    ``score`` the squared Mahalanobis distance, ``p_value`` and ``log_p`` its χ²
    p-value, ``severity`` (:func:`severity_of`), ``isolated`` (sticky: once the
    detector decides to isolate an agent it stays isolated), ``cohort`` (None:
    none given), ``confidence_factor`` of its region, ``features`` the vector
    scored, ``window`` the number of the window (1-based per population).
    """

    agent_id: str
    population: str
    score: float
    p_value: float
    log_p: float
    severity: int
    isolated: bool
    cohort: str | None
    confidence_factor: float
    features: np.ndarray
    window: int

    def summary(self) -> dict:
        """The ``/v1/agents`` list item."""
        return {"agent_id": self.agent_id, "severity": self.severity, "p_value": self.p_value,
                "score": self.score, "isolated": self.isolated, "cohort": self.cohort,
                "population": self.population}
