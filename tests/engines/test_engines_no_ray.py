"""Without Ray: the package imports, the default engine works, and the error is clear."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

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


@pytest.mark.parametrize("scale", [2.0**-990, 1e-300, 1e-162, 1e98])
def test_shard_scores_are_the_same_from_1e_300_to_the_1e100_limit(scale):
    # Shards send their moments in their trees' power-of-two units; the root merges them
    # into common units (merge_scaled), so tiny features do not underflow on the way.
    from swarmguard.api.protocol import BehavioralDistributedProtocol
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3)) @ rng.normal(size=(3, 3))
    X[4] += 7.0
    regions = np.array([f"r{i % 3}" for i in range(600)])

    def sharded(data):
        shards = [RegionShard(0.0, feature_dimensions=3) for _ in range(3)]
        rows = [np.arange(k, 600, 3) for k in range(3)]
        summaries = [sh.update(0, r, data[r], regions[r], regions[r]) for sh, r in zip(shards, rows, strict=True)]
        merged = RootAggregator().merge(0, *summaries)
        d2 = np.empty(600)
        for sh, r in zip(shards, rows, strict=True):
            d2[r] = sh.score(1, merged, "auto", 10, "all")["mahalanobis_squared"]
        return d2

    ref = sharded(X)
    got = sharded(X * scale)
    if scale == 2.0**-990:
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    inprocess = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=3), warm_up=10,
                                              score_levels="all")
    expected = inprocess.update_and_score_many(np.arange(600), X * scale, cohorts=regions)["mahalanobis_squared"]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def _sharded_scores(X: np.ndarray, regions: np.ndarray, score_levels: str = "population"):
    names = sorted(set(regions.tolist()))
    shards = [RegionShard(0.0, feature_dimensions=X.shape[1]) for _ in names]
    rows = [np.flatnonzero(regions == r) for r in names]
    summaries = [sh.update(0, r, X[r], regions[r], regions[r]) for sh, r in zip(shards, rows, strict=True)]
    merged = RootAggregator().merge(0, *summaries)
    d2 = np.empty(X.shape[0])
    for sh, r in zip(shards, rows, strict=True):
        d2[r] = sh.score(1, merged, "auto", 10, score_levels)["mahalanobis_squared"]
    return d2, merged


@pytest.mark.parametrize("case", ["zeros beside 1e-300", "1e-300 beside 1e90", "1e-300 beside -1e99 in one feature"])
def test_shards_of_very_different_magnitudes_merge_exactly_and_finitely(case):
    # Reproducer: merge_scaled took, per feature, the largest of the shards' exponents.
    # A shard whose feature is all zeros carries the placeholder exponent 1, so the
    # other shard's 1e-300 values were rescaled by 2**-995 and underflowed: scores
    # differed from in-process by up to 99%. The exponent now comes from the reach of
    # the parts' data (how far they lie from the common shift).
    from swarmguard.api.protocol import BehavioralDistributedProtocol
    rng = np.random.default_rng(31)
    n = 600
    X = rng.normal(size=(n, 3)) @ rng.normal(size=(3, 3))
    X[4] += 6.0
    regions = np.array(["r0", "r1"])[np.arange(n) % 2]
    a, b = regions == "r0", regions == "r1"
    if case == "zeros beside 1e-300":
        X[:, 2] *= 1e-300
        X[b, 2] = 0.0
    elif case == "1e-300 beside 1e90":
        X[a] *= 1e-300
        X[b] *= 1e90
    else:
        X[:, 0] = np.where(a, X[:, 0] * 1e-300, X[:, 0] * 1e80 - 1e99)
    got, merged = _sharded_scores(X, regions)
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    assert np.all(np.isfinite(merged["scaled"]["population"].m2))
    inprocess = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=3), warm_up=10)
    expected = inprocess.update_and_score_many(np.arange(n), X)["mahalanobis_squared"]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_merge_scaled_rescales_parts_whose_exponents_differ_by_more_than_the_normal_range():
    # A part 2**-1100 below the merged units: the factor itself is not a double (not
    # even a subnormal), but the rescaled co-moment is a normal number. ldexp on the
    # difference of exponents applies it in one exact step.
    from swarmguard.engines.shards import merge_scaled, moments_from_state
    shift = np.zeros(1)
    big = moments_from_state(10, shift, np.zeros(1), np.array([[9.0]]), None)
    tiny = moments_from_state(10, shift, np.zeros(1), np.array([[2.0**300]]), None)
    merged, E = merge_scaled([(big, np.array([600])), (tiny, np.array([-500]))])
    assert E.tolist() == [602]                     # reach of the big part: sqrt(9) * 2**600
    assert merged.m2[0, 0] == 9.0 * 2.0**-4 + 2.0**(300 - 2 * 1102)
    # and back to the caller's units in one step each: 2**(-500 - 500) is no double either
    tiny_user = moments_from_state(10, shift, np.zeros(1), np.array([[2.0**300]]), np.array([-500]))
    assert tiny_user.m2[0, 0] == 2.0**-700


@pytest.mark.parametrize("bad", [
    dict(branching_factor=1), dict(feature_dimensions=0), dict(significance_level=2.0), dict(fdr=0.0),
    dict(shrinkage="some"), dict(warm_up=1), dict(score_levels="every"), dict(byzantine_threshold=0.5),
    dict(partition_size=0), dict(prior_probability=1.0), dict(probation_evidence=0), dict(node_id=None),
    dict(consistency_model="bogus"), dict(max_staleness_seconds=-1.0), dict(confidence_decay_rate=-1.0),
    dict(regions=["eu", "eu"]), dict(regions=["e\x00u"]), dict(auto_sync_seconds=0.0),
    dict(scoring="fancy"), dict(scoring=3), dict(window_rounds=0), dict(calibrate="yes"),
    dict(significance_level=0.0, regions=["eu", "eu"]),      # several bad: the same one is named first
    # a bad setting beside a mode Ray refuses: the bad setting's error, as in process
    dict(scoring="tails", byzantine_threshold=0.5), dict(scoring="fused", regions=["eu", "eu"]),
    dict(window_rounds=3, scoring="robust", max_staleness_seconds=-1.0),
    dict(window_rounds=3, calibrate=True, auto_sync_seconds=0.0),
])
def test_both_engines_refuse_the_same_bad_parameters_with_the_same_error_before_ray_starts(bad):
    from swarmguard.api.detector import DistributedBehavioralDetector
    from swarmguard.errors import SwarmGuardError

    errors = []
    for backend in ("inprocess", "ray"):     # Ray's are checked on the driver, before Ray is imported
        with pytest.raises(SwarmGuardError) as caught:
            DistributedBehavioralDetector(backend=backend, **bad)
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1]


def test_ray_refuses_a_sketch_scoring_mode_before_ray_starts():
    # The shards' tail sketches are not merged on the driver yet (robust scoring is: below).
    from swarmguard.errors import InvalidInputError
    code = (
        "import sys\n"
        "import swarmguard as sg\n"
        "from swarmguard.errors import InvalidInputError\n"
        "try:\n"
        "    sg.DistributedBehavioralDetector(backend='ray', scoring='tails')\n"
        "except InvalidInputError as exc:\n"
        "    assert 'ray' in str(exc) and 'tails' in str(exc); print('refused')\n"
        "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr
    with pytest.raises(InvalidInputError, match="scoring"):
        make_detector("ray", scoring="fancy")


@pytest.mark.parametrize("score_levels", ["population", "all"])
def test_region_shards_score_robust_as_in_process_without_ray(score_levels):
    # The Ray engine's round for scoring="robust" on plain shard objects: each shard updates
    # its tree, the root merges the full moments, each shard judges its rows against them
    # (the trimming rule) and counts the kept ones, the root merges the trimmed moments, the
    # shards score against those. Same kept members, distances and p-values as in process.
    from swarmguard.api.detector import DistributedBehavioralDetector
    rng = np.random.default_rng(1)
    n, d = 600, 3
    X = rng.normal(size=(n, d))
    X[:30] += 6.0                       # a masking cluster
    ids = np.arange(n)
    regions = np.array(["eu", "us", "ap"])[ids % 3]
    det = DistributedBehavioralDetector(feature_dimensions=d, scoring="robust", score_levels=score_levels,
                                        clock=lambda: 0.0)
    shards = [RegionShard(0.0, feature_dimensions=d, trimmed=True) for _ in range(3)]
    root = RootAggregator()
    for _ in range(3):
        Xr = X + rng.normal(size=X.shape) * 0.1
        want = det.protocol.update_and_score_many(ids, Xr, cohorts=regions)
        parts = [np.flatnonzero(ids % 3 == k) for k in range(3)]
        sums = [sh.update(sh.seq, ids[r], Xr[r], regions[r], regions[r]) for sh, r in zip(shards, parts, strict=True)]
        merged = root.merge(0, *sums)
        trimmed = root.merge_trimmed(0, *[sh.judge(sh.seq, merged) for sh in shards])
        assert trimmed["population"].count == det.tree.get_trimmed_statistics()["count"] < n - 20
        for sh, r in zip(shards, parts, strict=True):
            kept = sh.tree.trimmed_flags(sh.tree.slots_of(ids[r])[0])
            np.testing.assert_array_equal(kept, det.tree.trimmed_flags(det.tree.slots_of(ids[r])[0]))
            got = sh.score(sh.seq, merged, "auto", det.protocol.warm_up, score_levels, trimmed)
            np.testing.assert_allclose(got["mahalanobis_squared"], want["mahalanobis_squared"][r], rtol=1e-12)
            np.testing.assert_allclose(got["decision_p_value"], want["decision_p_value"][r], rtol=1e-10)


def test_flags_decided_elsewhere_are_refused_on_a_tree_that_judges_itself():
    from swarmguard.errors import InvalidInputError
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many([1, 2, 3], np.eye(3)[:, :2])
    with pytest.raises(InvalidInputError, match="judge"):
        tree.set_trimmed_flags(np.array([0]), np.array([True]))
    tree.judge_trimmed_elsewhere()
    slots, _ = tree.slots_of([1, 2, 3])
    assert tree.trimmed_flags(slots).tolist() == [False, False, False]     # not judged yet
    with pytest.raises(InvalidInputError):
        tree.set_trimmed_flags(slots, np.array([True, False]))
    tree.set_trimmed_flags(slots, np.array([True, False, True]))
    assert tree.get_trimmed_statistics()["count"] == 2
    np.testing.assert_array_equal(tree.get_trimmed_statistics()["mean"], [0.5, 0.0])
    tree.update_many([3], [[5.0, 5.0]])         # a write leaves the member out until flagged again
    assert tree.trimmed_flags(slots).tolist() == [True, False, False]


@pytest.mark.parametrize("slots, kept, error", [
    (np.array([0, 99]), np.array([True, True]), "holds no member"),      # past the tree's slots
    (np.array([-1]), np.array([True]), "holds no member"),               # no wrapping to the last slot
    (np.array([0.0]), np.array([True]), "integer"),
    (np.array([0, 0]), np.array([True, True]), "twice"),                 # one member counted twice
    (np.array([[0]]), np.array([[True]]), "1-D"),
    (np.array([0]), np.array([1]), "boolean"),
])
def test_bad_trimmed_flags_are_typed_errors_that_change_nothing(slots, kept, error):
    from swarmguard.errors import InvalidInputError, SwarmGuardError
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.judge_trimmed_elsewhere()
    tree.update_many([1, 2, 3], [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    good, _ = tree.slots_of([1, 2, 3])
    tree.set_trimmed_flags(good, np.array([True, False, True]))
    before = tree.get_trimmed_statistics()
    with pytest.raises(InvalidInputError, match=error) as caught:
        tree.set_trimmed_flags(slots, kept)
    assert isinstance(caught.value, SwarmGuardError)
    after = tree.get_trimmed_statistics()
    assert after["count"] == before["count"] == 2
    np.testing.assert_array_equal(after["mean"], before["mean"])
    assert tree.trimmed_flags(good).tolist() == [True, False, True]
    if error not in ("twice", "boolean"):      # the readers refuse the same slots
        with pytest.raises(InvalidInputError, match=error):
            tree.trimmed_flags(slots)


def test_trimmed_flags_set_elsewhere_keep_no_member_outside_the_window():
    from swarmguard.errors import InvalidInputError
    tree = HierarchicalStatisticalTree(feature_dimensions=2, window_rounds=1)
    tree.judge_trimmed_elsewhere()
    tree.update_many([1, 2, 3, 4], [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
    tree.update_many([5], [[1.0, 1.0]])             # a new round: 1-4 leave the one-round window
    slots, _ = tree.slots_of([1, 5])
    assert tree.window_flags(slots).tolist() == [False, True]
    with pytest.raises(InvalidInputError, match="outside the window"):
        tree.set_trimmed_flags(slots, np.array([True, True]))
    assert tree.trimmed_flags(slots).tolist() == [False, False]     # nothing changed
    tree.set_trimmed_flags(slots, np.array([False, True]))
    assert tree.get_trimmed_statistics()["count"] == 1


@pytest.mark.parametrize("score_levels", ["population", "all"])
def test_calibration_of_one_shard_pass_is_the_in_process_one_without_ray(score_levels):
    # The Ray engine's calibrated round (calibrate=True, the default mode's relative null) on
    # plain shard objects: the shards score once, without the null; the driver takes the median
    # distance of every shard's rows; each shard calibrates the rows it kept and recombines the
    # levels (swarmguard.engines.score_calibration). Same p-values and decision p-values as the
    # in-process protocol against the same null (a copy taken before the round admits its scores).
    from swarmguard.api.detector import DistributedBehavioralDetector
    from swarmguard.engines.score_calibration import recombine_levels
    from swarmguard.structures.score_null import SCALE_ROWS, ScoreNull
    rng = np.random.default_rng(3)
    n, d = 1200, 3          # over the null's 1000: round 1 warms it up
    ids = np.arange(n)
    regions = np.array(["eu", "us", "ap"])[ids % 3]
    cohorts = [(str(r), f"c{i % 2}") for i, r in enumerate(regions)]    # two levels below the population
    det = DistributedBehavioralDetector(feature_dimensions=d, calibrate=True, score_levels=score_levels,
                                        warm_up=100, clock=lambda: 0.0)
    shards = [RegionShard(0.0, feature_dimensions=d) for _ in range(3)]
    parts = [np.flatnonzero(ids % 3 == k) for k in range(3)]
    root = RootAggregator()
    calibrated_rounds = 0
    for _ in range(3):
        X = rng.standard_t(3, size=(n, d))
        X[:5] += 20.0
        before = ScoreNull.from_bytes(det.protocol.null.to_bytes())     # the null the round is tested against
        want = det.protocol.update_and_score_many(ids, X, cohorts=cohorts)
        sums = [sh.update(sh.seq, ids[r], X[r], [cohorts[i] for i in r.tolist()], regions[r])
                for sh, r in zip(shards, parts, strict=True)]
        merged = root.merge(0, *sums)
        got = [sh.score(sh.seq, merged, "auto", det.protocol.warm_up, score_levels) for sh in shards]
        for g in got:       # the shards' own combination is the driver's rule, bit for bit
            cohort_min = g["cohort_p_min"] if score_levels == "all" else None
            np.testing.assert_array_equal(recombine_levels(g["p_value"], g["population_warm"], cohort_min,
                                                           g["levels"]), g["decision_p_value"])
        d2 = np.empty(n)
        for g, r in zip(got, parts, strict=True):
            d2[r] = g["mahalanobis_squared"]
        scale = before.scale_of(d2)         # the driver's: the median of every shard's rows
        assert n >= SCALE_ROWS
        assert scale == pytest.approx(float(np.median(want["mahalanobis_squared"])), rel=1e-12)
        assert scale == pytest.approx(want["null_scale"], rel=1e-12)
        np.testing.assert_allclose(d2, want["null_score"], rtol=1e-12)
        if not before.warm:
            assert "parametric_p_value" not in want
            continue
        calibrated_rounds += 1
        for sh, g, r in zip(shards, got, parts, strict=True):
            cal = sh.calibrate(sh.seq, "score", before.to_bytes(), scale)
            np.testing.assert_allclose(g["p_value"], want["parametric_p_value"][r], rtol=1e-10)
            np.testing.assert_allclose(cal["p_value"], want["p_value"][r], rtol=1e-10)
            np.testing.assert_allclose(cal["decision_p_value"], want["decision_p_value"][r], rtol=1e-10)
            assert not np.allclose(cal["p_value"], g["p_value"], rtol=1e-3)       # the null's, not χ²'s
            if score_levels == "all":       # the cohorts take part: not the population's p-value alone
                assert (cal["decision_p_value"] != np.minimum(1.0, cal["p_value"] * g["levels"])).any()
            # a shard that lost the pass's scores (a restarted actor) scores again: the same answer
            sh._scored = None
            again = sh.calibrate(sh.seq, "score", before.to_bytes(), scale, merged, "auto", det.protocol.warm_up,
                                 score_levels)
            np.testing.assert_array_equal(again["decision_p_value"], cal["decision_p_value"])
    assert calibrated_rounds == 2           # round 1 warms the null up, rounds 2 and 3 are tested against it
