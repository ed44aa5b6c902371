"""swarmguard detect --calibrate: the file cut into --window rounds, calibrated p-values, realised FDR."""

from __future__ import annotations

import csv
import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from typer.testing import CliRunner

from swarmguard import InvalidTypeError
from swarmguard.apps.detect import detect
from swarmguard.cli import app

runner = CliRunner()
AGENTS, ROUNDS, PLANTED, ONSET, WINDOW = 2000, 6, 50, 3, 60.0


def heavy_tailed_file(path, seed=1):
    """ROUNDS windows of WINDOW seconds; every agent reports once a window, its row at a random time
    in it (the file is written round by round, agents shuffled within a round). Features: Student-t with
    3 degrees of freedom and a log-normal one. From round ONSET the first PLANTED agents move 30 in
    every feature. Returns the planted agents' ids (the test's own truth; the file's label column
    is written from the same mask)."""
    rng = np.random.default_rng(seed)
    planted = np.zeros(AGENTS, dtype=bool)
    planted[:PLANTED] = True
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent_id", "ts", "f0", "f1", "f2", "f3", "bad"])
        for r in range(ROUNDS):
            X = rng.standard_t(3, size=(AGENTS, 4))
            X[:, 2] = rng.lognormal(0.0, 1.0, size=AGENTS)
            now = planted & (r >= ONSET)
            X[now] += 30.0
            # rounds are cut from the oldest stamp: 0.5, the first row's (rows at [r W + 0.5, r W + W - 0.5])
            stamps = r * WINDOW + rng.uniform(0.5, WINDOW - 0.5, size=AGENTS)
            order = rng.permutation(AGENTS)
            if r == 0:
                stamps[order[0]] = 0.5
            for i in order.tolist():
                w.writerow([f"a{i}", f"{stamps[i]:.3f}", *(f"{v:.6f}" for v in X[i]), int(now[i])])
    return {f"a{i}" for i in np.flatnonzero(planted).tolist()}


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibrate") / "t.csv"
    return path, heavy_tailed_file(path)


