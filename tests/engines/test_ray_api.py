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
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector, RayEngine
    det = DistributedBehavioralDetector(backend="ray", feature_dimensions=2, require="either")
    named = RayDistributedBehavioralDetector(feature_dimensions=2)      # the name kept for Ray code
    try:
        # one detector class over two engines (no __new__ that swaps the class)
        assert type(det) is DistributedBehavioralDetector and type(det.engine) is RayEngine
        assert isinstance(named, DistributedBehavioralDetector) and type(named.engine) is RayEngine
        assert isinstance(det, DistributedBehavioralDetector)
        assert det.require == "either" and det.settings.require == "either"
    finally:
        det.close()
        named.close()


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
        assert sorted(b.evidence_fingerprint()) == [("s", 1), ("s", 2)]
        for det in (a, b):
            assert det.ingest_evidence(**batch([1, 7], [10, 12])) == 1     # a resent id is skipped
    finally:
        b.close()


def test_evidence_ids_per_source_and_probation_as_in_process(ray_session):
    """A squatted id does not refuse an honest batch, and throw-away sources on probation
    neither vote nor get anyone flagged: the same results on both backends."""
    a, b = both(ray_session, feature_dimensions=2)
    rng = np.random.default_rng(4)
    n = 72
    honest = dict(evidence_ids=np.arange(n), agent_ids=np.arange(n) % 6, evidence_types="peer_report",
                  log_odds=1.0 + 0.1 * rng.normal(size=n), confidences=np.ones(n), timestamps=np.zeros(n),
                  source_nodes=np.repeat(np.array([f"h{i}" for i in range(6)]), 12))
    sybils = dict(evidence_ids=np.zeros(60, dtype=np.int64), agent_ids=np.r_[np.zeros(30, int), np.full(30, 99)],
                  evidence_types="peer_report", log_odds=np.full(60, -500.0) + rng.normal(size=60),
                  confidences=np.ones(60), timestamps=np.zeros(60),
                  source_nodes=np.array([f"sybil{i}" for i in range(60)]))
    try:
        for det in (a, b):
            assert det.ingest_evidence([5], [1], "peer_report", [9.0], [1.0], [0.0], ["liar"]) == 1  # squats id 5
            assert det.ingest_evidence(**honest) == n                                               # accepted whole
            assert det.ingest_evidence(**honest) == 0                                               # idempotent
            assert det.ingest_evidence(**sybils) == 60                                              # all id 0
        assert len(b.evidence_fingerprint()) == a.consensus.evidence_count == n + 61
        x, y = a.consensus.consensus_many(), b.consensus.consensus_many()
        assert x["byzantine_nodes"] == y["byzantine_nodes"] == []
        pos = {k: i for i, k in enumerate(np.asarray(y["agent_ids"]).tolist())}
        order = [pos[k] for k in np.asarray(x["agent_ids"]).tolist()]
        for key in ("log_odds", "consensus_reached", "source_count", "evidence_count"):
            np.testing.assert_array_equal(x[key], np.asarray(y[key])[order], err_msg=key)
        keys = np.asarray(x["agent_ids"]).tolist()
        assert x["source_count"][keys.index(0)] == 6 and x["consensus_reached"][keys.index(0)]
        assert x["source_count"][keys.index(99)] == 30 and not x["consensus_reached"][keys.index(99)]
        for agent in (0, 1, 99):
            one, two = a.consensus.consensus(agent), b.consensus.consensus(agent)
            assert one["log_odds"] == two["log_odds"] and one["source_count"] == two["source_count"]
    finally:
        b.close()


def _rows(ids, agents, log_odds, sources):
    n = len(ids)
    return dict(evidence_ids=np.asarray(ids), agent_ids=np.asarray(agents), evidence_types="peer_report",
                log_odds=np.asarray(log_odds, dtype=float), confidences=np.ones(n), timestamps=np.zeros(n),
                source_nodes=np.asarray(sources))


