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
    """Count, mean and co-moment are the exact values correctly rounded: equal to float(Fraction)."""
    n, mean, m2 = exact_moments(rows)
    assert moments.count == n
    assert moments.mean.tolist() == [float(v) for v in mean]
    assert moments.m2.tolist() == [[float(v) for v in r] for r in m2]
    assert (np.diagonal(moments.m2) >= 0).all()


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


# ---------------------------------------------------------------- exact moments: identical registers, identical answers

def test_alternating_1e10_on_one_agent_keeps_exact_moments():
    """The issue's reproducer: +-1e10 written 20,000 times to one agent gave a negative variance."""
    r = RegionReplica("eu", 1)
    r.update_many(np.arange(1, 10), np.zeros(9), np.arange(1, 10, dtype=float)[:, None], np.full(9, 0.5))
    for i in range(20_000):
        r.update_many([0], [float(i)], [[1e10 if i % 2 == 0 else -1e10]], [0.25])
    m = r.estimate()
    assert_moments_exact(m, view_rows(r))
    assert (m.variance() > 0).all()
    # the agent leaves (moves to another home region): back to the other nine exactly
    other = RegionReplica("us", 1)
    other.update_many([0], [1e9], [[7.0]], [0.0])
    r.merge_delta(other.delta_since(r.version))
    assert_moments_exact(r.region_moments()["eu"], [[float(v), 0.5] for v in range(1, 10)])


@pytest.mark.parametrize("spread", ["issue", "mixed"])
def test_hostile_magnitude_spread_keeps_exact_moments(spread):
    """Issue 10's slow case (features 2**-990 .. 2**320 in every column) and a +-huge/tiny mix:
    inserts, a full replace and a merge stay exact (and take the bounded limb path)."""
    rng = np.random.default_rng(3)
    n, d = 600, 3
    if spread == "issue":
        X = rng.normal(size=(n, d)) * np.exp2(rng.integers(-990, 320, size=(n, d)))
    else:
        X = rng.choice([-1.0, 1.0], size=(n, d)) * rng.choice([9e99, 1e-300, 5e-324, 0.0, 1.0], size=(n, d))
    r = RegionReplica("eu", d)
    r.update_many(np.arange(n), np.zeros(n), X, rng.random(n))
    assert_moments_exact(r.estimate(), view_rows(r))
    r.update_many(np.arange(n), np.ones(n), X[::-1].copy() * 0.5, rng.random(n))   # replace every row
    assert_moments_exact(r.estimate(), view_rows(r))
    peer = RegionReplica("us", d)
    peer.merge_delta(r.delta_since(peer.version))
    assert _estimate_bits(peer) == _estimate_bits(r)


def _estimate_bits(rep):
    m = rep.estimate()
    return m.count, m.mean.tobytes(), m.m2.tobytes(), {k: (v.count, v.mean.tobytes(), v.m2.tobytes())
                                                       for k, v in rep.region_moments().items()}


def test_identical_registers_give_identical_estimates_bit_for_bit():
    """Reproducer: a replica that saw the churn and one that got only the final registers."""
    rng = random.Random(7)
    eu, us = RegionReplica("eu", 1), RegionReplica("us", 1)
    for t in range(3000):
        eu.update_many([rng.randrange(8)], [float(t)], [[rng.choice([4.5, 1e8, -1e8]) + rng.random()]], [0.5])
    eu.update_many(np.arange(8), np.full(8, 1e4), (np.arange(8) + 1.0)[:, None], np.full(8, 0.5))
    us.merge_delta(eu.delta_since(us.version))
    assert eu.registers == us.registers
    assert _estimate_bits(eu) == _estimate_bits(us)
    assert eu.estimate().mean.tolist() == [4.5, 0.5]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_the_same_registers_by_different_orders_give_the_same_estimate(seed):
    rng = random.Random(seed)
    writers = {r: RegionReplica(r, DIM) for r in REGIONS}
    deltas = []
    for _ in range(30):
        w = writers[rng.choice(REGIONS)]
        n = rng.randint(1, 8)
        scale = rng.choice([1.0, 1e10, 1e-10])
        w.update_many([rng.randrange(25) for _ in range(n)], [float(rng.randint(0, 40)) for _ in range(n)],
                      [[rng.gauss(0, 1) * scale + 1e6, rng.gauss(0, 1)] for _ in range(n)],
                      [rng.random() for _ in range(n)])
        deltas.append(w.delta_since(VersionVector()))     # every intermediate state, as a peer could see it
    final = [w.delta_since(VersionVector()) for w in writers.values()]
    a, b = RegionReplica("x", DIM), RegionReplica("y", DIM)
    for d in deltas + final:
        a.merge_delta(d)
    mixed = deltas[:]
    rng.shuffle(mixed)
    for d in final[::-1] + mixed:                          # newest first, then stale ones late
        b.merge_delta(d)
    assert a.registers == b.registers
    assert _estimate_bits(a) == _estimate_bits(b)
    fresh = RegionReplica.from_dict(b.to_dict())           # moments rebuilt from the registers
    assert _estimate_bits(fresh) == _estimate_bits(a)
    assert_moments_exact(a.estimate(), view_rows(a))


