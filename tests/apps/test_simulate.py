import json
import re

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
    assert html.startswith("<!DOCTYPE html>") and html.count('class="plotly-graph-div"') >= 5
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


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    # 12,000 agents: clusters of ~1,000, past the warm-up (800 at d = 8), so clusters decide too
    report = run_simulation(small(agents=12_000, rounds=8, partition_at=2, heal_at=5, seed=4), latency_sample=0)
    out = tmp_path_factory.mktemp("run")
    write_outputs(report, out)
    return report, json.loads((out / "report.json").read_text()), (out / "report.html").read_text()


def test_the_report_says_what_ran(small_run):
    import swarmguard
    report, js, html = small_run
    run = js["run"]
    assert run["version"] == swarmguard.__version__ and run["seed"] == 4 and run["backend"] == "inprocess"
    assert run["config"] == js["config"] and run["config"]["agents"] == 12_000
    rule = run["decision"]
    assert rule["method"] == "fdr" and rule["fdr_q"] == 0.01 and rule["score_levels"] == "all"
    assert rule["require"] == "both" and rule["isolate_probability"] == 0.9
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", js["performance"]["started_utc"])
    for text in (f"<td>{swarmguard.__version__}</td>", js["performance"]["started_utc"], "false-discovery rate q = 0.01"):
        assert text in html


def test_the_drawn_threshold_is_the_one_the_run_decided_by(small_run):
    report, js, html = small_run
    arrays = report["_arrays"]
    cut = js["run"]["decision"]["final_round_p_cutoff"]
    assert cut == js["rounds"][-1]["p_value_cutoff"] == arrays.p_cutoff
    # BH at q = 0.01 over the final round's decision p-values rejects exactly these agents
    p = np.sort(arrays.decision_p)
    k = np.flatnonzero(p <= 0.01 * np.arange(1, p.size + 1) / p.size).max()
    assert cut == p[k]
    assert int((arrays.decision_p <= cut).sum()) == js["rounds"][-1]["flagged_anomalous"]
    from swarmguard.apps.report_figures import score_figure
    fig = score_figure(arrays, report.run.decision)
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == -np.log10(cut)
    assert fig.layout.annotations[-1].text.startswith("final-round cut-off (BH, FDR q = 0.01), -log10 p = ")
    assert "final-round cut-off (BH, FDR q = 0.01)" in html
    assert "α = 0.001" not in html


def test_the_stated_squared_distance_threshold_is_the_one_a_level_must_reach(small_run):
    """Two levels (population, cluster): a level decides when 2 p <= cut, i.e. D² >= isf(cut / 2),
    not the one-level isf(cut) the detector reports as threshold_squared."""
    from scipy.stats import chi2

    from swarmguard.apps.report_html import format_value

    report, js, html = small_run
    rule = js["run"]["decision"]
    cut, thr2, d = rule["final_round_p_cutoff"], rule["final_round_threshold_squared"], rule["feature_dimensions"]
    assert thr2 == pytest.approx(chi2.isf(cut / 2, d), rel=1e-9)
    assert thr2 > chi2.isf(cut, d) * (1 + 1e-6)
    last = len(js["rounds"]) - 1
    for r in js["isolated_agents"]:
        if r["first_isolated_round"] == last:        # the final round's rows, scored at their deciding level
            assert r["mahalanobis_squared"] >= thr2 * (1 - 1e-9)
    assert f"had to reach {format_value(thr2)}" in html