def _assert_same_consensus(a, b, agents):
    x, y = a.consensus.consensus_many(), b.consensus.consensus_many()
    assert x["byzantine_nodes"] == y["byzantine_nodes"]
    pos = {k: i for i, k in enumerate(np.asarray(y["agent_ids"]).tolist())}
    order = [pos[k] for k in np.asarray(x["agent_ids"]).tolist()]
    for key in ("log_odds", "consensus_reached", "source_count", "evidence_count"):
        np.testing.assert_array_equal(x[key], np.asarray(y[key])[order], err_msg=key)
    for agent in agents:
        one, two = a.consensus.consensus(agent), b.consensus.consensus(agent)
        for key in ("log_odds", "source_count", "probation_source_count", "consensus_reached"):
            assert one[key] == two[key], (agent, key)


def test_founding_sources_and_earning_on_covered_agents_as_in_process_and_after_resume(ray_session, tmp_path):
    """probation_evidence from the settings on both backends; the founding sources (all of the
    call that ended the founding) vote with one piece; a later source earns its vote only with
    evidence on agents founding sources report on; the founders survive resume from disk."""
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    kw = dict(feature_dimensions=2, probation_evidence=3)
    a = DistributedBehavioralDetector(**kw)
    b = RayDistributedBehavioralDetector(**kw, evidence_partitions=2, checkpoint_dir=tmp_path / "ckpt")
    founding = _rows([0, 1, 2, 3, 4, 5], [0, 0, 1, 0, 0, 2], [1.0, 1.0, 1.0, 2.0, 3.0, 1.0],
                     ["a", "a", "a", "b", "c", "c"])
    later = _rows(range(10, 33), [0, 1, *range(100, 120), 0], [-9.0, -9.0, *[-50.0] * 21],
                  ["d", "d", *["sybil"] * 21])
    try:
        assert b.settings.probation_evidence == 3
        for det in (a, b):
            det.ingest_evidence(**founding)
        b.checkpoint()                                  # the founders on disk
        for det in (a, b):
            det.ingest_evidence(**later)                # in the log of calls only
        r = a.consensus.consensus(0)
        assert r["source_count"] == 3 and r["probation_source_count"] == 2
        assert r["log_odds"] == 7.0 + a.consensus.prior_log_odds          # a, b, c: 2 + 2 + 3, f = 0
        _assert_same_consensus(a, b, [0, 1, 2, 100])
        b.close()
        b = RayDistributedBehavioralDetector.resume(tmp_path / "ckpt")
        _assert_same_consensus(a, b, [0, 1, 2, 100])
        for det in (a, b):
            det.ingest_evidence(**_rows([40], [2], [-9.0], ["d"]))    # d's third piece on a covered agent
        assert a.consensus.consensus(0)["source_count"] == 4
        _assert_same_consensus(a, b, [0, 1, 2, 100])
    finally:
        b.close()


def test_refused_rounds_change_nothing_and_do_not_wedge(ray_session):
    """Bad cohorts, a bad fdr or a wrongly sized cohort array: the same typed error on both
    backends, nothing changed, and the next good round gives the same answers."""
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], regions=["eu", "us"], warm_up=100)
    ids, X = swarm(300)
    reg = np.array(["eu", "us"])[ids % 2]
    try:
        for det in (a, b):
            det.process_round(ids, X, reg)
        before = b.get_global_statistics()["mean"].copy()
        moved = np.where(ids < 10, "us", reg)
        bad_calls = [
            (dict(cohorts=[("ok",)] * 299 + [("",)]), InvalidInputError),
            (dict(fdr=1.5), InvalidInputError),
            (dict(fdr="x"), InvalidTypeError),
            (dict(cohorts=np.array(["a"] * 10)), InvalidInputError),    # DimensionMismatchError is one
        ]
        for kw, err in bad_calls:
            for det in (a, b):
                with pytest.raises(err):
                    det.process_round(ids, X + 1.0, moved, **kw)
            np.testing.assert_array_equal(b.get_global_statistics()["mean"], before)
            assert b.get_global_statistics()["count"] == 300
        shards = dict(b._shard_of_region)
        with pytest.raises(InvalidTypeError):           # the Ray backend keeps one kind of id
            b.process_round(np.array(["x", "y"]), X[:2], "ap")
        with pytest.raises(InvalidInputError):
            b.process_round(np.array([2**63, 1], dtype=np.uint64), X[:2], "eu")
        assert b._shard_of_region == shards and b.regions == ["eu", "us"]
        now[0] = 1.0
        x, y = (det.process_round(list(ids), X + 1.0, moved) for det in (a, b))   # a list of NumPy ints
        assert_same_round(x, y)
    finally:
        b.close()


