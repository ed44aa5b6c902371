"""The Makefile's recipes do what its comments say, on trees they were not written in."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _test_recipe() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    body = re.search(r"^test:.*\n((?:\t.*\n)+)", text, flags=re.M).group(1)
    return [line.strip() for line in body.splitlines()]


def test_make_test_s_bytecode_step_does_not_fail_where_src_cannot_be_written(tmp_path):
    # compileall only saves the tests' subprocesses compile time: where no .pyc can be written
    # (a read-only checkout; here a file where src/__pycache__ would go, which stops root too)
    # the step must not stop `make test` before pytest runs
    step = next(line for line in _test_recipe() if "compileall" in line)
    shutil.copytree(ROOT / "src" / "swarmguard" / "values", tmp_path / "src" / "values",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src" / "values" / "__pycache__").write_text("not a folder")
    command = step.lstrip("@-").replace("$(PY)", f'"{sys.executable}"')
    out = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_test_s_bytecode_step_writes_the_pyc_files(tmp_path):
    step = next(line for line in _test_recipe() if "compileall" in line)
    shutil.copytree(ROOT / "src" / "swarmguard" / "values", tmp_path / "src" / "values",
                    ignore=shutil.ignore_patterns("__pycache__"))
    command = step.lstrip("@-").replace("$(PY)", f'"{sys.executable}"')
    subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    sources = {p.stem for p in (tmp_path / "src" / "values").glob("*.py")}
    compiled = {p.name.split(".")[0] for p in (tmp_path / "src" / "values" / "__pycache__").glob("*.pyc")}
    assert sources and sources <= compiled
