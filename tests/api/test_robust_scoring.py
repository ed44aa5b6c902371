"""scoring="robust": trimmed moments per node, checked against a from-scratch NumPy computation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy.stats import chi2

import swarmguard as sg
from swarmguard import (
    BehavioralData,
    BehavioralDistributedProtocol,
    DistributedBehavioralDetector,
    HierarchicalStatisticalTree,
    InvalidInputError,
    InvalidTypeError,
)

Q = 0.975       # the documented trimming quantile


def population(seed: int = 0, n: int = 240, d: int = 3, outliers: int = 14):
    """Correlated Gaussian members and a cluster of outliers that masks itself."""
    rng = np.random.default_rng(seed)
    L = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.9]])[:d, :d]
    X = rng.normal(size=(n, d)) @ L.T * 2.0 + 5.0
    X[:outliers] = 5.0 + rng.normal(size=(outliers, d)) * 0.5 + np.array([6.0, -6.0, 6.0])[:d]
    return X


def _regularised(cov: np.ndarray, target: np.ndarray, lam: float) -> np.ndarray:
    """(1 - λ) cov + λ diag(target) + 1e-9 diag(target): the documented regulariser
    (no variance here is near the floor)."""
    return (1.0 - lam) * cov + np.diag(lam * target + 1e-9 * target)


def numpy_loo_d2(X: np.ndarray) -> np.ndarray:
    """Every row's leave-one-out D² under the full moments, from scratch (λ = d / n)."""
    n, d = X.shape
    target = X.var(axis=0, ddof=1)
    out = np.empty(n)
    for i in range(n):
        others = np.delete(X, i, axis=0)
        diff = X[i] - others.mean(axis=0)
        A = _regularised(np.cov(others.T), target, d / n)
        out[i] = diff @ np.linalg.solve(A, diff)
    return out


def numpy_kept(X: np.ndarray) -> np.ndarray:
    d2 = numpy_loo_d2(X)
    cut = chi2.ppf(Q, X.shape[1])
    # the rule's answer must not hinge on rounding: no member sits at the cut-off
    assert np.min(np.abs(d2 - cut)) > 1e-6 * cut
    return d2 <= cut