def test_numpy_int_agent_ids_are_one_agent_in_evidence(ray_session):
    a, b = both(ray_session, feature_dimensions=2)
    one = dict(evidence_types=EvidenceType.BEHAVIORAL_ANOMALY, log_odds=[1.0], confidences=[1.0],
               timestamps=[0.0], source_nodes=["s"])
    try:
        for det in (a, b):
            det.ingest_evidence([1, 2], np.array([5, 5]), EvidenceType.BEHAVIORAL_ANOMALY, [1.0, 1.0], [1.0, 1.0],
                                [0.0, 0.0], ["s", "s"])
            assert det.ingest_evidence(evidence_ids=[3], agent_ids=[np.int64(5)], **one) == 1
            assert det.ingest_evidence(evidence_ids=[3], agent_ids=[np.int64(5)], **one) == 0   # resent: skipped
            assert det.consensus.consensus(5)["evidence_count"] == 3
            assert list(det.consensus.consensus_many()["agent_ids"]) == [5]
            with pytest.raises(InvalidTypeError):
                det.ingest_evidence([9], [5], 0, [1.0], [1.0], [0.0], ["s"])        # evidence_types=0
    finally:
        b.close()


def test_per_item_with_cohort_levels_and_without_a_region(ray_session):
    """score_levels="all": the per-item cut and the agent's cohort are the in-process ones,
    also when the data names no region (the agent keeps its place)."""
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], warm_up=50, require="anomaly",
                score_levels="all", significance_level=1e-2)
    ids, X = swarm(400, outliers=0)
    reg = np.array(["eu", "us"])[ids % 2]
    try:
        for det in (a, b):
            det.process_round(ids, X, reg)
        for k, shift in enumerate([0.1, 3.2, 3.6, 4.0, 9.0, 0.2]):
            now[0] = 1.0 + k
            agent = 2 * k + 1                              # a "us" agent
            data = {"agent_id": agent, "features": X[agent] + shift}   # no region, no cohort
            ra, rb = (det.process_agent_behavior_sync(agent, data) for det in (a, b))
            assert ra["action"] == rb["action"], k
            assert ra["anomaly"]["cohort"] == rb["anomaly"]["cohort"] == ("us",)
            assert rb["anomaly"]["significance_level"] == pytest.approx(ra["anomaly"]["significance_level"])
            assert rb["anomaly"]["decision_p_value"] == pytest.approx(ra["anomaly"]["decision_p_value"], rel=1e-9)
            assert ra["confidence"] == rb["confidence"]
        assert a.tree.get_cohort_statistics(("us",))["count"] == 200
        assert sum(r["action"] == "isolate" for r in (ra, rb)) in (0, 2)
    finally:
        b.close()


# ---------------------------------------------------------------------- one transaction, on the driver

