"""A seeded small simulation, driven round by round through either backend."""

from __future__ import annotations

import numpy as np

from swarmguard.apps.scenario import Scenario, ScenarioConfig

CONFIG = dict(agents=5000, rounds=7, partition_at=2, heal_at=6, seed=3)


def detector_kwargs(sc: Scenario, now: list[float]) -> dict:
    c = sc.config
    return dict(feature_dimensions=c.features, fdr=0.01, score_levels="all", clock=lambda: now[0],
                regions=sc.regions.tolist(), prior_probability=0.01)


def drive(make, config: dict | None = None, between=None, replay_from: int | None = None):
    """Run the scenario through ``make(scenario, now)``; ``between(det, r)`` runs before round r.

    When ``between`` returns a detector, it replaces the old one, and rounds
    ``replay_from .. r-1`` are sent to it again (what a resumed driver does
    with the rounds its checkpoint does not hold).
    """
    c = ScenarioConfig(**(config or CONFIG)).validate()
    sc = Scenario(c)
    now = [0.0]
    det = make(sc, now)
    clusters = np.array([f"cluster-{k}" for k in range(c.regions * c.clusters_per_region)])[sc.cluster_index]

    inputs: dict[int, tuple] = {}     # the scenario draws from one random stream: a re-sent round reuses its draw

    def step(det, r):
        now[0] = r * c.round_seconds
        if r == c.partition_at and c.partition_at < c.heal_at:
            det.cap_resolver.partition(sc.partition_groups())
        if r == c.heal_at and c.partition_at < c.heal_at:
            det.cap_resolver.heal()
            det.cap_resolver.sync()
        if r not in inputs:
            inputs[r] = (sc.behaviour(r), sc.evidence(r, now[0]))
        X, ev = inputs[r]
        if ev["evidence_ids"].size:
            det.ingest_evidence(**ev)
        return det.process_round(sc.agent_ids, X, sc.region_names, cohorts=clusters, timestamp=now[0])

    results = []
    for r in range(c.rounds):
        now[0] = r * c.round_seconds
        if between is not None:
            new = between(det, r)
            if new is not None:
                det = new
                for q in range(r if replay_from is None else replay_from, r):
                    results[q] = step(det, q)
        results.append(step(det, r))
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
