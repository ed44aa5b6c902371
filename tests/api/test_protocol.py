import asyncio
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from swarmguard import (
    BehavioralData,
    BehavioralDistributedProtocol,
    DimensionMismatchError,
    EmptyInputError,
    HierarchicalStatisticalTree,
    InvalidInputError,
    NonFiniteError,
    SwarmGuardError,
)


def population(n=3000, d=4, seed=0, cohorts=None):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    X = rng.normal(size=(n, d)) @ A + 50.0
    tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=d)
    tree.update_many(np.arange(n), X, cohorts=cohorts)
    return tree, X, rng


def brute_force_loo(X, i, shrinkage):
    """Score row i against all other rows, from scratch, with the documented regulariser."""
    n, d = X.shape
    others = np.delete(X, i, axis=0)
    cov = np.cov(others.T)
    target = np.var(X, axis=0, ddof=1)          # the population's variances (agent included)
    floored = np.maximum(target, 1e-12 * target.mean())
    reg = (1 - shrinkage) * cov + np.diag(shrinkage * target + 1e-9 * floored)
    diff = X[i] - others.mean(axis=0)
    return float(diff @ np.linalg.solve(reg, diff))


@pytest.mark.parametrize("shrinkage", [0.0, 0.2, 1.0])
def test_leave_one_out_distance_matches_brute_force(shrinkage):
    tree, X, _ = population(n=400)
    proto = BehavioralDistributedProtocol(tree, shrinkage=shrinkage, warm_up=10)
    X[7] = X[7] + 9.0
    info = proto.update_agent_behavior_sync(BehavioralData(7, X[7]))
    expected = brute_force_loo(X, 7, shrinkage)
    assert info["mahalanobis_squared"] == pytest.approx(expected, rel=1e-9)
    assert info["mahalanobis_distance"] == pytest.approx(np.sqrt(expected), rel=1e-9)
    assert info["p_value"] == pytest.approx(stats.chi2.sf(expected, X.shape[1]), rel=1e-7)
    assert np.sum(info["feature_contributions"]) == pytest.approx(info["mahalanobis_squared"], rel=1e-9)
    batch = proto.score_many([7, 8])
    assert batch["mahalanobis_squared"][0] == pytest.approx(expected, rel=1e-9)
    assert batch["mahalanobis_squared"][1] == pytest.approx(brute_force_loo(X, 8, shrinkage), rel=1e-9)


def test_contributions_point_at_the_feature_that_moved():
    tree, X, _ = population(n=2000, d=5)
    proto = BehavioralDistributedProtocol(tree)
    x = X[3].copy()
    x[2] += 40 * X[:, 2].std()
    info = proto.update_agent_behavior_sync({"agent_id": 3, "features": x})
    shares = info["feature_contributions"]
    assert info["is_anomaly"]
    assert int(np.argmax(shares)) == 2
    assert shares.sum() == pytest.approx(info["mahalanobis_squared"], rel=1e-9)


def test_guide_snippet_runs_as_written():
    from hierarchical_aggregation_protocol import (
        BehavioralDistributedProtocol,
        HierarchicalStatisticalTree,
    )

    rng = np.random.default_rng(5)
    found = []

    def your_agent_iterator():
        for i in range(3000):
            x = rng.normal(size=10)
            if i in (2500, 2700):
                x = x + 25.0
            yield i, BehavioralData(agent_id=i, features=x)

    def handle_anomaly(agent_id, anomaly_info):
        found.append(agent_id)

    async def main():
        # Initialize with your parameters
        tree = HierarchicalStatisticalTree(
            branching_factor=10,  # Optimal for 1M agents
            feature_dimensions=10  # Your behavioral features
        )

        protocol = BehavioralDistributedProtocol(tree)

        # Your existing agent loop becomes:
        for agent_id, behavioral_data in your_agent_iterator():
            # O(log n) update instead of O(n²)
            anomaly_info = await protocol.update_agent_behavior(behavioral_data)

            if anomaly_info['is_anomaly']:
                # Trigger your existing response
                handle_anomaly(agent_id, anomaly_info)

        # Get global statistics instantly
        return tree.get_global_statistics()

    global_stats = asyncio.run(main())
    assert global_stats["count"] == 3000
    assert 2500 in found and 2700 in found
    assert len(found) <= 2 + 10   # alpha 1e-3 over ~2000 scored after warm-up


