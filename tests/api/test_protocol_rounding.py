"""A squared distance that rounds below 0 is scored as 0 on the per-item and the batch path.

``D² = eᵀA⁻¹e`` is ``>= 0`` for the positive definite ``A`` the scorer factorises; computed
as a sum of signed terms (``e·A⁻¹e``) it can round to a hair below 0. Below 0 its square
root is undefined (the per-item path's ``math.sqrt`` raised "math domain error" after the
tree had already changed; the batch path gave NaN with a warning) and so is its χ² p-value
(``chdtrc`` is NaN there). Both paths take it as 0 where it leaves the scorer, so both agree:
distance 0, p-value 1, not flagged, and the item is applied whole.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from swarmguard import DistributedBehavioralDetector
from swarmguard.structures.scoring import LeaveOneOutScorer, nonnegative_d2
from swarmguard.structures.trimming import TrimmedScorer

NEGATIVE = -1e-300       # what rounding could leave of a squared distance that is really ~0
N, D = 40, 3


@pytest.fixture
def per_item_rounds_below_zero(monkeypatch):
    """The per-item scorer's D² (one member) rounding below 0, as the brief's reproducer."""
    monkeypatch.setattr(LeaveOneOutScorer, "_distance", lambda self, e: NEGATIVE)


@pytest.fixture
def batch_rounds_below_zero(monkeypatch):
    """The batch scorer's D² (many members) rounding below 0 for every row."""
    monkeypatch.setattr(LeaveOneOutScorer, "_distances",
                        lambda self, E, explain, overwrite: np.full(E.shape[0], NEGATIVE))


def _detector(**options):
    return DistributedBehavioralDetector(feature_dimensions=D, auto_sync_seconds=None, clock=lambda: 0.0,
                                         warm_up=10, **options)


def _rows(seed=1):
    return np.random.default_rng(seed).normal(size=(N, D))


def _item(det, agent, x, cohort=None):
    data = {"agent_id": agent, "features": x.tolist(), "timestamp": 0.0}
    if cohort is not None:
        data["cohort"] = cohort
    return det.process_agent_behavior_sync(agent, data)


def _assert_zero_distance(score):
    assert score["mahalanobis_squared"] == 0.0
    assert score["mahalanobis_distance"] == 0.0
    assert score["p_value"] == 1.0
    assert not score["is_anomaly"]


@pytest.mark.parametrize("score_levels", ["population", "all"])
def test_the_per_item_path_scores_a_d2_below_zero_as_zero(per_item_rounds_below_zero, score_levels):
    det = _detector(score_levels=score_levels)
    X = _rows()
    cohort = ["eu", "a"] if score_levels == "all" else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for agent in range(N):
            out = _item(det, agent, X[agent], cohort)      # raised ValueError (math domain error) once warm
            _assert_zero_distance(out.anomaly)
            for level in out.anomaly["levels"]:
                assert level["mahalanobis_squared"] == 0.0 and level["mahalanobis_distance"] == 0.0
                assert level["p_value"] == 1.0
            assert out.anomaly["decision_p_value"] == 1.0
    # every item was applied whole: the tree counts all of them, the CAP registers hold all of them
    assert det.engine.tree._tree.root_state()[0] == N
    assert len(det.cap_resolver.replica("eu" if score_levels == "all" else "default").registers) == N


@pytest.mark.parametrize("score_levels", ["population", "all"])
def test_the_batch_path_scores_a_d2_below_zero_as_zero(batch_rounds_below_zero, score_levels):
    det = _detector(score_levels=score_levels)
    X = _rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # np.sqrt of a value below 0 warned (NaN)
        res = det.process_round(np.arange(N), X, "eu", timestamp=0.0)
    assert (res.mahalanobis_squared == 0.0).all()
    assert (res.p_value == 1.0).all() and (res.decision_p_value == 1.0).all() and not res.is_anomaly.any()


def test_both_paths_agree_on_a_d2_below_zero(monkeypatch):
    """Per-item and batch, each with its own kernel rounding below 0, report the same score."""
    monkeypatch.setattr(LeaveOneOutScorer, "_distance", lambda self, e: NEGATIVE)
    monkeypatch.setattr(LeaveOneOutScorer, "_distances",
                        lambda self, E, explain, overwrite: np.full(E.shape[0], NEGATIVE))
    X = _rows(2)
    item = _detector()
    for agent in range(N):
        last = _item(item, agent, X[agent]).anomaly
    batch = _detector().engine.protocol
    batch.tree.update_many(np.arange(N), X)
    many = batch.score_many(np.arange(N))
    for key in ("mahalanobis_squared", "mahalanobis_distance", "p_value"):
        assert many[key][-1] == last[key]


def test_a_trimmed_mode_per_item_with_cohort_levels_scores_a_d2_below_zero_as_zero(monkeypatch):
    """The per-item path of a trimmed mode goes through the batch path, and takes each cohort
    level's ``math.sqrt`` itself (_score_slot_trimmed)."""
    monkeypatch.setattr(LeaveOneOutScorer, "_distances",
                        lambda self, E, explain, overwrite: np.full(E.shape[0], NEGATIVE))
    original = TrimmedScorer.score_many
    # the outsiders' D² too (computed inline by the trimmed scorer): every row below 0 before the clamp
    monkeypatch.setattr(TrimmedScorer, "score_many",
                        lambda self, E, kept, explain=False: original(self, E, np.ones_like(kept), explain))
    det = _detector(scoring="robust", score_levels="all")
    X = _rows(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for agent in range(N):
            out = _item(det, agent, X[agent], ["eu", "a"]).anomaly
            for level in out["levels"]:
                assert level["mahalanobis_squared"] == 0.0 and level["mahalanobis_distance"] == 0.0
    assert out["p_value"] == 1.0


def test_nonnegative_d2_holds_only_values_below_zero_as_zero():
    d2 = np.array([NEGATIVE, 0.0, 2.5, -0.0, -3.0])
    same = nonnegative_d2(d2)
    assert same is d2 and d2.tolist() == [0.0, 0.0, 2.5, 0.0, 0.0]
    untouched = np.array([1.0, 0.0])
    assert nonnegative_d2(untouched).tolist() == [1.0, 0.0]
    assert nonnegative_d2(np.empty(0)).size == 0