def test_isolated_agents_table_in_json_and_html(small_run):
    from scipy.stats import chi2

    report, js, html = small_run
    rows = js["isolated_agents"]
    det = js["detection"]
    assert len(rows) == det["isolated"] > 0
    assert sum(r["compromised"] for r in rows) == det["true_positives"]
    sc = Scenario(small(agents=12_000, rounds=8, partition_at=2, heal_at=5, seed=4).validate())
    d = js["config"]["features"]
    for r in rows:
        a = r["agent_id"]
        assert r["region"] == sc.region_names[a] and r["cohort"] == f"cluster-{sc.cluster_index[a]}"
        assert 0 <= r["first_isolated_round"] < 8 and r["level"] in ("population", r["cohort"])
        # the row's level is the one that decided: decision p = its p-value times the two levels
        assert r["p_value"] == pytest.approx(chi2.sf(r["mahalanobis_squared"], d), rel=1e-6, abs=1e-300)
        assert r["decision_p_value"] == pytest.approx(min(1.0, 2 * r["p_value"]), rel=1e-6, abs=1e-300)
        assert r["decision_p_value"] <= js["rounds"][r["first_isolated_round"]]["p_value_cutoff"]
        assert r["consensus_probability"] >= 0.9 and 0 <= r["final_consensus_probability"] <= 1
        assert len(r["top_features"]) == 3
        shares = [f["share"] for f in r["top_features"]]
        assert shares == sorted(shares, reverse=True)
        assert {f["feature"] for f in r["top_features"]} <= {f"feature {j}" for j in range(d)}
    assert any(r["level"] != "population" for r in rows)
    # a compromised agent's top feature is one of the features its compromise shifted
    shifted = [r for r in rows if r["compromised"]]
    hits = [int(r["top_features"][0]["feature"].split()[1]) in np.flatnonzero(sc.shift[r["agent_id"]])
            for r in shifted]
    assert np.mean(hits) > 0.8
    first = sorted(rows, key=lambda r: (r["first_isolated_round"], r["decision_p_value"], -r["mahalanobis_squared"]))[0]
    assert f"<td>{first['agent_id']}</td><td>{first['region']}</td><td>{first['cohort']}</td>" in html
    assert f"{first['top_features'][0]['feature']} ({first['top_features'][0]['share']:.0%})" in html


def test_per_region_series_add_up_to_the_rounds(small_run):
    report, js, html = small_run
    regions = js["regions"]
    names = sorted({r["region"] for r in regions})
    assert len(regions) == 8 * len(names) == 8 * js["config"]["regions"]
    for rd in js["rounds"]:
        mine = [r for r in regions if r["round"] == rd["round"]]
        assert sum(r["isolated"] for r in mine) == rd["isolated_now"]
        assert sum(r["false_alarms"] for r in mine) == rd["false_alarms"]
        assert sum(r["agents"] for r in mine) == 12_000
        assert all(r["detections"] + r["false_alarms"] == r["isolated"] for r in mine)
        assert {r["region"]: r["confidence_factor"] for r in mine} == rd["confidence"]
    for title in ("Compromised agents isolated, per region", "Honest agents isolated (false alarms), per region",
                  "Confidence factor per region"):
        assert title in html


def test_a_region_figure_says_when_its_lines_overlap(small_run):
    from swarmguard.apps.report_figures import region_figure

    report, js, html = small_run
    for field in ("detections", "false_alarms", "confidence_factor"):
        series = {}
        for r in js["regions"]:
            value = r[field]
            series.setdefault(r["region"], []).append(np.nan if value is None else value)
        ys = np.array(list(series.values()), dtype=float)
        span = np.nanmax(ys) - np.nanmin(ys)
        close = bool(np.all(np.abs(ys - ys[0]) <= 0.005 * span))
        assert ("lines lie on top of each other" in region_figure(report, field).layout.title.text) == close, field
    # no honest agent isolated anywhere: every region's false-alarm line is the same line at 0
    if js["detection"]["false_positives"] == 0:
        assert "lines lie on top of each other" in region_figure(report, "false_alarms").layout.title.text
    assert "lines lie on top of each other" not in region_figure(report, "detections").layout.title.text


def test_flagged_observers_are_named_and_every_figure_has_units(small_run):
    from swarmguard.apps import report_figures as figs

    report, js, html = small_run
    cons = js["consensus"]
    text = html[html.index("<h2>Flagged observers</h2>"):]
    text = text[:text.index("</section>")]
    assert f"Observers flagged as Byzantine ({len(cons['byzantine_flagged'])})" in text
    for name in cons["byzantine_flagged"] + sorted(set(cons["byzantine_sources"]) - set(cons["byzantine_found"])):
        assert name in text
    arrays, rule = report.arrays, report.run.decision
    every = [figs.score_figure(arrays, rule), figs.consensus_figure(arrays, rule), figs.reputation_figure(arrays),
             figs.recall_figure(report), figs.false_alarms_figure(report), figs.cutoff_figure(report),
             *(figs.region_figure(report, f) for f in ("detections", "false_alarms", "confidence_factor"))]
    for fig in every:
        assert fig.layout.xaxis.title.text and re.search(r"\(.+\)", fig.layout.yaxis.title.text), fig.layout.title
        if fig.layout.xaxis.type != "category":
            assert re.search(r"\(.+\)", fig.layout.xaxis.title.text), fig.layout.title