# ---------------------------------------------------------------- the duplicate guard is bounded

def test_duplicate_window_stays_bounded_and_still_recognises_recent_resends():
    import tracemalloc

    window = 1000
    r = RegionReplica("eu", 1, dedup_window=window)
    tracemalloc.start()
    sizes = []
    for call in range(1000):                      # 100,000 new ids, 100 per call
        ids = np.arange(call * 100, call * 100 + 100)
        r.update_many(ids % 50, np.full(100, float(call)), np.ones((100, 1)), np.zeros(100), update_ids=ids)
        if call in (499, 999):
            sizes.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    assert len(r.seen_update_ids) == window
    assert sizes[1] - sizes[0] < 200_000          # the second 50,000 ids cost no memory that stays
    # the last `window` ids are recognised; the one before them is forgotten
    before = state(r)
    out = r.update_many([1], [1e9], [[5.0]], [0.0], update_ids=[100_000 - window])
    assert out.duplicate.tolist() == [True] and not out.applied.any()
    assert same(before, state(r))
    out = r.update_many([1], [1e9], [[5.0]], [0.0], update_ids=[100_000 - window - 1])
    assert out.duplicate.tolist() == [False]


def test_per_item_writes_with_a_new_id_each_stay_bounded():
    r = RegionReplica("eu", 1, dedup_window=64)
    for i in range(5000):
        r.update_many([i % 7], [float(i)], [[float(i)]], [0.0], update_ids=[f"u{i}"])
    assert r.seen_update_ids == {f"u{i}" for i in range(5000 - 64, 5000)}


def test_duplicate_window_survives_a_checkpoint_in_order():
    r = RegionReplica("eu", 1, dedup_window=3)
    for uid in [5, "b", 7]:
        r.update_many([1], [0.0], [[1.0]], [0.0], update_ids=[uid])
    back = RegionReplica.from_bytes(r.to_bytes())
    assert back.seen_update_ids == {5, "b", 7} and back.dedup_window == 3
    for rep in (r, back):
        rep.update_many([1], [1.0], [[2.0]], [0.0], update_ids=["new"])   # forgets the oldest: 5
        assert rep.seen_update_ids == {"b", 7, "new"}
    assert RegionReplica.from_dict(r.to_dict(), dedup_window=1).seen_update_ids == {"new"}


# ---------------------------------------------------------------- loaders refuse damaged content, typed

def _sample_replica():
    a, b = RegionReplica("eu", DIM), RegionReplica("us", DIM)
    a.update_many([1, 2, "s"], [0.0, 1.0, 2.0], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [0.1, 0.2, 0.3],
                  update_ids=[10, "u", 12])
    b.update_many([3], [0.5], [[7.0, 8.0]], [0.4])
    a.acknowledge("us", b.merge_delta(a.delta_for("us", now=1.0)))
    a.merge_delta(b.delta_for("eu", now=2.0))
    return a


