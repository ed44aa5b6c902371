"""Every code block of README.md runs as written, so the README cannot drift from the code.

Each ```python block is written to a file of its own and run in a fresh
interpreter, in an empty temporary folder, with a timeout: a block must
import and define everything it uses. Each ```bash line that runs
``swarmguard COMMAND --option`` names a command and options that exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarmguard.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
BASH_BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M)
BLOCK_TIMEOUT_S = 120      # the slowest block (Ray) takes ~15 s here; the timeout only catches hangs


def _first_line(block: str) -> str:
    return next((line for line in block.splitlines() if line.strip() and not line.startswith(("import", "from"))),
                block.splitlines()[0])


def test_every_fenced_block_of_the_readme_is_one_this_test_runs():
    # a block fenced as ```py, ```sh or ``` (or indented fences) would match neither pattern and
    # silently never run: every fence that opens a block must be python or bash
    openings = re.findall(r"^[ \t]*```(.*)$", README, flags=re.M)[::2]
    assert openings and set(openings) <= {"python", "bash"}, openings
    assert len(openings) == len(PYTHON_BLOCKS) + len(BASH_BLOCKS)


def test_the_readme_has_the_blocks_this_test_runs():
    # one block per part of the guide, the batch path, the scoring modes, calibrated tail scoring, the
    # detector, Ray and detect --calibrate: a block lost by a bad edit of the README (or of this test's pattern) fails here
    # instead of silently not running
    assert len(PYTHON_BLOCKS) == 9
    assert len(BASH_BLOCKS) >= 2


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[_first_line(b)[:40] for b in PYTHON_BLOCKS])
def test_readme_python_block_runs_as_written(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", str(script)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, env=env)
    assert out.returncode == 0, f"README block failed:\n{block}\n--- stderr ---\n{out.stderr[-3000:]}"


def test_readme_solution1_block_finds_the_agent_it_injects(tmp_path):
    block = next(b for b in PYTHON_BLOCKS if "hierarchical_aggregation_protocol" in b)
    assert "4242" in block
    script = tmp_path / "block.py"
    script.write_text(block, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=BLOCK_TIMEOUT_S, env=env)
    assert out.returncode == 0, out.stderr
    flagged = {int(line.split()[0]) for line in out.stdout.splitlines()}
    # the +12 agent, plus about alpha * 5000 = 5 chance alarms
    assert 4242 in flagged and len(flagged) <= 15


def _swarmguard_commands() -> list[list[str]]:
    """Every ``swarmguard ...`` command line of the README's bash blocks, split into words."""
    lines = []
    for block in BASH_BLOCKS:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("swarmguard "):
                lines.append(shlex.split(line)[1:])
    return lines


def test_readme_bash_blocks_run_swarmguard_commands():
    assert _swarmguard_commands(), "no `swarmguard ...` line found in the README's bash blocks"


@pytest.mark.parametrize("words", _swarmguard_commands(), ids=lambda w: " ".join(w)[:50])
def test_readme_swarmguard_command_lines_name_real_options(words):
    command, options = words[0], [w.split("=", 1)[0] for w in words[1:] if w.startswith("-")]
    help_text = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert help_text.exit_code == 0, f"no such command: swarmguard {command}"
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text.output), \
            f"swarmguard {command} has no option {option}"


def test_readme_make_lines_name_targets_the_makefile_has():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M))
    makes = [line.split("#", 1)[0].split()[1:] for block in BASH_BLOCKS for line in block.splitlines()
             if line.strip().startswith("make ")]
    assert makes, "no `make ...` line found in the README's bash blocks"
    for words in makes:
        assert set(words) <= targets, f"make {' '.join(words)}: the Makefile has only {sorted(targets)}"


def test_readme_robust_scoring_block_prints_what_its_comments_say(tmp_path):
    block = next(b for b in PYTHON_BLOCKS if 'scoring="robust"' in b)
    said = [int(m) for m in re.findall(r"# (\d+)", block)]     # 0, 58 (of 60), 1913
    script = tmp_path / "block.py"
    script.write_text(block, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=BLOCK_TIMEOUT_S, env=env)
    assert out.returncode == 0, out.stderr
    assert said and [int(v) for v in out.stdout.split()] == said