def run_json(*args):
    result = runner.invoke(app, ["detect", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("q", [0.01, 0.05])
def test_calibrated_rounds_keep_the_realised_fdr_at_most_q_on_heavy_tails(heavy, tmp_path, q):
    path, planted = heavy
    out = tmp_path / "scores.csv"
    # the plain moments are masked by 2.5 % planted agents (their distances shrink below the
    # t(3) tail): the trimmed moments score them against the members not flagged
    common = [path, "--timestamp-column", "ts", "--window", WINDOW, "--fdr", q, "--scoring", "robust",
              "--label-column", "bad"]
    s = run_json(*common, "--calibrate", "-o", out)
    # the flags of the output (each agent's latest row, scored in the last round) against the
    # planted set, counted here from the file written and the test's own truth
    with open(out, newline="") as f:
        flagged = {row["agent_id"] for row in csv.DictReader(f) if row["is_anomaly"] == "true"}
    false, hits = len(flagged - planted), len(flagged & planted)
    assert flagged and false / len(flagged) <= q
    assert hits / len(planted) >= 0.95
    lab = s["labels"]
    assert (lab["flagged"], lab["false_flags"], lab["anomalies"]) == (len(flagged), false, len(planted))
    assert lab["recall"] == pytest.approx(hits / len(planted))
    # every round is in the summary; the calibrated ones' pooled FDR apart from the warm-up's
    rounds, cal = s["rounds"], s["calibration"]
    assert [rd["round"] for rd in rounds] == list(range(ROUNDS)) and all(rd["agents"] == AGENTS for rd in rounds)
    calibrated = [rd for rd in rounds if rd["calibrated"]]
    assert len(calibrated) == cal["rounds_calibrated"] >= ROUNDS - ONSET
    assert cal["flags_calibrated"] == sum(rd["flagged_anomalous"] for rd in calibrated)
    assert cal["flags_false_calibrated"] == sum(rd["flags_false"] for rd in calibrated)
    assert cal["flags_calibrated"] >= (ROUNDS - ONSET) * PLANTED * 0.95
    assert cal["realised_fdr_calibrated"] <= q
    # the last round's false flags are the output's (it holds every agent's latest row)
    assert rounds[-1]["flags_false"] == false and rounds[-1]["flagged_anomalous"] == len(flagged)
    assert s["method"].endswith(", calibrated") and s["calibrate"] is True and s["warnings"] == []
    # the warm-up round decided on chi-squared p-values, which the t(3) tails fool; and without
    # --calibrate the same file's last window is flagged at many times q
    assert cal["flags_warm_up"] == cal["flags_false_warm_up"] > 0
    plain = run_json(*common)["labels"]
    assert plain["realised_fdr"] > 2 * q


def test_rounds_are_cut_from_the_oldest_timestamp_and_each_agent_keeps_its_latest_row(tmp_path):
    """Independent of the file's order: the same rows shuffled give the same rounds and scores."""
    rng = np.random.default_rng(3)
    rows = []
    for r in range(3):
        X = rng.normal(size=(400, 2))
        # the oldest stamp, 100, starts round 0; the others sit well inside their window of 10
        rows += [(f"a{i}", 100.0 + r * 10 + (0.0 if r == i == 0 else rng.uniform(0.5, 9.5)), *X[i])
                 for i in range(400)]
    for name, order in (("a.csv", range(len(rows))), ("b.csv", rng.permutation(len(rows)).tolist())):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["agent_id", "ts", "x", "y"])
            w.writerows(rows[i] for i in order)
    a = detect(tmp_path / "a.csv", timestamp_column="ts", window=10, calibrate=True, warm_up=50)
    b = detect(tmp_path / "b.csv", timestamp_column="ts", window=10, calibrate=True, warm_up=50)
    assert [rd["agents"] for rd in a.rounds] == [400, 400, 400]
    assert [rd["window_start"] for rd in a.rounds] == [100.0, 110.0, 120.0]
    pos = {x: i for i, x in enumerate(b.agent_ids.tolist())}
    at = np.array([pos[x] for x in a.agent_ids.tolist()])
    np.testing.assert_allclose(a.score, b.score[at], rtol=1e-12)
    # 1,200 rows, 400 agents: each agent's output row is its last window's (the round of its latest row)
    assert a.rows_read == 1200 and a.agents == 400 and a.rows_superseded == 800


@pytest.mark.parametrize("window", [None, 1e6])
def test_a_single_round_says_the_null_cannot_warm_up(heavy, window):
    path, _ = heavy
    extra = [] if window is None else ["--window", window]
    s = run_json(path, "--timestamp-column", "ts", *extra, "--calibrate", "--label-column", "bad")
    assert len(s["warnings"]) == 1
    w = s["warnings"][0]
    assert "one round" in w and "the p-values are the mode's own, not calibrated" in w
    assert ("no --window" in w) if window is None else ("every row falls in one --window" in w)
    assert len(s["rounds"]) == 1 and s["calibration"]["rounds_calibrated"] == 0
    assert not s["method"].endswith("calibrated")
    # the Rich summary prints it as one line
    text = runner.invoke(app, ["detect", str(path), "--timestamp-column", "ts", *map(str, extra), "--calibrate"],
                         terminal_width=400).stdout
    assert re.search(r"^warning: --calibrate: the file is scored as one round", text, flags=re.M), text
    assert "calibration: calibration never started" in text
    # without --calibrate: no warning, nothing about calibration
    s = run_json(path, "--timestamp-column", "ts", *extra)
    assert s["warnings"] == [] and s["calibration"] is None and s["calibrate"] is False


def test_calibrate_is_refused_with_spans_before_the_file_is_read(tmp_path):
    missing = tmp_path / "never-read.jsonl"
    result = runner.invoke(app, ["detect", str(missing), "--spans", "--calibrate"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --calibrate is not available with --spans (its windows are not calibrated yet)"]
    with pytest.raises(InvalidTypeError, match="calibrate must be True or False"):
        detect(missing, calibrate="yes")


def test_the_help_describes_calibrate():
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", runner.invoke(app, ["detect", "--help"], terminal_width=200).output).split())
    assert "--calibrate" in text
    assert "rank among the scores of agents not flagged in earlier rounds" in text
    assert "without --window, or with every row in one window, the file is one round" in text


def loo_from_scratch(X):
    """Leave-one-out squared Mahalanobis distance of every row against the others (ddof=1, no shrinkage)."""
    out = np.empty(X.shape[0])
    for i in range(X.shape[0]):
        others = np.delete(X, i, axis=0)
        diff = X[i] - others.mean(axis=0)
        out[i] = diff @ np.linalg.solve(np.cov(others.T), diff)
    return out


def test_a_calibrated_round_is_ranked_among_the_earlier_rounds_scores_as_computed_from_scratch(tmp_path):
    """Three rounds of 600: the first two warm the null (every score enters, divided by its round's
    median: the default mode's relative null); the third's p-values are (1 + #{null >= s}) / (n + 1)."""
    rng = np.random.default_rng(5)
    rounds = [rng.normal(size=(600, 3)) for _ in range(3)]
    with open(tmp_path / "r.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent_id", "ts", "x", "y", "z"])
        for r, X in enumerate(rounds):
            for i, x in enumerate(X):
                w.writerow([f"a{i}", r * 10 + (0.0 if r == i == 0 else 5.0), *map(repr, x.tolist())])
    res = detect(tmp_path / "r.csv", timestamp_column="ts", window=10, calibrate=True, shrinkage=0, warm_up=100)
    assert [rd["calibrated"] for rd in res.rounds] == [False, False, True]
    assert [rd["null_scores"] for rd in res.rounds] == [0, 600, 1200]
    d2 = [loo_from_scratch(X) for X in rounds]
    order = np.array([int(a[1:]) for a in res.agent_ids.tolist()])     # output rows: agents a0, a1, ...
    np.testing.assert_allclose(res.score, d2[2][order], rtol=1e-6)    # as test_detect_window
    null = np.concatenate([d2[0] / np.median(d2[0]), d2[1] / np.median(d2[1])])
    s = d2[2][order] / np.median(d2[2])
    exact = (1 + (null[None, :] >= s[:, None]).sum(axis=1)) / (null.size + 1)
    # the sketch keeps the top of the null exactly (high-rank accuracy): the smallest p-values, which
    # decide, are exact; the rest within a small part of themselves
    top = np.argsort(-s)[:30]
    np.testing.assert_allclose(res.p_value[top], exact[top], rtol=1e-12)
    np.testing.assert_allclose(res.p_value, exact, rtol=0.05)
    assert res.method.endswith(", calibrated")


def test_explain_and_cohorts_in_rounds_give_each_agent_the_why_of_its_own_round(tmp_path):
    rng = np.random.default_rng(7)
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent_id", "region", "ts", "cpu", "mem", "lat"])
        for r in range(3):
            X = rng.normal(size=(500, 3))
            X[:5, 1] += 25.0 * (r == 2)         # the last round: a0..a4 far off in mem only
            for i, x in enumerate(X):
                # agents change region between rounds: the tree moves them
                w.writerow([f"a{i}", f"r{(i + r) % 3}", r * 10 + (0.0 if r == i == 0 else 5.0), *map(repr, x.tolist())])
    out = tmp_path / "why.csv"
    res = detect(tmp_path / "c.csv", output=out, timestamp_column="ts", cohort_column="region", window=10,
                 calibrate=True, explain=True, warm_up=100, top=5)
    with open(out, newline="") as f:
        rows = {row["agent_id"]: row for row in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == ["agent_id", "score", "p_value", "is_anomaly", "cohort",
                                                "feature_1", "share_1", "feature_2", "share_2", "feature_3", "share_3"]
    for i in range(5):
        assert rows[f"a{i}"]["feature_1"] == "mem" and float(rows[f"a{i}"]["share_1"]) > 0.9
    for row in rows.values():
        shares = [float(row[f"share_{j}"]) for j in (1, 2, 3)]
        assert shares == sorted(shares, reverse=True)
        assert len({row[f"feature_{j}"] for j in (1, 2, 3)}) == 3
    assert rows["a0"]["cohort"] == "r2" and rows["a1"]["cohort"] == "r0"      # its last round's region
    assert {t["agent_id"] for t in res.top} == {f"a{i}" for i in range(5)}
    assert all(t["main_feature"] == "mem" for t in res.top)
    # a null of 1,000 scores (two rounds of 500) gives p >= 1/1001: Benjamini-Hochberg at q = 0.01
    # over 500 agents flags no group smaller than ceil(500 / (0.01 * 1001)) = 50 -- not these 5
    last = res.rounds[-1]
    assert last["calibrated"] and last["null_scores"] == 1000
    assert last["fewest_calibrated_flags"] == math.ceil(Fraction(500) / (Fraction(1, 100) * 1001)) == 50
    assert not any(t["is_anomaly"] for t in res.top)
    assert "can flag no group smaller than 50 agents" in res.calibration["note"]


def test_iso_timestamps_are_cut_into_windows_of_seconds(tmp_path):
    rng = np.random.default_rng(11)
    with open(tmp_path / "iso.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent_id", "ts", "x", "y"])
        for r in range(3):
            X = rng.normal(size=(300, 2))
            for i, x in enumerate(X):
                sec = 100 + r * 10 + (0 if r == i == 0 else int(rng.integers(1, 10)))
                w.writerow([f"a{i}", f"2026-01-01T00:{sec // 60:02d}:{sec % 60:02d}Z", *map(repr, x.tolist())])
    res = detect(tmp_path / "iso.csv", timestamp_column="ts", window=10, calibrate=True, warm_up=50)
    assert [rd["agents"] for rd in res.rounds] == [300, 300, 300]
    assert [rd["window_start"] for rd in res.rounds] == [f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}.000000000"
                                                          for s in (100, 110, 120)]


def test_rounds_too_small_to_judge_do_not_fill_the_null(tmp_path):
    """Windows holding fewer agents than --warm-up judge nobody and stay out of the null: 1,100
    one-agent windows (distance 0 each) would otherwise warm it with zeros, and the following
    window of 400 normal agents would have every p-value at the null's floor and all be flagged."""
    rng = np.random.default_rng(3)
    lines = ["agent_id,ts,cpu,mem,bad"]
    lone = 1100
    lines += [f"s{w},{w * 10 + 1},{x:.4f},{y:.4f},0" for w, (x, y) in enumerate(rng.normal(size=(lone, 2)))]
    lines += [f"a{i},{lone * 10 + 1 + i / 100:.2f},{x:.4f},{y:.4f},0"
              for i, (x, y) in enumerate(rng.normal(size=(400, 2)))]
    path = tmp_path / "sparse.csv"
    path.write_text("\n".join(lines) + "\n")
    res = detect(path, timestamp_column="ts", window=10, calibrate=True, warm_up=50, label_column="bad")
    assert [rd["agents"] for rd in res.rounds] == [1] * lone + [400]
    judged = sum(rd["agents"] for rd in res.rounds[:-1] if rd["agents"] >= 50)
    assert res.rounds[-1]["null_scores"] == judged == 0
    assert res.rounds[-1]["flags_false"] == 0 and res.truth.false_flags == 0


@pytest.mark.parametrize("window, stamps", [(1.0, (0.0, 1e19, 2e19)), (1e-9, (0.0, 1e10, 2e10))])
def test_more_windows_than_round_numbers_hold_is_refused_not_wrapped(tmp_path, window, stamps):
    """Round numbers are int64: a span of more than 2**62 windows used to cast to -2**63 (NumPy's
    invalid cast), merging the later rows into one round scored *before* the first. Refused: exit 2,
    one line."""
    rng = np.random.default_rng(0)
    lines = ["agent_id,ts,cpu,mem"]
    for t in stamps:
        lines += [f"a{i},{t + i:.1f},{x:.4f},{y:.4f}" for i, (x, y) in enumerate(rng.normal(size=(60, 2)))]
    path = tmp_path / "span.csv"
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["detect", str(path), "--timestamp-column", "ts", "--window", repr(window),
                                 "--calibrate", "--warm-up", "50"])
    assert result.exit_code == 2, result.output
    assert "windows" in result.output and len(result.output.strip().splitlines()) == 1


def test_iso_timestamps_spanning_more_than_int64_nanoseconds_are_refused(tmp_path):
    """1700 to 2250 is more than 2**63 ns: the stamps' difference used to overflow (an OverflowError
    traceback). Refused: exit 2, one line."""
    rng = np.random.default_rng(0)
    lines = ["agent_id,ts,cpu,mem"]
    for t in ("1700-01-01T00:00:00", "2000-01-01T00:00:00", "2250-01-01T00:00:00"):
        lines += [f"a{i},{t},{x:.4f},{y:.4f}" for i, (x, y) in enumerate(rng.normal(size=(60, 2)))]
    path = tmp_path / "centuries.csv"
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["detect", str(path), "--timestamp-column", "ts", "--window", "86400",
                                 "--calibrate", "--warm-up", "50"])
    assert result.exit_code == 2, result.output
    assert "292 years" in result.output and len(result.output.strip().splitlines()) == 1