def _mutations(value, rng):
    """Wrong dtypes, shapes and values for one array."""
    arr = np.asarray(value)
    out = [np.array("x"), np.array(1.5), np.zeros((2, 2)), np.array([np.nan]),
           np.array([2**64 - 1], dtype=np.uint64), np.array([2**63 - 1]), np.array(-1),
           np.array([True]), np.array(b"bytes"), arr.reshape(1, -1) if arr.size else np.zeros((1, 0))]
    if arr.size and arr.ndim:
        out.append(arr[:-1])
        out.append(arr.astype(np.float64) if arr.dtype.kind in "iub" else arr.astype(str))
        if arr.dtype.kind == "f":
            out.append(np.where(np.arange(arr.size).reshape(arr.shape) == 0, 1e300, arr))
        if arr.dtype.kind in "iu":
            out.append(arr.astype(np.uint64) + np.uint64(2**63))
    return out


def test_from_dict_refuses_every_damaged_field_typed():
    good = _sample_replica().to_dict()
    rng = random.Random(0)
    RegionReplica.from_dict(good)
    tried = 0
    for key in good:
        bad = dict(good)
        del bad[key]
        if key not in ("seen.is_str", "seen.window"):     # older checkpoints lack these two
            with pytest.raises(InvalidInputError):
                RegionReplica.from_dict(bad)
        for value in _mutations(good[key], rng):
            bad = dict(good)
            bad[key] = value
            tried += 1
            try:
                back = RegionReplica.from_dict(bad)
            except InvalidInputError:
                continue
            # accepted: then it read exactly what the arrays say (a harmless change, e.g. a shorter table)
            again = back.to_dict()
            assert again.keys() == good.keys()
    assert tried > 100


def test_from_bytes_refuses_truncated_and_flipped_bytes():
    a = _sample_replica()
    data = a.to_bytes()
    rng = random.Random(1)
    for cut in sorted(rng.sample(range(len(data)), 40)):
        with pytest.raises(InvalidInputError):
            RegionReplica.from_bytes(data[:cut])
    for _ in range(200):
        raw = bytearray(data)
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
        try:
            back = RegionReplica.from_bytes(bytes(raw))
        except InvalidInputError:
            continue
        # a flip the archive does not notice (zip metadata) must still give the same state
        assert same(state(back), state(a))


@pytest.mark.parametrize("key, value", [
    ("version.counts", lambda d: np.full_like(d["version.counts"], 2**63 - 1)),
    ("version.counts", lambda d: d["version.counts"].astype(np.uint64) + np.uint64(2**63)),
    ("version.counts", lambda d: np.full_like(d["version.counts"], 2**62 + 1)),
    ("registers.seq", lambda d: np.full_like(d["registers.seq"], 2**63 - 1)),
    ("registers.seq", lambda d: d["registers.seq"].astype(np.uint64) + np.uint64(2**63)),
    ("registers.int_ids", lambda d: d["registers.int_ids"].astype(np.uint64) + np.uint64(2**63)),
    ("registers.features", lambda d: np.full_like(d["registers.features"], 1e200)),
    ("registers.timestamp", lambda d: d["registers.timestamp"].astype(np.int64)),
    ("sender", lambda d: np.array([["eu"]])),
    ("format", lambda d: np.array(1.0)),
    ("freshness.times", lambda d: d["freshness.times"].astype(np.int64)),
])
def test_merge_delta_refuses_tampered_counters_and_changes_nothing(key, value):
    a = RegionReplica("eu", DIM)
    a.update_many([1, 2], [0.0, 0.0], [[1.0, 2.0], [3.0, 4.0]], [0.0, 0.0])
    b = RegionReplica("us", DIM)
    b.update_many([3], [0.0], [[1.0, 2.0]], [0.0])
    before = state(b)
    delta = a.delta_for("us", now=1.0)
    bad = dict(delta)
    bad[key] = value(delta)
    with pytest.raises(InvalidInputError):
        b.merge_delta(bad)
    assert same(before, state(b))
    b.merge_delta(delta)     # the untampered delta still joins
    assert len(b.registers) == 3


