"""``swarmguard simulate --scenario drift``: a population that moves, with and without a window.

The world, round by round:

* the honest population is one correlated Gaussian whose mean moves steadily:
  ``drift`` of its own standard deviations per round (Mahalanobis units) along
  a fixed random direction (what a fleet does when a model, a load pattern or a release
  changes everyone's behaviour at once);
* agents report *intermittently*: each live agent reports in a round with
  probability ``report_rate``, and each round a fraction ``dormancy`` of the
  agents goes quiet for good (their last vector stays in the tree, as
  it does in a real fleet where agents are retired or idle) — so the tree's
  members carry vectors of many ages;
* a fraction ``compromised`` of agents is planted: from an onset round on,
  their behaviour sits 6–9 standard deviations away *from the moving
  population* (fixed relative to it, so an anomaly stays an anomaly however
  far the population moves): half in 1–3 features, half along the drift
  itself (behind the population, an agent stuck on old behaviour, or ahead).

Each round the reporting agents go through
:meth:`~swarmguard.api.detector.DistributedBehavioralDetector.process_round`
(FDR q = 0.01, the anomaly signal only: ``require="anomaly"``), once with the
detector's defaults and once with ``window_rounds``; the flags are compared
with the ground truth. Everything is drawn from one seeded generator, so both
runs see the same world.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..structures.scoring_modes import DEFAULT_SCORING, SCORING_MODES

__all__ = ["DriftConfig", "DriftRound", "DriftRun", "run_drift", "compare_drift"]


@dataclass
class DriftConfig:
    """The drifting world (``simulate --scenario drift`` options)."""

    agents: int = 20_000
    features: int = 8
    rounds: int = 30
    drift: float = 0.5             # population standard deviations per round
    report_rate: float = 0.5
    dormancy: float = 0.03
    compromised: float = 0.01
    seed: int = 0
    scoring: str = DEFAULT_SCORING  # the detector's scoring mode in both runs (swarmguard.SCORING_MODES)

    def validate(self) -> DriftConfig:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InvalidInputError(msg)
        need(self.agents >= 100, "--agents must be at least 100")
        need(1 <= self.features <= 256, "--features must be between 1 and 256")
        need(self.rounds >= 2, "--rounds must be at least 2")
        need(0.0 <= self.drift <= 100.0, "drift must be in [0, 100] standard deviations per round")
        need(0.0 < self.report_rate <= 1.0, "report rate must be in (0, 1]")
        need(0.0 <= self.dormancy < 1.0, "dormancy must be in [0, 1)")
        need(0.0 <= self.compromised < 0.5, "--compromised must be a fraction in [0, 0.5)")
        need(isinstance(self.scoring, str) and self.scoring in SCORING_MODES,   # a list is no mode (nor hashable)
             f"--scoring must be one of {list(SCORING_MODES)}")
        return self


@dataclass
class DriftRound:
    """One round's flags against the truth, among the agents that reported."""

    round: int
    reported: int
    compromised_reported: int
    true_alarms: int
    false_alarms: int
    members: int            # vectors in the tree (stale ones included)
    reference: int          # members the agents were scored against (the window's, or all)
    compromised_along: int = 0    # of the compromised reported: those shifted along the drift
    true_alarms_along: int = 0

    @property
    def precision(self) -> float | None:
        flagged = self.true_alarms + self.false_alarms
        return self.true_alarms / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        return self.true_alarms / self.compromised_reported if self.compromised_reported else None


@dataclass
class DriftRun:
    """A whole run: its settings, every round, and the totals over the rounds."""

    config: dict[str, Any]
    window_rounds: int | None
    rounds: list[DriftRound] = field(default_factory=list)

    def totals(self, first: int = 0) -> dict[str, float | int | None]:
        """Precision and recall over rounds ``first ..`` (flags of reporting agents, pooled)."""
        rs = self.rounds[first:]
        tp = sum(r.true_alarms for r in rs)
        fp = sum(r.false_alarms for r in rs)
        pos = sum(r.compromised_reported for r in rs)
        along = sum(r.compromised_along for r in rs)
        tp_along = sum(r.true_alarms_along for r in rs)
        return {"true_alarms": tp, "false_alarms": fp, "compromised_reported": pos,
                "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / pos if pos else None,
                "recall_along_drift": tp_along / along if along else None,
                "recall_in_features": (tp - tp_along) / (pos - along) if pos > along else None}

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "window_rounds": self.window_rounds,
                "totals": self.totals(), "late_totals": self.totals(len(self.rounds) // 2),
                "rounds": [{**asdict(r), "precision": r.precision, "recall": r.recall} for r in self.rounds]}