def test_warm_up_flags_nobody_until_the_population_is_big_enough():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    proto = BehavioralDistributedProtocol(tree, warm_up=50)
    rng = np.random.default_rng(0)
    flags = []
    for i in range(80):
        x = rng.normal(size=2) if i != 30 else np.array([1e3, -1e3])
        info = proto.update_agent_behavior_sync(BehavioralData(i, x))
        flags.append(info["is_anomaly"])
        assert info["warming_up"] == (i + 1 < 50)
        assert np.isfinite(info["mahalanobis_squared"])
    assert not any(flags[:49])
    assert BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=10)).warm_up <= 1000


def test_false_alarm_rate_on_a_clean_gaussian_population_is_well_under_half_a_percent():
    tree, X, rng = population(n=20_000, d=10, seed=11)
    proto = BehavioralDistributedProtocol(tree)
    flagged = 0
    k = 5000
    for a in rng.integers(0, 20_000, size=k):
        x = rng.normal(size=10) @ np.linalg.cholesky(np.cov(X.T)).T + X.mean(axis=0)
        flagged += proto.update_agent_behavior_sync(BehavioralData(int(a), x))["is_anomaly"]
    assert flagged / k < 0.005
    batch = proto.score_many()
    assert batch["is_anomaly"].mean() < 0.005


def test_constant_and_collinear_features_stay_finite():
    rng = np.random.default_rng(1)
    n = 500
    base = rng.normal(size=n)
    X = np.column_stack([base, 2 * base, np.full(n, 3.0), rng.normal(size=n)])
    tree = HierarchicalStatisticalTree(feature_dimensions=4)
    tree.update_many(np.arange(n), X)
    for shrinkage in (0.0, "auto", 0.5):
        proto = BehavioralDistributedProtocol(tree, shrinkage=shrinkage, warm_up=10)
        res = proto.score_many(explain=True)
        assert np.isfinite(res["mahalanobis_squared"]).all() and np.isfinite(res["p_value"]).all()
        assert np.isfinite(res["feature_contributions"]).all()
        odd = proto.update_agent_behavior_sync(BehavioralData(0, [0.0, 0.0, 3.5, 0.0]))
        assert np.isfinite(odd["mahalanobis_squared"]) and odd["is_anomaly"]
        tree.update_agent(0, X[0])


def test_fdr_control_matches_scipy_benjamini_hochberg():
    tree, X, rng = population(n=5000, d=3, seed=2)
    out = rng.choice(5000, size=40, replace=False)
    X[out] += rng.normal(scale=6.0, size=(40, 3))
    proto = BehavioralDistributedProtocol(tree, fdr=0.05)
    res = proto.update_and_score_many(np.arange(5000), X)
    adjusted = stats.false_discovery_control(res["p_value"], method="bh")
    np.testing.assert_array_equal(res["is_anomaly"], adjusted <= 0.05)
    plain = proto.score_many(fdr=None)
    assert plain["method"].startswith("alpha")
    np.testing.assert_array_equal(plain["is_anomaly"], plain["p_value"] < 1e-3)
    hits = set(np.flatnonzero(res["is_anomaly"]).tolist())
    assert len(hits & set(out.tolist())) >= 30
    assert len(hits - set(out.tolist())) <= 5