def test_merge_delta_fuzz_only_typed_errors_and_unchanged_state():
    a = _sample_replica()
    target = RegionReplica("ap", DIM)
    target.update_many([9], [0.0], [[1.0, 1.0]], [0.0])
    delta = a.delta_since(VersionVector(), now=3.0)
    rng = random.Random(2)
    before = state(target)
    refused = 0
    for key in delta:
        for value in _mutations(delta[key], rng):
            bad = dict(delta)
            bad[key] = value
            try:
                probe = RegionReplica.from_dict(target.to_dict())
                probe.merge_delta(bad)
            except InvalidInputError:
                refused += 1
                try:
                    target.merge_delta(bad)
                except InvalidInputError:
                    pass
                else:
                    raise AssertionError(f"{key}: refused once, accepted the second time")
                assert same(before, state(target)), key
    assert refused > 50
    with pytest.raises(InvalidInputError):
        target.merge_delta(["not", "a", "mapping"])


def test_a_version_counter_cannot_pass_the_cap():
    from swarmguard.values.version_vector import MAX_COUNT

    with pytest.raises(InvalidInputError):
        VersionVector({"eu": MAX_COUNT + 1})
    with pytest.raises(InvalidInputError):
        VersionVector({"eu": 1.5})
    vv = VersionVector({"eu": MAX_COUNT})
    with pytest.raises(InvalidInputError):
        vv.increment("eu")
    assert vv["eu"] == MAX_COUNT


# ---------------------------------------------------------------- the one-row path
EXTREMES = [1e-300, 1e300, 5e-324, -2.2250738585072014e-308 / 3, -1e300, 0.0, -0.0, 1.0 / 3, -7.5, 2.0**-1000]
# features stay below the replicas' magnitude cap (1e100); the anomaly score may be 1e300
FEATURE_EXTREMES = [v for v in EXTREMES if abs(v) < 1e99] + [9.9e99, -9.9e99]


def fraction_sums(rows):
    """Exact (S1, S2 upper triangle, row-major) of rows, in fractions."""
    rows = [[Fraction(v) for v in r] for r in rows]
    k = len(rows[0]) if rows else 0
    s1 = [sum((r[c] for r in rows), Fraction(0)) for c in range(k)]
    s2 = [sum((r[a] * r[b] for r in rows), Fraction(0)) for a in range(k) for b in range(a, k)]
    return s1, s2