def numpy_robust_d2(X: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Robust D² from scratch: a kept member against the other kept ones (leave-one-out), a
    dropped member against the kept ones, divided by the consistency factor of a Gaussian
    covariance trimmed at χ²_d(Q) (Croux & Haesbroeck)."""
    d = X.shape[1]
    c = Q / chi2.cdf(chi2.ppf(Q, d), d + 2)
    K = X[kept]
    n_t = K.shape[0]
    out = np.empty(X.shape[0])
    for i in range(X.shape[0]):
        if kept[i]:
            j = int(np.flatnonzero(np.flatnonzero(kept) == i)[0])
            others = np.delete(K, j, axis=0)
            target = K.var(axis=0, ddof=1)
            A = _regularised(np.cov(others.T), target, d / n_t)
        else:
            others = K
            A = _regularised(np.cov(K.T), K.var(axis=0, ddof=1), d / n_t)
        diff = X[i] - others.mean(axis=0)
        out[i] = diff @ np.linalg.solve(A, diff) / c
    return out


def robust_tree(X: np.ndarray, cohorts=None):
    tree = HierarchicalStatisticalTree(feature_dimensions=X.shape[1])
    protocol = BehavioralDistributedProtocol(tree, scoring="robust", warm_up=10)
    tree.update_many(np.arange(X.shape[0]), X, cohorts=cohorts)
    return tree, protocol


def test_trimmed_moments_are_those_of_the_members_the_full_moments_do_not_flag():
    X = population()
    kept = numpy_kept(X)
    assert 14 <= (~kept).sum() < 40          # the planted cluster and a few Gaussian tails
    tree, _ = robust_tree(X)
    stats = tree.get_trimmed_statistics()
    assert stats["count"] == kept.sum()
    np.testing.assert_allclose(stats["mean"], X[kept].mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats["covariance"], np.cov(X[kept].T), rtol=1e-12, atol=1e-13)


def test_robust_scores_match_numpy_for_kept_and_dropped_members():
    X = population(1)
    kept = numpy_kept(X)
    _, protocol = robust_tree(X)
    res = protocol.score_many(np.arange(X.shape[0]), fdr=None)
    np.testing.assert_allclose(res["mahalanobis_squared"], numpy_robust_d2(X, kept), rtol=1e-7)
    np.testing.assert_allclose(res["p_value"], chi2.sf(res["mahalanobis_squared"], X.shape[1]), rtol=1e-9)


def test_robust_unmasks_a_cluster_the_full_moments_hide():
    X = population(2, outliers=14)
    truth = np.zeros(X.shape[0], dtype=bool)
    truth[:14] = True
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    full = BehavioralDistributedProtocol(tree, warm_up=10, significance_level=1e-3)
    robust = BehavioralDistributedProtocol(tree, scoring="robust", warm_up=10, significance_level=1e-3)
    tree.update_many(np.arange(X.shape[0]), X)
    caught_full = full.score_many(fdr=None)["is_anomaly"][truth].sum()
    caught_robust = robust.score_many(fdr=None)["is_anomaly"][truth].sum()
    assert caught_robust == 14 and caught_full < 14


def test_a_changed_vector_is_judged_again_and_reverting_it_restores_the_trimmed_moments_exactly():
    X = population(3)
    tree, protocol = robust_tree(X)
    before = tree.get_trimmed_statistics()
    agent = 100                                   # a Gaussian member, kept
    assert tree.to_dict()["trimmed_kept"][agent]
    tree.update_agent(agent, [40.0, -40.0, 40.0])
    after = tree.get_trimmed_statistics()
    assert after["count"] == before["count"] - 1   # dropped on its own update
    assert protocol.score_agent_sync(agent)["is_anomaly"]
    tree.update_agent(agent, X[agent])
    back = tree.get_trimmed_statistics()
    assert back["count"] == before["count"]
    np.testing.assert_array_equal(back["mean"], before["mean"])
    np.testing.assert_array_equal(back["covariance"], before["covariance"])


def test_removing_an_agent_takes_it_out_of_the_trimmed_moments():
    X = population(4)
    tree, _ = robust_tree(X)
    kept = tree.to_dict()["trimmed_kept"]
    k = int(np.flatnonzero(kept)[0])
    tree.remove_agent(k)
    stats = tree.get_trimmed_statistics()
    rest = np.delete(np.arange(X.shape[0]), k)
    mask = np.delete(kept, k)
    np.testing.assert_allclose(stats["covariance"], np.cov(X[rest[mask]].T), rtol=1e-11, atol=1e-12)


def test_cohorts_trimmed_moments_are_their_kept_members_and_merge_to_the_population():
    X = population(5, n=300)
    cohorts = np.where(np.arange(X.shape[0]) % 3 == 0, "a", "b")
    tree, _ = robust_tree(X, cohorts)
    kept = numpy_kept(X)
    merged = sg.Moments(3)
    for name in ("a", "b"):
        rows = (cohorts == name) & kept
        stats = tree.get_trimmed_statistics((name,))
        assert stats["count"] == rows.sum()
        np.testing.assert_allclose(stats["covariance"], np.cov(X[rows].T), rtol=1e-11, atol=1e-12)
        part = sg.Moments(3)
        part.update_many(X[rows])
        merged += part
    root = tree.get_trimmed_statistics()
    np.testing.assert_allclose(root["covariance"], merged.covariance(), rtol=1e-11, atol=1e-12)


def test_trimmed_moments_survive_serialisation():
    X = population(6)
    tree, protocol = robust_tree(X)
    tree.update_agent(7, X[7] + 30.0)            # a per-item judgement the batch rule would not redo
    state = tree.to_dict()
    again = HierarchicalStatisticalTree.from_dict(state)
    assert again.keeps_trimmed_moments
    np.testing.assert_array_equal(again.to_dict()["trimmed_kept"], state["trimmed_kept"])
    a, b = tree.get_trimmed_statistics(), again.get_trimmed_statistics()
    assert a["count"] == b["count"]
    np.testing.assert_allclose(b["covariance"], a["covariance"], rtol=1e-12, atol=1e-13)
    p2 = BehavioralDistributedProtocol(again, scoring="robust", warm_up=10)
    np.testing.assert_allclose(p2.score_many(np.arange(X.shape[0]))["mahalanobis_squared"],
                               protocol.score_many(np.arange(X.shape[0]))["mahalanobis_squared"], rtol=1e-9)
    plain = HierarchicalStatisticalTree(feature_dimensions=3)
    plain.update_many(np.arange(5), X[:5])
    assert "trimmed_kept" not in plain.to_dict()


def test_rejudge_applies_the_rule_against_the_current_moments():
    X = population(7)
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    protocol = BehavioralDistributedProtocol(tree, scoring="robust", warm_up=10)
    for rows in np.array_split(np.arange(X.shape[0]), 4):     # judged round by round
        tree.update_many(rows, X[rows])
    tree.rejudge_trimmed()
    np.testing.assert_array_equal(tree.to_dict()["trimmed_kept"], numpy_kept(X))
    assert protocol.scoring == "robust"


def test_per_item_answer_equals_the_batch_answer():
    X = population(8)
    tree, protocol = robust_tree(X, np.where(np.arange(X.shape[0]) % 2 == 0, "a", "b"))
    protocol.score_levels = "all"
    item = asyncio.run(protocol.update_agent_behavior(BehavioralData(11, X[11] + 1.0)))
    batch = protocol.score_many([11], fdr=None, explain=True)
    assert item["mahalanobis_squared"] == pytest.approx(float(batch["mahalanobis_squared"][0]), rel=1e-12)
    assert item["decision_p_value"] == pytest.approx(float(batch["decision_p_value"][0]), rel=1e-12)
    assert item["is_anomaly"] == bool(batch["is_anomaly"][0])
    np.testing.assert_allclose(item["feature_contributions"], batch["feature_contributions"][0], rtol=1e-12)
    assert sum(item["feature_contributions"]) == pytest.approx(item["mahalanobis_squared"], rel=1e-9)
    assert [lv["cohort"] for lv in item["levels"]] == [(), ("b",)]


def test_score_vectors_scores_rows_not_in_the_tree_against_the_population():
    X = population(9)
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    protocol = BehavioralDistributedProtocol(tree, warm_up=10)
    tree.update_many(np.arange(X.shape[0]), X)
    new = np.array([[5.0, 5.0, 5.0], [20.0, 0.0, 3.0]])
    n, d = X.shape
    A = _regularised(np.cov(X.T), X.var(axis=0, ddof=1), d / n)
    diff = new - X.mean(axis=0)
    expected = np.einsum("ij,ij->i", diff, np.linalg.solve(A, diff.T).T)
    before = tree.get_global_statistics()
    res = protocol.score_vectors(new)
    np.testing.assert_allclose(res["mahalanobis_squared"], expected, rtol=1e-9)
    assert res["is_anomaly"].tolist() == [False, True]
    assert tree.get_global_statistics()["count"] == before["count"] == n


@pytest.mark.parametrize("bad, error", [("fancy", InvalidInputError), ("ROBUST", InvalidInputError),
                                        (3, InvalidTypeError), (None, InvalidTypeError)])
def test_an_unknown_scoring_mode_is_refused_with_a_typed_error(bad, error):
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    with pytest.raises(error, match="scoring"):
        BehavioralDistributedProtocol(tree, scoring=bad)
    assert not tree.keeps_trimmed_moments
    with pytest.raises(error, match="scoring"):
        DistributedBehavioralDetector(scoring=bad)
    with pytest.raises(ValueError):
        DistributedBehavioralDetector(scoring=bad)


def test_the_detector_passes_its_scoring_mode_to_the_protocol():
    X = population(10)
    det = DistributedBehavioralDetector(scoring="robust", feature_dimensions=3, warm_up=10)
    assert det.protocol.scoring == "robust" and det.tree.keeps_trimmed_moments
    det.tree.update_many(np.arange(X.shape[0]), X)
    ref = BehavioralDistributedProtocol(det.tree, scoring="robust", warm_up=10)
    np.testing.assert_allclose(det.protocol.score_many()["mahalanobis_squared"],
                               ref.score_many()["mahalanobis_squared"], rtol=0)
    assert DistributedBehavioralDetector().protocol.scoring == sg.DEFAULT_SCORING
    assert set(sg.SCORING_MODES) >= {"mahalanobis", "robust"}


def test_a_population_with_fewer_than_three_kept_members_is_warming_up_as_a_cohort_is():
    # Kept members are scored leave-one-out against the trimmed moments, which needs three of
    # them; with two the population level decided (kept members at D² = 0, dropped ones against
    # a covariance of two) while the cohort of the very same members said it was warming up.
    rng = np.random.default_rng(0)
    tree, _ = robust_tree(rng.normal(size=(10, 2)), cohorts="eu")
    state = tree.to_dict()
    state["trimmed_kept"] = np.arange(10) < 2
    back = HierarchicalStatisticalTree.from_dict(state)
    assert back.get_trimmed_statistics()["count"] == 2
    protocol = BehavioralDistributedProtocol(back, scoring="robust", warm_up=3, score_levels="all")
    res = protocol.score_many(np.arange(10), fdr=None)
    assert res["levels"][("eu",)]["warming_up"]
    assert res["warming_up"] and not res["is_anomaly"].any()
    assert protocol.score_vectors(np.full((1, 2), 50.0))["warming_up"]
    assert not protocol.score_agent_sync(5)["is_anomaly"]


def test_a_tree_swapped_into_a_robust_protocol_is_scored_against_its_trimmed_moments():
    # Code written against the guide swaps parts in (protocol.tree = other); the robust
    # protocol read the new tree's trimmed moments, which nobody had asked it to keep: AttributeError.
    X = population(4)
    kept = numpy_kept(X)
    protocol = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=3), scoring="robust",
                                             warm_up=10)
    other = HierarchicalStatisticalTree(feature_dimensions=3)
    other.update_many(np.arange(X.shape[0]), X)
    protocol.tree = other
    res = protocol.score_many(np.arange(X.shape[0]), fdr=None)
    np.testing.assert_allclose(res["mahalanobis_squared"], numpy_robust_d2(X, kept), rtol=1e-7)
    assert other.get_trimmed_statistics()["count"] == kept.sum()
