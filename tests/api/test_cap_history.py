"""Jepsen-style checks: seeded random histories of updates, partitions, heals and syncs.

Every accepted update is recorded; after a final heal and sync the state of every
replica must equal (a) a never-partitioned resolver fed the same updates and (b) the
last-writer-wins fold of the recorded history, and the global moments must equal an
exact rational recomputation from that history.
"""

import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.api.cap import ConsistencyModel, StatisticalCAPResolver, StatisticalUpdate

REGIONS = ["r0", "r1", "r2", "r3", "r4"]
DIM = 2


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run_to_completion(coro):
    """Drive a coroutine one step: it must finish without ever suspending (never blocks)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("handle_update suspended: it waited on something")


def registers_without_seq(resolver, region):
    d = resolver.replica(region).registers.to_dict()
    names = d["regions"].tolist()
    ids = d["int_ids"].tolist() + d["str_ids"].tolist()
    return {
        a: (t, names[w], tuple(f), s)
        for a, t, w, f, s in zip(ids, d["timestamp"].tolist(), d["writer"].tolist(),
                                 d["features"].tolist(), d["anomaly_score"].tolist(), strict=True)
    }


def fold(history):
    best = {}
    for arrival, u in enumerate(history):
        key = (u.timestamp, u.source_partition, arrival)
        if u.agent_id not in best or key > best[u.agent_id][0]:
            best[u.agent_id] = (key, u)
    return {a: (u.timestamp, u.source_partition, tuple(float(v) for v in u.feature_vector), float(u.anomaly_score))
            for a, (_, u) in best.items()}


def exact_mean_and_m2(rows):
    rows = [[Fraction(v) for v in r] for r in rows]
    n = len(rows)
    mean = [sum(c) / n for c in zip(*rows, strict=True)]
    m2 = [[sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) for j in range(len(mean))]
          for i in range(len(mean))]
    return n, [float(m) for m in mean], [[float(v) for v in r] for r in m2]


def run_history(seed, steps=150, clock=None):
    rng = random.Random(seed)
    clock, ref_clock = clock or Clock(), Clock()
    res = StatisticalCAPResolver(clock=clock, regions=REGIONS)
    ref = StatisticalCAPResolver(clock=ref_clock, regions=REGIONS)  # never partitioned
    history, sent = [], []
    uid = 0
    for _ in range(steps):
        op = rng.random()
        if op < 0.55:
            region = rng.choice(REGIONS)
            # timestamps jitter: late (reordered) and stale deliveries happen
            ts = clock.t + rng.choice([0.0, 0.0, -2.0, -7.5, 0.25])
            agent = rng.choice([rng.randrange(25), f"agent-{rng.randrange(10)}"])
            u = StatisticalUpdate(uid, agent, ts, [rng.randint(-9, 9) + 1e7, rng.random()],
                                  rng.random(), region)
            uid += 1
            result = run_to_completion(res.handle_update(u))
            assert result["accepted"] is True and result["duplicate"] is False
            assert 0.0 < result["confidence_factor"] <= 1.0
            assert region in result["visible_regions"]
            history.append(u)
            sent.append(u)
            ref.handle_update_sync(u)
            ref.sync()
        elif op < 0.62 and sent:
            u = rng.choice(sent)  # duplicated delivery of an earlier update
            result = run_to_completion(res.handle_update(u))
            assert result["accepted"] is True and result["duplicate"] is True and not result["applied"]
            assert ref.handle_update_sync(u)["duplicate"]
        elif op < 0.67:
            region = rng.choice(REGIONS)
            n = rng.randint(1, 6)
            agents = [rng.randrange(25) for _ in range(n)]
            ts = [clock.t - rng.random() * 3 for _ in range(n)]
            X = np.column_stack([np.array([rng.randint(-9, 9) for _ in range(n)]) + 1e7,
                                 [rng.random() for _ in range(n)]])
            scores = [rng.random() for _ in range(n)]
            ids = list(range(uid, uid + n))
            uid += n
            out = res.handle_updates_many(region, np.array(agents), ts, X, scores, update_ids=ids)
            assert out["accepted"] == n
            ref.handle_updates_many(region, np.array(agents), ts, X, scores, update_ids=ids)
            ref.sync()
            for a, t, x, s, i in zip(agents, ts, X.tolist(), scores, ids, strict=True):
                history.append(StatisticalUpdate(i, a, t, x, s, region))
        elif op < 0.77:
            shuffled = REGIONS[:]
            rng.shuffle(shuffled)
            cuts = sorted(rng.sample(range(1, len(REGIONS)), rng.randint(1, 3)))
            groups = [shuffled[i:j] for i, j in zip([0] + cuts, cuts + [len(REGIONS)], strict=True)]
            res.partition(groups)
        elif op < 0.82:
            res.heal()
        elif op < 0.92:
            res.sync()
        else:
            step = rng.choice([0.5, 3.0, 20.0])
            clock.t += step
            ref_clock.t += step
    res.heal()
    res.sync()
    return res, ref, history


def check_history(res, ref, history):
    expected = fold(history)
    first = res.replica(REGIONS[0])
    for region in REGIONS:
        rep = res.replica(region)
        assert rep.same_state(first)
        assert registers_without_seq(res, region) == registers_without_seq(ref, region) == expected
        view = res.global_estimate(region)
        assert view["confidence_factor"] == 1.0 and view["staleness_seconds"] == 0.0
        est = rep.estimate()
        n, mean, m2 = exact_mean_and_m2([list(x) + [s] for (_, _, x, s) in expected.values()])
        assert view["global_estimate"]["count"] == est.count == n
        np.testing.assert_allclose(est.mean, mean, rtol=1e-13)
        np.testing.assert_allclose(est.m2, m2, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(view["global_estimate"]["mean"], mean[:DIM], rtol=1e-13)


@pytest.mark.parametrize("seed", range(20))
def test_seeded_histories(seed):
    check_history(*run_history(seed))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_hypothesis_chosen_histories(seed):
    check_history(*run_history(seed, steps=80))


def test_agents_move_while_split():
    clock = Clock()
    res = StatisticalCAPResolver(clock=clock, regions=["a", "b"])
    for agent in range(10):
        res.handle_update_sync(StatisticalUpdate(f"u{agent}", agent, 0.0, [float(agent)], 0.0, "a"))
    res.sync()
    res.partition([["a"], ["b"]])
    clock.t = 1.0
    # agents 0..4 move to b while split; a also rewrites agent 0 later in time
    for agent in range(5):
        res.handle_update_sync(StatisticalUpdate(f"m{agent}", agent, 1.0, [100.0 + agent], 1.0, "b"))
    res.handle_update_sync(StatisticalUpdate("late", 0, 2.0, [-1.0], 0.5, "a"))
    assert res.global_estimate("a")["global_estimate"]["count"] == 10
    assert res.global_estimate("b")["global_estimate"]["count"] == 10  # b knew all ten from before
    res.heal()
    res.sync()
    for region in ["a", "b"]:
        view = res.global_estimate(region)["global_estimate"]
        assert view["count"] == 10  # never counted twice
        assert view["region_counts"] == {"a": 6, "b": 4}
        expected = [-1.0] + [100.0 + a for a in range(1, 5)] + [float(a) for a in range(5, 10)]
        assert view["mean"].tolist() == pytest.approx([sum(map(Fraction, expected)) / 10], rel=1e-15)


def test_strong_history_never_accepts_in_a_minority():
    rng = random.Random(1)
    res = StatisticalCAPResolver(ConsistencyModel.STRONG, clock=Clock(), regions=REGIONS)
    accepted = refused = 0
    for i in range(200):
        if rng.random() < 0.1:
            res.partition([REGIONS[:2], REGIONS[2:]] if rng.random() < 0.5 else [REGIONS[:4], REGIONS[4:]])
        region = rng.choice(REGIONS)
        u = StatisticalUpdate(i, rng.randrange(20), float(i), [1.0, 2.0], 0.0, region)
        majority = 2 * len(res.visible_regions(region)) > len(REGIONS)
        try:
            res.handle_update_sync(u)
            accepted += 1
            assert majority
            # write-through: every replica the region reaches holds the write at once
            for peer in res.visible_regions(region):
                assert res.replica(peer).registers.get(u.agent_id)["timestamp"] >= u.timestamp
        except ConnectionError:
            raise
        except RuntimeError:
            refused += 1
            assert not majority
    assert accepted and refused


@pytest.mark.parametrize("seed", range(8))
def test_availability_under_random_partition_schedules(seed):
    """STATISTICAL: every update is accepted, wherever the network is cut, without waiting."""
    rng = random.Random(100 + seed)
    clock = Clock()
    res = StatisticalCAPResolver(clock=clock, regions=REGIONS)
    sent = accepted = 0
    for i in range(300):
        if rng.random() < 0.2:
            if rng.random() < 0.3:
                res.heal()
            else:
                res.partition([[r] for r in REGIONS] if rng.random() < 0.5 else [REGIONS[:1], REGIONS[1:3]])
        if rng.random() < 0.1:
            res.sync()
        clock.t += rng.random()
        u = StatisticalUpdate(i, rng.randrange(50), clock.t, [rng.random(), rng.random()], 0.0,
                              rng.choice(REGIONS))
        sent += 1
        result = run_to_completion(res.handle_update(u))
        accepted += result["accepted"] is True
        assert 0.0 < result["confidence_factor"] <= 1.0
    assert accepted == sent


def test_checkpoint_restore_continues_identically():
    clock = Clock()
    res, _, history = run_history(3, steps=60, clock=clock)
    res.partition([REGIONS[:2], REGIONS[2:]])
    clock.t = 1000.0
    restored = StatisticalCAPResolver.from_bytes(res.to_bytes(), clock=clock)  # same simulated time
    assert restored.regions == res.regions and restored.visible_regions("r0") == res.visible_regions("r0")
    for i, region in enumerate(REGIONS * 3):
        u = StatisticalUpdate(10_000 + i, i % 7, 999.0 + i, [float(i), 1.0], 0.5, region)
        assert res.handle_update_sync(u)["applied"] == restored.handle_update_sync(u)["applied"]
    for r in (res, restored):
        r.heal()
        r.sync()
    for region in REGIONS:
        assert res.replica(region).same_state(restored.replica(region))
        a = res.global_estimate(region)["global_estimate"]
        b = restored.global_estimate(region)["global_estimate"]
        assert a["count"] == b["count"]
        np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-12)
