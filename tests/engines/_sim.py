"""A seeded small simulation, driven round by round through either backend."""

from __future__ import annotations

import numpy as np

from swarmguard.apps.scenario import Scenario, ScenarioConfig
from swarmguard.apps.simulate import cluster_names, play_round

CONFIG = dict(agents=5000, rounds=7, partition_at=2, heal_at=6, seed=3)


def detector_kwargs(sc: Scenario, now: list[float]) -> dict:
    c = sc.config
    return dict(feature_dimensions=c.features, fdr=0.01, score_levels="all", clock=lambda: now[0],
                regions=sc.regions.tolist(), prior_probability=0.01)


def drive(make, config: dict | None = None, between=None):
    """Run the scenario through ``make(scenario, now)``; ``between(det, r)`` runs before round r
    and may return a detector that replaces the old one (a resumed driver)."""
    c = ScenarioConfig(**(config or CONFIG)).validate()
    sc = Scenario(c)
    now = [0.0]
    det = make(sc, now)
    clusters = cluster_names(sc)
    results = []
    for r in range(c.rounds):
        now[0] = r * c.round_seconds
        if between is not None:
            new = between(det, r)
            if new is not None:
                det = new
        results.append(play_round(det, sc, r, now, clusters)[0])
    return det, results, sc


def assert_same_replica(mine, theirs) -> None:
    """Same registers, version vector and freshness; the anomaly score (a squared
    distance, computed from moments merged in another order) to 1e-12 relative."""
    x, y = mine.registers.to_dict(), theirs.registers.to_dict()
    assert set(x) == set(y)
    for k in x:
        if k == "anomaly_score":
            np.testing.assert_allclose(y[k], x[k], rtol=1e-12)
        else:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert mine.version == theirs.version
    assert mine.freshness == theirs.freshness