def _ray_state(det) -> dict:
    """What the Ray detector's actors and driver hold: population moments, every evidence,
    every replica's registers, and the driver's id -> shard map."""
    g = det.get_global_statistics()
    state = {"count": g["count"], "mean": np.asarray(g["mean"]).tobytes(),
             "covariance": np.asarray(g["covariance"]).tobytes(), "evidence": det.evidence_fingerprint(),
             "evidence_count": det.consensus.evidence_count, "regions": list(det.regions),
             "known_ids": det._route_ids().tobytes(), "known_shard": det._route_shard[: len(det._routes)].tobytes(),
             "evidence_number": det._evidence_number,
             "clock": det._latest, "last_sync": det._last_sync}     # the driver's clock high-water mark
    for region in det.regions:
        state[f"replica[{region}]"] = {k: np.asarray(v).tobytes() for k, v in det.replica(region).to_dict().items()}
    return state


def _objects(*values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


def refused_on_both(a, b, call, err, match=None):
    """``call`` raises ``err`` on the in-process detector ``a`` and the Ray detector ``b``,
    and leaves every Ray actor's state as it was."""
    before = _ray_state(b)
    for det in (a, b):
        with pytest.raises(err, match=match):
            call(det)
    assert _ray_state(b) == before


def test_ray_refuses_what_a_later_part_would_refuse_before_any_actor_changes(ray_session):
    """The in-process detector's reproducers: bad timestamps, ids the replicas refuse, NUL ids,
    data for another agent. The same typed error on both backends, the Ray state bit-identical,
    and the next good round the same on both."""
    from swarmguard.errors import NonFiniteError
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], regions=["eu", "us"], warm_up=100)
    ids, X = swarm(300)
    reg = np.array(["eu", "us"])[ids % 2]
    row = X[:1] + 0.5
    try:
        for det in (a, b):
            det.process_round(ids, X, reg)
        before = _ray_state(b)
        bad_rounds = [
            (lambda d: d.process_round([1], row, "eu", timestamp=float("nan")), NonFiniteError),
            (lambda d: d.process_round([1], row, "eu", timestamp="x"), InvalidTypeError),
            (lambda d: d.process_round([1], row, "eu", timestamp=[1.0]), InvalidTypeError),
            (lambda d: d.process_round(_objects((1, 2)), row, "eu"), InvalidTypeError),
            (lambda d: d.process_round([b"a"], row, "eu"), InvalidTypeError),
            (lambda d: d.process_round([2**63], row, "eu"), InvalidInputError),
            (lambda d: d.process_round(np.array([2**63], dtype=np.uint64), row, "eu"), InvalidInputError),
            (lambda d: d.process_round(np.array([1, 2]), X[:2], np.array(["eu", 3], dtype=object)),
             InvalidTypeError),
            (lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], timestamp=float("inf"))),
             NonFiniteError),
            (lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], timestamp="x")), InvalidTypeError),
            (lambda d: d.process_agent_behavior_sync(2, BehavioralData(1, row[0])), InvalidInputError),
            (lambda d: d.process_agent_behavior_sync((1, 2), BehavioralData((1, 2), row[0])), InvalidTypeError),
            (lambda d: d.process_agent_behavior_sync(2**63, BehavioralData(2**63, row[0])), InvalidInputError),
            (lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], id=1.5)), InvalidTypeError),
            (lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], id="u\x00")), InvalidInputError),
        ]
        for call, err in bad_rounds:
            refused_on_both(a, b, call, err)
        assert _ray_state(b) == before
        now[0] = 1.0
        x, y = (det.process_round(ids, X + 1.0, reg) for det in (a, b))
        assert_same_round(x, y)
    finally:
        b.close()