def test_cohort_levels_catch_an_agent_ordinary_for_the_planet_but_odd_for_its_cluster():
    rng = np.random.default_rng(3)
    n = 3000
    regions = np.array(["north", "south", "east"])[np.arange(n) % 3]
    centres = {"north": -6.0, "south": 0.0, "east": 6.0}
    X = np.array([rng.normal(loc=centres[r], size=2) for r in regions])
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(np.arange(n), X, cohorts=regions)
    flat = BehavioralDistributedProtocol(tree)
    deep = BehavioralDistributedProtocol(tree, score_levels="all")
    # agent 0 lives in the north cluster but behaves like the east cluster
    x = np.array([6.0, 6.0])
    info_flat = flat.update_agent_behavior_sync(BehavioralData(0, x))
    info_deep = deep.score_agent_sync(0)
    assert not info_flat["is_anomaly"]
    assert info_deep["is_anomaly"]
    assert [lv["cohort"] for lv in info_deep["levels"]] == [(), ("north",)]
    assert info_deep["levels"][1]["mahalanobis_squared"] > 20 * info_deep["levels"][0]["mahalanobis_squared"]
    batch = deep.score_many([0, 1, 2], fdr=None)
    assert batch["is_anomaly"][0] and ("north",) in batch["levels"]


def test_sync_twin_mapping_and_object_inputs_agree():
    tree, X, _ = population(n=500)
    proto = BehavioralDistributedProtocol(tree, warm_up=10)
    x = X[1] + 3
    a = asyncio.run(proto.update_agent_behavior(BehavioralData(1, x)))
    b = proto.update_agent_behavior_sync({"agent_id": 1, "features": x})
    c = proto.update_agent_behavior_sync(SimpleNamespace(agent_id=1, features=list(x)))
    d = asyncio.run(proto.score_agent(1))
    for other in (b, c, d):
        assert other["mahalanobis_squared"] == pytest.approx(a["mahalanobis_squared"], rel=1e-12)
        assert other["is_anomaly"] == a["is_anomaly"]


def test_region_places_agents_under_cohorts():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    proto = BehavioralDistributedProtocol(tree)
    info = proto.update_agent_behavior_sync(BehavioralData("a", [1.0, 2.0], region="eu-west"))
    assert info["cohort"] == ("eu-west",)
    assert tree.get_cohort_statistics("eu-west")["count"] == 1


@pytest.mark.parametrize(
    "data, error",
    [
        ({"agent_id": 1}, InvalidInputError),
        ({"features": [1.0] * 4}, InvalidInputError),
        (BehavioralData(1, [1.0, 2.0]), DimensionMismatchError),
        (BehavioralData(1, [1.0, np.nan, 0.0, 0.0]), NonFiniteError),
        (BehavioralData(1, [1.0] * 4, region=5), InvalidInputError),
        (BehavioralData(None, [1.0] * 4), InvalidInputError),
    ],
)
def test_bad_observations_are_rejected_and_change_nothing(data, error):
    tree, X, _ = population(n=100)
    proto = BehavioralDistributedProtocol(tree)
    before = tree.to_dict()
    with pytest.raises(error) as info:
        proto.update_agent_behavior_sync(data)
    assert isinstance(info.value, SwarmGuardError) and isinstance(info.value, ValueError)
    after = tree.to_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


@pytest.mark.parametrize(
    "kwargs",
    [{"significance_level": 0}, {"significance_level": 1.5}, {"fdr": 0.0}, {"shrinkage": 2.0},
     {"shrinkage": "lots"}, {"warm_up": 1}, {"score_levels": "some"}],
)
def test_bad_protocol_arguments(kwargs):
    with pytest.raises(SwarmGuardError):
        BehavioralDistributedProtocol(HierarchicalStatisticalTree(), **kwargs)
    with pytest.raises(SwarmGuardError):
        BehavioralDistributedProtocol(object())


def test_batch_errors_leave_the_tree_unchanged():
    tree, X, _ = population(n=100)
    proto = BehavioralDistributedProtocol(tree)
    before = tree.to_dict()
    with pytest.raises(SwarmGuardError):
        proto.update_and_score_many(np.arange(100), X, fdr=2.0)
    with pytest.raises(KeyError):
        proto.score_many([1, 999])
    after = tree.to_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