def test_one_row_path_gives_the_exact_state_of_the_batch_path_and_of_fractions():
    """Per-item writes (the one-row path: replace, revert, extreme magnitudes, subnormals, an
    agent moving home) hold the same exact sums as one batch of the final rows and as Fraction."""
    from swarmguard.values.agent_index import as_agent_ids
    from swarmguard.values.exact_moments import exact_cross_sums

    rng = random.Random(7)
    per_item, singles = RegionReplica("eu", DIM), RegionReplica("eu", DIM)
    final: dict[int, list[float]] = {}
    t = 0.0
    for step in range(400):
        agent = rng.randrange(12)
        row = [rng.choice(FEATURE_EXTREMES) if rng.random() < 0.4 else rng.uniform(-1e3, 1e3) for _ in range(DIM)]
        row.append(rng.choice(EXTREMES) if rng.random() < 0.4 else rng.uniform(-1e3, 1e3))
        t += 1.0
        if step % 5 == 4 and agent in final:
            row = list(final[agent])                       # write the same values back (a revert)
        if step % 7 == 6 and final:
            # replace, then revert: the agent's old row back under a later timestamp
            agent = rng.choice(sorted(final))
            old = list(final[agent])
            for values in (row, old):
                per_item._update_one(as_agent_ids([agent]), t, np.array(values), f"u{step}:{values is old}")
                singles.update_many([agent], [t], [values[:DIM]], [values[DIM]], [f"u{step}:{values is old}"])
                t += 1.0
            final[agent] = old
            continue
        per_item._update_one(as_agent_ids([agent]), t, np.array(row), f"u{step}")
        singles.update_many([agent], [t], [row[:DIM]], [row[DIM]], [f"u{step}"])
        final[agent] = row
    # a re-sent id and an older write change nothing on the one-row path
    before = per_item.estimate_exact()
    out = per_item._update_one(as_agent_ids([0]), t, np.array([9.0, 9.0, 9.0]), "u1")
    assert bool(out.duplicate[0]) and not bool(out.applied[0])
    out = per_item._update_one(as_agent_ids([next(iter(final))]), -1.0, np.array([9.0, 9.0, 9.0]), "fresh")
    assert not bool(out.applied[0]) and not bool(out.duplicate[0])
    assert per_item.estimate_exact() == before

    batch = RegionReplica("eu", DIM)
    agents = sorted(final)
    batch.update_many(agents, [1.0] * len(agents), [final[a][:DIM] for a in agents], [final[a][DIM] for a in agents])
    rows = [final[a] for a in agents]
    want = fraction_sums(rows)
    for replica in (per_item, singles, batch):
        m = replica.estimate_exact()
        assert m.count == len(rows)
        assert m.sums() == want
        assert replica.region_exact_moments()["eu"].sums() == want
    assert per_item.registers == singles.registers
    # the NumPy batch route (more rows than the Python-integer route takes) agrees too
    big = np.array(rows * 3)
    s1, e1, s2, e2 = exact_cross_sums(big)
    assert [Fraction(v) * Fraction(2) ** e1 for v in s1] == [3 * v for v in want[0]]
    assert [Fraction(v) * Fraction(2) ** e2 for v in s2] == [3 * v for v in want[1]]
    rebuilt = RegionReplica.from_dict(per_item.to_dict())
    assert rebuilt.estimate_exact() == per_item.estimate_exact()

    # an agent moving home through a one-register merge: out of "eu", into "us"
    us = RegionReplica("us", DIM)
    moved = agents[0]
    us.update_many([moved], [t + 10.0], [[1e-300, 5e-324]], [1e300])
    per_item.merge_delta(us.delta_since(per_item.version, now=t + 10.0))
    rows_eu = [final[a] for a in agents[1:]]
    exact = per_item.region_exact_moments()
    assert exact["eu"].sums() == fraction_sums(rows_eu)
    assert exact["us"].sums() == fraction_sums([[1e-300, 5e-324, 1e300]])
    assert per_item.estimate_exact().sums() == fraction_sums(rows_eu + [[1e-300, 5e-324, 1e300]])


@pytest.mark.parametrize("fold_rows", [1, 3, 1024])
def test_one_row_writes_with_pending_folds_merge_serialise_and_revert_exactly(fold_rows, monkeypatch):
    """Per-item writes whose cross products wait (folded every ``fold_rows`` rows or at a read):
    the estimate read between writes, a checkpoint, a merge into another replica and a
    revert all hold the exact sums of the registers (Fraction arithmetic)."""
    from swarmguard.values import exact_moments as em
    from swarmguard.values.agent_index import as_agent_ids

    monkeypatch.setattr(em, "_FOLD_ROWS", fold_rows)
    rng = random.Random(fold_rows)
    eu = RegionReplica("eu", DIM)
    final: dict[int, list[float]] = {}
    t = 0.0
    for step in range(120):
        agent = rng.randrange(9)
        row = [rng.choice(FEATURE_EXTREMES) if rng.random() < 0.3 else rng.uniform(-1e3, 1e3) for _ in range(DIM)]
        row.append(rng.choice(EXTREMES) if rng.random() < 0.3 else rng.uniform(-1e3, 1e3))
        if step % 9 == 8 and agent in final:
            row = list(final[agent])            # a revert: the same values again
        t += 1.0
        eu._update_one(as_agent_ids([agent]), t, np.array(row), f"u{step}", now=t)
        final[agent] = row
        if step % 4 == 0:                       # a read between writes: the total kept in step after it
            assert eu.estimate_exact().sums() == fraction_sums(list(final.values()))
    rows = list(final.values())
    assert eu.estimate_exact().sums() == fraction_sums(rows)
    assert eu.region_exact_moments()["eu"].sums() == fraction_sums(rows)
    restored = RegionReplica.from_dict(eu.to_dict())            # moments rebuilt from the registers
    assert restored.same_state(eu) and restored.estimate_exact() == eu.estimate_exact()
    us = RegionReplica("us", DIM)
    us.merge_delta(eu.delta_since(us.version, now=t))
    assert us.estimate_exact().sums() == fraction_sums(rows)
    rebuilt = RegionReplica.from_dict(eu.to_dict())
    rebuilt.rebuild_moments()
    assert rebuilt.estimate_exact() == eu.estimate_exact()