def test_clusters_still_warming_up_never_explain_an_isolation():
    # 3,000 agents: clusters of ~250, below the warm-up (800 at d = 8): the population decides alone,
    # even where an agent's cluster-level p-value is smaller
    report = run_simulation(small(agents=3000, rounds=5, partition_at=1, heal_at=3, seed=2), latency_sample=0)
    rows = report.isolated_agents
    assert rows and all(r.level == "population" for r in rows)
    for r in rows:
        assert r.decision_p_value == pytest.approx(min(1.0, 2 * r.p_value), rel=1e-9)


@pytest.mark.slow
def test_the_report_gives_the_anomaly_flags_realised_fdr_and_calibration_lowers_it():
    # the flags' false-discovery proportion pooled over the rounds, against the scenario's ground truth
    plain = run_simulation(small(agents=20_000, rounds=12, seed=3, scoring="robust"), latency_sample=0)
    calibrated = run_simulation(small(agents=20_000, rounds=12, seed=3, scoring="robust", calibrate=True),
                                latency_sample=0)
    for report in (plain, calibrated):
        det, rounds = report["detection"], report["rounds"]
        false = sum(rd["flags_false"] for rd in rounds)
        flags = sum(rd["flagged_anomalous"] for rd in rounds)
        assert det["flags_realised_fdr"] == pytest.approx(false / max(flags, 1))
        assert det["flags_fdr_level"] == 0.01
    assert calibrated["detection"]["flags_realised_fdr"] < plain["detection"]["flags_realised_fdr"]
    assert calibrated["detection"]["recall"] >= plain["detection"]["recall"] - 0.01


def test_the_why_of_an_isolation_under_robust_scoring_is_the_level_and_distance_the_detector_used():
    # With scoring="robust" the report explained isolations from the full moments: an agent the
    # cluster's trimmed moments isolated was reported at the population level, with a p-value
    # (0.73) that could not have isolated it.
    import types

    from swarmguard import DistributedBehavioralDetector
    from swarmguard.apps.simulate import _newly_isolated

    rng = np.random.default_rng(0)
    n = 400
    cl = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, 2))
    X[cl == 1] += 40.0
    X[:20] = rng.normal(size=(20, 2)) * 0.3 + np.array([0.0, 9.0])   # a group that masks inside cluster 0
    X[25] = [4.5, 4.5]          # far from cluster 0's kept members, inside its full ellipsoid
    names = np.array([f"cluster-{k}" for k in cl])
    det = DistributedBehavioralDetector(feature_dimensions=2, scoring="robust", score_levels="all", fdr=None,
                                        significance_level=1e-3, warm_up=10, clock=lambda: 0.0)
    ids = np.arange(n)
    res = det.process_round(ids, X, ["r"] * n, cohorts=names, timestamp=0.0)
    own = det.protocol.score_many(ids, fdr=None, explain=True)
    level = own["levels"][("cluster-0",)]
    at = int(np.flatnonzero(level["rows"] == 25)[0])
    assert own["decision_p_value"][25] == pytest.approx(2 * level["p_value"][at], rel=1e-9)   # the cluster decided
    sc = types.SimpleNamespace(agent_ids=ids, region_names=np.array(["r"] * n), cluster_index=cl)
    (agent,) = _newly_isolated(det, sc, 0, X, res, np.array([25]), names, np.zeros(n, dtype=bool))
    assert agent.level == "cluster-0"
    assert agent.mahalanobis_squared == pytest.approx(level["mahalanobis_squared"][at], rel=1e-12)
    assert min(1.0, 2 * agent.p_value) == pytest.approx(agent.decision_p_value, rel=1e-9)