# ---------------------------------------------------------------------- ids: unknown, mixed, NUL

from swarmguard import InvalidTypeError, UnknownAgentError  # noqa: E402


@pytest.mark.parametrize("probe, error", [
    ([0, "zz"], UnknownAgentError), (["zz", 0], UnknownAgentError), (np.array(["zz"]), UnknownAgentError),
    ([0, 10**30], UnknownAgentError), ([0, 1.5], InvalidTypeError), ([[0]], InvalidTypeError),
    (np.array([True]), InvalidTypeError),
])
def test_score_many_with_mixed_or_unknown_ids_is_typed(probe, error):
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(np.arange(50), np.random.default_rng(0).normal(size=(50, 2)))
    protocol = BehavioralDistributedProtocol(tree, warm_up=10)
    with pytest.raises(error):
        protocol.score_many(probe)


def test_score_many_on_string_ids_with_an_int_probe_is_unknown():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many([f"a{i}" for i in range(20)], np.random.default_rng(0).normal(size=(20, 2)))
    protocol = BehavioralDistributedProtocol(tree, warm_up=10)
    with pytest.raises(UnknownAgentError, match="'zz'"):
        protocol.score_many(["a1", "zz"])
    with pytest.raises(UnknownAgentError):
        protocol.score_many([0])
    with pytest.raises(UnknownAgentError):
        protocol.score_agent_sync("zz")


def test_update_agent_behavior_refuses_a_nul_in_the_id_and_changes_nothing():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(["a", "b", "c"], np.eye(3, 2))
    protocol = BehavioralDistributedProtocol(tree, warm_up=3)
    version = tree.version
    with pytest.raises(InvalidInputError, match="NUL"):
        protocol.update_agent_behavior_sync(BehavioralData("a\x00", [5.0, 5.0]))
    with pytest.raises(InvalidInputError, match="NUL"):
        protocol.update_and_score_many(["d", "a\x00"], [[1.0, 1.0], [5.0, 5.0]])
    assert tree.version == version and len(tree) == 3
    np.testing.assert_array_equal(tree.get_agent_features("a"), [1.0, 0.0])


# ---------------------------------------------------------------- issue 10: scale invariance, 1e-300 to 1e100
from tests._exact import exact_loo_squared_distance  # noqa: E402