def test_ray_refuses_nul_ids_and_takes_object_arrays_of_strings(ray_session):
    """String ids: a NUL refused on the driver; object arrays (a pandas column) of ids, regions
    and cohorts give what NumPy string arrays give, on both backends."""
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], regions=["eu", "us"], warm_up=100)
    ids, X = swarm(300)
    names = np.array([f"agent-{i}" for i in ids])
    reg = np.array(["eu", "us"])[ids % 2]
    try:
        x, y = (det.process_round(names.astype(object), X, reg.astype(object), cohorts=reg.astype(object))
                for det in (a, b))
        assert_same_round(x, y)
        assert x["agent_ids"].dtype.kind == "U"
        before = _ray_state(b)
        for call in (lambda d: d.process_round(["agent-1\x00"], X[:1], "eu"),
                     lambda d: d.process_round(_objects("agent-1\x00"), X[:1], "eu"),
                     lambda d: d.process_round(np.array(["agent\x00-1"]), X[:1], "eu"),
                     lambda d: d.process_agent_behavior_sync("agent-1\x00", BehavioralData("agent-1\x00", X[0]))):
            refused_on_both(a, b, call, InvalidInputError, match="NUL")
        assert _ray_state(b) == before
        np.testing.assert_array_equal(a.tree.get_agent_features("agent-1"), X[1])
        now[0] = 1.0
        x, y = (det.process_round(names, X + 1.0, reg) for det in (a, b))
        assert_same_round(x, y)
    finally:
        b.close()


def test_ray_refuses_a_clock_gone_bad_huge_timestamps_and_bad_names_before_any_actor_changes(ray_session):
    """The in-process reproducers on Ray: the processing clock is read and checked with the
    other inputs (a clock returning NaN or a str used to fail in the CAP writes, after the
    trees changed); 10**400 is a NonFiniteError; NUL, the separator and overlong names refused."""
    from swarmguard.errors import NonFiniteError
    now = [0.0]
    a, b = both(ray_session, feature_dimensions=3, clock=lambda: now[0], regions=["eu", "us"], warm_up=100)
    ids, X = swarm(300)
    reg = np.array(["eu", "us"])[ids % 2]
    row = X[:1] + 0.5
    try:
        for det in (a, b):
            det.process_round(ids, X, reg)
        before = _ray_state(b)
        calls = [lambda d: d.process_round([1], row, "eu", timestamp=1.0),
                 lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], timestamp=1.0, region="eu"))]
        for bad, err in ((float("nan"), NonFiniteError), ("12.0", InvalidTypeError), (None, InvalidTypeError)):
            now[0] = bad
            for call in calls:
                refused_on_both(a, b, call, err, match="clock")
        assert _ray_state(b) == before
        now[0] = 1.0
        bad_calls = [
            (lambda d: d.process_round([1], row, "eu", timestamp=10**400), NonFiniteError),
            (lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], timestamp=10**400)),
             NonFiniteError),
            (lambda d: d.process_round([1], row, "e\x1fu"), InvalidInputError),
            (lambda d: d.process_round([1], row, "eu", cohorts=[("eu", "a\x1fb")]), InvalidInputError),
            (lambda d: d.process_round([1], row, "r" * 1001), InvalidInputError),
            (lambda d: d.process_round(["k" * 1001], row, "eu"), InvalidInputError),
            (lambda d: d.process_agent_behavior_sync(1, BehavioralData(1, row[0], region="e\x00u")),
             InvalidInputError),
        ]
        for call, err in bad_calls:
            refused_on_both(a, b, call, err)
        assert _ray_state(b) == before
        x, y = (det.process_round(ids, X + 1.0, reg) for det in (a, b))
        assert_same_round(x, y)
    finally:
        b.close()


