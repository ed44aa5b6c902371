"""DistributedBehavioralDetector: rounds stay whole (observers reusing evidence ids, extreme agents)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from swarmguard import BehavioralData, DistributedBehavioralDetector, p_value_log_odds
from swarmguard.api.cap import QuorumUnavailableError
from swarmguard.errors import (
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
    SwarmGuardError,
)
from tests._clocks import counting_clock
from tests._threads import run_threads


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


# ---------------------------------------------------------------------- one transaction
# A call either raises a typed error and leaves all three parts (tree, consensus,
# CAP resolver) bit for bit as they were, or updates all three.



def _frozen(value):
    """A value in a form compared bit for bit: arrays by dtype, shape and bytes, floats by repr."""
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return ("O", value.shape, tuple(_frozen(v) for v in value.tolist()))
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, float):
        return ("f", math.copysign(1.0, value), value.hex() if math.isfinite(value) else repr(value))
    return value


def detector_state(det) -> dict:
    """Everything the detector's three parts hold: the tree's agents, vectors and cohorts, every
    replica's registers and moments, the resolver's clock (its high-water mark, the last sync's
    time and the background sync task, which ``to_dict`` leaves out: a refused call that moved
    them would change every later confidence factor), every piece of evidence with the
    consensus sums, and the detector's own id counters."""
    cap = det.cap_resolver
    state = {
        "tree": _frozen(det.tree.to_dict()),
        "tree_size": len(det.tree),
        "tree_version": det.tree.version,
        "cap": _frozen(cap.to_dict()),
        "cap_clock": _frozen(cap._latest),          # no public accessor: read_clock() reads the clock too
        "cap_last_sync": _frozen(cap._last_sync),
        "cap_sync_task": cap._sync_task,
        "evidence_count": det.consensus.evidence_count,
        "evidence": _frozen(det.consensus.export_evidence()),
        "evidence_number": det._evidence_number,
        "update_seq": repr(det._update_seq),        # "count(n)": the next update id, without taking it
    }
    if det.consensus.evidence_count:
        state["consensus"] = _frozen(det.consensus.consensus_many(include_sum=True))
    return state


def assert_refused_unchanged(det, call, error=SwarmGuardError, match=None):
    """``call(det)`` raises ``error`` and every part of ``det`` is bit-identical afterwards."""
    before = detector_state(det)
    with pytest.raises(error, match=match) as info:
        call(det)
    assert isinstance(info.value, SwarmGuardError), f"untyped {type(info.value).__name__}: {info.value}"
    assert detector_state(det) == before
    return info.value