def _correlated(n=240, d=4, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0
    X[5] += 6.0                                # one clear outlier
    return X


def _run_both_paths(X, new_rows):
    """Batch scores of X, then per-item scores of replacements and newcomers, then a batch re-score."""
    n = X.shape[0]
    tree = HierarchicalStatisticalTree(feature_dimensions=X.shape[1])
    proto = BehavioralDistributedProtocol(tree, warm_up=10)
    batch = proto.update_and_score_many(np.arange(n), X, explain=True)
    items = [proto.update_agent_behavior_sync(BehavioralData(agent, row))
             for agent, row in zip([5, 17, n, n + 1, 17], new_rows, strict=True)]
    again = proto.score_many()
    stats_ = tree.get_global_statistics()
    return batch, items, again, stats_


@pytest.mark.parametrize("k", [-990, -538, -300, -1, 1, 100, 320])
def test_scores_are_bitwise_equal_for_the_same_data_times_a_power_of_two(k):
    X = _correlated()
    new_rows = X[[5, 17, 0, 1, 2]] + np.array([[1.0, -2.0, 0.5, 3.0]])
    ref_batch, ref_items, ref_again, ref_stats = _run_both_paths(X, new_rows)
    batch, items, again, stats_ = _run_both_paths(np.ldexp(X, k), np.ldexp(new_rows, k))
    for key in ("mahalanobis_squared", "p_value", "feature_contributions"):
        np.testing.assert_array_equal(batch[key], ref_batch[key])
    for key in ("mahalanobis_squared", "p_value"):
        np.testing.assert_array_equal(again[key], ref_again[key])
    assert batch["is_anomaly"][5] and batch["is_anomaly"].tolist() == ref_batch["is_anomaly"].tolist()
    for got, ref in zip(items, ref_items, strict=True):
        assert got["mahalanobis_squared"] == ref["mahalanobis_squared"] and got["p_value"] == ref["p_value"]
        np.testing.assert_array_equal(got["feature_contributions"], ref["feature_contributions"])
    # statistics come back in the caller's units (2**k exact unless they underflow: 2**-990 squared does)
    np.testing.assert_array_equal(stats_["mean"], np.ldexp(ref_stats["mean"], k))
    if 2 * k > -1000:
        np.testing.assert_array_equal(stats_["covariance"], np.ldexp(ref_stats["covariance"], 2 * k))


@pytest.mark.parametrize("scale", [1e-300, 1e-250, 1e-162, 1e-100, 1e-20, 1e20, 1e60, 1e98])
def test_scores_are_scale_invariant_for_powers_of_ten_on_both_paths(scale):
    # Reproducer: features near 1e-162 raised an untyped FloatingPointError after
    # the tree changed; near 1e-300 every score came out 0 (the squares underflowed).
    X = _correlated()
    new_rows = X[[5, 17, 0, 1, 2]] + np.array([[1.0, -2.0, 0.5, 3.0]])
    ref_batch, ref_items, ref_again, ref_stats = _run_both_paths(X, new_rows)
    batch, items, again, stats_ = _run_both_paths(X * scale, new_rows * scale)
    for key in ("mahalanobis_squared", "p_value"):
        np.testing.assert_allclose(batch[key], ref_batch[key], rtol=1e-9)
        np.testing.assert_allclose(again[key], ref_again[key], rtol=1e-9)
    assert np.all(batch["mahalanobis_squared"] > 0)
    for got, ref in zip(items, ref_items, strict=True):
        assert got["mahalanobis_squared"] == pytest.approx(ref["mahalanobis_squared"], rel=1e-9)
        assert got["p_value"] == pytest.approx(ref["p_value"], rel=1e-9)
    assert batch["is_anomaly"][5] and items[0]["is_anomaly"]
    # statistics in the caller's units (a covariance below 1e-308 may underflow: only scores must not)
    np.testing.assert_allclose(stats_["mean"], ref_stats["mean"] * scale, rtol=1e-12)
    if scale >= 1e-150:
        np.testing.assert_allclose(stats_["covariance"], ref_stats["covariance"] * scale**2, rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-300, 1e-162, 1.0, 1e98])
def test_tiny_and_huge_features_score_as_exact_arithmetic_does(scale):
    X = _correlated(n=40, d=3, seed=5) * scale
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    proto = BehavioralDistributedProtocol(tree, warm_up=10)
    batch = proto.update_and_score_many(np.arange(40), X)
    lam = 3 / 40                                      # "auto" shrinkage: d / n
    for i in (0, 5, 39):
        exact = exact_loo_squared_distance(X, i, lam)
        assert batch["mahalanobis_squared"][i] == pytest.approx(exact, rel=1e-9)
        assert proto.score_agent_sync(i)["mahalanobis_squared"] == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("path", ["batch", "per item"])
def test_a_population_whose_magnitude_changes_by_hundreds_of_orders_is_rescored_correctly(path):
    # The units are chosen from the first data (2**300 ≈ 2e90) and chosen again, by a
    # rebuild, when the spread falls to 2**-960 ≈ 1e-289 around the same centre, and
    # again when the large data come back. The rows are symmetric multiples of 2**-10,
    # so every mean is exactly 0: the shift stays at the centre and no re-anchoring
    # (which also chooses the units) hides a stale unit.
    Y = np.round((_correlated(n=100, d=3, seed=7) - 3.0) * 1024.0) / 1024.0
    X = np.concatenate([Y, -Y])
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    proto = BehavioralDistributedProtocol(tree, warm_up=10)
    for k in (300, -960, 300):
        if path == "batch" or k == 300:
            proto.update_and_score_many(np.arange(200), np.ldexp(X, k))
        else:
            for i in range(200):
                proto.update_agent_behavior_sync(BehavioralData(i, np.ldexp(X[i], k)))
        assert tree.get_global_statistics()["mean"].tolist() == [0.0, 0.0, 0.0]
        fresh = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=3), warm_up=10)
        expected = fresh.update_and_score_many(np.arange(200), X)["mahalanobis_squared"]
        got = proto.score_many()["mahalanobis_squared"]
        assert np.all(got > 0)
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        std = tree.get_global_statistics()["std"]     # from the internal units: no underflow
        np.testing.assert_allclose(np.ldexp(std, -k), X.std(axis=0, ddof=1), rtol=1e-9)