def test_ray_reads_a_configured_clock_once_per_call_and_makes_valid_ids_from_a_long_node_id(ray_session):
    """As in process: a round without a timestamp and an item without one read the clock once
    (the timestamp is the processing time); a node id of 999 characters (the consensus takes
    it) makes own evidence ids of at most 1,000 characters, the same on both backends."""
    calls = []

    def clock():
        calls.append(1)
        return 100.0 + len(calls)
    a, b = both(ray_session, feature_dimensions=3, clock=clock, warm_up=100, node_id="n" * 999)
    ids, X = swarm(300)
    try:
        for det in (a, b):
            before = len(calls)
            det.process_round(ids, X, "eu")
            assert len(calls) - before == 1
            before = len(calls)
            out = det.process_agent_behavior_sync(1000, BehavioralData(1000, [9.0, -9.0, 9.0], region="eu"))
            assert len(calls) - before == 1 and out["anomaly"]["is_anomaly"]
        n = a.consensus.evidence_count
        assert b.consensus.evidence_count == n >= 13          # the 12 outliers and the item
        for own in ([k for s, k in b.evidence_fingerprint() if s == "n" * 999],
                    [k for k, s in zip(*(a.consensus.export_evidence()[c] for c in ("evidence_ids", "source_nodes")),
                                       strict=True) if s == "n" * 999]):
            assert len(set(own)) == len(own) == n and max(map(len, own)) <= 1000
    finally:
        b.close()


@pytest.mark.parametrize("change", ["partition", "heal"])
def test_ray_strong_link_change_with_a_bad_clock_changes_nothing(ray_session, change):
    """As in process: under STRONG a partition or heal syncs at once, reading the driver's
    clock once, before the links change; a clock gone bad refuses it with the links (and
    every replica, the clock's high-water mark) as they were."""
    now = [1.0]
    kw = dict(feature_dimensions=3, clock=lambda: now[0], regions=["eu", "us", "ap"], warm_up=200,
              consistency_model=ConsistencyModel.STRONG)
    a, b = both(ray_session, **kw)
    ids, X = swarm(90, outliers=0)
    try:
        for det in (a, b):
            links = det.cap_resolver
            det.process_round(ids, X, np.array(["eu", "us", "ap"])[ids % 3])
            if change == "heal":
                links.partition([["eu", "us"], ["ap"]])
            state = _ray_state(b) if det is b else None
            partitioned, visible = links.is_partitioned, links.visible_regions("eu")
            now[0] = float("nan")
            with pytest.raises(SwarmGuardError, match="clock"):
                links.partition([["eu"], ["us", "ap"]]) if change == "partition" else links.heal()
            assert (links.is_partitioned, links.visible_regions("eu")) == (partitioned, visible)
            if det is b:
                assert _ray_state(b) == state
            now[0] = 2.0
            links.partition([["eu"], ["us", "ap"]]) if change == "partition" else links.heal()
            assert links.visible_regions("eu") == (["eu"] if change == "partition" else ["ap", "eu", "us"])
            now[0] = 1.0
    finally:
        b.close()


def test_the_ray_views_wait_for_the_detectors_lock(ray_session):
    # The guide's attribute names on Ray (det.consensus, .protocol, .tree, .cap_resolver) read
    # the actors; a reader must wait for a round or an ingest_evidence another thread is in the
    # middle of (the review of fix/txn2 saw StaleShardError from an unlocked consensus_many).
    import threading

    det = DistributedBehavioralDetector(backend="ray", feature_dimensions=2, evidence_partitions=2)
    try:
        rng = np.random.default_rng(0)
        det.process_round(np.arange(200), rng.normal(size=(200, 2)), "eu")
        det.consensus.add_evidence_batch(["e1"], [3], "behavioral_anomaly", [1.0], [1.0], [0.0], ["obs"])
        readers = {"consensus_many": lambda: det.consensus.consensus_many(),
                   "byzantine_nodes": lambda: det.consensus.byzantine_nodes,
                   "score_many": lambda: det.protocol.score_many(),
                   "global_statistics": lambda: det.tree.get_global_statistics(),
                   "confidence_factor": lambda: det.cap_resolver.confidence_factor("eu")}
        for name, read in readers.items():
            done = threading.Event()
            worker = threading.Thread(target=lambda read=read, done=done: (read(), done.set()), daemon=True)
            with det._lock:                    # another thread's transaction, in progress
                worker.start()
                assert not done.wait(0.5), f"{name} read the actors while the detector's lock was held"
            assert done.wait(60), f"{name} did not finish once the lock was released"
            worker.join(60)
    finally:
        det.close()
