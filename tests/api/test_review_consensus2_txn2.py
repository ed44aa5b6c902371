"""Regression tests from the review of the fix/consensus2 and fix/txn2 merges.

Each test documents a defect found in review and is marked ``xfail(strict=True)``: it fails
now, and will report XPASS (a failure under strict) once the defect is fixed, so the marker
must then be removed.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from swarmguard import (
    BehavioralData,
    ConsistencyModel,
    DistributedBehavioralDetector,
    StatisticalCAPResolver,
    SwarmGuardError,
)
from tests.api.test_detector import detector_state


# ---------------------------------------------------------------------- the clock
def _counting_clock():
    calls = []

    def clock():
        calls.append(1)
        return 100.0 + len(calls)
    return clock, calls


@pytest.mark.xfail(strict=True, reason="review: with a configured clock, a per-item call whose observation has "
                   "no timestamp reads the clock twice (the observation's timestamp, then the resolver's "
                   "processing time), so the two differ within one transaction")
def test_process_agent_behavior_reads_a_configured_clock_once_per_call():
    clock, calls = _counting_clock()
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=clock)
    det.process_round(np.arange(200), np.random.default_rng(4).normal(size=(200, 2)), "eu", timestamp=0.0)
    before = len(calls)
    det.process_agent_behavior_sync(1000, BehavioralData(1000, [9.0, -9.0], region="eu"))
    assert len(calls) - before == 1


@pytest.mark.xfail(strict=True, reason="review: process_round(timestamp=None) reads a configured clock twice "
                   "(the round's timestamp in _check_round, then _processing_time)")
def test_process_round_reads_a_configured_clock_once_per_round():
    clock, calls = _counting_clock()
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=clock)
    before = len(calls)
    det.process_round(np.arange(200), np.random.default_rng(4).normal(size=(200, 2)), "eu")
    assert len(calls) - before == 1


# ---------------------------------------------------------------------- ids made from node_id
@pytest.mark.xfail(strict=True, reason="review: a node_id the consensus accepts (999 characters) makes the "
                   "detector's own evidence ids longer than MAX_ID_LENGTH; the round is refused only after "
                   "the tree and the replicas changed")
def test_a_long_node_id_never_leaves_a_refused_round_half_applied():
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 5.0, node_id="n" * 999)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    det.process_round(np.arange(300), X, "eu")
    X[:5] += 9.0                      # five anomalies: the detector adds its own evidence
    before = detector_state(det)
    try:
        det.process_round(np.arange(300), X, "eu")
    except SwarmGuardError:
        assert detector_state(det) == before     # refused: nothing may have changed
    else:
        assert det.consensus.evidence_count >= 5


@pytest.mark.xfail(strict=True, reason="review: same on the per-item path: the update id '<node_id>:u<n>' is "
                   "refused by the resolver after the tree changed")
def test_a_long_node_id_never_leaves_a_refused_item_half_applied():
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 5.0, node_id="n" * 999)
    det.process_round(np.arange(300), np.random.default_rng(2).normal(size=(300, 2)), "eu")
    before = detector_state(det)
    try:
        det.process_agent_behavior_sync(7, BehavioralData(7, [0.25, -0.25], region="eu"))
    except SwarmGuardError:
        assert detector_state(det) == before
    else:
        assert det.tree.get_agent_features(7).tolist() == [0.25, -0.25]


# ---------------------------------------------------------------------- CAP resolver: now=
@pytest.mark.xfail(strict=True, reason="review: StatisticalCAPResolver._write advances the clock (_now(now)) "
                   "before an existing region's batch is validated, so a refused handle_updates_many(now=...) "
                   "moves the resolver's time forward and lowers every later confidence factor")
def test_a_refused_batch_with_now_does_not_move_the_resolvers_clock():
    r = StatisticalCAPResolver(consistency_model=ConsistencyModel.STATISTICAL, max_staleness_seconds=5.0,
                               clock=lambda: 10.0, regions=["eu", "us"])
    r.handle_updates_many("eu", [1, 2], [0.0, 0.0], [[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0])
    r.handle_updates_many("us", [3, 4], [0.0, 0.0], [[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0])
    r.sync()
    r.partition([["eu"], ["us"]])
    cf = r.confidence_factor("eu")
    with pytest.raises(SwarmGuardError):
        r.handle_updates_many("eu", [1], [0.0], [[np.nan, 1.0]], [0.0], now=1e6)
    assert r.read_clock() == 10.0
    assert r.confidence_factor("eu") == cf


# ---------------------------------------------------------------------- typed errors
@pytest.mark.xfail(strict=True, reason="review: called without now (the guide's resolver.handle_update), the "
                   "resolver reads its clock in _write and again in _view_report, so the report's view is at "
                   "a later time than the write it reports on")
@pytest.mark.parametrize("path", ["handle_update", "handle_updates_many"])
def test_the_resolver_reads_its_clock_once_per_write(path):
    from swarmguard import StatisticalUpdate
    clock, calls = _counting_clock()
    r = StatisticalCAPResolver(consistency_model=ConsistencyModel.STATISTICAL, clock=clock, regions=["eu", "us"])
    before = len(calls)
    if path == "handle_update":
        asyncio.run(r.handle_update(StatisticalUpdate("u1", 1, 0.0, [1.0, 2.0], 0.0, "eu")))
    else:
        r.handle_updates_many("eu", [1], [0.0], [[1.0, 2.0]], [0.0])
    assert len(calls) - before == 1
