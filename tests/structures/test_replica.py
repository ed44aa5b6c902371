"""Region replicas: delta sync over a lossy, duplicating, reordering network."""

import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    NonFiniteError,
)
from swarmguard.structures.replica import RegionReplica
from swarmguard.values.version_vector import VersionVector

DIM = 2
REGIONS = ["eu", "us", "ap"]


def exact_moments(rows):
    """Count, mean and co-moment of (features, score) rows in exact rational arithmetic."""
    rows = [[Fraction(v) for v in r] for r in rows]
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows, strict=True)]
    k = len(mean)
    m2 = [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) for j in range(k)] for i in range(k)]
    return n, mean, m2


def assert_moments_exact(moments, rows):
    n, mean, m2 = exact_moments(rows)
    assert moments.count == n
    np.testing.assert_allclose(moments.mean, [float(v) for v in mean], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moments.m2, [[float(v) for v in r] for r in m2], rtol=1e-9, atol=1e-9)


def view_rows(replica):
    d = replica.registers.to_dict()
    return np.column_stack([d["features"], d["anomaly_score"]]).tolist()


def state(replica):
    return {k: v.copy() for k, v in replica.to_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def random_writes(rng, replica, history, t):
    n = rng.randint(1, 6)
    agents = [rng.randrange(40) for _ in range(n)]
    ts = [float(rng.choice([t, t, t - 3, t + 0.5])) for _ in range(n)]  # some arrive late
    X = [[rng.randint(-5, 5) + 1e6, rng.random()] for _ in range(n)]  # offset data: precision matters
    scores = [rng.random() for _ in range(n)]
    replica.update_many(agents, ts, X, scores, now=t)
    for a, s, x, sc in zip(agents, ts, X, scores, strict=True):
        history.append((a, s, replica.region, len(history), x, sc))


def fold(history):
    """Reference: per agent the write with the largest (timestamp, region text, arrival)."""
    best = {}
    for a, ts, region, arrival, x, sc in history:
        key = (ts, region, arrival)
        if a not in best or key > best[a][0]:
            best[a] = (key, (ts, region, x, sc))
    return {a: v for a, (_, v) in best.items()}


def registers_as_python(replica):
    d = replica.registers.to_dict()
    names = d["regions"].tolist()
    return {
        a: (t, names[w], f, s)
        for a, t, w, f, s in zip(d["int_ids"].tolist(), d["timestamp"].tolist(), d["writer"].tolist(),
                                 d["features"].tolist(), d["anomaly_score"].tolist(), strict=True)
    }


@pytest.mark.parametrize("seed", range(12))
def test_lossy_network_converges_to_the_join(seed):
    rng = random.Random(seed)
    reps = {r: RegionReplica(r, DIM, known_regions=REGIONS) for r in REGIONS}
    history, queue = [], []
    for step in range(120):
        t = float(step)
        op = rng.random()
        if op < 0.45:
            random_writes(rng, reps[rng.choice(REGIONS)], history, t)
        elif op < 0.75:
            a, b = rng.sample(REGIONS, 2)
            # push with the last acknowledged version, or pull with the receiver's own
            delta = reps[a].delta_for(b, now=t) if rng.random() < 0.5 else reps[a].delta_since(reps[b].version, now=t)
            queue.append((a, b, delta))
        elif queue:
            i = rng.randrange(len(queue))  # reorder
            a, b, delta = queue[i] if rng.random() < 0.3 else queue.pop(i)  # duplicate or deliver
            if rng.random() < 0.15:
                continue  # dropped
            ack = reps[b].merge_delta(delta)
            if rng.random() < 0.7:  # acks get lost too
                reps[a].acknowledge(b, ack)
        # derived moments always match the registers each replica holds
        if step % 30 == 0:
            for rep in reps.values():
                if len(rep.registers):
                    assert_moments_exact(rep.estimate(), view_rows(rep))
    # a reliable round of pull-syncs ends the run
    for a in REGIONS:
        for b in REGIONS:
            if a != b:
                reps[b].merge_delta(reps[a].delta_since(reps[b].version, now=200.0))
    first = reps[REGIONS[0]]
    for rep in reps.values():
        assert rep.same_state(first)
        assert registers_as_python(rep) == fold(history)
        assert_moments_exact(rep.estimate(), view_rows(rep))
        # per home region too: the agents each region's moments count are the ones it holds
        for name, m in rep.region_moments().items():
            rows = [list(x) + [sc] for (_, r, x, sc) in fold(history).values() if r == name]
            assert_moments_exact(m, rows)


def test_delta_ships_only_what_the_peer_lacks():
    eu, us = RegionReplica("eu", 1), RegionReplica("us", 1)
    eu.update_many(np.arange(100), np.zeros(100), np.ones((100, 1)), np.zeros(100), now=0.0)
    first = eu.delta_for("us", now=1.0)
    assert first["registers.seq"].size == 100
    eu.acknowledge("us", us.merge_delta(first))
    assert eu.delta_for("us", now=2.0)["registers.seq"].size == 0
    eu.update_many([3, 5, 500], [1.0, 1.0, 1.0], np.full((3, 1), 2.0), np.zeros(3), now=3.0)
    d = eu.delta_for("us", now=3.0)
    assert sorted(d["registers.int_ids"].tolist()) == [3, 5, 500]
    # the peer's own writes never come back to it
    us.update_many([7], [9.0], [[1.0]], [0.0], now=4.0)
    eu.merge_delta(us.delta_for("eu", now=4.0))
    back = eu.delta_since(us.version, now=5.0)
    assert 7 not in back["registers.int_ids"].tolist()


def test_freshness_travels_transitively():
    eu, us, ap = (RegionReplica(r, 1, known_regions=["eu", "us", "ap"]) for r in ["eu", "us", "ap"])
    eu.update_many([1], [0.0], [[1.0]], [0.0], now=10.0)
    us.merge_delta(eu.delta_since(us.version, now=10.0))
    ap.merge_delta(us.delta_since(ap.version, now=12.0))
    assert ap.ages(20.0) == {"eu": 10.0, "us": 8.0}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_full_state_merge_is_a_join(seed):
    rng = random.Random(seed)
    reps = [RegionReplica(r, DIM) for r in REGIONS]
    hist = []
    for t in range(20):
        random_writes(rng, rng.choice(reps), hist, float(t))

    def merged(*parts):
        out = RegionReplica("eu", DIM)
        for p in parts:
            out += p
        return out

    a, b, c = reps
    assert merged(a, b).same_state(merged(b, a))
    assert merged(merged(a, b), c).same_state(merged(a, merged(b, c)))
    assert merged(a, a, b, b, a).same_state(merged(a, b))


def test_checkpoint_roundtrip():
    rng = random.Random(2)
    a, b = RegionReplica("eu", DIM), RegionReplica("us", DIM)
    hist = []
    for t in range(10):
        random_writes(rng, a, hist, float(t))
        random_writes(rng, b, hist, float(t))
    a.update_many([1000, "s"], [0.0, 0.0], [[1.0, 2.0], [3.0, 4.0]], [0.0, 0.0], update_ids=[17, "u"])
    a.acknowledge("us", b.merge_delta(a.delta_for("us", now=11.0)))
    a.merge_delta(b.delta_for("eu", now=12.0))
    c = RegionReplica.from_bytes(a.to_bytes())
    assert c.same_state(a) and c.freshness == a.freshness and c.acked == a.acked
    assert c.seen_update_ids == a.seen_update_ids == {17, "u"}
    assert c.estimate().count == a.estimate().count
    np.testing.assert_allclose(c.estimate().mean, a.estimate().mean, rtol=1e-12)
    with pytest.raises(InvalidInputError):
        RegionReplica.from_bytes(b"garbage")


def test_update_ids_make_delivery_idempotent():
    r = RegionReplica("eu", 1)
    out = r.update_many([1, 2, 1], [1.0, 1.0, 2.0], [[1.0], [2.0], [3.0]], [0, 0, 0], update_ids=["a", "b", "a"])
    assert out.duplicate.tolist() == [False, False, True]
    assert r.registers.get(1)["features"].tolist() == [1.0]  # the repeat of "a" was ignored
    before = state(r)
    out = r.update_many([1], [5.0], [[9.0]], [0], update_ids=["b"])
    assert out.duplicate.tolist() == [True] and not out.applied.any()
    assert same(before, state(r))


@pytest.mark.parametrize(
    "args, error",
    [
        (([1], [0.0], [[1.0, 2.0, 3.0]], [0.0]), DimensionMismatchError),
        (([1], [np.nan], [[1.0, 2.0]], [0.0]), NonFiniteError),
        (([1], [0.0], [[1.0, np.inf]], [0.0]), NonFiniteError),
        (([1], [0.0], [[1.0, 2.0]], [np.nan]), NonFiniteError),
        (([1, 2], [0.0], [[1.0, 2.0]], [0.0]), DimensionMismatchError),
        (([1.5], [0.0], [[1.0, 2.0]], [0.0]), InvalidInputError),
        (([], [], np.empty((0, 2)), []), EmptyInputError),
    ],
)
def test_bad_writes_change_nothing(args, error):
    r = RegionReplica("eu", DIM)
    r.update_many([1], [0.0], [[1.0, 2.0]], [0.5], update_ids=[1])
    before = state(r)
    with pytest.raises(error):
        r.update_many(*args, update_ids=None if not args[0] else [99] * len(args[0]))
    assert same(before, state(r))
    assert 99 not in r.seen_update_ids


def test_bad_delta_changes_nothing():
    a, b = RegionReplica("eu", DIM), RegionReplica("us", DIM)
    a.update_many([1, 2], [0.0, 0.0], [[1.0, 2.0], [3.0, 4.0]], [0.0, 0.0])
    b.update_many([3], [0.0], [[1.0, 2.0]], [0.0])
    before = state(b)
    delta = a.delta_for("us", now=1.0)
    for key, value in [("registers.features", np.array([[1.0, np.nan], [0.0, 0.0]])),
                       ("version.counts", np.array([1, 2])), ("freshness.times", np.array([np.nan]))]:
        bad = dict(delta)
        bad[key] = value
        with pytest.raises(InvalidInputError):
            b.merge_delta(bad)
        assert same(before, state(b))
    bad = dict(delta)
    del bad["sender"]
    with pytest.raises(InvalidInputError):
        b.merge_delta(bad)
    assert same(before, state(b))
    assert b.version == VersionVector({"us": 1})


def test_late_delta_does_not_make_the_view_older():
    eu, us = RegionReplica("eu", 1, known_regions=["us"]), RegionReplica("us", 1, known_regions=["eu"])
    us.update_many([1], [0.0], [[1.0]], [0.0], now=1.0)
    old = us.delta_since(eu.version, now=1.0)
    new = us.delta_since(eu.version, now=9.0)
    eu.merge_delta(new)
    eu.merge_delta(old)  # delivered late, after the newer one
    assert eu.ages(10.0) == {"us": 1.0}


def test_incremental_moments_do_not_drift():
    """Thousands of single-row replace steps on data at 1e7 stay close to exact arithmetic."""
    rng = random.Random(0)
    r = RegionReplica("a", 2)
    for i in range(3000):
        x = [1e7 + rng.random() * 0.1, rng.random()]
        r.update_many([rng.randrange(30)], [float(i)], [x], [rng.random()])
    assert_moments_exact(r.estimate(), view_rows(r))


# ---------------------------------------------------------------- ids holding a NUL character

@pytest.mark.parametrize("agent_ids, update_ids", [
    (["a\x00"], None), (np.array(["q\x00r"]), None), (["b"], ["u\x00"]),
])
def test_update_many_refuses_a_nul_in_an_id_and_changes_nothing(agent_ids, update_ids):
    r = RegionReplica("eu", DIM)
    r.update_many(["a"], [0.0], [[1.0, 2.0]], [0.5], ["u0"], now=0.0)
    before = state(r)
    with pytest.raises(InvalidInputError, match="NUL"):
        r.update_many(agent_ids, [1.0], [[3.0, 4.0]], [0.5], update_ids, now=1.0)
    assert same(before, state(r))
