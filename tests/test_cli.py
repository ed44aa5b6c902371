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