def test_the_total_is_rebuilt_on_read_after_unread_writes_and_equals_the_kept_one():
    """A replica whose total nobody reads between one-row writes drops it and sums the
    regions again on the next read; one read after every write keeps it in step: both
    are the same exact sums."""
    from swarmguard.values.agent_index import as_agent_ids

    read_each, read_end = RegionReplica("eu", DIM), RegionReplica("eu", DIM)
    rng = random.Random(2)
    rows = {}
    for step in range(60):
        agent = rng.randrange(7)
        row = [rng.uniform(-1e3, 1e3) for _ in range(DIM + 1)]
        for replica in (read_each, read_end):
            replica._update_one(as_agent_ids([agent]), float(step), np.array(row), f"u{step}")
        rows[agent] = row
        read_each._exact_total()
    assert read_end._total is None               # never read: dropped, not kept in step
    assert read_each._total is not None
    assert read_end.estimate_exact() == read_each.estimate_exact()
    assert read_end.estimate_exact().sums() == fraction_sums(list(rows.values()))


@given(st.lists(st.lists(st.one_of(st.sampled_from(EXTREMES),
                                   st.floats(allow_nan=False, allow_infinity=False, width=64)),
                         min_size=DIM + 1, max_size=DIM + 1), min_size=1, max_size=8),
       st.lists(st.integers(0, 3), min_size=8, max_size=8))
@settings(max_examples=60, deadline=None)
def test_one_row_changes_match_fractions(rows, agents):
    from swarmguard.values.exact_moments import ExactMoments, row_change_sums

    m, held = ExactMoments(DIM + 1), {}
    for row, agent in zip(rows, agents, strict=False):
        m._change_row(held.get(agent), row)
        held[agent] = row
    assert m.count == len(held)
    assert m.sums() == fraction_sums(list(held.values()))
    s1, e1, s2, e2 = row_change_sums(None, rows[0])
    assert ([Fraction(v) * Fraction(2) ** e1 for v in s1], [Fraction(v) * Fraction(2) ** e2 for v in s2]) \
        == fraction_sums([rows[0]])
    for agent in list(held):
        m._change_row(held.pop(agent), None)
    assert m.count == 0 and m.sums() == fraction_sums([[0.0] * (DIM + 1)])


def test_a_replica_given_checked_features_keeps_the_state_it_keeps_given_the_raw_rows():
    from swarmguard.validation import check_feature_matrix
    rng = np.random.default_rng(12)
    raw, checked = RegionReplica("eu", 3), RegionReplica("eu", 3)
    for t in range(3):
        ids = rng.integers(0, 50, size=40)
        ids = np.unique(ids)
        X = rng.normal(size=(ids.size, 3)) * 10.0 ** rng.uniform(-100, 90)
        ts, scores = np.full(ids.size, float(t)), rng.random(ids.size)
        raw.update_many(ids, ts, X.tolist(), scores)
        checked.update_many(ids, ts, check_feature_matrix(X, 3, "features"), scores)
        assert checked.same_state(raw)
    before = state(checked)
    with pytest.raises(NonFiniteError):       # checked features do not excuse a bad timestamp
        checked.update_many([1, 2], [0.0, float("nan")], check_feature_matrix(np.ones((2, 3)), 3), [0.0, 0.0])
    with pytest.raises(DimensionMismatchError):   # nor features checked for another dimension
        checked.update_many([1], [9.0], check_feature_matrix(np.ones((1, 2)), 2), [0.0])
    assert all(np.array_equal(v, before[k]) for k, v in state(checked).items())


