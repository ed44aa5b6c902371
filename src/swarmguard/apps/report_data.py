"""Typed data of a ``swarmguard simulate`` report: who was isolated, why, and what ran.

:mod:`swarmguard.apps.simulate` fills these dataclasses; ``report.json`` holds
them as plain JSON (:func:`to_json_value`), and the figures
(:mod:`swarmguard.apps.report_figures`) and the HTML page
(:mod:`swarmguard.apps.report_html`) read them. Every dataclass here can also
be read by key (``row["region"]``), like the dicts it replaces.

The "why" of an isolation is :func:`feature_shares`: each feature's share of
the agent's squared Mahalanobis distance (in [0, 1], summing to 1:
:mod:`swarmguard.structures.feature_shares`), computed from the population's
public statistics (:meth:`~swarmguard.DistributedBehavioralDetector.get_global_statistics`)
with the scorer the detector uses (:class:`~swarmguard.structures.scoring.LeaveOneOutScorer`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..structures.scoring import LeaveOneOutScorer

__all__ = [
    "DecisionRule",
    "FeatureShare",
    "IsolatedAgent",
    "KeyReadable",
    "RegionRound",
    "ReportArrays",
    "RunInfo",
    "SimulationReport",
    "feature_shares",
    "top_features",
    "to_json_value",
]


class KeyReadable:
    """Read a dataclass's fields by key too (``obj["name"]``), as the dicts it replaces were read."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, self._keys()[key])

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def keys(self) -> list[str]:
        return list(self._keys())

    @classmethod
    def _keys(cls) -> dict[str, str]:
        return {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _json_float(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf and None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def to_json_value(value: Any) -> Any:
    """Plain JSON data from a report value: dataclasses (without fields marked ``json=False``),
    mappings, sequences, NumPy scalars; NaN/inf become None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("key", f.name): to_json_value(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.metadata.get("json", True)}
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_json_value(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_float(value)
    return value


# --------------------------------------------------------------------------- the "why"


def feature_shares(features: np.ndarray, count: float, mean: np.ndarray, covariance: np.ndarray,
                   shrinkage: float | str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Each agent's leave-one-out squared Mahalanobis distance and each feature's share of it.

    For an agent with behaviour ``x`` in a population of ``n`` agents (the
    agent included) with mean ``μ`` and covariance ``C`` (``ddof=1``), the
    detector scores ``x`` against the population *without it*: ``d = x - μ₋``
    with ``μ₋`` the mean of the other ``n - 1`` agents, and ``Σ`` their
    covariance shrunk toward the population's variances (``λ`` =
    ``shrinkage``, ``"auto"``: ``min(1, d/n)``; see
    :mod:`swarmguard.structures.scoring`). Then::

        D² = dᵀ Σ⁻¹ d = |z|²,   z = W d,   share_j = z_j² / |z|²

    with ``W`` the ZCA-cor whitening of the population's regularised
    covariance (:mod:`swarmguard.structures.feature_shares`), so every share
    is in [0, 1] and an agent's shares sum to 1; a share near 1 means that
    feature alone explains the distance.

    Parameters
    ----------
    features : (m, d) array
        The agents' behaviour vectors (members of the population).
    count, mean, covariance
        The population's statistics, these agents included
        (``get_global_statistics()``'s ``count``, ``mean``, ``covariance``).
    shrinkage : float or "auto"
        The detector's ``shrinkage`` setting.

    Returns
    -------
    (m,) array, (m, d) array
        ``D²`` and the shares (rows of zeros where ``D² = 0``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 0.5]])
    >>> d2, shares = feature_shares(X[4:], 5, X.mean(0), np.cov(X.T), shrinkage=0.0)
    >>> others = X[:4]; diff = X[4] - others.mean(0)
    >>> bool(np.isclose(d2[0], diff @ np.linalg.solve(np.cov(others.T), diff)))
    True
    >>> float(shares.sum().round(12)), bool(shares[0, 0] > 0.9)
    (1.0, True)
    """
    X = np.atleast_2d(np.asarray(features, dtype=np.float64))
    mu = np.asarray(mean, dtype=np.float64)
    m2 = np.asarray(covariance, dtype=np.float64) * (float(count) - 1.0)
    scorer = LeaveOneOutScorer(float(count), mu, m2, shrinkage)
    d2, contributions = scorer.score_many(X - mu, explain=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(d2[:, None] > 0, contributions / np.where(d2 > 0, d2, 1.0)[:, None], 0.0)
    return d2, shares


def top_features(shares: np.ndarray, names: list[str], k: int = 3) -> tuple[FeatureShare, ...]:
    """The ``k`` largest shares of one agent, largest first (ties: the lower feature index)."""
    order = np.argsort(-np.asarray(shares), kind="stable")[:k]
    return tuple(FeatureShare(names[j], float(shares[j])) for j in order.tolist())


# --------------------------------------------------------------------------- report rows


@dataclass(frozen=True)
class FeatureShare(KeyReadable):
    """One feature's share of an agent's squared distance (:func:`feature_shares`)."""

    feature: str
    share: float


@dataclass(frozen=True)
class IsolatedAgent(KeyReadable):
    """An isolated agent, with the scores of the round it was first isolated.

    ``level`` is the level whose score decided (``"population"`` or the
    agent's cohort: with cohort-level scoring the decision p-value is the
    smallest level p-value times the number of levels);
    ``mahalanobis_squared`` and ``p_value`` are that level's leave-one-out
    score (χ² with ``d`` degrees of freedom) and ``top_features`` the largest
    shares of its ``D²`` (:func:`feature_shares`); ``decision_p_value`` is what
    the rule compared with the round's cut-off; ``consensus_probability`` is
    the posterior that round, ``final_consensus_probability`` after the last
    round; ``compromised`` is the simulation's ground truth (``None``
    outside it).
    """

    agent_id: Hashable
    region: str
    cohort: str
    first_isolated_round: int
    level: str
    mahalanobis_squared: float
    p_value: float
    decision_p_value: float
    consensus_probability: float | None
    final_consensus_probability: float | None
    top_features: tuple[FeatureShare, ...]
    compromised: bool | None = None


@dataclass(frozen=True)
class RegionRound(KeyReadable):
    """One region in one round: its agents, what was isolated, and its confidence factor.

    ``detections`` are isolated agents that are compromised by then,
    ``false_alarms`` isolated agents that are not (ground truth).
    """

    round: int
    region: str
    agents: int
    compromised: int
    isolated: int
    detections: int
    false_alarms: int
    confidence_factor: float | None


@dataclass(frozen=True)
class DecisionRule(KeyReadable):
    """The rule the run decided by, and the cut-off it gave in the final round.

    An agent is isolated when (``require="both"``) it is anomalous — its
    decision p-value is at most the round's cut-off (Benjamini–Hochberg at
    ``fdr_q`` over the round's decision p-values when ``method == "fdr"``, else
    ``significance_level``), that cut tightened where its region's confidence
    factor is below 1 (χ² threshold ``t² / cf²``) — and the consensus
    probability is at least ``isolate_probability`` with consensus reached.
    ``final_round_threshold_squared`` is the D² an agent's score at one level
    (population or cohort) had to reach in the final round: the level's χ²
    p-value at most the cut-off divided by the number of levels.
    """

    method: str
    fdr_q: float | None
    significance_level: float
    score_levels: str
    require: str
    isolate_probability: float
    feature_dimensions: int
    final_round_p_cutoff: float | None
    final_round_threshold_squared: float | None

    def describe(self) -> str:
        """The rule in one sentence."""
        if self.method == "fdr":
            cut = f"Benjamini–Hochberg cut-off at false-discovery rate q = {self.fdr_q:g} over the round's agents"
        else:
            cut = f"significance level α = {self.significance_level:g}"
        levels = (" (the smallest p-value over the population and the agent's cohorts, times the number of "
                  "levels)"
                  if self.score_levels == "all" else "")
        consensus = f"consensus probability ≥ {self.isolate_probability:g} with consensus reached"
        anomaly = (f"decision p-value{levels} ≤ the {cut}, tightened where the region's confidence "
                   f"factor is below 1")
        joined = {"both": f"{anomaly}, and {consensus}", "either": f"{anomaly}, or {consensus}",
                  "anomaly": anomaly, "consensus": consensus}[self.require]
        return f"Isolate when: {joined}."


@dataclass(frozen=True)
class RunInfo(KeyReadable):
    """What ran: swarmguard's version, the seed, the engine, the scenario and the decision rule.
    (The date is machine-dependent and lives under ``performance``.)"""

    version: str
    seed: int
    backend: str
    config: dict[str, Any]
    decision: DecisionRule


@dataclass(frozen=True)
class ReportArrays(KeyReadable):
    """Per-agent arrays of the final round, in agent order, for the figures (not in JSON)."""

    decision_p: np.ndarray
    truth: np.ndarray
    probability: np.ndarray
    region: np.ndarray
    reputation: dict[Any, dict[str, Any]]
    byzantine_truth: set[Any]
    p_cutoff: float | None


@dataclass
class SimulationReport(KeyReadable):
    """Everything ``swarmguard simulate`` reports (``report["detection"]`` reads like a dict).

    ``detection``, ``consensus``, ``availability`` and ``rounds`` are
    deterministic for a seed; ``performance`` is machine-dependent (with the
    run's date, ``started_utc``); ``arrays`` feed the figures and are not
    written to JSON.
    """

    run: RunInfo
    config: dict[str, Any]
    detection: dict[str, Any]
    consensus: dict[str, Any]
    availability: dict[str, Any]
    rounds: list[dict[str, Any]]
    isolated_agents: list[IsolatedAgent]
    regions: list[RegionRound]
    performance: dict[str, Any] = field(default_factory=dict)
    arrays: ReportArrays | None = field(default=None, metadata={"key": "_arrays", "json": False})

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data (what ``report.json`` holds)."""
        return to_json_value(self)
