"""The per-item path's feature shares (issue 11: no per-item eigendecomposition) against the batch
path's: equal for the same population state right after a refresh, within the documented bound
of the correlation drift between refreshes, refreshed once the correlations move further."""

from __future__ import annotations

import numpy as np

from swarmguard import BehavioralData, BehavioralDistributedProtocol, HierarchicalStatisticalTree
from swarmguard.structures.feature_shares import CORRELATION_DRIFT


def _protocol(n=2000, d=4, seed=11, score_levels="population"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ np.array([[1, .9, 0, 0], [0, .4, 0, 0], [0, 0, 1, -.7], [0, 0, 0, .5]])[:d, :d]
    tree = HierarchicalStatisticalTree(feature_dimensions=d)
    cohorts = [("a",) if i % 2 else ("b",) for i in range(n)]
    tree.update_many(np.arange(n), X + 7.0, cohorts=cohorts)
    return BehavioralDistributedProtocol(tree, warm_up=10, score_levels=score_levels), X + 7.0, rng


def _batch_shares(proto, agent):
    res = proto.score_many([agent], explain=True)
    return res["feature_contributions"][0] / res["mahalanobis_squared"][0]


def _share_bound(proto, agent):
    """First-order bound on a share's error when ``P^(-1/2)`` is kept while every correlation
    moves by at most τ: ``‖ΔP‖₂ ≤ d τ``; ``‖Δ P^(-1/2)‖₂ ≤ ‖ΔP‖₂ / (2 λ_min^(3/2))`` (the
    divided differences of ``x^(-1/2)``); ``|Δz| / |z| ≤ ‖Δ P^(-1/2)‖₂ λ_max^(1/2)``; a share
    ``u_j²`` of the unit vector ``u = z / |z|`` moves by at most ``2 |Δu| ≤ 4 |Δz| / |z|``."""
    tree = proto.tree._tree
    n, off, m2 = tree.root_state()
    C = m2 / (n - 1)
    s = 1 / np.sqrt(np.diag(C))
    lam = np.linalg.eigvalsh(C * np.outer(s, s))
    d = C.shape[0]
    return 4 * (d * CORRELATION_DRIFT / (2 * lam[0] ** 1.5)) * np.sqrt(lam[-1]) * 1.5   # 1.5: the first order


def test_per_item_shares_equal_the_batch_shares_for_the_same_population_state():
    proto, X, _ = _protocol()
    x = X[3].copy()
    x[:2] += [3.0, -3.0]                         # against the correlation of f0 and f1
    info = proto.update_agent_behavior_sync(BehavioralData(3, x))
    got = info["feature_contributions"] / info["mahalanobis_squared"]
    np.testing.assert_allclose(got, _batch_shares(proto, 3), rtol=1e-10, atol=1e-13)
    # a score of the same state reads the same kept root: the same shares again
    again = proto.score_agent_sync(3)
    np.testing.assert_allclose(again["feature_contributions"], info["feature_contributions"], rtol=1e-13)


def test_between_refreshes_shares_stay_within_the_drift_bound_and_a_large_drift_refreshes():
    proto, X, rng = _protocol(n=20000)
    proto.update_agent_behavior_sync(BehavioralData(0, X[0]))
    root = proto._correlation_root(0)
    first = root.refreshes
    worst = 0.0
    for _ in range(60):                          # ordinary observations: small drift
        agent = int(rng.integers(len(X)))
        info = proto.update_agent_behavior_sync(BehavioralData(agent, X[agent] + rng.normal(size=4) * 0.01))
        got = info["feature_contributions"] / info["mahalanobis_squared"]
        err = float(np.abs(got - _batch_shares(proto, agent)).max())
        worst = max(worst, err)
        assert err <= _share_bound(proto, agent)
        assert (got >= 0).all() and abs(got.sum() - 1) < 1e-12
    assert root.refreshes < first + 60           # the kept root was used, not recomputed each call
    # a batch round that decorrelates f0 and f1: the next per-item call refreshes and is exact
    proto.update_and_score_many(np.arange(10000), rng.normal(size=(10000, 4)) + 7.0)
    before = root.refreshes
    info = proto.update_agent_behavior_sync(BehavioralData(1500, X[1500] + [2.0, 0, 0, 0]))
    assert root.refreshes == before + 1
    np.testing.assert_allclose(info["feature_contributions"] / info["mahalanobis_squared"],
                               _batch_shares(proto, 1500), rtol=1e-10, atol=1e-13)


def test_every_level_keeps_its_own_root():
    proto, X, _ = _protocol(score_levels="all")
    info = proto.update_agent_behavior_sync(BehavioralData(4, X[4] + [0, 0, 2.0, 2.0]))
    assert len(info["levels"]) == 2 and len(proto._correlation_roots) == 2
    for level in info["levels"]:
        parts = level["feature_contributions"]
        assert (parts >= 0).all() and abs(parts.sum() - level["mahalanobis_squared"]) <= 1e-9 * level["mahalanobis_squared"]
    top = info["levels"][0]
    np.testing.assert_allclose(top["feature_contributions"] / top["mahalanobis_squared"], _batch_shares(proto, 4),
                               rtol=1e-10, atol=1e-13)