def _warm_detector(**kw):
    """A detector after one round of 300 agents, five of them anomalous (so with own evidence)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    X[:5] += 9.0
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 5.0, **kw)
    out = det.process_round(np.arange(300), X, "eu")
    assert out["is_anomaly"][:5].all() and det.consensus.evidence_count == 5
    return det


def test_observers_with_few_pieces_keep_their_vote_beside_the_detectors_own_node():
    """The detector's node is trusted (it always votes); that must not put the observers on
    probation: until some observer has sent probation_evidence pieces, every source votes."""
    det = _warm_detector()                       # the detector's own evidence on agents 0..4
    det.ingest_evidence(["o1", "o2", "o3"], [0, 0, 0], "peer_report", [2.0, 2.5, 3.0], [1.0] * 3, [0.0] * 3,
                        ["p", "q", "r"])
    r = det.consensus.consensus(0)
    assert r["source_count"] == 4 and r["probation_source_count"] == 0
    many = det.consensus.consensus_many(agent_ids=[0])
    assert many["source_count"][0] == 4 and many["probation_source_count"][0] == 0


ONE_ROW = np.array([[0.5, -0.5]])


def _object_ids(*values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


@pytest.mark.parametrize("timestamp, error", [
    (float("nan"), NonFiniteError), (float("inf"), NonFiniteError), (-float("inf"), NonFiniteError),
    ("12.5", InvalidTypeError), ("x", InvalidTypeError), ([1.0], InvalidTypeError), (np.array([1.0]), InvalidTypeError),
])
def test_process_round_refuses_a_bad_timestamp_and_changes_nothing(timestamp, error):
    det = _warm_detector()
    assert_refused_unchanged(det, lambda d: d.process_round([1], ONE_ROW, "eu", timestamp=timestamp), error)
    assert_refused_unchanged(det, lambda d: d.process_round([1000], ONE_ROW, "eu", timestamp=timestamp), error)


@pytest.mark.parametrize("ids, error", [
    (_object_ids((1, 2)), InvalidTypeError),                     # a tuple: the tree takes it, the replicas not
    ([(1, 2)], InvalidTypeError),
    ([b"a"], InvalidTypeError),                                  # bytes
    ([2**63], InvalidInputError),                                # beyond int64
    (_object_ids(2**63), InvalidInputError),
    (np.array([2**63], dtype=np.uint64), InvalidInputError),     # uint64 ids >= 2**63
    (np.array([3, 2**64 - 1], dtype=np.uint64), InvalidInputError),
    (["a\x00"], InvalidInputError),                              # NUL: NumPy would store it as "a"
    (_object_ids("a\x00"), InvalidInputError),
    (np.array(["a\x00b"]), InvalidInputError),
    ([1.5], InvalidTypeError), ([True], InvalidTypeError), ([None], InvalidInputError),
])
def test_process_round_refuses_ids_the_replicas_refuse_and_changes_nothing(ids, error):
    det = _warm_detector()
    assert_refused_unchanged(det, lambda d: d.process_round(ids, np.ones((len(ids), 2)), "eu"), error)


def test_process_round_with_a_nul_id_does_not_overwrite_the_agent_without_it():
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 0.0)
    det.process_round(["a", "b", "c"], np.eye(3, 2), "eu")
    assert_refused_unchanged(det, lambda d: d.process_round(["a\x00"], [[7.0, 7.0]], "eu"), InvalidInputError)
    np.testing.assert_array_equal(det.tree.get_agent_features("a"), [1.0, 0.0])


def test_process_round_refuses_a_region_that_is_not_a_string_naming_it():
    det = _warm_detector()
    err = assert_refused_unchanged(
        det, lambda d: d.process_round([1, 2], np.ones((2, 2)), np.array(["eu", 3], dtype=object)),
        InvalidTypeError)
    assert "regions[1]" in str(err)
    assert_refused_unchanged(det, lambda d: d.process_round([1, 2], np.ones((2, 2)), np.array([1, 2])),
                             InvalidTypeError)
    assert_refused_unchanged(det, lambda d: d.process_round([1, 2], np.ones((2, 2)), ["eu"]), InvalidInputError)


def test_process_round_takes_object_arrays_of_strings_as_string_arrays():
    """What a pandas column gives: regions, cohorts and ids as object arrays of str (or of int)."""
    rng = np.random.default_rng(5)
    n = 2000
    X = rng.normal(size=(n, 3))
    X[:10] += 8.0
    names = np.array([f"agent-{i}" for i in range(n)])
    regions = np.where(np.arange(n) % 3 == 0, "eu", "us")
    cohorts = np.where(np.arange(n) % 2 == 0, "rack-a", "rack-b")
    results = []
    for as_object in (False, True):
        conv = (lambda a: a.astype(object)) if as_object else (lambda a: a)
        det = DistributedBehavioralDetector(feature_dimensions=3, warm_up=100, clock=lambda: 1.0)
        out_s = det.process_round(conv(names), X, conv(regions), cohorts=conv(cohorts))
        det2 = DistributedBehavioralDetector(feature_dimensions=3, warm_up=100, clock=lambda: 1.0)
        out_i = det2.process_round(conv(np.arange(n)) if as_object else np.arange(n), X, conv(regions))
        results.append((out_s, out_i, det, det2))
    (s0, i0, d0, e0), (s1, i1, d1, e1) = results
    for a, b in ((s0, s1), (i0, i1)):
        for key in ("agent_ids", "action", "is_anomaly", "mahalanobis_squared", "p_value", "probability",
                    "confidence"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a["region_confidence"] == b["region_confidence"]
    assert s1["is_anomaly"][:10].all()
    assert detector_state(d0) == detector_state(d1) and detector_state(e0) == detector_state(e1)


@pytest.mark.parametrize("timestamp", [10**400, -(10**400)])
def test_a_timestamp_beyond_the_float_range_is_a_non_finite_error(timestamp):
    """float(10**400) raises a bare OverflowError."""
    det = _warm_detector()
    assert_refused_unchanged(det, lambda d: d.process_round([1], ONE_ROW, "eu", timestamp=timestamp),
                             NonFiniteError)
    assert_refused_unchanged(det, lambda d: d.process_agent_behavior_sync(1, _item(timestamp=timestamp)),
                             NonFiniteError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "12.0", None, [5.0]])
def test_a_clock_gone_bad_refuses_the_round_before_the_tree_changes(bad):
    """The CAP resolver read its clock itself after the tree had changed: a clock that
    returns NaN (or a str) left the tree updated and the replicas not."""
    reading = [5.0]
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    X[:5] += 9.0
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: reading[0])
    det.process_round(np.arange(300), X, "eu")
    reading[0] = bad
    error = InvalidInputError
    calls = [lambda d: d.process_round([1], ONE_ROW, "eu", timestamp=6.0),
             lambda d: d.process_round([1000, 1001], [[9.0, 9.0], [0.0, 0.0]], ["eu", "us"], timestamp=6.0),
             lambda d: d.process_agent_behavior_sync(1, _item(timestamp=6.0, region="eu")),
             lambda d: d.process_agent_behavior_sync(1000, _item(agent_id=1000, features=[9.0, 9.0],
                                                                  timestamp=6.0, region="us"))]
    for call in calls:
        assert_refused_unchanged(det, call, error, match="clock")
    reading[0] = 7.0                    # the clock recovers: the same calls go through
    for call in calls:
        call(det)
    assert len(det.tree) == 302 and det.cap_resolver.regions == ["eu", "us"]


@pytest.mark.parametrize("bad", ["e\x00u", "eu\x00", "e\x1fu", "\x1f", "r" * 1001])
def test_region_and_cohort_names_with_nul_separator_or_overlong_are_refused(bad):
    """"eu\x00" would be stored as "eu" by a NumPy string array and "a\x1fb" read back from a
    checkpoint as the path ("a", "b"): two names aliasing one."""
    det = _warm_detector()
    for call in (lambda d: d.process_round([1], ONE_ROW, bad),
                 lambda d: d.process_round([1, 2], np.ones((2, 2)), ["eu", bad]),
                 lambda d: d.process_round([1, 2], np.ones((2, 2)), np.array(["eu", bad], dtype=object)),
                 lambda d: d.process_round([1], ONE_ROW, "eu", cohorts=[("eu", bad)]),
                 lambda d: d.process_round([1], ONE_ROW, "eu", cohorts=[bad]),
                 lambda d: d.process_round([1], ONE_ROW, "eu", cohorts=np.array([bad], dtype=object)),
                 lambda d: d.process_agent_behavior_sync(1, _item(region=bad)),
                 lambda d: d.process_agent_behavior_sync(1, _item(cohort=("eu", bad))),
                 lambda d: d.process_agent_behavior_sync(1, {"agent_id": 1, "features": [0.0, 0.0],
                                                             "region": bad})):
        assert_refused_unchanged(det, call, InvalidInputError)
    if not bad.endswith("\x00"):        # a NumPy string array keeps it (a trailing NUL is gone already)
        assert_refused_unchanged(det, lambda d: d.process_round([1, 2], np.ones((2, 2)), np.array(["eu", bad])),
                                 InvalidInputError)
        assert_refused_unchanged(
            det, lambda d: d.process_round([1, 2], np.ones((2, 2)), "eu", cohorts=np.array(["eu", bad])),
            InvalidInputError)


def test_a_hundred_million_character_region_or_id_is_refused_and_changes_nothing():
    det = _warm_detector()
    huge = "r" * 10**8
    X = np.zeros((5000, 2))
    for call in (lambda d: d.process_round(np.arange(5000), X, huge),
                 lambda d: d.process_round([huge], ONE_ROW, "eu"),
                 lambda d: d.process_agent_behavior_sync(huge, _item(agent_id=huge)),
                 lambda d: d.process_agent_behavior_sync(1, _item(region=huge)),
                 lambda d: d.process_agent_behavior_sync(1, _item(id=huge))):
        err = assert_refused_unchanged(det, call, InvalidInputError, match="at most 1000")
        assert len(str(err)) < 400


# ---------------------------------------------------------------------- the per-item path

def _item(**kw):
    kw.setdefault("agent_id", 1)
    kw.setdefault("features", [0.5, -0.5])
    return BehavioralData(**kw)


@pytest.mark.parametrize("timestamp, error", [
    (float("nan"), NonFiniteError), (float("inf"), NonFiniteError), ("x", InvalidTypeError),
    ("3.0", InvalidTypeError), ([1], InvalidTypeError),
])
def test_process_agent_behavior_refuses_a_bad_timestamp_and_changes_nothing(timestamp, error):
    det = _warm_detector()
    assert_refused_unchanged(det, lambda d: d.process_agent_behavior_sync(1, _item(timestamp=timestamp)), error)
    # a mapping too, and an anomalous new agent (evidence would follow)
    data = {"agent_id": 1000, "features": [9.0, 9.0], "timestamp": timestamp}
    assert_refused_unchanged(det, lambda d: d.process_agent_behavior_sync(1000, data), error)


@pytest.mark.parametrize("agent_id, error", [
    ((1, 2), InvalidTypeError), (b"a", InvalidTypeError), (2**63, InvalidInputError),
    (-(2**63) - 1, InvalidInputError), ("a\x00", InvalidInputError), (1.0, InvalidTypeError),
])
def test_process_agent_behavior_refuses_ids_the_replicas_refuse_and_changes_nothing(agent_id, error):
    det = _warm_detector()
    assert_refused_unchanged(
        det, lambda d: d.process_agent_behavior_sync(agent_id, _item(agent_id=agent_id)), error)


@pytest.mark.parametrize("call_id, data_id", [(2, 1), ("1", 1), (1, "1"), (1, (1,))])
def test_process_agent_behavior_refuses_data_for_another_agent(call_id, data_id):
    """Today the tree would update one agent and the replicas another."""
    det = _warm_detector()
    assert_refused_unchanged(det, lambda d: d.process_agent_behavior_sync(call_id, _item(agent_id=data_id)),
                             InvalidInputError)


def test_process_agent_behavior_accepts_the_same_id_in_another_integer_type():
    det = _warm_detector()
    out = det.process_agent_behavior_sync(np.int64(7), _item(agent_id=7))
    assert out["agent_id"] == 7 and type(out["agent_id"]) is int


def test_process_agent_behavior_returns_a_typed_result_readable_as_the_guides_dict():
    import dataclasses

    from swarmguard.api import ItemResult

    det = _warm_detector()
    out = det.process_agent_behavior_sync(1000, _item(agent_id=1000, features=[9.0, -9.0]))
    assert isinstance(out, ItemResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.action = "monitor"
    assert list(out.keys()) == ["agent_id", "action", "confidence", "evidence", "anomaly"] == list(out)
    assert len(out) == 5 and "action" in out and "isolated" not in out
    assert out["action"] == out.action and out.get("evidence") is out.evidence and out.get("nope", 3) == 3
    assert out["anomaly"]["is_anomaly"] is True
    assert out == dict(out) == out.to_dict()
    with pytest.raises(KeyError):
        out["nope"]


@pytest.mark.parametrize("update_id, error", [
    (1.5, InvalidTypeError), ((1,), InvalidTypeError), (b"u", InvalidTypeError), ("u\x00", InvalidInputError),
    (2**64, InvalidInputError),
])
def test_process_agent_behavior_refuses_an_update_id_the_replicas_refuse(update_id, error):
    det = _warm_detector()
    assert_refused_unchanged(det, lambda d: d.process_agent_behavior_sync(1, _item(id=update_id)), error)


def test_process_agent_behavior_under_strong_without_quorum_changes_nothing():
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 5.0,
                                        consistency_model="strong", regions=["eu", "us", "ap"])
    rng = np.random.default_rng(3)
    det.process_round(np.arange(300), rng.normal(size=(300, 2)), np.array(["eu", "us", "ap"] * 100))
    det.cap_resolver.partition([["eu"], ["us", "ap"]])
    assert_refused_unchanged(det, lambda d: d.process_agent_behavior_sync(1, _item(region="eu")),
                             QuorumUnavailableError)
    assert det.process_agent_behavior_sync(1, _item(region="us"))["agent_id"] == 1   # the majority side writes


@pytest.mark.parametrize("squatter", ["observer", "detector"])
def test_process_agent_behavior_skips_an_evidence_id_an_observer_holds(squatter):
    """The detector's next own evidence id sent first by another source: ids are per source, so
    it does not block the detector's; sent under the detector's own node id, the call takes the
    next free id. Either way all three parts are updated, never only the tree and the replica."""
    det = _warm_detector()
    assert det.node_id == "detector"
    squatted = f"{det.node_id}:{det._evidence_number}"
    det.ingest_evidence([squatted], [299], "behavioral_anomaly", [1.0], [1.0], [0.0], [squatter])
    count, size, version = det.consensus.evidence_count, len(det.tree), det.tree.version
    out = det.process_agent_behavior_sync(1000, _item(agent_id=1000, features=[9.0, -9.0], region="eu"))
    assert out["anomaly"]["is_anomaly"]
    assert det.consensus.evidence_count == count + 1 and len(det.tree) == size + 1 and det.tree.version > version
    assert 1000 in det.cap_resolver.replica("eu").registers
    exported = det.consensus.export_evidence()
    mine = [e for e, a in zip(exported["evidence_ids"], exported["agent_ids"], strict=True) if a == 1000]
    assert len(mine) == 1 and (mine[0] != squatted) == (squatter == det.node_id)
    assert det.consensus.consensus(299)["source_count"] == 1     # the observer's evidence untouched


def test_the_per_item_fast_path_decides_as_the_parts_public_methods_do():
    """The per-item call hands the resolver its checked values and asks the consensus without
    an exception; a detector whose resolver and consensus are subclasses that override the
    public methods (so the call goes through them, as it did before) gives the same results
    and leaves the same replicas, and a subclass's own rule gets the resolver's whole report."""
    from swarmguard.api.cap import StatisticalCAPResolver
    from swarmguard.api.consensus import StableBayesianConsensus

    class PublicResolver(StatisticalCAPResolver):
        def handle_update_sync(self, update, *, now=None):
            return super().handle_update_sync(update, now=now)

    class PublicConsensus(StableBayesianConsensus):
        def distributed_evidence_consensus_sync(self, agent_id):
            return super().distributed_evidence_consensus_sync(agent_id)

    reports = []

    class OwnRule(DistributedBehavioralDetector):
        def should_trigger_response(self, anomaly_info, cap_result, consensus_result=None):
            reports.append(cap_result)
            return super().should_trigger_response(anomaly_info, cap_result, consensus_result)

    def make(cls=DistributedBehavioralDetector, public=False):
        det = cls(feature_dimensions=3, clock=lambda: 0.0, warm_up=20, regions=["eu", "us"])
        if public:
            det.cap_resolver = PublicResolver(clock=lambda: 0.0, regions=["eu", "us"])
            st = det.settings
            det.consensus = PublicConsensus(byzantine_threshold=st.byzantine_threshold,
                                            partition_size=st.partition_size,
                                            prior_probability=st.prior_probability,
                                            trusted_sources=[st.node_id],
                                            probation_evidence=st.probation_evidence)
        return det

    fast, slow, own = make(), make(public=True), make(OwnRule)
    rng = np.random.default_rng(9)
    for step in range(150):
        agent = int(rng.integers(0, 40))
        x = rng.normal(size=3) + (8.0 if agent < 3 and step > 60 else 0.0)
        data = BehavioralData(agent, x, region="eu" if agent % 2 else "us")
        results = [d.process_agent_behavior_sync(agent, data) for d in (fast, slow, own)]
        assert repr(results[0]) == repr(results[1]) == repr(results[2])
    assert fast.consensus.evidence_count > 0          # some agents were anomalous: evidence, consensus
    assert reports and all("global_estimate" in r for r in reports)
    for region in ("eu", "us"):
        assert repr(fast.cap_resolver.global_estimate(region)) == repr(slow.cap_resolver.global_estimate(region))
        assert fast.cap_resolver.replica(region).same_state(slow.cap_resolver.replica(region))


def test_the_per_item_path_calls_parts_methods_replaced_on_the_instance():
    """A method set on the instance (a wrapper that counts, logs or injects faults) replaces
    the class's for the per-item call as it does for any caller: the resolver's
    handle_update_sync, the consensus's distributed_evidence_consensus_sync and the
    detector's should_trigger_response are each called once per observation, and the
    results equal those of a detector without the wrappers."""
    def make():
        return DistributedBehavioralDetector(feature_dimensions=3, clock=lambda: 0.0, warm_up=20,
                                             regions=["eu", "us"])

    plain, wrapped = make(), make()
    calls = {"handle_update_sync": 0, "distributed_evidence_consensus_sync": 0, "should_trigger_response": 0}
    def counting(inner, name):
        def counted(*args, **kwargs):
            calls[name] += 1
            return inner(*args, **kwargs)
        return counted

    for obj, name in ((wrapped.cap_resolver, "handle_update_sync"),
                      (wrapped.consensus, "distributed_evidence_consensus_sync"),
                      (wrapped, "should_trigger_response")):
        setattr(obj, name, counting(getattr(obj, name), name))
    rng = np.random.default_rng(13)
    steps = 120
    for step in range(steps):
        agent = int(rng.integers(0, 30))
        x = rng.normal(size=3) + (8.0 if agent < 3 and step > 50 else 0.0)
        data = BehavioralData(agent, x, region="eu" if agent % 2 else "us")
        assert repr(wrapped.process_agent_behavior_sync(agent, data)) == \
            repr(plain.process_agent_behavior_sync(agent, data))
    assert plain.consensus.evidence_count > 0          # anomalies: evidence and consensus asked
    assert calls["handle_update_sync"] == steps
    assert calls["should_trigger_response"] == steps
    # the wrapped rule asks the (wrapped) consensus again when handed None: at least once a call
    assert calls["distributed_evidence_consensus_sync"] >= steps


def test_process_agent_behavior_reads_the_clock_once_for_all_three_parts():
    clock, calls = counting_clock()          # every reading differs: two reads would show
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=clock)
    rng = np.random.default_rng(4)
    det.process_round(np.arange(200), rng.normal(size=(200, 2)), "eu", timestamp=0.0)
    before = len(calls)
    det.process_agent_behavior_sync(1000, _item(agent_id=1000, features=[9.0, -9.0], region="eu"))
    assert len(calls) - before == 1
    exported = det.consensus.export_evidence()
    (row,) = [i for i, a in enumerate(exported["agent_ids"]) if a == 1000]
    register = det.cap_resolver.replica("eu").registers.get(1000)
    assert exported["timestamps"][row] == register["timestamp"] == 100.0 + len(calls)


def test_process_agent_behavior_reads_a_configured_clock_once_per_call():
    clock, calls = counting_clock()
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=clock)
    det.process_round(np.arange(200), np.random.default_rng(4).normal(size=(200, 2)), "eu", timestamp=0.0)
    before = len(calls)
    det.process_agent_behavior_sync(1000, BehavioralData(1000, [9.0, -9.0], region="eu"))
    assert len(calls) - before == 1


def test_process_round_reads_a_configured_clock_once_per_round():
    clock, calls = counting_clock()
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=clock)
    before = len(calls)
    det.process_round(np.arange(200), np.random.default_rng(4).normal(size=(200, 2)), "eu")
    assert len(calls) - before == 1


# ---------------------------------------------------------------------- ids made from node_id
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
    # an anomalous item: the one that makes the detector's own evidence id from the node id
    before = detector_state(det)
    try:
        out = det.process_agent_behavior_sync(8, BehavioralData(8, [9.0, -9.0], region="eu"))
    except SwarmGuardError:
        assert detector_state(det) == before
    else:
        assert out["anomaly"]["is_anomaly"] and det.consensus.evidence_count == before["evidence_count"] + 1


def test_a_refused_async_call_starts_no_background_sync():
    """The async per-item call started the resolver's background sync before checking the call:
    a refused call (a NaN timestamp) left a task running."""
    from swarmguard import StatisticalCAPResolver

    async def run():
        det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 5.0)
        det.cap_resolver = StatisticalCAPResolver(sync_interval_seconds=0.5, clock=lambda: 5.0)
        before = detector_state(det)
        with pytest.raises(NonFiniteError):
            await det.process_agent_behavior(1, BehavioralData(1, [0.0, 0.0], timestamp=float("nan")))
        unchanged = detector_state(det) == before
        await det.process_agent_behavior(1, BehavioralData(1, [0.0, 0.0], timestamp=1.0))
        started = det.cap_resolver._sync_task is not None and not det.cap_resolver._sync_task.done()
        await det.cap_resolver.stop_background_sync()
        return unchanged, started

    unchanged, started = asyncio.run(run())
    assert unchanged and started


@pytest.mark.parametrize("node_id", ["detector", "n" * 958, "n" * 959, "n" * 1000, "n" * 999 + "m"])
def test_the_detectors_own_ids_are_valid_and_distinct_for_any_node_id_the_consensus_takes(node_id):
    """Own ids are '<prefix>:<n>', '<prefix>:<n>:<i>' and '<prefix>:u<n>': the prefix is the node id
    while the ids fit in MAX_ID_LENGTH (1,000), else its start and a digest of the whole."""
    from swarmguard.api.detector import own_id_prefix
    from swarmguard.validation import MAX_ID_LENGTH
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 5.0, node_id=node_id)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    X[:5] += 9.0
    out = det.process_round(np.arange(300), X, "eu")
    item = det.process_agent_behavior_sync(1000, _item(agent_id=1000, features=[9.0, -9.0], region="eu"))
    assert out["is_anomaly"][:5].all() and item["anomaly"]["is_anomaly"]
    ev = det.consensus.export_evidence()
    own = [e for e, s in zip(ev["evidence_ids"], ev["source_nodes"], strict=True) if s == node_id]
    assert len(own) == int(out["is_anomaly"].sum()) + 1 and len(set(own)) == len(own)
    assert max(map(len, own)) <= MAX_ID_LENGTH
    prefix = own_id_prefix(node_id)
    assert (prefix == node_id) == (len(node_id) <= MAX_ID_LENGTH - 42)
    assert all(e.startswith(prefix + ":") for e in own)
    assert own_id_prefix("n" * 1000) != own_id_prefix("n" * 999 + "m")   # distinct node ids, distinct prefixes


@pytest.mark.parametrize("node_id, error", [("n" * 1001, InvalidInputError), ("a\x00b", InvalidInputError),
                                            (1.5, InvalidTypeError), (None, InvalidInputError)])
def test_a_node_id_the_consensus_would_refuse_is_refused_by_the_settings(node_id, error):
    from swarmguard import DetectorSettings
    with pytest.raises(error, match="node_id"):
        DetectorSettings(node_id=node_id)


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


def test_an_agent_at_1e50_beside_features_of_1e_300_and_1e_162_scores_as_the_same_data_at_scale_1():
    # One feature per magnitude (1, 1e-300, 1e-162, 1) and an agent at +1e50 in the
    # first: the batch round and the per-item path give the flags and scores of the
    # same data with every feature at scale 1, to 1e-9, and no score is a silent 0.
    rng = np.random.default_rng(41)
    n, d = 1500, 4
    X = rng.normal(size=(n, d))
    X[42, 0] = 1e50
    scale = np.array([1.0, 1e-300, 1e-162, 1.0])
    ids = np.arange(n)
    moved = X[[7, 42, 99]] + np.array([0.5, -1.0, 2.0, 0.0])
    moved[1, 0] = -1e50                               # the outlier jumps to the other side

    def run(S):
        det = DistributedBehavioralDetector(feature_dimensions=d, clock=lambda: 0.0)
        first = det.process_round(ids, X * S, "eu")
        second = det.process_round(ids, X * S, "eu")
        items = [det.process_agent_behavior_sync(int(a), BehavioralData(int(a), row * S, region="eu"))
                 for a, row in zip([7, 42, 99], moved, strict=True)]
        third = det.process_round(ids, X * S, "eu")   # the outlier back at +1e50, everyone re-scored
        return first, second, items, third

    ref, got = run(np.ones(d)), run(scale)
    for r, g in zip(ref[:2] + ref[3:], got[:2] + got[3:], strict=True):
        assert np.all(g["mahalanobis_squared"] > 0)
        np.testing.assert_allclose(g["mahalanobis_squared"], r["mahalanobis_squared"], rtol=1e-9)
        np.testing.assert_allclose(g["p_value"], r["p_value"], rtol=1e-9)
        assert g["is_anomaly"].tolist() == r["is_anomaly"].tolist() and g["is_anomaly"][42]
    for r, g in zip(ref[2], got[2], strict=True):
        r, g = r["anomaly"], g["anomaly"]
        assert g["mahalanobis_squared"] > 0
        assert g["mahalanobis_squared"] == pytest.approx(r["mahalanobis_squared"], rel=1e-9)
        assert g["is_anomaly"] == r["is_anomaly"]
    assert got[2][1]["anomaly"]["is_anomaly"]


# ---------------------------------------------------------------------- threads


def _fsum_mean(rows):
    return np.array([math.fsum(col) / len(rows) for col in np.asarray(rows).T])


def test_four_threads_on_one_detector_give_the_serial_state_and_refused_calls_commit_nothing():
    """4 threads each send their own agents through process_agent_behavior (some far out, so
    evidence is added) and a small process_round, with refused calls in between; the result is
    what the same calls give one after another: each agent's vector in the tree and in its
    replica, one own evidence per anomaly reported, means exact (math.fsum)."""
    rng = np.random.default_rng(11)
    base_ids, base_X = np.arange(400), rng.normal(size=(400, 3))
    per_thread = 25
    plans = []
    for t in range(4):
        ids = np.arange(1000 + 100 * t, 1000 + 100 * t + per_thread)
        X = rng.normal(size=(3, per_thread, 3))
        X[:, :3] += 12.0                                     # three far-out agents per thread
        batch_ids = np.arange(5000 + 100 * t, 5000 + 100 * t + 10)
        plans.append((t, ids, X, batch_ids, rng.normal(size=(10, 3))))

    def work(det, plan):
        t, ids, X, batch_ids, B = plan
        region = ["eu", "us"][t % 2]
        flagged, refused = 0, 0
        for k in range(X.shape[0]):
            for i, a in enumerate(ids.tolist()):
                out = det.process_agent_behavior_sync(a, BehavioralData(a, X[k, i], timestamp=1.0, region=region))
                flagged += bool(out["anomaly"]["is_anomaly"])
                for bad in (BehavioralData(a, X[k, i] + 100.0, timestamp=float("nan"), region=region),
                            BehavioralData(a, X[k, i] + 100.0, timestamp=1.0, region="e\x1fu")):
                    try:
                        det.process_agent_behavior_sync(a, bad)
                    except InvalidInputError:
                        refused += 1
            out = det.process_round(batch_ids, B + k, region, timestamp=1.0)
            flagged += int(out["is_anomaly"].sum())
            try:
                det.process_round(batch_ids, B + 50.0, region, timestamp=float("inf"))
            except NonFiniteError:
                refused += 1
        return flagged, refused

    def fresh():
        d = DistributedBehavioralDetector(feature_dimensions=3, warm_up=100, clock=lambda: 1.0,
                                          regions=["eu", "us"])
        d.process_round(base_ids, base_X, "eu")
        return d

    serial, threaded = fresh(), fresh()
    serial_out = [work(serial, p) for p in plans]
    threaded_out = run_threads([lambda p=p: work(threaded, p) for p in plans])
    assert [r for _, r in threaded_out] == [r for _, r in serial_out] == [3 * per_thread * 2 + 3] * 4

    final = {int(a): x for a, x in zip(base_ids.tolist(), base_X, strict=True)}
    for _, ids, X, batch_ids, B in plans:
        final.update({int(a): X[-1, i] for i, a in enumerate(ids.tolist())})
        final.update({int(a): B[i] + (X.shape[0] - 1) for i, a in enumerate(batch_ids.tolist())})
    for det in (serial, threaded):
        assert len(det.tree) == len(final) == 400 + 4 * (per_thread + 10)
        for a, x in final.items():
            np.testing.assert_array_equal(det.tree.get_agent_features(a), x, err_msg=f"agent {a} {det is serial}")
        regs = {}
        for region in ("eu", "us"):
            replica = det.cap_resolver.replica(region)
            regs.update({a: replica.registers.get(a) for a in final if a in replica.registers})
        assert set(regs) == set(final)
        for a, x in final.items():
            np.testing.assert_array_equal(np.asarray(regs[a]["features"])[:3], x)
        stats = det.tree.get_global_statistics()
        np.testing.assert_allclose(stats["mean"], _fsum_mean(list(final.values())), rtol=1e-14, atol=1e-15)
    # one own evidence per anomaly reported, each with its own id: the transactions did not interleave
    for det, outs in ((serial, serial_out), (threaded, threaded_out)):
        ev = det.consensus.export_evidence()
        own = [e for e, s in zip(ev["evidence_ids"], ev["source_nodes"], strict=True) if s == det.node_id]
        assert len(own) == len(set(own)) == det.consensus.evidence_count
        assert det.consensus.evidence_count == sum(f for f, _ in outs) + _warm_evidence(base_X)
    assert sum(f for f, _ in threaded_out) >= 4 * 3 * 3      # the far-out agents were flagged


def _warm_evidence(base_X):
    det = DistributedBehavioralDetector(feature_dimensions=3, warm_up=100, clock=lambda: 1.0, regions=["eu", "us"])
    det.process_round(np.arange(len(base_X)), base_X, "eu")
    return det.consensus.evidence_count


def test_the_async_api_does_not_hold_the_lock_across_an_await():
    """Two tasks on one event loop and a thread at the same time: no deadlock, every call applied."""
    import asyncio
    import threading
    det = _warm_detector()
    done = []

    async def task(base):
        for k in range(20):
            out = await det.process_agent_behavior(base + k, _item(agent_id=base + k, region="eu"))
            done.append(out["agent_id"])
            await asyncio.sleep(0)

    async def both():
        await asyncio.gather(task(2000), task(3000))

    thread = threading.Thread(target=lambda: [det.process_agent_behavior_sync(4000 + k, _item(agent_id=4000 + k))
                                              for k in range(20)])
    thread.start()
    asyncio.run(both())
    thread.join(timeout=60)
    assert not thread.is_alive() and sorted(done) == [*range(2000, 2020), *range(3000, 3020)]
    assert len(det.tree) == 300 + 60


@pytest.mark.parametrize("cf", [1.0, 1.5, 0.9, 0.5, 0.3, 1e-13])
@pytest.mark.parametrize("cut", [1e-3, 0.01, 0.0])
def test_the_decisions_widened_cut_is_scipys_chi2_quantile_turned_back(cf, cut):
    # The rule of the class docstring, written with scipy.stats.chi2 (the published
    # quantile and tail): an anomalous agent holds when its p-value is at most
    # sf(isf(cut) / cf²); cf >= 1 is the cut itself. Scalars (the per-item path) and
    # arrays (a round) give the same answers.
    from scipy.stats import chi2

    det = DistributedBehavioralDetector(feature_dimensions=4)
    p = np.concatenate([np.geomspace(1e-300, 1.0, 400), [cut, np.nextafter(cut, 1.0)]])
    flagged = np.resize([True, True, False], p.size)
    c = min(max(cf, 1e-12), 1.0)
    ref_cut = cut if (c >= 1.0 or cut <= 0) else chi2.sf(chi2.isf(cut, 4) / (c * c), 4)
    expected = flagged & ((p <= ref_cut) | (cut <= 0))
    rows = det._anomaly_holds(flagged, p, cut, np.full(p.size, cf))
    assert rows.tolist() == expected.tolist()
    one = [bool(det._anomaly_holds(bool(a), float(q), cut, cf)) for a, q in zip(flagged, p, strict=True)]
    assert one == expected.tolist()
    assert not expected.all() and (expected.any() or c < 1e-6)   # the cases decide both ways


@pytest.mark.parametrize("node_id", [("eu", 1), ("a", "b", "c"), ("t", ("u", 2))])
def test_a_tuple_node_id_is_the_source_of_every_own_evidence_of_a_round(node_id):
    """The settings take a tuple node id (the consensus's rule for a source); a round's own
    evidence carries it whole on every row (``np.full`` spread its items over the rows: the
    sources 'eu' and '1', or a ValueError after the tree and the replicas had changed)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    X[:2] += 9.0
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=20, node_id=node_id, clock=lambda: 1.0)
    out = det.process_round(np.arange(60), X, "a")
    flagged = int(out["is_anomaly"].sum())
    assert flagged >= 2
    ev = det.consensus.export_evidence()
    assert len(ev["source_nodes"]) == flagged
    assert all(s == node_id for s in ev["source_nodes"])
    assert sorted(ev["agent_ids"]) == sorted(np.flatnonzero(out["is_anomaly"]).tolist())


