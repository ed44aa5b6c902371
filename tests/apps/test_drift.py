"""The drifting-population scenario: stale members mask anomalies; a window does not."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from swarmguard.apps.drift import DriftConfig, _World, compare_drift
from swarmguard.apps.scenario import ScenarioConfig
from swarmguard.apps.simulate import run_simulation
from swarmguard.cli import app


def test_the_world_moves_and_its_anomalies_move_with_it():
    c = DriftConfig(agents=2000, rounds=6, drift=1.0, seed=3)
    world = _World(c)
    # one Mahalanobis unit per round along the drift: |L^-1 direction| = 1
    assert abs(np.linalg.norm(np.linalg.solve(world.chol, world.direction)) - 1.0) < 1e-12
    means, residuals = [], []
    for r in range(c.rounds):
        who, X, bad = world.round(r)
        honest = X[~bad]
        means.append(honest.mean(axis=0))
        # a compromised agent is its planted offset away from this round's honest mean
        residuals.append(X[bad] - world.offset[who[bad]] - honest.mean(axis=0))
    res = np.concatenate(residuals)
    assert res.shape[0] > 20
    assert (np.abs(res.mean(axis=0)) < 4.0 * world.std / np.sqrt(res.shape[0])).all()
    steps = np.diff(np.array(means), axis=0)
    # the honest mean moved by the drift each round (sampling noise: ~1/sqrt(1000) per feature)
    assert np.allclose(steps, c.drift * world.direction, atol=0.25 * np.abs(world.direction).max() + 0.2)
    assert world.alive.sum() < c.agents        # some went quiet for good


def test_a_window_recovers_the_recall_that_stale_members_cost_under_drift():
    plain, windowed = compare_drift(DriftConfig(agents=4000, rounds=14, drift=1.0, seed=0), window_rounds=2)
    p, w = plain.totals(7), windowed.totals(7)
    assert w["recall"] >= p["recall"] + 0.2, (p, w)
    # the masking is along the drift (where stale members inflate the covariance), not across it
    assert w["recall_along_drift"] >= p["recall_along_drift"] + 0.3, (p, w)
    assert p["recall_in_features"] >= 0.95 and w["recall_in_features"] >= 0.95, (p, w)
    for t in (p, w):
        assert t["precision"] >= 0.95 and t["compromised_reported"] > 50
    # the window scored against the recent members only; without it, against everyone
    assert windowed.rounds[-1].reference < windowed.rounds[-1].members == plain.rounds[-1].reference


def test_without_drift_a_window_costs_little():
    plain, windowed = compare_drift(DriftConfig(agents=4000, rounds=14, drift=0.0, seed=1), window_rounds=2)
    p, w = plain.totals(), windowed.totals()
    assert p["recall"] >= 0.8 and w["recall"] >= p["recall"] - 0.1, (p, w)


def test_default_scenario_every_agent_reports_so_a_window_changes_no_decision():
    # every agent is written every round: the window holds everyone, the moments are the same
    base = dict(agents=2000, rounds=5, partition_at=2, heal_at=3, observers=10, seed=2)
    a = run_simulation(ScenarioConfig(**base), latency_sample=0)
    b = run_simulation(ScenarioConfig(**base, window_rounds=1), latency_sample=0)
    assert a["detection"]["false_alarms_per_round"] == b["detection"]["false_alarms_per_round"]
    assert [x.agent_id for x in a["isolated_agents"]] == [x.agent_id for x in b["isolated_agents"]]
    assert b["run"].config["window_rounds"] == 1


def test_simulate_scenario_drift_writes_both_runs(tmp_path):
    out = tmp_path / "drift"
    result = CliRunner().invoke(app, ["simulate", "--scenario", "drift", "--agents", "2000", "--rounds", "6",
                                      "--window-rounds", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "drift.json").read_text())
    assert data["without_window"]["window_rounds"] is None and data["with_window"]["window_rounds"] == 3
    assert len(data["with_window"]["rounds"]) == 6
    assert "recall" in result.output and "window 3" in result.output


def test_simulate_refuses_bad_window_options(tmp_path):
    for args in (["--window-rounds", "0"], ["--scenario", "drift", "--backend", "ray"], ["--scenario", "sideways"]):
        result = CliRunner().invoke(app, ["simulate", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, (args, result.output)
    assert not (tmp_path / "x").exists()


def test_simulate_scenario_drift_runs_the_scoring_mode_it_is_given(tmp_path, monkeypatch):
    # --scoring was accepted and silently ignored there: both runs used the default mode
    import swarmguard.api.detector as detector_module

    made = []
    real = detector_module.DistributedBehavioralDetector

    def spy(*args, **kwargs):
        det = real(*args, **kwargs)
        made.append(det.settings.scoring)
        return det
    monkeypatch.setattr(detector_module, "DistributedBehavioralDetector", spy)
    out = tmp_path / "drift"
    result = CliRunner().invoke(app, ["simulate", "--scenario", "drift", "--agents", "1000", "--rounds", "3",
                                      "--scoring", "robust", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert made == ["robust", "robust"]
    data = json.loads((out / "drift.json").read_text())
    assert data["with_window"]["config"]["scoring"] == "robust"


def test_a_scoring_mode_that_is_no_string_is_refused_with_a_typed_error():
    # ["robust"] in the registry raised TypeError (unhashable), not the options' InvalidInputError
    import pytest

    from swarmguard.errors import InvalidInputError
    for config in (DriftConfig(scoring=["robust"]), ScenarioConfig(scoring=["robust"]), DriftConfig(scoring="fancy")):
        with pytest.raises(InvalidInputError, match="--scoring"):
            config.validate()