def test_to_dict_round_trip_keeps_tiny_features_scoring():
    X = _correlated(n=120, d=4, seed=9) * 1e-300
    tree = HierarchicalStatisticalTree(feature_dimensions=4)
    tree.update_many(np.arange(120), X)
    back = HierarchicalStatisticalTree.from_dict(tree.to_dict())
    np.testing.assert_array_equal(back.get_agent_features(7), X[7])
    a = BehavioralDistributedProtocol(tree, warm_up=10).score_many()["mahalanobis_squared"]
    b = BehavioralDistributedProtocol(back, warm_up=10).score_many()["mahalanobis_squared"]
    assert np.all(a > 0)
    np.testing.assert_array_equal(a, b)


def test_four_threads_scoring_with_one_protocol_give_the_serial_tree_and_valid_scores():
    """update_and_score_many from 4 threads (each its own agents), score_many and per-item
    updates in between: no exceptions, every reply scores its own rows, and the tree ends
    with each agent's last vector and exact statistics (math.fsum means)."""
    import math

    from tests._threads import run_threads
    rng = np.random.default_rng(31)
    plans = [(t, np.arange(10_000 * (t + 1), 10_000 * (t + 1) + 200), rng.normal(size=(3, 200, 4)))
             for t in range(4)]

    def work(protocol, plan):
        t, ids, X = plan
        replies = []
        for k in range(X.shape[0]):
            for j in range(0, ids.size, 20):         # small batches: many calls, many interleavings
                part = slice(j, j + 20)
                out = protocol.update_and_score_many(ids[part], X[k, part], cohorts=f"c{t}")
                assert out["agent_ids"].tolist() == ids[part].tolist()
                assert np.isfinite(out["mahalanobis_squared"]).all()
                replies.append(out["population_count"])
            protocol.score_many(ids[:10])
            info = protocol.update_agent_behavior_sync(BehavioralData(int(ids[0]), X[k, 0]))
            assert info["agent_id"] == int(ids[0])
            try:
                protocol.update_and_score_many(ids, X[k] * np.nan, cohorts=f"c{t}")
            except InvalidInputError:
                replies.append("refused")
        return replies

    def fresh():
        tree = HierarchicalStatisticalTree(feature_dimensions=4)
        tree.update_many(np.arange(500), rng_base.normal(size=(500, 4)))
        return BehavioralDistributedProtocol(tree, warm_up=100)

    rng_base = np.random.default_rng(32)
    serial = fresh()
    rng_base = np.random.default_rng(32)
    threaded = fresh()
    for p in plans:
        work(serial, p)
    replies = run_threads([lambda p=p: work(threaded, p) for p in plans])
    assert all(r.count("refused") == 3 and all(c == "refused" or 520 <= c <= 1300 for c in r) for r in replies)
    rows = np.concatenate([np.random.default_rng(32).normal(size=(500, 4))] + [X[-1] for _, _, X in plans])
    for protocol in (serial, threaded):
        tree = protocol.tree
        assert len(tree) == 1300
        for _, ids, X in plans:
            np.testing.assert_array_equal(tree.get_agent_features(int(ids[7])), X[-1, 7])
        stats = tree.get_global_statistics()
        fsum_mean = [math.fsum(col) / len(rows) for col in rows.T]
        np.testing.assert_allclose(stats["mean"], fsum_mean, rtol=1e-14, atol=1e-15)
    a, b = serial.score_many(np.arange(500)), threaded.score_many(np.arange(500))
    np.testing.assert_allclose(b["mahalanobis_squared"], a["mahalanobis_squared"], rtol=1e-12)


