import subprocess
import sys

from typer.testing import CliRunner

from swarmguard.cli import app


def test_demo_finds_the_injected_anomalies_on_a_small_population():
    result = CliRunner().invoke(app, ["demo", "--agents", "20000", "--anomalies", "8", "--updates", "200", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "precision 1.000, recall 1.000" in result.output
    assert "Global statistics (20,000" in result.output


def test_demo_rejects_bad_options():
    runner = CliRunner()
    assert runner.invoke(app, ["demo", "--agents", "10"]).exit_code != 0
    assert runner.invoke(app, ["demo", "--agents", "2000", "--anomalies", "5000"]).exit_code != 0
    assert runner.invoke(app, ["demo", "--fdr", "0"]).exit_code != 0


def test_console_script_and_flat_guide_modules_are_installed():
    out = subprocess.run([sys.executable, "-m", "swarmguard.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "swarmguard" in out.stdout
    import hierarchical_aggregation_protocol as hap
    import swarmguard

    assert hap.HierarchicalStatisticalTree is swarmguard.HierarchicalStatisticalTree
    assert hap.BehavioralDistributedProtocol is swarmguard.BehavioralDistributedProtocol


# ---------------------------------------------------------------------------- output paths
# Every option that writes a file or folder is checked before the work starts: exit 2, one line
# "error: ..." on stderr, no traceback, and the work itself never called.

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which creating a file fails: mode 0o500 for a normal user, /proc for root (ignores modes)."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def assert_refused_before_work(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)        # typer.Exit(2), not an escaped exception


@pytest.fixture
def no_simulation(monkeypatch):
    import swarmguard.apps.simulate as simulate

    def must_not_run(*args, **kwargs):
        raise AssertionError("the simulation ran although its output folder is unusable")

    monkeypatch.setattr(simulate, "run_simulation", must_not_run)


@pytest.mark.parametrize("case", ["out is a file", "out's ancestor is a file", "report.json is a folder",
                                  "out not writable", "checkpoint dir is a file"])
def test_simulate_refuses_an_unusable_output_folder_before_running(case, tmp_path, no_simulation):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    args = ["simulate", "--agents", "2000", "--rounds", "4", "--partition-at", "1", "--heal-at", "2"]
    if case == "out is a file":
        args += ["--out", str(a_file)]
    elif case == "out's ancestor is a file":
        args += ["--out", str(a_file / "runs" / "seed7")]
    elif case == "report.json is a folder":
        (tmp_path / "run" / "report.json").mkdir(parents=True)
        args += ["--out", str(tmp_path / "run")]
    elif case == "out not writable":
        args += ["--out", str(unwritable_folder(tmp_path) / "new-run")]
    else:
        args += ["--out", str(tmp_path / "run"), "--backend", "ray", "--checkpoint-dir", str(a_file)]
    result = CliRunner().invoke(app, args)
    assert_refused_before_work(result, "--checkpoint-dir" if "checkpoint" in case else "--out")
    assert not (tmp_path / "run" / "report.html").exists()


def test_simulate_creates_a_missing_output_folder_with_its_parents(tmp_path):
    out = tmp_path / "runs" / "seed7"
    result = CliRunner().invoke(app, ["simulate", "--agents", "2000", "--rounds", "4", "--partition-at", "1",
                                      "--heal-at", "2", "--observers", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.json").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("case", ["folder missing", "is a folder", "dot", "not writable", "parent is a file"])
def test_validate_refuses_an_unusable_json_path_before_measuring(case, tmp_path, monkeypatch):
    import swarmguard.apps.validate as validate

    def must_not_run(**kwargs):
        raise AssertionError("validate measured although --json is unusable")

    monkeypatch.setattr(validate, "run_validation", must_not_run)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    path = {"folder missing": tmp_path / "missing" / "v.json", "is a folder": tmp_path, "dot": Path("."),
            "not writable": unwritable_folder(tmp_path) / "v.json", "parent is a file": a_file / "v.json"}[case]
    result = CliRunner().invoke(app, ["validate", "--quick", "--json", str(path)])
    assert_refused_before_work(result, "--json", str(path))


def test_python_dash_m_runs_every_command():
    # the module's __main__ guard must come after the last command is defined
    out = subprocess.run([sys.executable, "-m", "swarmguard.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("demo", "detect", "simulate", "validate"):
        assert command in out.stdout


def test_enumerated_options_are_typer_choices_refused_before_any_work(tmp_path):
    import re

    def said(result):           # the message without Rich's box drawing, on one line
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())

    result = CliRunner().invoke(app, ["simulate", "--backend", "spark", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "'spark' is not one of 'inprocess', 'ray'" in said(result)
    result = CliRunner().invoke(app, ["simulate", "--difficulty", "brutal", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "'brutal' is not one of 'easy', 'default', 'hard'" in said(result)
    assert not (tmp_path / "run").exists()
    assert "[csv|jsonl|parquet]" in said(CliRunner().invoke(app, ["detect", "--help"]))


def test_scoring_is_a_typer_choice_and_detect_scores_with_it(tmp_path):
    import csv
    import re

    import numpy as np

    def said(result):
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())

    result = CliRunner().invoke(app, ["simulate", "--scoring", "fancy", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "'fancy' is not one of 'mahalanobis', 'robust'" in said(result)
    assert not (tmp_path / "run").exists()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    X[:12] += np.array([5.0, -5.0, 5.0])       # a cluster that inflates the full covariance
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent_id", "a", "b", "c"])
        w.writerows([[i, *row] for i, row in enumerate(X.tolist())])
    from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
    for mode in ("mahalanobis", "robust"):
        out = tmp_path / f"{mode}.csv"
        result = CliRunner().invoke(app, ["detect", str(path), "--scoring", mode, "--output", str(out),
                                          "--warm-up", "10"])
        assert result.exit_code == 0, result.output
        with open(out) as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["agent_id"]))
        tree = HierarchicalStatisticalTree(feature_dimensions=3)
        tree.update_many(np.arange(400), X)
        expected = BehavioralDistributedProtocol(tree, scoring=mode).score_many(np.arange(400))
        np.testing.assert_allclose([float(r["score"]) for r in rows], expected["mahalanobis_squared"], rtol=1e-9)
    assert expected["mahalanobis_squared"][:12].min() > 50      # robust: the cluster stands out


def test_simulate_latency_sample_is_passed_on_refused_when_negative_and_zero_leaves_the_row_out(tmp_path,
                                                                                               monkeypatch):
    import json
    import re

    import swarmguard.apps.simulate as simulate
    from swarmguard.errors import SwarmGuardError

    def said(result):
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())

    args = ["simulate", "--agents", "2000", "--rounds", "4", "--partition-at", "1", "--heal-at", "2"]
    for bad, why in (("-1", "greater than or equal to 0"), ("2.5", "valid integer"), ("many", "valid integer")):
        result = CliRunner().invoke(app, [*args, "--latency-sample", bad, "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and "Invalid value for '--latency-sample': Input should be" in said(result)
        assert why in said(result), said(result)
    assert not (tmp_path / "bad").exists()
    result = CliRunner().invoke(app, [*args, "--latency-sample", "0", "--out", str(tmp_path / "zero")])
    assert result.exit_code == 0, result.output
    assert re.search(r"per-item latency p50 / p99\W+not measured", result.output), result.output
    zero = json.loads((tmp_path / "zero" / "report.json").read_text())["performance"]
    assert zero["per_item_latency_us_p50"] is None and zero["per_item_latency_samples"] == 0
    result = CliRunner().invoke(app, [*args, "--latency-sample", "5", "--out", str(tmp_path / "five")])
    assert result.exit_code == 0, result.output
    assert re.search(r"per-item latency p50 / p99\W+\d+ / \d+ µs \(5 calls\)", said(result)), said(result)
    five = json.loads((tmp_path / "five" / "report.json").read_text())["performance"]
    assert five["per_item_latency_samples"] == 5 and 0 < five["per_item_latency_us_p50"] <= five["per_item_latency_us_p99"]
    asked = []                                       # the count reaches the API; 300 when not given

    def spy(config, progress=None, latency_sample=300, **kwargs):
        asked.append(latency_sample)
        raise SwarmGuardError("stopped by the test")

    monkeypatch.setattr(simulate, "run_simulation", spy)
    for extra in ([], ["--latency-sample", "7"]):
        result = CliRunner().invoke(app, [*args, *extra, "--out", str(tmp_path / "spy")])
        assert result.exit_code == 2 and "stopped by the test" in result.stderr
    assert asked == [300, 7]