def test_a_small_calibrated_run_says_why_calibration_flagged_nobody():
    """2,000 agents, --calibrate: the null is warm from round 1, but its floor 1/(n+1) lets BH at
    q=0.01 over 2,000 agents and two levels flag no group smaller than ceil(2·2000 / (q (n+1))),
    more than the anomalies a round brings; the report gives the figures per round and a note."""
    import math
    from fractions import Fraction

    from swarmguard.structures.score_null import DEFAULT_MIN_NULL
    report = run_simulation(ScenarioConfig(agents=2000, calibrate=True), latency_sample=0)
    rounds, cal = report["rounds"], report["detection"]["calibration"]
    for rd in rounds:
        assert rd["calibrated"] == (rd["null_scores"] >= DEFAULT_MIN_NULL)
        if rd["calibrated"]:
            n = rd["null_scores"]
            assert rd["null_p_floor"] == 1.0 / (n + 1)
            assert rd["fewest_calibrated_flags"] == math.ceil(Fraction(2 * 2000) / (Fraction(0.01) * (n + 1)))
        else:
            assert rd["null_p_floor"] is None and rd["fewest_calibrated_flags"] is None
    calibrated = [rd for rd in rounds if rd["calibrated"]]
    assert cal["rounds_calibrated"] == len(calibrated) and cal["first_calibrated_round"] == calibrated[0]["round"]
    assert cal["flags_calibrated"] == sum(rd["flagged_anomalous"] for rd in calibrated)
    assert cal["flags_false_calibrated"] == sum(rd["flags_false"] for rd in calibrated)
    assert cal["flags_warm_up"] + cal["flags_calibrated"] == sum(rd["flagged_anomalous"] for rd in rounds)
    assert cal["last_fewest_calibrated_flags"] == calibrated[-1]["fewest_calibrated_flags"]
    if cal["flags_calibrated"] == 0:
        assert cal["realised_fdr_calibrated"] is None
        assert f"smaller than {cal['last_fewest_calibrated_flags']:,} agents" in cal["note"]
        assert f"1/{cal['last_null_scores'] + 1:,}" in cal["note"]
    else:
        assert cal["realised_fdr_calibrated"] == pytest.approx(cal["flags_false_calibrated"] / cal["flags_calibrated"])
    # a run without --calibrate has no calibration section
    assert "calibration" not in run_simulation(ScenarioConfig(agents=2000, rounds=3, partition_at=1, heal_at=2),
                                             latency_sample=0)["detection"]


def test_the_cli_prints_what_calibration_did(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--agents", "2000", "--rounds", "4", "--partition-at", "1",
                                      "--heal-at", "2", "--calibrate", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    note = json.loads((tmp_path / "report.json").read_text())["detection"]["calibration"]["note"]
    assert "calibration: " in result.output and "calibrated rounds: flags / false" in result.output
    # rich wraps the line at the terminal's width: compare the words
    assert " ".join(note.split()) in " ".join(result.output.split())


def test_the_calibration_note_does_not_bound_the_cohort_levels_flags():
    """With score_levels="all" only the population level's p-values are calibrated: a cohort level
    keeps the mode's own, which have no floor (a lone agent far out in its cohort is flagged however
    small the null; tests/api/test_tail_scoring.py), so the note's smallest group bounds the
    population level's flags only, and says so; with one level it bounds them all."""
    from swarmguard.apps.simulate import calibration_summary
    rounds = [{"round": 0, "calibrated": False, "flagged_anomalous": 1, "flags_false": 1, "null_scores": 0,
               "null_p_floor": None, "fewest_calibrated_flags": None}]
    rounds += [{"round": r, "calibrated": True, "flagged_anomalous": 0, "flags_false": 0, "null_scores": 2000 * r,
                "null_p_floor": 1.0 / (2000 * r + 1), "fewest_calibrated_flags": 200 // r} for r in (1, 2)]
    two = calibration_summary(rounds, 2000, 0.01, 2)["note"]
    one = calibration_summary(rounds, 2000, 0.01, 1)["note"]
    assert "smaller than 100 agents on the population level's calibrated p-values" in two
    assert "cohort level keeps the mode's own p-values" in two
    assert "smaller than 100 agents on calibrated p-values;" in one and "cohort" not in one