@pytest.mark.parametrize("other", ["tree.update_many", "protocol.update_and_score_many"])
def test_a_protocol_call_holds_its_lock_and_its_trees_for_the_whole_update_and_score(other):
    """Deterministic: while one thread is between the update and the scoring of its batch
    (held there on purpose), another thread's write, to the tree directly or through the
    protocol, waits until the first call is done; the first call scores the tree it wrote."""
    import threading
    import time

    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    tree.update_many(np.arange(300), np.random.default_rng(0).normal(size=(300, 3)))
    protocol = BehavioralDistributedProtocol(tree, warm_up=100)
    inside, events = threading.Event(), []
    real = protocol._score_slots

    def slow_score(*args, **kwargs):
        version = tree.version
        inside.set()
        time.sleep(0.3)                        # the other thread tries to write now
        events.append(("scored", tree.version == version))
        return real(*args, **kwargs)

    protocol._score_slots = slow_score
    first = threading.Thread(target=lambda: protocol.update_and_score_many([1000, 1001], np.ones((2, 3))))
    first.start()
    assert inside.wait(10)
    write = (lambda: tree.update_many([2000], np.zeros((1, 3)))) if other == "tree.update_many" else (
        lambda: BehavioralDistributedProtocol.update_and_score_many(protocol, [2000], np.zeros((1, 3))))
    protocol._score_slots = real               # the second call scores at full speed
    second = threading.Thread(target=lambda: (write(), events.append(("wrote", True))))
    second.start()
    first.join(10)
    second.join(10)
    assert events == [("scored", True), ("wrote", True)]
    assert len(tree) == 303


# ------------------------------ batch inputs: mixed ids, Decimal features, empty batches


def test_update_and_score_many_accepts_mixed_ids_and_decimal_features():
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    proto = BehavioralDistributedProtocol(t, warm_up=3)
    t.update_many(np.arange(10), np.random.default_rng(0).normal(size=(10, 2)))
    res = proto.update_and_score_many([100, "x", ("t", 1)], np.ones((3, 2)))
    assert res["agent_ids"].tolist() == [100, "x", ("t", 1)]
    res = proto.update_and_score_many([1, 2], [[Decimal("1.5"), Decimal(2)], [Decimal(3), Decimal(4)]])
    assert np.isfinite(res["mahalanobis_squared"]).all()
    assert len(t) == 13


def test_empty_batches_are_rejected():
    t = HierarchicalStatisticalTree(feature_dimensions=1)
    t.update_many([1, 2, 3], [[0.0], [1.0], [2.0]])
    with pytest.raises(EmptyInputError):
        BehavioralDistributedProtocol(t).score_many([])
    with pytest.raises(SwarmGuardError):
        HierarchicalStatisticalTree(branching_factor=10**6)


# ------- leave-one-out scores exact at large offsets; cohort levels without false alarms


@pytest.mark.parametrize("offset", [0.0, 1e9, -1e12])
def test_leave_one_out_is_exact_at_large_offsets(offset):
    rng = np.random.default_rng(2)
    X = offset + rng.normal(scale=1e-2, size=(30, 3)) @ rng.normal(size=(3, 3))
    t = HierarchicalStatisticalTree(feature_dimensions=3)
    t.update_many(np.arange(30), X)
    proto = BehavioralDistributedProtocol(t, shrinkage=0.0, warm_up=3)
    X[4] = X[4] + 0.05
    info = proto.update_agent_behavior_sync(BehavioralData(4, X[4]))
    exact = exact_loo_squared_distance(X, 4, shrinkage=0.0)
    assert info["mahalanobis_squared"] == pytest.approx(exact, rel=1e-8)
    batch = proto.score_many([4, 7])
    assert batch["mahalanobis_squared"][0] == pytest.approx(exact, rel=1e-8)
    assert batch["mahalanobis_squared"][1] == pytest.approx(exact_loo_squared_distance(X, 7, 0.0), rel=1e-8)


