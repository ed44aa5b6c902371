"""Every example runs, as a user would run it, and does what it says."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        ["solution1_hierarchical.py", "solution2_consensus.py", "solution3_cap.py", "complete_example.py"])


def test_solution1_finds_the_two_planted_agents():
    found = re.search(r"found \[(.*)\]", run("solution1_hierarchical.py")).group(1)
    ids = {int(s) for s in found.split(",")}
    assert {3000, 4200} <= ids and len(ids) <= 2 + 10


def test_solution2_separates_the_compromised_agent_despite_liars():
    m = re.search(r"agent-bad ([0-9.e-]+), agent-good ([0-9.e+-]+)", run("solution2_consensus.py"))
    assert float(m.group(1)) > 0.99 and float(m.group(2)) < 1e-3


def test_solution3_widens_thresholds_only_while_partitioned_and_recovers():
    out = run("solution3_cap.py")
    m = re.search(r"widened (\d+) times .* largest ([0-9.]+) .* confidence now ([0-9.]+)", out)
    assert int(m.group(1)) > 0 and float(m.group(2)) > 3.0 and float(m.group(3)) == pytest.approx(1.0)


def test_complete_example_isolates_the_planted_agents():
    iso = re.search(r"isolated: \[(.*)\]", run("complete_example.py")).group(1)
    ids = {int(s) for s in iso.split(",")}
    assert {2500, 2900} <= ids and len(ids) <= 6
