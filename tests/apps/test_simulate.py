import json

import numpy as np
import pytest
from typer.testing import CliRunner

from swarmguard.apps.scenario import Scenario, ScenarioConfig
from swarmguard.apps.simulate import run_simulation, write_outputs
from swarmguard.cli import app


def small(**kw):
    base = dict(agents=20_000, rounds=12, partition_at=4, heal_at=9, seed=3)
    base.update(kw)
    return ScenarioConfig(**base)


def test_cli_writes_reports_consistent_with_the_seeds_ground_truth(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--agents", "20000", "--rounds", "12", "--partition-at", "4",
                                      "--heal-at", "9", "--seed", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 5
    sc = Scenario(small().validate())
    truth = sc.is_compromised_by(11)
    det = report["detection"]
    assert det["compromised"] == int(truth.sum())
    assert det["true_positives"] + det["false_negatives"] == det["compromised"]
    assert det["true_positives"] + det["false_positives"] == det["isolated"]
    assert det["precision"] == pytest.approx(det["true_positives"] / det["isolated"])
    assert det["recall"] == pytest.approx(det["true_positives"] / det["compromised"])
    assert len(report["rounds"]) == 12 and len(det["false_alarms_per_round"]) == 12
    assert sum(rd["partitioned"] for rd in report["rounds"]) == 5
    assert report["consensus"]["byzantine_sources"] == sorted(sc.observer_ids[sc.byzantine].tolist())
    av = report["availability"]
    assert av["updates_during_partition"] == 5 * 20_000 and av["availability"] == 1.0
    # the partition lasts 10 s of simulated time, past the 5 s staleness bound
    assert 0.0 < av["min_confidence_factor"] < 1.0
    partitioned_cf = [min(rd["confidence"].values()) for rd in report["rounds"] if rd["partitioned"]]
    assert min(partitioned_cf) < 1.0 and min(report["rounds"][-1]["confidence"].values()) == 1.0
    assert "isolation precision" in result.output


def test_same_seed_same_report_apart_from_performance(tmp_path):
    a = run_simulation(small(agents=5000, rounds=6, partition_at=2, heal_at=4, seed=11), latency_sample=5)
    b = run_simulation(small(agents=5000, rounds=6, partition_at=2, heal_at=4, seed=11), latency_sample=5)
    write_outputs(a, tmp_path / "a")
    write_outputs(b, tmp_path / "b")
    ja = json.loads((tmp_path / "a" / "report.json").read_text())
    jb = json.loads((tmp_path / "b" / "report.json").read_text())
    ja.pop("performance")
    jb.pop("performance")
    assert ja == jb
    c = run_simulation(small(agents=5000, rounds=6, partition_at=2, heal_at=4, seed=12), latency_sample=0)
    assert c["detection"] != a["detection"] or c["consensus"] != a["consensus"]


@pytest.mark.slow
def test_detection_quality_at_a_hundred_thousand_agents():
    report = run_simulation(ScenarioConfig(agents=100_000, seed=5), latency_sample=0)
    det = report["detection"]
    assert det["precision"] >= 0.95, det
    assert det["recall"] >= 0.95, det
    assert report["availability"]["availability"] == 1.0


def test_hard_scenarios_run_and_say_how_well_they_do():
    report = run_simulation(small(agents=20_000, rounds=10, partition_at=3, heal_at=6, difficulty="hard"),
                            latency_sample=0)
    det = report["detection"]
    assert 0.0 <= det["recall"] <= 1.0 and 0.0 <= det["precision"] <= 1.0
    assert det["isolated"] == det["true_positives"] + det["false_positives"]


@pytest.mark.parametrize("args", [
    ["--agents", "10"], ["--compromised", "0.7"], ["--byzantine", "0.6"], ["--partition-at", "15", "--heal-at", "5"],
    ["--difficulty", "impossible"], ["--rounds", "1"], ["--features", "0"],
])
def test_bad_options_exit_non_zero_with_a_message(args, tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert "error" in result.output.lower() or "invalid" in result.output.lower()
    assert not (tmp_path / "report.json").exists()


def test_scenario_ground_truth_is_what_it_says():
    sc = Scenario(small(agents=4000, rounds=10, seed=1).validate())
    assert sc.compromised.sum() == 40
    assert np.all(sc.onset[sc.compromised] >= 1) and np.all(sc.onset[sc.compromised] <= 6)
    X0 = sc.behaviour(0)
    # before onset, nobody is shifted: compromised agents look like their clusters
    z = (X0 - sc.cluster_mean[sc.cluster_index]) / sc.cluster_std[sc.cluster_index]
    assert abs(z[sc.compromised].mean()) < 0.5
    ev = sc.evidence(9, 18.0)
    assert ev["evidence_ids"].size == ev["agent_ids"].size == ev["source_nodes"].size
    bad = sc.is_compromised_by(9)
    alerts_on_bad = np.isin(ev["agent_ids"], np.flatnonzero(bad)).sum()
    assert alerts_on_bad > 2 * bad.sum()      # compromised agents draw ~3 alerts per round


def test_plot_arrays_are_aligned_with_the_ground_truth():
    report = run_simulation(small(agents=5000, rounds=8, partition_at=2, heal_at=4, seed=2), latency_sample=0)
    arrays = report["_arrays"]
    truth = arrays["truth"]
    # compromised agents, whatever their cluster, have far smaller decision p-values than honest ones
    assert np.median(arrays["decision_p"][truth]) < 1e-6 < np.median(arrays["decision_p"][~truth])
