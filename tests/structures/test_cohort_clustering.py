"""Cohorts found by clustering (k-means, k by BIC), and what they do for scoring at every level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from swarmguard.errors import InvalidInputError
from swarmguard.structures.cohort_clustering import find_cohorts


def _groups(seed, centres, size=400, d=3):
    r = np.random.default_rng(seed)
    return np.vstack([r.normal(size=(size, d)) + c for c in centres])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_separated_groups_are_found_and_each_is_one_cohort(k):
    centres = [np.full(3, 12.0 * j) * np.array([1.0, -1.0, 0.5]) for j in range(k)]
    X = _groups(k, centres)
    fit = find_cohorts(X, min_size=50)
    assert fit.k == k
    truth = np.repeat(np.arange(k), 400)
    for c in range(k):                      # each found cohort is exactly one planted group
        assert np.unique(truth[fit.labels == c]).size == 1
    np.testing.assert_array_equal(fit.assign(X), fit.labels)


def test_one_group_stays_one_cohort_and_small_cohorts_are_not_made():
    r = np.random.default_rng(5)
    assert find_cohorts(r.standard_normal((2000, 4)), min_size=50).k == 1
    X = _groups(6, [np.zeros(3), np.full(3, 15.0)])
    assert find_cohorts(X, min_size=401).k == 1        # two cohorts of 400 would be below min_size
    assert find_cohorts(X, max_cohorts=1, min_size=50).k == 1


def test_the_bic_is_that_of_the_clusters_gaussian_moments():
    X = _groups(7, [np.zeros(2), np.full(2, 9.0)], size=300, d=2)
    fit = find_cohorts(X, min_size=50, max_cohorts=2)
    Z = (X - X.mean(0)) / X.std(0)
    n, d = Z.shape
    ll = 0.0
    for c in range(2):                     # from scratch, without the (negligible here) shrinkage
        rows = Z[fit.labels == c]
        m, cov = rows.shape[0], np.cov(rows.T)
        ll += (m * math.log(m / n) - 0.5 * m * (np.linalg.slogdet(cov)[1] + d * math.log(2 * math.pi))
               - 0.5 * (m - 1) * d)
    want = -2 * ll + (2 * (d + d * (d + 1) / 2) + 1) * math.log(n)
    assert fit.bic[2] == pytest.approx(want, rel=1e-3)


def test_the_same_seed_gives_the_same_cohorts_and_bad_input_is_refused():
    X = _groups(8, [np.zeros(3), np.full(3, 8.0), np.full(3, -8.0)])
    a, b = find_cohorts(X, min_size=50, seed=3), find_cohorts(X, min_size=50, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    for bad in (np.array([1.0, 2.0]), np.array([[np.nan, 1.0], [1.0, 2.0]])):
        with pytest.raises(InvalidInputError):
            find_cohorts(bad)
    with pytest.raises(InvalidInputError):
        find_cohorts(X, max_cohorts=0)
    with pytest.raises(InvalidInputError):
        find_cohorts(X, min_size=1)


def test_a_point_between_two_groups_is_flagged_only_against_its_cohort():
    # one ellipsoid over two groups holds the midpoint near its mean; the midpoint's own cohort does not
    X = _groups(9, [np.zeros(3), np.full(3, 10.0)], size=1500)
    X[:4] = 5.0 + np.random.default_rng(10).normal(size=(4, 3)) * 0.3
    ids = np.arange(X.shape[0])
    plain_tree = HierarchicalStatisticalTree(feature_dimensions=3)
    plain_tree.update_many(ids, X)
    plain = BehavioralDistributedProtocol(plain_tree, scoring="robust").score_many(ids, fdr=0.01)
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    protocol = BehavioralDistributedProtocol(tree, scoring="robust", score_levels="all")
    fit = find_cohorts(X, min_size=protocol.warm_up, max_cohorts=4)
    assert fit.k == 2
    tree.update_many(ids, X, cohorts=np.array([f"cluster-{c}" for c in fit.labels]))
    res = protocol.score_many(ids, fdr=0.01)
    assert not plain["is_anomaly"][:4].any()
    assert res["is_anomaly"][:4].all() and res["is_anomaly"][4:].sum() <= 0.01 * X.shape[0]


def test_a_constant_feature_changes_neither_the_number_of_cohorts_nor_the_cohorts():
    # a zero-variance column is degenerate in every cluster; it used to make every split look better
    r = np.random.default_rng(12)
    one = np.column_stack([r.standard_normal((600, 2)), np.full(600, 3.0)])
    assert find_cohorts(one[:, :2], min_size=20).k == 1
    assert find_cohorts(one, min_size=20).k == 1
    X = _groups(13, [np.zeros(3), np.full(3, 9.0)])
    with_constant = np.column_stack([X, np.full(X.shape[0], -7.5)])
    a, b = find_cohorts(X, min_size=50), find_cohorts(with_constant, min_size=50)
    assert a.k == b.k == 2
    np.testing.assert_array_equal(a.labels, b.labels)
    assert find_cohorts(np.ones((100, 3)), min_size=10).k == 1


def test_nodes_sharing_one_fit_place_their_agents_in_the_same_cohorts():
    # the documented way to keep cohorts mergeable: one fit, assign() on every node
    X = _groups(14, [np.zeros(3), np.full(3, 9.0), np.full(3, -9.0)])
    fit = find_cohorts(X, min_size=50)
    order = np.random.default_rng(15).permutation(X.shape[0])
    node_a, node_b = order[:500], order[500:]
    np.testing.assert_array_equal(fit.assign(X[node_a]), fit.labels[node_a])
    np.testing.assert_array_equal(fit.assign(X[node_b]), fit.labels[node_b])
    refit = find_cohorts(X[order], min_size=50)          # the same groups, found again from other rows' order
    assert refit.k == fit.k
    pairs = set(zip(fit.labels[order].tolist(), refit.labels.tolist(), strict=True))
    assert len(pairs) == fit.k                             # one-to-one, though not necessarily the same numbers
