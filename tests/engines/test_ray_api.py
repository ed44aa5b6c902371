"""The Ray backend behind the detector's own API: backend=, regions that join late,
STRONG, the guide's per-item loop, per-agent consensus and all-or-nothing evidence."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.api.cap import ConsistencyModel, QuorumUnavailableError
from swarmguard.api.detector import DistributedBehavioralDetector
from swarmguard.api.evidence_types import BayesianEvidence, EvidenceType
from swarmguard.api.protocol import BehavioralData
from swarmguard.errors import (
    DuplicateEvidenceError,
    InvalidInputError,
    InvalidTypeError,
    SwarmGuardError,
)

from ._sim import assert_same_replica

pytestmark = pytest.mark.ray


def both(ray_session, **kw):
    """The in-process and the Ray detector, built the same way through ``backend=``."""
    a = DistributedBehavioralDetector(**kw)
    b = DistributedBehavioralDetector(backend="ray", evidence_partitions=2, **kw)
    return a, b


def swarm(n: int = 1200, d: int = 3, seed: int = 0, outliers: int = 12):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[:outliers] += 9.0
    return np.arange(n), X


def assert_same_round(x: dict, y: dict) -> None:
    for key in ("agent_ids", "action", "is_anomaly", "consensus_reached", "probability", "confidence"):
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert x["region_confidence"] == y["region_confidence"]
    assert x["accepted"] == y["accepted"]
    np.testing.assert_allclose(y["mahalanobis_squared"], x["mahalanobis_squared"], rtol=1e-12)


def test_backend_parameter_builds_a_ray_detector(ray_session):
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    det = DistributedBehavioralDetector(backend="ray", feature_dimensions=2, require="either")
    try:
        assert type(det) is RayDistributedBehavioralDetector
        assert isinstance(det, DistributedBehavioralDetector)
        assert det.require == "either" and det.settings.require == "either"
    finally:
        det.close()


def test_bad_parameters_fail_on_the_driver_with_typed_errors(ray_session):
    with pytest.raises(InvalidInputError, match="backend"):
        DistributedBehavioralDetector(backend="spark")
    with pytest.raises(InvalidTypeError, match="address"):
        DistributedBehavioralDetector(address="auto")          # a Ray option on the in-process backend
    for bad in (dict(region_workers=0), dict(evidence_partitions=0), dict(significance_level=2.0),
                dict(branching_factor=1), dict(require="all"), dict(regions=["eu", "eu"])):
        with pytest.raises(SwarmGuardError):
            DistributedBehavioralDetector(backend="ray", **bad)


def test_regions_join_when_they_first_write_as_in_process(ray_session):
    """No regions up front; a region appears during a partition, another after the heal."""
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], warm_up=200)
    ids, X = swarm()
    rounds = [["eu", "us"], ["eu", "us"], ["eu", "us", "ap"], ["eu", "us", "ap"], ["eu", "us", "ap", "sa"]]
    lows = []
    try:
        for r, names in enumerate(rounds):
            now[0] = 10.0 * r
            if r == 1:
                for det in (a, b):
                    det.cap_resolver.sync()                 # everyone hears of everyone, then the cut
                    det.cap_resolver.partition([["eu"], ["us"]])
            if r == 3:
                for det in (a, b):
                    det.cap_resolver.heal()
                    det.cap_resolver.sync()
            regions = np.array(names)[ids % len(names)]
            x, y = (det.process_round(ids, X + 0.01 * r, regions) for det in (a, b))
            assert_same_round(x, y)
            lows.append(min(y["region_confidence"].values()))
        assert b.regions == a.cap_resolver.regions == ["eu", "us", "ap", "sa"]
        assert min(lows[1:3]) < 1.0 and lows[-1] == 1.0         # the partition showed, the heal restored
        for region in a.cap_resolver.regions:
            assert_same_replica(a.cap_resolver.replica(region), b.replica(region))
    finally:
        b.close()


def test_strong_refuses_a_minority_round_and_changes_nothing(ray_session):
    now = [0.0]
    kw = dict(feature_dimensions=3, clock=lambda: now[0], regions=["eu", "us", "ap"], warm_up=200,
              consistency_model=ConsistencyModel.STRONG)
    a, b = both(ray_session, **kw)
    ids, X = swarm(900)
    regions = np.array(["eu", "us", "ap"])[ids % 3]
    try:
        for det in (a, b):
            det.process_round(ids, X, regions)
            det.cap_resolver.partition([["eu", "us"], ["ap"]])
        before = b.get_global_statistics()["mean"].copy()
        for det in (a, b):
            with pytest.raises(QuorumUnavailableError):
                det.process_round(ids, X + 5.0, regions)       # "ap" is a minority
        np.testing.assert_array_equal(b.get_global_statistics()["mean"], before)
        np.testing.assert_allclose(a.tree.get_global_statistics()["mean"], before, rtol=1e-12)
        majority = regions != "ap"
        now[0] = 3.0
        x, y = (det.process_round(ids[majority], X[majority] + 1.0, regions[majority]) for det in (a, b))
        assert_same_round(x, y)
        for region in ("eu", "us", "ap"):      # write-through reached the reachable peer, not "ap"
            assert a.cap_resolver.replica(region).registers.to_dict().keys()
            assert_same_replica(a.cap_resolver.replica(region), b.replica(region))
    finally:
        b.close()


def test_per_item_loop_matches_in_process(ray_session):
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], warm_up=100, require="either",
                significance_level=1e-3)
    ids, X = swarm(400, outliers=0)
    rng = np.random.default_rng(5)
    try:
        for det in (a, b):
            det.process_round(ids, X, "eu")
        for k in range(12):
            now[0] = 1.0 + k
            agent = int(rng.integers(400))
            x = X[agent] + (8.0 if k % 3 == 0 else 0.1)
            data = BehavioralData(agent_id=agent, features=x, region="eu")
            ra, rb = (det.process_agent_behavior_sync(agent, data) for det in (a, b))
            assert ra["action"] == rb["action"]
            assert ra["confidence"] == rb["confidence"]
            assert ra["anomaly"]["is_anomaly"] == rb["anomaly"]["is_anomaly"]
            assert rb["anomaly"]["mahalanobis_squared"] == pytest.approx(ra["anomaly"]["mahalanobis_squared"],
                                                                         rel=1e-9)
            assert rb["anomaly"]["population_count"] == ra["anomaly"]["population_count"] == 400
            assert (ra["evidence"] is None) == (rb["evidence"] is None)
            if ra["evidence"] is not None:
                for key in ("probability", "log_odds", "consensus_reached", "evidence_count", "byzantine_nodes"):
                    assert ra["evidence"][key] == rb["evidence"][key], key
        assert a.consensus.evidence_count == b.consensus.evidence_count >= 4     # outliers were flagged
    finally:
        b.close()


async def _guide_loop(det, rows):
    out = []
    for agent, x in rows:
        out.append(await det.process_agent_behavior(agent, {"agent_id": agent, "features": x}))
    await det.consensus.add_evidence(BayesianEvidence("obs-1", rows[0][0], EvidenceType.BEHAVIORAL_ANOMALY,
                                                      2.0, 1.0, 0.0, "observer"))
    out.append(await det.consensus.distributed_evidence_consensus(rows[0][0]))
    return out


def test_async_api_of_the_guide_runs_on_ray(ray_session):
    import asyncio
    ids, X = swarm(300, outliers=0)
    rows = [(int(i), X[i]) for i in ids[:5]]
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0])
    try:
        for det in (a, b):
            det.process_round(ids, X, "default")
        ra, rb = asyncio.run(_guide_loop(a, rows)), asyncio.run(_guide_loop(b, rows))
        assert [r["action"] for r in ra[:-1]] == [r["action"] for r in rb[:-1]]
        assert ra[-1]["log_odds"] == rb[-1]["log_odds"] and ra[-1]["source_count"] == rb[-1]["source_count"] == 1
    finally:
        b.close()


def test_evidence_batch_is_all_or_nothing_across_partitions(ray_session):
    a, b = both(ray_session, feature_dimensions=2)

    def batch(eids, agents, conf=None):
        m = len(eids)
        return dict(evidence_ids=np.array(eids), agent_ids=np.array(agents), evidence_types=EvidenceType.BEHAVIORAL_ANOMALY,
                    log_odds=np.ones(m), confidences=np.ones(m) if conf is None else np.array(conf),
                    timestamps=np.zeros(m), source_nodes=np.array(["s"] * m))
    try:
        for det in (a, b):
            assert det.ingest_evidence(**batch([1, 2], [10, 11])) == 2
        bad = [
            (batch([3, 4], [10, 11], conf=[1.0, 2.0]), InvalidInputError),   # a bad value in the 2nd partition
            (batch([5, 1], [10, 13]), DuplicateEvidenceError),                # id 1 stored for agent 10
            (batch([6, 6], [10, 11]), DuplicateEvidenceError),                # one id, two agents, two partitions
        ]
        for cols, err in bad:
            for det in (a, b):
                with pytest.raises(err):
                    det.ingest_evidence(**cols)
                assert det.consensus.evidence_count == 2
        assert sorted(b.evidence_fingerprint()) == [1, 2]
        for det in (a, b):
            assert det.ingest_evidence(**batch([1, 7], [10, 12])) == 1     # a resent id is skipped
    finally:
        b.close()
