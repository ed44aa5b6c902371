"""Without Ray: the package imports, the default engine works, and the error is clear."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from swarmguard.api.tree import HierarchicalStatisticalTree
from swarmguard.engines import make_detector
from swarmguard.engines.shards import RegionShard, RootAggregator


def test_default_backend_is_inprocess():
    from swarmguard.api.detector import DistributedBehavioralDetector
    assert isinstance(make_detector(), DistributedBehavioralDetector)


def test_missing_ray_is_a_clear_error():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import swarmguard.engines as e, swarmguard.apps.simulate\n"
        "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "from swarmguard.errors import MissingDependencyError\n"
        "try:\n"
        "    e.make_detector('ray', regions=['eu'])\n"
        "except MissingDependencyError as exc:\n"
        "    assert 'swarmguard[ray]' in str(exc); print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_shards_merge_to_the_whole_tree_with_cohorts_across_shards():
    """Cohorts that span shards merge to the whole tree's cohorts (no Ray needed)."""
    rng = np.random.default_rng(4)
    n = 3000
    X = rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 3.0] + 1e6
    ids = np.arange(n)
    cohorts = np.array(["a", "b", "c"])[ids % 3]
    regions = np.array(["r0", "r1"])[(ids // 7) % 2]
    whole = HierarchicalStatisticalTree(feature_dimensions=4)
    whole.update_many(ids, X, cohorts=cohorts)
    summaries = []
    for name in ["r0", "r1"]:
        shard = RegionShard(0.0, feature_dimensions=4)
        rows = np.flatnonzero(regions == name)
        summaries.append(shard.update(0, ids[rows], X[rows], cohorts[rows], regions[rows]))
    merged = RootAggregator().merge(0, *summaries)
    g = whole.get_global_statistics()
    assert merged["population"].count == n
    np.testing.assert_allclose(merged["population"].mean, g["mean"], rtol=1e-13)
    np.testing.assert_allclose(merged["population"].covariance(), g["covariance"], rtol=1e-12)
    for c in "abc":
        s = whole.get_cohort_statistics((c,))
        np.testing.assert_allclose(merged["cohorts"][(c,)].covariance(), s["covariance"], rtol=1e-12)
