"""``import swarmguard`` and the command line leave the big libraries unimported.

SciPy's statistics, special functions and linear algebra, pyarrow, Ray, plotly, asyncio
and Rich's tables and progress bars are imported where they are used
(:mod:`swarmguard.lazy_import`), so that ``swarmguard --help`` starts fast
(``benchmarks/bench_startup.py`` measures it). Each check runs in a fresh interpreter
and reads ``sys.modules``: it fails when any module of the chain imports one of them at
module level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Modules that must stay out of sys.modules until used. scipy itself (a small package
# whose submodules load on first access) and numpy are allowed.
HEAVY = ("scipy.stats", "scipy.special", "scipy.linalg", "pyarrow", "ray", "plotly", "asyncio",
         "rich.progress", "rich.table", "swarmguard.apps", "swarmguard.engines")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import swarmguard",
    "import swarmguard.cli",
    "from swarmguard import DistributedBehavioralDetector, StableBayesianConsensus, StatisticalCAPResolver",
    "import hierarchical_aggregation_protocol, distributed_bayesian_consensus, statistical_cap_resolver",
])
def test_importing_leaves_the_heavy_modules_unimported(code):
    assert _loaded_after(code) == []


def test_help_leaves_the_heavy_modules_unimported():
    code = ("import contextlib, io\nfrom swarmguard.cli import app\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    app(['--help'])")
    # Typer draws its help with Rich's tables: the one heavy module --help needs
    assert _loaded_after(code) == ["rich.table"]


def test_the_probe_sees_an_eager_import():
    # the check can fail: the same probe reports what a use of the heavy parts imports
    code = "import swarmguard, numpy as np\nswarmguard.HierarchicalStatisticalTree(feature_dimensions=2)"
    assert _loaded_after(code) == []
    used = _loaded_after("from swarmguard.structures.chi2 import chi2_sf\nchi2_sf(3.0, 3)\n"
                         "from swarmguard.api.detector import chi2\nchi2.isf(0.5, 2)")
    assert "scipy.special" in used and "scipy.stats" in used


def test_a_ray_actor_s_shard_modules_leave_the_detector_unimported():
    # an actor's process imports its class's module and so every parent package's __init__:
    # those name the API lazily, so the actor imports the parts its shard uses, not the detector
    code = ("import swarmguard.engines.shards, swarmguard.engines.evidence_shard, json, sys\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('swarmguard.'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=120)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"swarmguard.api.tree", "swarmguard.api.cap", "swarmguard.api.consensus"} <= loaded
    assert not loaded & {"swarmguard.api.detector", "swarmguard.api.protocol", "swarmguard.api.inprocess"}


@pytest.mark.parametrize("package", ["swarmguard", "swarmguard.api"])
def test_the_lazily_named_api_is_the_eager_one(package):
    import importlib
    module = importlib.import_module(package)
    assert set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        value = getattr(module, name)
        assert value is getattr(importlib.import_module(module._EXPORTS[name], package), name)
    sub = "structures" if package == "swarmguard" else "detector"   # submodules read as attributes, as before
    assert getattr(module, sub) is importlib.import_module(f"{package}.{sub}")
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def _held_tree_import(condition: str) -> str:
    """Code that holds a thread inside the execution of ``swarmguard.api.tree`` (not under the
    global import lock) until ``release`` is set, once ``held`` is; ``condition``: which lookups
    are held, besides the module's name."""
    return f"""import importlib.machinery, json, os, sys, threading, time
held, release = threading.Event(), threading.Event()
class Hold:
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "swarmguard.api.tree"{condition}:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        run = spec.loader.exec_module
        def exec_module(module):
            held.set(); release.wait(10); run(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hold())
import swarmguard
"""


def test_two_threads_reading_lazy_names_at_once_import_one_at_a_time():
    # Before the lazy names, `import swarmguard` imported the whole API in one thread. Now two
    # threads' first reads import at the same time, and CPython 3.11's module locks then raise
    # _DeadlockError ("deadlock detected by _ModuleLock('swarmguard.values.moments')") about one
    # run in fifty. The first reads must run one at a time: while the first thread's import is
    # held inside a module lookup, the second thread's read must wait for it.
    code = _held_tree_import("") + """done = []
first = threading.Thread(target=lambda: done.append(swarmguard.HierarchicalStatisticalTree), name="first")
second = threading.Thread(target=lambda: done.append(swarmguard.EvidenceType), name="second")
first.start(); held.wait(10); second.start(); second.join(1.0)
during = len(done)
release.set(); first.join(); second.join()
print(json.dumps([during, len(done)]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=120)
    during, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert (during, after) == (0, 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_during_a_first_use_import_reads_lazy_names():
    # the lock that keeps first-use imports one at a time is made anew in a forked child: the
    # thread that held it does not exist there, so the child would wait on it forever
    code = _held_tree_import(' or threading.current_thread().name != "first"') + """first = threading.Thread(target=lambda: swarmguard.HierarchicalStatisticalTree, name="first")
first.start(); held.wait(10)
pid = os.fork()
if pid == 0:
    os._exit(0 if swarmguard.EvidenceType.__name__ == "EvidenceType" else 1)
for _ in range(200):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9); os.waitpid(pid, 0); status = "stuck"
release.set(); first.join()
print(status)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0"
