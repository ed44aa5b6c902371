"""Fault tolerance (a killed actor recovers from checkpoint + replay), dropped links, and a
lost driver resumed from disk (checkpoint folders and failed writes: test_ray_durability.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from swarmguard.api.detector import DistributedBehavioralDetector

from ._sim import assert_same_replica, detector_kwargs, drive

pytestmark = pytest.mark.ray

SMALL = dict(agents=3000, rounds=6, partition_at=2, heal_at=4, seed=11)


def kill(ray, handle) -> None:
    """Kill an actor and wait until its restarted (empty) incarnation answers."""
    old = ray.get(handle.actor.incarnation.remote())
    ray.kill(handle.actor, no_restart=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if ray.get(handle.actor.incarnation.remote(), timeout=10) != old:
                return
        except Exception:  # noqa: BLE001 - dead or restarting
            pass
        time.sleep(0.05)
    raise AssertionError(f"{handle.name} did not restart")


def test_killed_actors_recover_to_the_uninterrupted_state(ray_session):
    ray = ray_session
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector

    def between(det, r):
        if r == 3:      # checkpoint after round index 1; round index 2 is in the replay log
            kill(ray, det.region_shards[0])
            kill(ray, det.evidence_shards[1])
        if r == 5:      # inside a round: after the trees and the first CAP write, before the auto-sync
            engine = det.engine                 # the Ray engine runs the round's sync
            real_sync = engine._sync

            def sync_after_a_kill(*args, **kwargs):     # forwards the round's clock reading
                kill(ray, det.region_shards[1])
                engine._sync = real_sync
                return real_sync(*args, **kwargs)
            engine._sync = sync_after_a_kill
        if r == 4:      # right after a checkpoint (empty log): the root aggregator and another region
            kill(ray, det.root)
            kill(ray, det.region_shards[2])

    a, ra, _ = drive(lambda sc, now: DistributedBehavioralDetector(**detector_kwargs(sc, now)), SMALL)
    b, rb, _ = drive(lambda sc, now: RayDistributedBehavioralDetector(**detector_kwargs(sc, now),
                                                                      checkpoint_every=2), SMALL, between=between)
    try:
        assert b.region_shards[0].recoveries >= 1 and b.evidence_shards[1].recoveries >= 1
        assert b.region_shards[1].recoveries >= 1 and b.region_shards[2].recoveries >= 1
        for x, y in zip(ra, rb, strict=True):
            for key in ("isolate", "is_anomaly", "consensus_reached", "probability", "confidence"):
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        # no acknowledged update or evidence lost: the final state is the uninterrupted one
        exported = a.consensus.export_evidence()
        assert len(b.evidence_fingerprint()) == a.consensus.evidence_count == len(exported["log_odds"])
        for region in a.cap_resolver.regions:
            assert_same_replica(a.cap_resolver.replica(region), b.replica(region))
        g1, g2 = a.tree.get_global_statistics(), b.get_global_statistics()
        np.testing.assert_allclose(g2["covariance"], g1["covariance"], rtol=1e-12)
    finally:
        b.close()


def test_dropped_links_diverge_then_converge(ray_session):
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    now = [0.0]
    det = RayDistributedBehavioralDetector(regions=["eu", "us"], feature_dimensions=3, clock=lambda: now[0],
                                           evidence_partitions=1, warm_up=10)
    try:
        rng = np.random.default_rng(0)
        ids = np.arange(400)
        regions = np.where(ids % 2 == 0, "eu", "us")
        det.process_round(ids, rng.normal(size=(400, 3)), regions, timestamp=0.0)
        now[0] = 2.0
        det.sync()
        assert det.replica("eu").same_state(det.replica("us"))
        det.faults.drop([("eu", "us")])                      # both directions
        for r in range(1, 6):
            now[0] = 2.0 * r + 2.0
            res = det.process_round(ids, rng.normal(size=(400, 3)), regions, timestamp=now[0])
        assert det.faults.messages_dropped > 0
        eu, us = det.replica("eu"), det.replica("us")
        assert not eu.same_state(us)                          # diverged during the drop
        assert min(res["region_confidence"].values()) < 1.0   # and each knows its view is stale
        det.faults.restore()
        now[0] += 2.0
        det.sync()
        eu, us = det.replica("eu"), det.replica("us")
        assert eu.same_state(us)                              # converged after
        assert det.confidence_factor("eu") == det.confidence_factor("us") == 1.0
    finally:
        det.close()


def test_agents_that_change_region_move_between_actors(ray_session):
    """An agent that moves to a region on another actor leaves its old actor's tree."""
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    rng = np.random.default_rng(7)
    n, names = 1500, ["eu", "us", "ap"]
    now = [0.0]
    kw = dict(regions=names, feature_dimensions=4, clock=lambda: now[0], fdr=0.05, warm_up=50)
    a = DistributedBehavioralDetector(**kw)
    b = RayDistributedBehavioralDetector(**kw, evidence_partitions=1)
    try:
        ids = np.arange(n)
        region = np.array(names)[ids % 3]
        for r in range(3):
            now[0] = 2.0 * r
            if r == 2:
                region = region.copy()
                region[:300] = np.array(names)[(ids[:300] + 1) % 3]     # 300 agents move
            X = rng.normal(size=(n, 4))
            X[ids % 97 == 0] += 6.0
            x = a.process_round(ids, X, region, timestamp=now[0])
            y = b.process_round(ids, X, region, timestamp=now[0])
            for key in ("isolate", "is_anomaly", "probability", "confidence"):
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
            np.testing.assert_allclose(y["mahalanobis_squared"], x["mahalanobis_squared"], rtol=1e-12)
        g1, g2 = a.tree.get_global_statistics(), b.get_global_statistics()
        assert g2["count"] == n
        np.testing.assert_allclose(g2["covariance"], g1["covariance"], rtol=1e-12)
        for name in names:
            assert_same_replica(a.cap_resolver.replica(name), b.replica(name))
    finally:
        b.close()


