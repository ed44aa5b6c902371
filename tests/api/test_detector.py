"""DistributedBehavioralDetector: rounds stay whole (observers reusing evidence ids, extreme agents)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swarmguard import BehavioralData, DistributedBehavioralDetector, p_value_log_odds


def test_an_observer_using_the_detectors_next_evidence_id_does_not_break_a_round():
    rng = np.random.default_rng(1)
    ids, X = np.arange(300), rng.normal(size=(300, 2))
    X[:5] += 9.0
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 0.0)
    det.ingest_evidence(["detector:0:0"], [299], "behavioral_anomaly", [1.0], [1.0], [0.0], ["observer"])
    out = det.process_round(ids, X, "eu")
    assert out["is_anomaly"][:5].all()
    ev = det.consensus.export_evidence()
    # Evidence ids are unique per source: the observer's "detector:0:0" is no collision, so
    # the detector's own first range is used whole.
    own = [k for k, s in zip(ev["evidence_ids"], ev["source_nodes"], strict=True) if s == det.node_id]
    assert sorted(own) == sorted(f"detector:0:{i}" for i in range(int(out["is_anomaly"].sum())))
    assert det.consensus.consensus(299)["source_count"] == 1  # the observer's evidence is untouched


# ---------------------------------------------------------------- issue 10: one extreme agent never stops a round


def _own_log_odds(det, agent_id):
    ev = det.consensus.export_evidence()
    agents = np.asarray(ev["agent_ids"])
    return np.asarray(ev["log_odds"])[agents == agent_id]


@pytest.mark.parametrize("shift", ["+40 in one feature", "+12 in every feature", "+1e90 in every feature"])
def test_an_extreme_agent_is_flagged_in_process_round_and_later_rounds_keep_working(shift):
    # Reproducer: a squared distance above ~1,500 (d = 10) made chi2.logsf -inf, the
    # detector's own evidence NaN, and every later round a NonFiniteError.
    det = DistributedBehavioralDetector(feature_dimensions=10)
    ids, X = np.arange(5000), np.random.default_rng(0).normal(size=(5000, 10))
    det.process_round(ids, X, "eu")
    if shift == "+40 in one feature":
        X[42, 0] += 40.0
    else:
        X[42] += 12.0 if shift == "+12 in every feature" else 1e90
    actions = []
    for _ in range(4):
        out = det.process_round(ids, X, "eu")
        assert out["is_anomaly"][42]
        assert out["mahalanobis_squared"][42] > 1400.0 and math.isfinite(out["mahalanobis_squared"][42])
        actions.append(out["action"][42])
    log_odds = _own_log_odds(det, 42)
    assert log_odds.size == 4 and np.all(np.isfinite(log_odds)) and np.all(log_odds == det.own_evidence_cap)
    assert actions[-1] == "isolate"                 # consensus of its own capped evidence builds up
    assert det.consensus.consensus(42)["probability"] > 0.99


@pytest.mark.parametrize("shift", ["+40 in one feature", "+12 in every feature"])
def test_an_extreme_agent_is_flagged_on_the_per_item_path_and_later_calls_keep_working(shift):
    det = DistributedBehavioralDetector(feature_dimensions=10, clock=lambda: 0.0)
    ids, X = np.arange(2000), np.random.default_rng(1).normal(size=(2000, 10))
    det.process_round(ids, X, "eu")
    x = X[42].copy()
    if shift == "+40 in one feature":
        x[0] += 40.0
    else:
        x += 12.0
    actions = []
    for k in range(4):
        out = det.process_agent_behavior_sync(42, BehavioralData(42, x, timestamp=float(k), region="eu"))
        assert out["anomaly"]["is_anomaly"] and out["anomaly"]["mahalanobis_squared"] > 1400.0
        actions.append(out["action"])
        # an ordinary agent right after it is scored as usual
        calm = det.process_agent_behavior_sync(7, BehavioralData(7, X[7], timestamp=float(k), region="eu"))
        assert not calm["anomaly"]["is_anomaly"] and calm["action"] == "monitor"
    log_odds = _own_log_odds(det, 42)
    assert log_odds.size == 4 and np.all(log_odds == det.own_evidence_cap)
    assert actions[-1] == "isolate"
    # and the batch path still works after the per-item calls
    assert det.process_round(ids, X, "eu")["mahalanobis_squared"].shape == (2000,)


def test_create_evidence_is_finite_for_any_finite_distance():
    det = DistributedBehavioralDetector(feature_dimensions=10, clock=lambda: 0.0)
    for d2 in [1e3, 1.6e3, 1e5, 1e100, 1e300]:
        ev = det.create_evidence(1, {"timestamp": 0.0}, {"mahalanobis_squared": d2})
        assert ev.log_odds == det.own_evidence_cap


def test_p_value_log_odds_is_finite_for_log_p_down_to_minus_1e300():
    log_p = -np.geomspace(1.0, 1e300, 301)
    lo = p_value_log_odds(log_p)
    assert np.all(np.isfinite(lo)) and np.all(np.diff(lo) >= 0)
    # the Sellke–Bayarri–Berger bound -1 - ln p - ln(-ln p), from exact-rounded parts
    far = log_p[-1]
    assert lo[-1] == pytest.approx(-1.0 - far - math.log(-far), rel=1e-15)
    assert math.isfinite(p_value_log_odds(-math.inf))


@pytest.mark.parametrize("scale", [2.0**-990, 1e-300, 1e-162, 1e98])
def test_process_round_scores_are_the_same_from_1e_300_to_the_1e100_limit(scale):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5)) @ rng.normal(size=(5, 5))
    X[3] += 8.0
    ids = np.arange(2000)

    def two_rounds(data):
        det = DistributedBehavioralDetector(feature_dimensions=5, clock=lambda: 0.0)
        det.process_round(ids, data, "eu")
        return det.process_round(ids, data, "eu")

    ref, got = two_rounds(X), two_rounds(X * scale)
    if scale == 2.0**-990:                  # exact in binary: the same bits
        np.testing.assert_array_equal(got["mahalanobis_squared"], ref["mahalanobis_squared"])
        np.testing.assert_array_equal(got["p_value"], ref["p_value"])
    np.testing.assert_allclose(got["mahalanobis_squared"], ref["mahalanobis_squared"], rtol=1e-9)
    np.testing.assert_allclose(got["p_value"], ref["p_value"], rtol=1e-9)
    assert got["is_anomaly"].tolist() == ref["is_anomaly"].tolist() and got["is_anomaly"][3]