def test_concurrent_reads_of_the_region_moments_fold_nothing_live(monkeypatch):
    """Reads never fold the live moments' pending one-row changes: a reader whose fold of the
    cross products is paused half-way (here: inside the exact batch) does not make another
    reader of the same replica see a co-moment without them, nor change the replica."""
    import threading

    from swarmguard.values import exact_moments as em
    from swarmguard.values.agent_index import as_agent_ids

    rng = random.Random(8)
    eu = RegionReplica("eu", DIM)
    rows = {}
    for step in range(40):
        agent = rng.randrange(11)
        rows[agent] = [rng.uniform(-1e3, 1e3) for _ in range(DIM + 1)]
        eu._update_one(as_agent_ids([agent]), float(step), np.array(rows[agent]), f"u{step}")
    want = exact_moments(list(rows.values()))[2]
    cross_sums, entered, release = em._exact_cross_sums, threading.Event(), threading.Event()
    first = [True]

    def paused_first_fold(X, w):
        if first[0]:
            first[0] = False
            entered.set()
            release.wait(10)
        return cross_sums(X, w)

    monkeypatch.setattr(em, "_exact_cross_sums", paused_first_fold)
    paused: list = []
    reader = threading.Thread(target=lambda: paused.append(eu.region_moments()["eu"]))
    reader.start()
    try:
        assert entered.wait(10)                     # the first reader is inside its fold
        other = eu.region_moments()["eu"]           # a second reader meanwhile
    finally:
        release.set()
        reader.join(10)
    assert other.m2.tolist() == [[float(v) for v in r] for r in want]
    assert paused[0].m2.tolist() == [[float(v) for v in r] for r in want]
    assert eu.region_exact_moments()["eu"].sums() == fraction_sums(list(rows.values()))


def test_clamp_negative_scores_keeps_the_moments_exact():
    """The moments after clamping are those of a replica written with the clamped scores."""
    X = np.array([[0.5, 1.0], [2.0, -1.0], [3.0, 0.25]])
    clamped = RegionReplica("eu", 2)
    clamped.update_many(["a", "b", "c"], [1.0, 1.0, 1.0], X, [1.5, -0.25, -1e-300], now=1.0)
    assert clamped.clamp_negative_scores() == 2
    fresh = RegionReplica("eu", 2)
    fresh.update_many(["a", "b", "c"], [1.0, 1.0, 1.0], X, [1.5, 0.0, 0.0], now=1.0)
    assert clamped.same_state(fresh)
    a, b = clamped.estimate_exact(), fresh.estimate_exact()
    assert a == b and a.count == 3 and a.mean()[2] == 0.5           # the score column: (1.5 + 0 + 0) / 3
    assert clamped.clamp_negative_scores() == 0


class _FieldRaises(dict):
    """A loaded state whose one field ``key`` raises ``error`` when read (what a damaged archive
    member can do), every other field as stored."""

    def __init__(self, state, key, error):
        super().__init__(state)
        self.key, self.error = key, error

    def __getitem__(self, key):
        if key == self.key:
            raise self.error
        return super().__getitem__(key)


def test_reading_a_damaged_delta_or_state_says_which_and_chains_the_cause():
    """A missing field is "lacks field", a TypeError/ValueError "is malformed" (caused by the
    original), an InvalidInputError of a field reader goes out as it is; the replica is unchanged."""
    eu = RegionReplica("eu", DIM)
    eu.update_many(["a"], [1.0], [[1.0, 2.0]], [0.5], now=1.0)
    delta, state = eu.delta_for("us", now=2.0), eu.to_dict()
    us = RegionReplica("us", DIM)
    before = us.to_bytes()
    cases = [(us.merge_delta, delta, "delta"), (RegionReplica.from_dict, state, "replica state")]
    for read, arrays, what in cases:
        missing = {k: v for k, v in arrays.items() if k != "freshness.times"}
        with pytest.raises(InvalidInputError, match=f"^{what} lacks field 'freshness.times'$") as lacks:
            read(missing)
        assert isinstance(lacks.value.__cause__, KeyError)
        cause = TypeError("not an array")
        with pytest.raises(InvalidInputError, match=f"^{what} is malformed: not an array$") as bad:
            read(_FieldRaises(arrays, "freshness.times", cause))
        assert bad.value.__cause__ is cause
        own = InvalidInputError("sender must be a string")
        with pytest.raises(InvalidInputError) as passed:
            read(_FieldRaises(arrays, "sender", own))
        assert passed.value is own and passed.value.__cause__ is None
    assert us.to_bytes() == before
