"""A synthetic swarm with known ground truth, for ``swarmguard simulate``.

The world, round by round:

* agents live in regions, each region split into clusters (the cohorts); each
  cluster has its own mean and its own correlated covariance, and an honest
  agent's behaviour each round is a fresh draw from its cluster;
* a fraction of agents is compromised: from an onset round on, their
  behaviour shifts in 1–3 features, suddenly or gradually (a ramp over a few
  rounds), by ``shift_sigma`` of the cluster's own standard deviations;
* observer nodes report evidence (log-likelihood ratios) on what they notice:
  alerts on compromised agents, occasional clean reports and rare false alerts
  on honest ones (see :meth:`Scenario.evidence`); Byzantine observers frame a
  fixed set of honest agents (large positive log-odds) and whitewash the
  compromised agents they see (large negative log-odds);
* a network partition splits the regions into two groups at ``partition_at``
  and heals at ``heal_at``; a round lasts ``round_seconds`` of simulated time.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``, so
a seed fixes the whole history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..structures.scoring_modes import DEFAULT_SCORING, SCORING_MODES

__all__ = ["ScenarioConfig", "Scenario", "DIFFICULTY"]

# shift_sigma ranges and honest-observer informativeness per difficulty level
DIFFICULTY = {
    "easy": {"shift": (10.0, 14.0), "signal": 1.5},
    "default": {"shift": (8.0, 12.0), "signal": 1.0},
    "hard": {"shift": (3.0, 5.0), "signal": 0.4},
}


@dataclass
class ScenarioConfig:
    """Every knob of the simulated world (the ``simulate`` command's options)."""

    agents: int = 50_000
    features: int = 8
    rounds: int = 20
    regions: int = 4
    clusters_per_region: int = 3
    compromised: float = 0.01
    observers: int = 50
    byzantine: float = 0.2
    evidence: float = 1.0             # observer attention: scales every report rate
    partition_at: int = 8
    heal_at: int = 13
    difficulty: str = "default"
    seed: int = 0
    scoring: str = DEFAULT_SCORING    # the detector's scoring mode (swarmguard.SCORING_MODES)
    window_rounds: int | None = None  # the detector's window (swarmguard.structures.window); None: none
    calibrate: bool = False           # calibrated p-values from an empirical null (the detector's calibrate)
    round_seconds: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> ScenarioConfig:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InvalidInputError(msg)
        need(self.agents >= 100, "--agents must be at least 100")
        need(1 <= self.features <= 256, "--features must be between 1 and 256")
        need(self.rounds >= 2, "--rounds must be at least 2")
        need(1 <= self.regions <= 64, "--regions must be between 1 and 64")
        need(self.clusters_per_region >= 1, "clusters per region must be at least 1")
        need(0.0 <= self.compromised < 0.5, "--compromised must be a fraction in [0, 0.5)")
        need(self.observers >= 1, "--observers must be at least 1")
        need(0.0 <= self.byzantine < 0.5, "--byzantine must be a fraction in [0, 0.5)")
        need(0 <= self.evidence <= 100, "--evidence must be between 0 and 100")
        need(0 <= self.partition_at <= self.heal_at <= self.rounds,
             "need 0 <= --partition-at <= --heal-at <= --rounds")
        need(self.difficulty in DIFFICULTY, f"--difficulty must be one of {sorted(DIFFICULTY)}")
        need(self.round_seconds > 0, "round seconds must be > 0")
        need(isinstance(self.scoring, str) and self.scoring in SCORING_MODES,   # a list is no mode (nor hashable)
             f"--scoring must be one of {list(SCORING_MODES)}")
        need(self.window_rounds is None or (isinstance(self.window_rounds, int) and self.window_rounds >= 1),
             "--window-rounds must be an integer >= 1")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scenario:
    """The ground truth of one run, and each round's observations.

    Examples
    --------
    >>> sc = Scenario(ScenarioConfig(agents=1000, rounds=5, partition_at=2, heal_at=4, seed=1).validate())
    >>> X = sc.behaviour(0)
    >>> X.shape, sc.region_names.shape, int(sc.compromised.sum())
    ((1000, 8), (1000,), 10)
    """

    def __init__(self, config: ScenarioConfig):
        self.config = c = config
        rng = np.random.default_rng(c.seed)
        self._rng = rng
        n, d = c.agents, c.features
        self.agent_ids = np.arange(n, dtype=np.int64)
        self.agent_ids.flags.writeable = False
        regions = np.array([f"region-{r}" for r in range(c.regions)])
        self.regions = regions
        region = rng.integers(0, c.regions, size=n)
        cluster = rng.integers(0, c.clusters_per_region, size=n)
        self.region_index = region
        self.region_names = regions[region]
        self.cluster_index = region * c.clusters_per_region + cluster
        n_clusters = c.regions * c.clusters_per_region
        # each cluster: a mean and a correlated covariance (random mixing, scaled)
        self.cluster_mean = rng.normal(scale=2.0, size=(n_clusters, d))
        mix = rng.normal(size=(n_clusters, d, d)) / np.sqrt(d)
        scale = rng.uniform(0.5, 2.0, size=(n_clusters, 1, d))
        self.cluster_chol = mix * scale + np.eye(d) * 0.5
        self.cluster_std = np.sqrt(np.einsum("cij,cij->ci", self.cluster_chol, self.cluster_chol))
        # compromised agents: onset, kind, features and size of the shift
        k = int(round(c.compromised * n))
        bad = np.sort(rng.choice(n, size=k, replace=False))
        self.compromised = np.zeros(n, dtype=bool)
        self.compromised[bad] = True
        last_onset = max(1, c.rounds - 4)
        self.onset = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        self.onset[bad] = rng.integers(1, last_onset + 1, size=k)
        self.gradual = np.zeros(n, dtype=bool)
        self.gradual[bad] = rng.random(k) < 0.5
        self.ramp_rounds = 3
        lo, hi = DIFFICULTY[c.difficulty]["shift"]
        shift = np.zeros((n, d))
        for a in bad:
            cols = rng.choice(d, size=int(rng.integers(1, min(3, d) + 1)), replace=False)
            sizes = rng.uniform(lo, hi, size=cols.size) / np.sqrt(cols.size)
            signs = rng.choice([-1.0, 1.0], size=cols.size)
            shift[a, cols] = signs * sizes * self.cluster_std[self.cluster_index[a], cols]
        self.shift = shift
        # observers: which are Byzantine, and whom the Byzantine ones frame
        n_byz = int(round(c.byzantine * c.observers))
        self.observer_ids = np.array([f"observer-{o:03d}" for o in range(c.observers)])
        self.byzantine = np.zeros(c.observers, dtype=bool)
        self.byzantine[rng.choice(c.observers, size=n_byz, replace=False)] = True
        honest_agents = np.flatnonzero(~self.compromised)
        self.framed = np.sort(rng.choice(honest_agents, size=min(honest_agents.size, max(1, k)), replace=False))
        n_byz_live = max(1, n_byz)
        per = min(3, n_byz_live)
        self._framers = np.array([rng.choice(n_byz_live, size=per, replace=False) for _ in self.framed],
                                 dtype=np.int64).reshape(self.framed.size, per)
        self._evidence_counter = 0

    # ------------------------------------------------------------------ ground truth
    def is_compromised_by(self, round_index: int) -> np.ndarray:
        """Agents whose compromise has begun by this round."""
        return self.onset <= round_index

    def partitioned(self, round_index: int) -> bool:
        return self.config.partition_at <= round_index < self.config.heal_at

    def partition_groups(self) -> list[list[str]]:
        names = self.regions.tolist()
        half = max(1, len(names) // 2)
        return [names[:half], names[half:]] if len(names) > 1 else [names]

    # ------------------------------------------------------------------ observations
    def behaviour(self, round_index: int) -> np.ndarray:
        """Every agent's behaviour vector this round."""
        c = self.config
        rng = self._rng
        n, d = c.agents, c.features
        z = rng.normal(size=(n, d))
        X = np.einsum("nij,nj->ni", self.cluster_chol[self.cluster_index], z) + self.cluster_mean[self.cluster_index]
        elapsed = round_index - self.onset
        active = elapsed >= 0
        weight = np.where(self.gradual, np.minimum(1.0, (elapsed + 1) / self.ramp_rounds), 1.0)
        X += self.shift * (weight * active)[:, None]
        return X

    def evidence(self, round_index: int, timestamp: float) -> dict[str, np.ndarray]:
        """This round's observer evidence, as the arrays ``add_evidence_batch`` takes.

        Observers report what they notice, in log-likelihood ratios with unit
        noise: a compromised agent draws Poisson(3·evidence) alerts per round
        (log-odds around ``+2·signal``); an honest agent draws
        Poisson(0.3·evidence) clean reports (around ``-signal/2``) and, rarely,
        Poisson(0.02·evidence) false alerts (around +1). A Byzantine observer
        reports like an honest one except that it whitewashes compromised
        agents (-6), and three Byzantine observers frame each framed agent
        (+6) every round.
        """
        c = self.config
        rng = self._rng
        n = c.agents
        signal = DIFFICULTY[c.difficulty]["signal"]
        bad_now = self.is_compromised_by(round_index)
        rate = c.evidence
        alerts = rng.poisson(np.where(bad_now, 3.0 * rate, 0.02 * rate))
        clean = rng.poisson(np.where(bad_now, 0.0, 0.3 * rate))
        agents = np.concatenate([np.repeat(np.arange(n), alerts), np.repeat(np.arange(n), clean)])
        is_alert = np.concatenate([np.ones(alerts.sum(), dtype=bool), np.zeros(clean.sum(), dtype=bool)])
        m = agents.size
        sources = rng.integers(0, c.observers, size=m)
        mean = np.where(is_alert, np.where(bad_now[agents], 2.0 * signal, 1.0), -0.5 * signal)
        log_odds = mean + rng.normal(scale=1.0, size=m)
        confidence = rng.uniform(0.5, 1.0, size=m)
        log_odds = np.where(self.byzantine[sources] & bad_now[agents], -6.0, log_odds)   # whitewash
        byz_ids = np.flatnonzero(self.byzantine)
        if byz_ids.size and self.framed.size:
            per = self._framers.shape[1]
            agents = np.concatenate([agents, np.repeat(self.framed, per)])
            sources = np.concatenate([sources, byz_ids[self._framers.ravel()]])
            log_odds = np.concatenate([log_odds, np.full(self.framed.size * per, 6.0)])
            confidence = np.concatenate([confidence, np.ones(self.framed.size * per)])
        total = agents.size
        ids = np.arange(self._evidence_counter, self._evidence_counter + total, dtype=np.int64)
        self._evidence_counter += total
        return {
            "evidence_ids": ids,
            "agent_ids": agents.astype(np.int64),
            "evidence_types": "behavioral_anomaly",
            "log_odds": log_odds,
            "confidences": confidence,
            "timestamps": np.full(total, timestamp),
            "source_nodes": self.observer_ids[sources],
        }