class _World:
    def __init__(self, c: DriftConfig):
        rng = np.random.default_rng(c.seed)
        n, d = c.agents, c.features
        self.c = c
        mix = rng.normal(size=(d, d)) / np.sqrt(d)
        self.chol = mix * rng.uniform(0.5, 2.0, size=(1, d)) + np.eye(d) * 0.5
        self.std = np.sqrt((self.chol * self.chol).sum(axis=1))
        u = rng.normal(size=d)
        self.direction = self.chol @ (u / np.linalg.norm(u))    # one Mahalanobis unit (a standard deviation)
        k = int(round(c.compromised * n))
        self.bad = np.zeros(n, dtype=bool)
        self.bad[rng.choice(n, size=k, replace=False)] = True
        self.onset = np.full(n, np.iinfo(np.int64).max)
        self.onset[self.bad] = rng.integers(1, max(2, c.rounds - 3), size=k)
        offset = np.zeros((n, d))
        for a in np.flatnonzero(self.bad).tolist():
            cols = rng.choice(d, size=int(rng.integers(1, min(3, d) + 1)), replace=False)
            offset[a, cols] = rng.choice([-1.0, 1.0], size=cols.size) * rng.uniform(6.0, 9.0, size=cols.size) \
                / np.sqrt(cols.size) * self.std[cols]
        # half of them shift along the drift itself (behind or ahead of the population: an agent
        # stuck on old behaviour, or one running ahead), by 6–9 Mahalanobis units
        along = self.bad & (rng.random(n) < 0.5)
        offset[along] = (rng.choice([-1.0, 1.0], size=int(along.sum())) * rng.uniform(6.0, 9.0, size=int(along.sum())))[
            :, None] * self.direction
        self.along = along
        self.offset = offset
        self.rng = rng
        self.alive = np.ones(n, dtype=bool)

    def round(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reporting agents, their vectors, whether each is compromised now)."""
        c, rng = self.c, self.rng
        n, d = c.agents, c.features
        quiet = rng.random(n) < c.dormancy
        report = rng.random(n) < c.report_rate
        z = rng.normal(size=(n, d))
        if r > 0:
            self.alive &= ~quiet
        who = np.flatnonzero(self.alive & report) if r > 0 else np.arange(n)
        bad_now = self.onset[who] <= r
        X = z[who] @ self.chol.T + r * c.drift * self.direction
        X += self.offset[who] * bad_now[:, None]
        return who, X, bad_now


def run_drift(config: DriftConfig, window_rounds: int | None = None) -> DriftRun:
    """Run the drifting world once through a detector (``window_rounds``: its window, None: none)."""
    from ..api.detector import DistributedBehavioralDetector

    c = config.validate()
    world = _World(c)
    det = DistributedBehavioralDetector(feature_dimensions=c.features, fdr=0.01, require="anomaly",
                                        scoring=c.scoring, window_rounds=window_rounds, clock=lambda: 0.0)
    run = DriftRun(config=asdict(c), window_rounds=window_rounds)
    for r in range(c.rounds):
        who, X, bad_now = world.round(r)
        res = det.process_round(who, X, "fleet", timestamp=0.0)
        flagged = np.asarray(res["is_anomaly"], dtype=bool)
        along = bad_now & world.along[who]
        stats = det.tree.get_window_statistics() if window_rounds is not None else None
        run.rounds.append(DriftRound(
            round=r, reported=int(who.size), compromised_reported=int(bad_now.sum()),
            true_alarms=int((flagged & bad_now).sum()), false_alarms=int((flagged & ~bad_now).sum()),
            members=len(det.tree), reference=int(stats["count"]) if stats is not None else len(det.tree),
            compromised_along=int(along.sum()), true_alarms_along=int((flagged & along).sum())))
    return run


def compare_drift(config: DriftConfig, window_rounds: int = 2) -> tuple[DriftRun, DriftRun]:
    """The same world without a window and with ``window_rounds``."""
    return run_drift(config, None), run_drift(config, window_rounds)
