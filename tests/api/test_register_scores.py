"""A detector never writes an anomaly score below 0 into its CAP registers.

The registers' scores are the detector's squared distances; a ``swarmguard serve``
peer refuses a whole delta holding one below 0 (its chi-square ``ln p`` is NaN), so
a node that wrote one would be cut off from every peer on every sync. A squared
distance below 0 can only be rounding (the dot-product paths compute ``e·A⁻¹e`` as
a sum of signed terms): it is written as 0, while the detector's own result keeps
the value it computed.
"""

from __future__ import annotations

import numpy as np
import pytest

import swarmguard.api.protocol as protocol_module
from swarmguard import DistributedBehavioralDetector
from swarmguard.structures.replica import RegionReplica

NEGATIVE = -1e-300       # what rounding could leave of a squared distance that is really ~0
# the detector's own result keeps the value it computed (its distance, sqrt of it, is NaN)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")


@pytest.fixture
def rounding_below_zero(monkeypatch):
    """The population scorer reporting a rounding-negative squared distance for the first row."""
    original = protocol_module.score_population

    def scored(*args, **kwargs):
        d2, p, warm, shares = original(*args, **kwargs)
        d2 = np.array(d2, dtype=np.float64)
        d2[0] = NEGATIVE
        return d2, p, warm, shares

    monkeypatch.setattr(protocol_module, "score_population", scored)


def _registers_scores(det, region):
    return det.cap_resolver.replica(region).registers.anomaly_scores()


def test_a_round_writes_no_score_below_zero(rounding_below_zero):
    rng = np.random.default_rng(3)
    det = DistributedBehavioralDetector(feature_dimensions=3, auto_sync_seconds=None, clock=lambda: 0.0)
    X = rng.normal(size=(20, 3))
    res = det.process_round(np.arange(20), X, "eu", timestamp=0.0)
    assert res.mahalanobis_squared[0] == NEGATIVE        # the detector's own result is as computed
    scores = _registers_scores(det, "eu")
    assert scores.size == 20
    assert scores.min() >= 0.0
    # the other rows' scores are written as computed, bit for bit
    rows = det.cap_resolver.replica("eu").registers
    for agent in range(1, 20):
        assert rows.get(agent)["anomaly_score"] == res.mahalanobis_squared[agent]
    assert rows.get(0)["anomaly_score"] == 0.0


def test_a_peer_that_refuses_negative_scores_takes_the_rounds_delta(rounding_below_zero):
    rng = np.random.default_rng(4)
    det = DistributedBehavioralDetector(feature_dimensions=2, auto_sync_seconds=None, clock=lambda: 0.0)
    det.process_round(np.arange(10), rng.normal(size=(10, 2)), "eu", timestamp=0.0)
    mine = det.cap_resolver.replica("eu")
    peer = RegionReplica("us", 2)
    peer.merge_delta(mine.delta_since(peer.version, now=1.0), nonnegative_scores=True)
    assert len(peer.registers) == 10


def test_one_item_writes_no_score_below_zero(monkeypatch):
    # the per-item path of a trimmed mode scores through the batch path's dot products
    original = protocol_module.score_trimmed_population

    def scored(*args, **kwargs):
        d2, p, warm, shares = original(*args, **kwargs)
        d2 = np.array(d2, dtype=np.float64)
        d2[:] = NEGATIVE
        return d2, p, warm, shares

    monkeypatch.setattr(protocol_module, "score_trimmed_population", scored)
    rng = np.random.default_rng(5)
    det = DistributedBehavioralDetector(feature_dimensions=2, scoring="robust", auto_sync_seconds=None,
                                        clock=lambda: 0.0)
    for agent in range(6):
        out = det.process_agent_behavior_sync(agent, {"agent_id": agent, "features": rng.normal(size=2).tolist(),
                                                      "timestamp": 0.0})
        assert out.anomaly["mahalanobis_squared"] == NEGATIVE
    assert _registers_scores(det, "default").tolist() == [0.0] * 6