def test_resume_from_disk_after_losing_the_driver(ray_session, tmp_path):
    """Checkpoints written to disk; the driver (and with it every actor) is lost one round
    after a checkpoint; a new driver resumes from the files and the log of calls since
    (a record cut short by the crash is ignored), nothing is sent again, and every round
    after matches an uninterrupted run."""
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    config = dict(agents=2000, rounds=6, partition_at=1, heal_at=4, seed=7)
    a, ra, _ = drive(lambda sc, now: DistributedBehavioralDetector(**detector_kwargs(sc, now)), config)
    state = {}

    def make(sc, now):
        state["now"] = now
        return RayDistributedBehavioralDetector(**detector_kwargs(sc, now), checkpoint_every=2,
                                                checkpoint_dir=tmp_path / "ckpt")

    def between(det, r):
        if r == 5:             # rounds 0-3 checkpointed (after round 3), round 4 only in the log of calls
            det.close()
            log = max((tmp_path / "ckpt").glob("wal-*.bin"))
            with open(log, "ab") as f:          # a call being logged when the driver died
                f.write((10**6).to_bytes(8, "little") + b"torn")
            new = RayDistributedBehavioralDetector.resume(tmp_path / "ckpt", clock=lambda: state["now"][0])
            state["det"] = new
            assert new.get_global_statistics()["count"] == config["agents"]
            return new
        return None

    b, rb, _ = drive(make, config, between=between)
    try:
        assert b is state["det"]
        for x, y in zip(ra, rb, strict=True):
            np.testing.assert_array_equal(x["isolate"], y["isolate"])
            np.testing.assert_array_equal(x["probability"], y["probability"])
            assert x["region_confidence"] == y["region_confidence"]
        assert b.consensus.evidence_count == a.consensus.evidence_count
        for region in a.cap_resolver.regions:
            assert_same_replica(a.cap_resolver.replica(region), b.replica(region))
    finally:
        b.close()


def test_per_item_calls_and_evidence_survive_a_lost_driver(ray_session, tmp_path):
    from swarmguard.api.protocol import BehavioralData
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    rng = np.random.default_rng(3)
    ids, X = np.arange(300), rng.normal(size=(300, 3))
    now = [0.0]
    det = RayDistributedBehavioralDetector(feature_dimensions=3, clock=lambda: now[0], checkpoint_dir=tmp_path,
                                           warm_up=100, require="either")
    det.process_round(ids, X, np.array(["eu", "us"])[ids % 2], cohorts=np.array(["a", "b", "c"])[ids % 3])
    for k, agent in enumerate([4, 7, 9]):
        now[0] = 1.0 + k
        data = BehavioralData(agent_id=agent, features=X[agent] + 6.0,
                              region=None if k == 1 else "eu")      # one without a region: stays in place
        det.process_agent_behavior_sync(agent, data)
    det.ingest_evidence(["o1"], [4], "behavioral_anomaly", [2.0], [1.0], [2.5], ["observer"])
    det.cap_resolver.partition([["eu"], ["us"]])
    before = {"stats": det.get_global_statistics(), "eu": det.replica("eu"),
              "cons": det.consensus.consensus(4), "evidence": det.evidence_fingerprint()}
    det.close()                                 # nothing after the empty start is in a checkpoint
    back = RayDistributedBehavioralDetector.resume(tmp_path, clock=lambda: now[0])
    try:
        np.testing.assert_allclose(back.get_global_statistics()["mean"], before["stats"]["mean"], rtol=1e-12)
        assert back.replica("eu").same_state(before["eu"])
        assert back.evidence_fingerprint() == before["evidence"]
        assert back.consensus.consensus(4)["log_odds"] == before["cons"]["log_odds"]
        assert back.cap_resolver.is_partitioned
    finally:
        back.close()
