"""The report's typed data: feature shares against a direct computation, JSON and key access."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from swarmguard.apps.report_data import (
    FeatureShare,
    IsolatedAgent,
    feature_shares,
    to_json_value,
    top_features,
)
from tests._exact import whitened_share_reference


def direct_shares(X: np.ndarray, i: int, shrinkage: float) -> tuple[float, np.ndarray]:
    """D² of row i against the other rows and each feature's part of it, straight from the
    definition (whitened parts: tests/_exact.py)."""
    d2, share = whitened_share_reference(X, i, shrinkage)
    return d2, share * d2


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_shares_match_the_definition_and_sum_to_one(shrinkage):
    rng = np.random.default_rng(7)
    mix = rng.normal(size=(5, 5))
    X = rng.normal(size=(400, 5)) @ mix + 3.0                  # correlated features
    X[17] += np.array([0.0, 9.0, 0.0, 0.0, 1.0])
    rows = np.array([17, 3, 250])
    d2, shares = feature_shares(X[rows], X.shape[0], X.mean(0), np.cov(X, rowvar=False), shrinkage)
    for k, i in enumerate(rows):
        exact_d2, c = direct_shares(X, i, shrinkage)
        assert d2[k] == pytest.approx(exact_d2, rel=1e-7)
        np.testing.assert_allclose(shares[k], c / exact_d2, rtol=1e-6, atol=1e-9)
        assert math.fsum(shares[k]) == pytest.approx(1.0, abs=1e-12)


def test_shares_use_the_detectors_own_score():
    """With the protocol's default shrinkage, D² equals the tree's leave-one-out score."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    X[42, 4] += 30.0
    tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=6)
    protocol = BehavioralDistributedProtocol(tree)
    ids = np.arange(3000)
    tree.update_many(ids, X)
    scored = protocol.score_many(ids[[42, 7]], fdr=None)
    stats = tree.get_global_statistics()
    d2, shares = feature_shares(X[[42, 7]], stats["count"], stats["mean"], stats["covariance"], "auto")
    np.testing.assert_allclose(d2, scored["mahalanobis_squared"], rtol=1e-9)
    assert top_features(shares[0], [f"f{j}" for j in range(6)], k=1) == (FeatureShare("f4", shares[0, 4]),)
    assert shares[0, 4] > 0.9          # 10 σ in f4 (≈100) against ≈5 from the other five features


def test_rows_read_by_key_and_write_plain_json():
    row = IsolatedAgent(agent_id=5, region="eu", cohort="c1", first_isolated_round=2, level="c1",
                        mahalanobis_squared=40.0, p_value=1e-6, decision_p_value=2e-6, consensus_probability=None,
                        final_consensus_probability=float("nan"), top_features=(FeatureShare("f1", 0.75),),
                        compromised=np.bool_(True))
    assert row["region"] == "eu" and row["top_features"][0]["share"] == 0.75 and "level" in row
    with pytest.raises(KeyError):
        row["nope"]
    js = to_json_value(row)
    assert js["final_consensus_probability"] is None and js["compromised"] is True
    assert js["top_features"] == [{"feature": "f1", "share": 0.75}]
