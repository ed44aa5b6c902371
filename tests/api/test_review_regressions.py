"""Regression tests for defects found in review of the tree and protocol."""

import warnings
from decimal import Decimal

import numpy as np
import pytest

from swarmguard import (
    BehavioralData,
    BehavioralDistributedProtocol,
    EmptyInputError,
    HierarchicalStatisticalTree,
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
    SwarmGuardError,
)
from tests._exact import exact_loo_squared_distance


def frozen(tree):
    state = tree.to_dict() if len(tree) else {}
    return {k: v.copy() for k, v in state.items()}, tree.cohorts(), tree.feature_dimensions, len(tree)


def assert_unchanged(before, tree):
    after = frozen(tree)
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        np.testing.assert_array_equal(before[0][k], after[0][k])


def test_string_ids_of_different_lengths_are_different_agents():
    t = HierarchicalStatisticalTree(feature_dimensions=1)
    t.update_many(np.array([f"agent-{i}" for i in range(1, 10)]), np.zeros((9, 1)))
    t.update_many(np.array(["agent-10"]), [[99.0]])
    assert len(t) == 10 and "agent-10" in t
    assert t.get_agent_features("agent-1")[0] == 0.0
    proto = BehavioralDistributedProtocol(t, warm_up=3)
    res = proto.score_many(np.array(["agent-10", "agent-1"]))
    assert res["mahalanobis_squared"][0] > res["mahalanobis_squared"][1]


def test_update_and_score_many_accepts_mixed_ids_and_decimal_features():
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    proto = BehavioralDistributedProtocol(t, warm_up=3)
    t.update_many(np.arange(10), np.random.default_rng(0).normal(size=(10, 2)))
    res = proto.update_and_score_many([100, "x", ("t", 1)], np.ones((3, 2)))
    assert res["agent_ids"].tolist() == [100, "x", ("t", 1)]
    res = proto.update_and_score_many([1, 2], [[Decimal("1.5"), Decimal(2)], [Decimal(3), Decimal(4)]])
    assert np.isfinite(res["mahalanobis_squared"]).all()
    assert len(t) == 13


@pytest.mark.parametrize("cohorts", [None, ("newc", "x")])
def test_a_rejected_duplicate_batch_creates_no_dimension_and_no_cohort(cohorts):
    t = HierarchicalStatisticalTree()
    with pytest.raises(InvalidInputError):
        t.update_many([1, 1], np.ones((2, 3)), cohorts=cohorts)
    assert t.feature_dimensions is None and t.cohorts() == [()] and len(t) == 0
    t2 = HierarchicalStatisticalTree(feature_dimensions=2)
    t2.update_many([5, 6], np.ones((2, 2)))
    before = frozen(t2)
    with pytest.raises(InvalidInputError):
        t2.update_many([7, 7], np.ones((2, 2)), cohorts=cohorts)
    assert_unchanged(before, t2)


def test_small_features_do_not_drift_behind_large_ones():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(scale=1e3, size=1000), rng.normal(scale=1e-3, size=1000)])
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    t.update_many(np.arange(1000), X)
    for _ in range(20):
        i = int(rng.integers(1000))
        odd = X[i].copy()
        odd[1] = 1e4
        t.update_agent(i, odd)
        t.update_agent(i, X[i])
    n, _, m2 = t._tree.root_moments()          # the root as streaming scoring sees it
    cov = np.cov(X.T)
    np.testing.assert_allclose(m2 / (n - 1), cov, rtol=1e-9, atol=1e-9 * np.sqrt(np.outer(np.diag(cov), np.diag(cov))).min())


def test_non_finite_arrays_on_the_fast_path_raise_a_typed_error_without_warnings():
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bad in (np.array([np.inf, 0.0]), np.array([np.nan, 1.0])):
            with pytest.raises(NonFiniteError):
                t.update_agent(1, bad)
        with pytest.raises(InvalidInputError):
            t.update_agent(1, np.array([1e200, 0.0]))      # would overflow the co-moment
    assert len(t) == 0


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


def test_unhashable_cohort_entries_and_odd_ids_are_typed_errors():
    t = HierarchicalStatisticalTree(feature_dimensions=1)
    t.update_many([1], [[0.0]])
    before = frozen(t)
    with pytest.raises(InvalidTypeError):
        t.update_many([2, 3], [[1.0], [2.0]], cohorts=[{"a": 1}, "b"])
    for bad in (("a", float("nan")), True, np.True_, ("a", ("b", 1.5))):
        with pytest.raises(InvalidTypeError):
            t.update_agent(bad, [1.0])
    assert_unchanged(before, t)


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


def test_empty_batches_are_rejected():
    t = HierarchicalStatisticalTree(feature_dimensions=1)
    t.update_many([1, 2, 3], [[0.0], [1.0], [2.0]])
    with pytest.raises(EmptyInputError):
        BehavioralDistributedProtocol(t).score_many([])
    with pytest.raises(SwarmGuardError):
        HierarchicalStatisticalTree(branching_factor=10**6)