def test_a_round_with_one_long_region_name_never_holds_a_copy_of_it_per_row():
    # as_name_array gives one name as a broadcast view; np.unique (detector's regions, tree's cohorts)
    # used to flatten it back into n copies of the name
    import tracemalloc

    n, name = 20_000, "r" * 1000
    X = np.random.default_rng(6).normal(size=(n, 2))
    det = DistributedBehavioralDetector(feature_dimensions=2, clock=lambda: 1.0, auto_sync_seconds=None)
    ref = DistributedBehavioralDetector(feature_dimensions=2, clock=lambda: 1.0, auto_sync_seconds=None)
    tracemalloc.start()
    try:
        out = det.process_round(np.arange(n), X, name, timestamp=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * len(name), peak                 # one copy of n names would be 4 * n * len(name) bytes
    expected = ref.process_round(np.arange(n), X, np.array([name] * n), timestamp=1.0)
    np.testing.assert_array_equal(out["mahalanobis_squared"], expected["mahalanobis_squared"])
    assert out["region_confidence"] == expected["region_confidence"] and list(out["region_confidence"]) == [name]


def test_a_round_checks_its_features_once_and_answers_as_a_round_whose_parts_check_them_each(monkeypatch):
    # The detector checks the features at the boundary; the tree, the resolver and the
    # replicas take the checked matrix without a second pass over it. The answer, and every
    # part's state, is the one of the parts checking raw input themselves.
    import swarmguard.validation as validation
    rng = np.random.default_rng(8)
    rounds = [rng.normal(size=(300, 3)) for _ in range(3)]
    for X in rounds:
        X[:4] += 9.0
    regions = np.array(["eu", "us", "ap"])[rng.integers(0, 3, 300)]
    det = DistributedBehavioralDetector(feature_dimensions=3, warm_up=50, clock=lambda: 5.0)
    passes = []
    checked_matrix = validation._checked_matrix
    monkeypatch.setattr(validation, "_checked_matrix", lambda *a: passes.append(a[2]) or checked_matrix(*a))
    results = [det.process_round(np.arange(300), X, regions, timestamp=float(i + 1)) for i, X in enumerate(rounds)]
    assert passes == ["X"] * 3                       # one pass over the values per round
    monkeypatch.undo()
    # the same rounds through the parts, each given the raw rows and checking them itself
    ref = DistributedBehavioralDetector(feature_dimensions=3, warm_up=50, clock=lambda: 5.0)
    for i, X in enumerate(rounds):
        scored = ref.protocol.update_and_score_many(np.arange(300), X.tolist(), cohorts=regions)
        for name in ("ap", "eu", "us"):
            rows = np.flatnonzero(regions == name)
            ref.cap_resolver.handle_updates_many(name, rows, np.full(rows.size, float(i + 1)), X[rows].tolist(),
                                                 scored["mahalanobis_squared"][rows].tolist(), now=5.0)
        np.testing.assert_array_equal(results[i]["mahalanobis_squared"], scored["mahalanobis_squared"])
        np.testing.assert_array_equal(results[i]["p_value"], scored["p_value"])
        np.testing.assert_array_equal(results[i]["is_anomaly"], scored["is_anomaly"])
    assert results[-1]["is_anomaly"][:4].all()
    for name in ("ap", "eu", "us"):
        assert det.cap_resolver.replica(name).same_state(ref.cap_resolver.replica(name))
    np.testing.assert_array_equal(det.tree.get_global_statistics()["covariance"],
                                  ref.tree.get_global_statistics()["covariance"])


def test_the_per_item_path_calls_parts_methods_replaced_on_their_class(monkeypatch):
    """A method replaced on the class (a monkeypatch, a wrapper installed on the class) is
    called by the per-item path as by any caller: the resolver's handle_update_sync, the
    consensus's distributed_evidence_consensus_sync and the detector's
    should_trigger_response, once per observation, with the results of the unpatched
    classes. (The shortcuts compared the class attribute with itself read at call time,
    so a class-level replacement was skipped: the resolver's and the consensus's always,
    the detector's rule until the split of api/detector.py.)"""
    from swarmguard.api.cap import StatisticalCAPResolver
    from swarmguard.api.consensus import StableBayesianConsensus

    def make():
        return DistributedBehavioralDetector(feature_dimensions=3, clock=lambda: 0.0, warm_up=20,
                                             regions=["eu", "us"])

    rng = np.random.default_rng(17)
    steps = 120
    inputs = []
    for step in range(steps):
        agent = int(rng.integers(0, 30))
        x = rng.normal(size=3) + (8.0 if agent < 3 and step > 50 else 0.0)
        inputs.append((agent, BehavioralData(agent, x, region="eu" if agent % 2 else "us")))
    plain = make()
    expected = [repr(plain.process_agent_behavior_sync(agent, data)) for agent, data in inputs]
    assert plain.consensus.evidence_count > 0          # anomalies: evidence and consensus asked

    calls = {"handle_update_sync": 0, "distributed_evidence_consensus_sync": 0, "should_trigger_response": 0}

    def counting(inner, name):
        def counted(self, *args, **kwargs):
            calls[name] += 1
            return inner(self, *args, **kwargs)
        return counted

    for cls, name in ((StatisticalCAPResolver, "handle_update_sync"),
                      (StableBayesianConsensus, "distributed_evidence_consensus_sync"),
                      (DistributedBehavioralDetector, "should_trigger_response")):
        monkeypatch.setattr(cls, name, counting(getattr(cls, name), name))
    patched = make()
    assert [repr(patched.process_agent_behavior_sync(agent, data)) for agent, data in inputs] == expected
    assert calls["handle_update_sync"] == steps
    assert calls["should_trigger_response"] == steps
    # the replaced rule asks the (replaced) consensus again when handed None: at least once a call
    assert calls["distributed_evidence_consensus_sync"] >= steps