def test_small_cohorts_do_not_raise_false_alarms_at_the_cohort_level():
    rng = np.random.default_rng(3)
    n = 20_000
    X = rng.normal(size=(n, 4))
    clusters = np.array([f"c{i}" for i in range(1000)])[np.arange(n) % 1000]   # 20 agents each
    t = HierarchicalStatisticalTree(feature_dimensions=4)
    t.update_many(np.arange(n), X, cohorts=clusters)
    res = BehavioralDistributedProtocol(t, score_levels="all").score_many(fdr=None)
    assert res["is_anomaly"].mean() < 0.003          # the population level alone: ~0.1 %
    assert all(lv["warming_up"] for path, lv in res["levels"].items() if path)


def test_a_per_item_change_is_scored_against_its_cohorts_current_moments():
    # The per-item path changes the root at once and the nodes below it only at a flush:
    # the cohort level must see the change (and an agent moving in) in the very next
    # score, each time, also after an earlier read kept the cohort's node cover.
    rng = np.random.default_rng(41)
    X = 5.0 + rng.normal(size=(80, 3)) @ rng.normal(size=(3, 3))
    t = HierarchicalStatisticalTree(branching_factor=4, feature_dimensions=3)
    t.update_many(np.arange(40), X[:40], cohorts="eu")
    t.update_many(np.arange(40, 80), X[40:], cohorts="us")
    proto = BehavioralDistributedProtocol(t, shrinkage=0.0, warm_up=3, score_levels="all")
    eu = list(range(40))
    checked = 0
    for agent, cohort in ((4, None), (4, "eu"), (9, "eu"), (50, "eu"), (50, None), (4, None)):
        X[agent] = X[agent] + rng.normal(scale=3.0, size=3)
        if cohort == "eu" and agent not in eu:
            eu.append(agent)
        info = proto.update_agent_behavior_sync(BehavioralData(agent, X[agent], cohort=cohort))
        level = [lv for lv in info["levels"] if lv["cohort"] == ("eu",)]
        assert len(level) == 1
        exact = exact_loo_squared_distance(X[eu], eu.index(agent), shrinkage=0.0)
        assert level[0]["mahalanobis_squared"] == pytest.approx(exact, rel=1e-8)
        checked += 1
    assert checked == 6


@pytest.mark.parametrize("explain", [False, True])
def test_a_rounds_results_are_its_own_and_not_the_next_rounds_scratch(explain):
    # The batch path reuses one scratch array from round to round: nothing it returns
    # may be a view of it (the next round would overwrite a result the caller holds).
    rng = np.random.default_rng(17)
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    proto = BehavioralDistributedProtocol(tree, warm_up=10)
    ids = np.arange(500)
    proto.update_and_score_many(ids, rng.normal(size=(500, 3)))
    first = proto.update_and_score_many(ids, rng.normal(size=(500, 3)), explain=explain)
    kept = {k: np.array(v, copy=True) for k, v in first.items() if isinstance(v, np.ndarray)}
    for _ in range(2):
        proto.update_and_score_many(ids, rng.normal(size=(500, 3)) * 5.0, explain=explain)
    for k, v in kept.items():
        np.testing.assert_array_equal(first[k], v)
    assert len(kept) >= 5 + explain
    # the scratch is not state: a pickled or copied tree leaves it behind
    import copy
    import pickle
    assert tree._tree._spare.buffer is not None
    for clone in (pickle.loads(pickle.dumps(tree)), copy.deepcopy(tree)):
        assert clone._tree._spare.buffer is None
        np.testing.assert_array_equal(clone.get_global_statistics()["covariance"],
                                      tree.get_global_statistics()["covariance"])
