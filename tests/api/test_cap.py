# ruff: noqa: W293  (the guide snippet below is kept byte for byte, blank lines with spaces included)
"""StatisticalCAPResolver: the guide's snippet, confidence, consistency models, bad input."""

import asyncio
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmguard.api.cap import (
    ConsistencyModel,
    QuorumUnavailableError,
    StatisticalCAPResolver,
    StatisticalUpdate,
    UnknownRegionError,
    compute_confidence_factor,
    widened_threshold,
)
from swarmguard.errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
    SwarmGuardError,
)
from tests._clocks import counting_clock


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def upd(uid, agent, ts, x, region, score=0.0):
    return StatisticalUpdate(uid, agent, ts, list(x), score, region)


def state(resolver):
    return {k: v.copy() for k, v in resolver.to_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


# ---------------------------------------------------------------- the guide, as written
GUIDE_SNIPPET = '''
from statistical_cap_resolver import StatisticalCAPResolver, ConsistencyModel, StatisticalUpdate

# Initialize with statistical consistency
resolver = StatisticalCAPResolver(
    consistency_model=ConsistencyModel.STATISTICAL,
    max_staleness_seconds=5.0,  # Your accuracy requirement
    confidence_decay_rate=0.1   # Tunable for your needs
)

# Your distributed updates become:
async def distributed_behavioral_update(behavioral_data):
    update = StatisticalUpdate(
        update_id=behavioral_data.id,
        agent_id=behavioral_data.agent_id,
        timestamp=behavioral_data.timestamp,
        feature_vector=behavioral_data.features,
        anomaly_score=behavioral_data.anomaly_score,
        source_partition=behavioral_data.region  # Geographic/logical partition
    )
    
    result = await resolver.handle_update(update)
    
    # Check confidence during partitions
    if result['confidence_factor'] < 0.8:
        # Degraded mode - wider confidence intervals
        adjust_detection_thresholds(result['confidence_factor'])
'''


def test_guide_snippet_runs_as_written(monkeypatch):
    fake = Clock(100.0)
    monkeypatch.setattr(time, "monotonic", fake)  # the snippet uses the default clock
    adjusted = []

    def adjust_detection_thresholds(confidence_factor):  # the user's helper
        adjusted.append(widened_threshold(3.0, confidence_factor))

    ns = {"adjust_detection_thresholds": adjust_detection_thresholds}
    exec(compile(GUIDE_SNIPPET, "guide_solution_3", "exec"), ns)
    resolver = ns["resolver"]

    def data(i, agent, region, features):
        return SimpleNamespace(id=i, agent_id=agent, timestamp=fake.t, features=features,
                               anomaly_score=0.1 * i, region=region)

    async def main():
        await ns["distributed_behavioral_update"](data(1, "a1", "eu", [1.0] * 10))
        for i in range(2, 5):
            await ns["distributed_behavioral_update"](data(i, f"b{i}", "us", [2.0] * 10))
        resolver.sync()
        resolver.partition([["eu"], ["us"]])
        fake.t += 30.0  # eu has not heard from us for 30 s
        await ns["distributed_behavioral_update"](data(5, "a1", "eu", [1.5] * 10))

    asyncio.run(main())
    assert adjusted == [pytest.approx(3.0 / ((1 + 3 * math.exp(-0.1 * 25.0)) / 4))]
    assert adjusted[0] > 3.0


# ---------------------------------------------------------------- confidence factor
@given(
    st.dictionaries(st.sampled_from("abcde"), st.integers(0, 10**6), min_size=1),
    st.dictionaries(st.sampled_from("abcde"), st.floats(0, 1e9)),
    st.floats(0, 100), st.floats(0, 10), st.floats(0, 1e6),
)
def test_confidence_factor_bounds_and_monotone(counts, ages, s, rate, extra):
    ages = {r: ages.get(r, 0.0) for r in "abcde"}
    cf = compute_confidence_factor(counts, ages, "a", s, rate)
    assert 0.0 < cf <= 1.0
    older = {r: a + extra for r, a in ages.items()}
    assert compute_confidence_factor(counts, older, "a", s, rate) <= cf
    # independent formula (numpy, different summation)
    total = sum(counts.values())
    if total:
        w = np.array([counts.get(r, 0) for r in "abcde"], float) / total
        age = np.array([0.0 if r == "a" else ages[r] for r in "abcde"])
        c = np.exp(-rate * np.maximum(age - s, 0.0))
        assert cf == pytest.approx(max(float(w @ c), 2.2250738585072014e-308), rel=1e-12, abs=1e-300)


def test_confidence_never_increases_without_new_information():
    clock = Clock()
    res = StatisticalCAPResolver(clock=clock, regions=["a", "b", "c"])
    for i, region in enumerate(["a", "b", "b", "c"]):
        res.handle_update_sync(upd(i, i, 0.0, [float(i)], region))
    res.sync()
    res.partition([["a"], ["b", "c"]])
    last = {r: res.confidence_factor(r) for r in "abc"}
    assert all(v == 1.0 for v in last.values())
    for t in [1.0, 5.0, 5.0, 6.0, 30.0, 3.0, 1e4, 1e9]:  # the clock also runs backwards once
        clock.t = t
        for r in "abc":
            cf = res.confidence_factor(r)
            assert 0.0 < cf <= last[r]
            last[r] = cf
    assert res.confidence_factor("a") == pytest.approx(0.25, rel=1e-12)  # only its own quarter is current
    # new information (a sync) restores it
    res.heal()
    res.sync()
    assert res.confidence_factor("a") == 1.0


def test_confidence_interval_widens_by_one_over_cf():
    clock = Clock()
    res = StatisticalCAPResolver(clock=clock, regions=["a", "b"])
    X = np.array([[1.0, 2.0], [2.0, 5.0], [4.0, 1.0], [8.0, 3.0]])
    res.handle_updates_many("a", [0, 1], [0.0, 0.0], X[:2], [0.1, 0.2])
    res.handle_updates_many("b", [2, 3], [0.0, 0.0], X[2:], [0.3, 0.4])
    res.sync()
    fresh = res.global_estimate("a")
    clock.t = 20.0
    stale = res.global_estimate("a")
    cf = stale["confidence_factor"]
    assert cf == pytest.approx(0.5 + 0.5 * math.exp(-0.1 * 15.0))
    lo1, hi1 = fresh["global_estimate"]["confidence_interval"]
    lo2, hi2 = stale["global_estimate"]["confidence_interval"]
    np.testing.assert_allclose((hi2 - lo2) * cf, hi1 - lo1, rtol=1e-12)
    # the fresh interval is the usual normal interval for the mean
    sd = X.std(axis=0, ddof=1)
    np.testing.assert_allclose((hi1 - lo1) / 2, 1.959963984540054 * sd / 2.0, rtol=1e-12)
    np.testing.assert_allclose((lo1 + hi1) / 2, X.mean(axis=0), rtol=1e-15)
    assert stale["staleness_seconds"] == 20.0
    assert stale["weighted_staleness_seconds"] == pytest.approx(10.0)


def test_widened_threshold():
    assert widened_threshold(2.0, 1.0) == 2.0
    assert widened_threshold(2.0, 0.25) == 8.0
    assert widened_threshold(2.0, 0.25, squared=True) == 32.0
    for bad in [0.0, -0.1, 1.5, float("nan")]:
        with pytest.raises(InvalidInputError):
            widened_threshold(2.0, bad)


# ---------------------------------------------------------------- models
def test_statistical_accepts_everywhere_during_a_partition():
    res = StatisticalCAPResolver(clock=Clock(), regions=["a", "b", "c"])
    res.partition([["a"], ["b"], ["c"]])
    for i, region in enumerate("abc"):
        r = res.handle_update_sync(upd(i, i, 0.0, [1.0], region))
        assert r["accepted"] and r["applied"] and r["visible_regions"] == [region]
        assert r["consistency_model"] == "statistical"


def test_strong_refuses_without_majority_and_changes_nothing():
    res = StatisticalCAPResolver(ConsistencyModel.STRONG, clock=Clock(), regions=["a", "b", "c"])
    res.handle_update_sync(upd(0, 0, 0.0, [1.0], "a"))
    res.partition([["a", "b"], ["c"]])
    before = state(res)
    with pytest.raises(QuorumUnavailableError, match="majority") as info:
        res.handle_update_sync(upd(1, 1, 0.0, [1.0], "c"))
    assert isinstance(info.value, SwarmGuardError) and isinstance(info.value, RuntimeError)
    with pytest.raises(QuorumUnavailableError):
        res.handle_updates_many("c", [5], [0.0], [[1.0]], [0.0])
    with pytest.raises(QuorumUnavailableError):
        res.global_estimate("c")
    with pytest.raises(QuorumUnavailableError):  # a brand-new region during a split is alone
        res.handle_update_sync(upd(2, 2, 0.0, [1.0], "d"))
    assert_same(before, state(res))
    assert res.regions == ["a", "b", "c"]
    r = res.handle_update_sync(upd(3, 3, 0.0, [2.0], "a"))
    assert r["accepted"] and res.replica("b").registers.get(3)["features"].tolist() == [2.0]
    assert 3 not in res.replica("c").registers


def test_eventual_reports_no_bounds():
    res = StatisticalCAPResolver("eventual", clock=Clock())
    for i in range(3):
        r = res.handle_update_sync(upd(i, i, 0.0, [float(i)], "a"))
    assert r["consistency_model"] == "eventual" and r["confidence_factor"] is None
    assert "confidence_interval" not in r["global_estimate"]
    assert r["global_estimate"]["count"] == 3


def test_duplicates_and_stale_updates():
    res = StatisticalCAPResolver(clock=Clock())
    u = upd("x", 1, 5.0, [1.0, 2.0], "eu", 0.5)
    assert res.handle_update_sync(u)["applied"]
    before = state(res)
    again = res.handle_update_sync(u)
    assert again["accepted"] and again["duplicate"] and not again["applied"]
    assert_same(before, state(res))
    stale = res.handle_update_sync(upd("y", 1, 4.0, [9.0, 9.0], "eu"))
    assert stale["accepted"] and not stale["applied"] and not stale["duplicate"]
    assert res.replica("eu").registers.get(1)["features"].tolist() == [1.0, 2.0]


def test_batch_path_matches_per_item_path():
    rng = np.random.default_rng(3)
    n = 300
    agents = rng.integers(0, 80, n)
    ts = rng.integers(0, 5, n).astype(float)
    X = rng.normal(size=(n, 3))
    s = rng.random(n)
    one = StatisticalCAPResolver(clock=Clock())
    many = StatisticalCAPResolver(clock=Clock())
    for i in range(n):
        one.handle_update_sync(StatisticalUpdate(i, int(agents[i]), ts[i], X[i], s[i], "r"))
    out = many.handle_updates_many("r", agents, ts, X, s, update_ids=np.arange(n))
    assert out["accepted"] == n
    # same registers; only the internal sequence numbers differ (per item, every
    # superseded write also took one)
    d1, d2 = one.replica("r").registers.to_dict(), many.replica("r").registers.to_dict()
    for k in d1:
        if k != "seq":
            assert np.array_equal(d1[k], d2[k]), k
    e1, e2 = one.global_estimate("r")["global_estimate"], many.global_estimate("r")["global_estimate"]
    assert e1["count"] == e2["count"]
    np.testing.assert_allclose(e1["mean"], e2["mean"], rtol=1e-12)


def test_background_sync_on_simulated_time():
    clock = Clock()

    async def fake_sleep(seconds):
        clock.t += seconds
        await asyncio.sleep(0)

    res = StatisticalCAPResolver(clock=clock, regions=["a", "b"], sync_interval_seconds=2.0, sleep=fake_sleep)

    async def main():
        await res.handle_update(upd(0, 0, 0.0, [1.0], "a"))
        await res.handle_update(upd(1, 1, 0.0, [3.0], "b"))
        for _ in range(5):
            await asyncio.sleep(0)
        counts = [res.global_estimate(r)["global_estimate"]["count"] for r in "ab"]
        await res.stop_background_sync()
        return counts

    assert asyncio.run(main()) == [2, 2]
    assert clock.t >= 2.0
    # a finite run also works without a task
    res2 = StatisticalCAPResolver(clock=clock, regions=["a", "b"], sleep=fake_sleep)
    res2.handle_update_sync(upd(0, 0, 0.0, [1.0], "a"))
    asyncio.run(res2.run_background_sync(1.0, rounds=2))
    assert res2.global_estimate("b")["global_estimate"]["count"] == 1


def test_regions_appear_on_first_update_and_checkpoint():
    res = StatisticalCAPResolver(clock=Clock())
    res.handle_update_sync(upd(0, "a0", 0.0, [1.0], "eu"))
    res.handle_update_sync(upd(1, "b0", 0.0, [1.0], 7))  # int region ids become text
    assert res.regions == ["eu", "7"] and res.feature_dimensions == 1
    assert res.global_estimate("eu")["staleness_seconds"] == 0.0
    with pytest.raises(UnknownRegionError):
        res.global_estimate("mars")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"consistency_model": "linearizable"}, InvalidInputError),
        ({"consistency_model": 3}, InvalidInputError),
        ({"max_staleness_seconds": -1.0}, InvalidInputError),
        ({"max_staleness_seconds": float("nan")}, NonFiniteError),
        ({"confidence_decay_rate": -0.1}, InvalidInputError),
        ({"confidence_decay_rate": float("inf")}, NonFiniteError),
        ({"clock": 5}, InvalidTypeError),
        ({"feature_dimensions": 0}, InvalidInputError),
        ({"confidence_level": 1.0}, InvalidInputError),
        ({"sync_interval_seconds": 0.0}, InvalidInputError),
        ({"regions": ["a", "a"]}, InvalidInputError),
    ],
)
def test_bad_construction(kwargs, error):
    with pytest.raises(error):
        StatisticalCAPResolver(**kwargs)


@pytest.mark.parametrize(
    "update, error",
    [
        (upd(9, 9, 0.0, [1.0, 2.0, 3.0], "a"), DimensionMismatchError),
        (upd(9, 9, 0.0, [1.0], "a"), DimensionMismatchError),
        (upd(9, 9, 0.0, [1.0, float("nan")], "a"), NonFiniteError),
        (upd(9, 9, float("inf"), [1.0, 2.0], "a"), NonFiniteError),
        (upd(9, 9, float("nan"), [1.0, 2.0], "new-region"), NonFiniteError),
        (upd(9, 9, "soon", [1.0, 2.0], "a"), InvalidTypeError),
        (StatisticalUpdate(9, 9, 0.0, [1.0, 2.0], float("nan"), "a"), NonFiniteError),
        (upd(9, 9.5, 0.0, [1.0, 2.0], "a"), InvalidTypeError),
        (upd(9, None, 0.0, [1.0, 2.0], "a"), InvalidInputError),
        (upd([9], 9, 0.0, [1.0, 2.0], "a"), InvalidTypeError),
        (upd(9, 9, 0.0, [1.0, 2.0], ""), InvalidInputError),
        (upd(9, 9, 0.0, ["x", "y"], "a"), InvalidTypeError),
        ({"update_id": 9}, InvalidTypeError),
    ],
)
def test_bad_updates_change_nothing(update, error):
    res = StatisticalCAPResolver(clock=Clock(), regions=["a", "b"])
    res.handle_update_sync(upd(0, 0, 0.0, [1.0, 2.0], "a"))
    res.handle_update_sync(upd(1, 1, 0.0, [1.0, 2.0], "b"))
    before = state(res)
    with pytest.raises(error) as info:
        res.handle_update_sync(update)
    assert isinstance(info.value, SwarmGuardError)
    assert_same(before, state(res))
    assert res.regions == ["a", "b"]


@pytest.mark.parametrize(
    "args, error",
    [
        (("a", [1, 2], [0.0, 1.0], [[1.0, 2.0]], [0.0, 0.0]), DimensionMismatchError),
        (("a", [1], [0.0], [[1.0, 2.0, 3.0]], [0.0]), DimensionMismatchError),
        (("a", [1], [np.nan], [[1.0, 2.0]], [0.0]), NonFiniteError),
        (("new", [1], [0.0], [[1.0, np.inf]], [0.0]), NonFiniteError),
        (("new", [1], [0.0], [[1.0, 2.0]], [0.0, 1.0]), DimensionMismatchError),
        (("a", [1.5], [0.0], [[1.0, 2.0]], [0.0]), InvalidInputError),
    ],
)
def test_bad_batches_change_nothing(args, error):
    res = StatisticalCAPResolver(clock=Clock(), regions=["a", "b"])
    res.handle_updates_many("a", [0], [0.0], [[1.0, 2.0]], [0.0], update_ids=[0])
    before = state(res)
    with pytest.raises(error):
        res.handle_updates_many(*args, update_ids=[7] * len(args[1]))
    assert_same(before, state(res))
    assert res.regions == ["a", "b"]


def test_bad_first_update_creates_nothing():
    res = StatisticalCAPResolver(clock=Clock())
    with pytest.raises(NonFiniteError):
        res.handle_update_sync(upd(0, 0, 0.0, [np.nan], "a"))
    assert res.regions == [] and res.feature_dimensions is None


@pytest.mark.parametrize(
    "groups, error",
    [([["a"], ["a", "b"]], InvalidInputError), ([["a", "zz"]], UnknownRegionError), ("ab", InvalidTypeError),
     ([["a"], "b"], InvalidTypeError)],
)
def test_bad_partitions_change_nothing(groups, error):
    res = StatisticalCAPResolver(clock=Clock(), regions=["a", "b", "c"])
    res.partition([["a", "b"], ["c"]])
    before = state(res)
    with pytest.raises(error):
        res.partition(groups)
    assert_same(before, state(res))
    assert res.visible_regions("a") == ["a", "b"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "soon"])
@pytest.mark.parametrize("change", ["partition", "heal"])
def test_strong_link_change_with_a_bad_clock_changes_nothing(change, bad):
    """Under STRONG a partition or heal syncs at once, reading the clock: a clock gone bad
    refuses the call before the links change (a refused call leaves the groups as they were)."""
    clock = Clock(1.0)
    res = StatisticalCAPResolver(consistency_model=ConsistencyModel.STRONG, clock=clock, regions=["a", "b", "c"])
    res.handle_update_sync(upd("u0", 0, 0.0, [1.0], "a"))
    if change == "heal":
        res.partition([["a", "b"], ["c"]])
    before, latest, visible = state(res), res._latest, res.visible_regions("a")
    clock.t = bad
    with pytest.raises((NonFiniteError, InvalidTypeError)):
        res.partition([["a"], ["b", "c"]]) if change == "partition" else res.heal()
    assert_same(before, state(res))
    assert res._latest == latest and res.visible_regions("a") == visible
    clock.t = 2.0             # the clock mended: the same call goes through
    res.partition([["a"], ["b", "c"]]) if change == "partition" else res.heal()
    assert res.visible_regions("a") == (["a"] if change == "partition" else ["a", "b", "c"])


def test_clock_returning_nan_is_refused():
    values = iter([0.0, float("nan")])
    with pytest.raises(NonFiniteError):
        res = StatisticalCAPResolver(clock=lambda: next(values))
        res.handle_update_sync(upd(0, 0, 0.0, [1.0], "a"))


def test_read_clock_changes_nothing_and_a_write_at_now_uses_that_reading_throughout():
    """The detector reads the resolver's clock once, before any part changes, and passes it
    as ``now``: the write, the view and an automatic sync use it; the clock is not read again."""
    clock = Clock(10.0)
    res = StatisticalCAPResolver(clock=clock, regions=["a", "b"], auto_sync_seconds=1.0)
    res.handle_update_sync(upd(0, 0, 0.0, [1.0], "a"))
    clock.t = 20.0
    assert res.read_clock() == 20.0 and res.read_clock() == 20.0
    clock.t = 5.0                                       # backwards: the high-water mark, still 10
    assert res.read_clock() == 10.0
    clock.t = float("nan")                              # bad from here on: never read below
    out = res.handle_updates_many("b", [1, 2], [1.0, 2.0], [[1.0], [3.0]], [0.1, 0.2], now=30.0)
    assert out["accepted"] == 2 and out["staleness_seconds"] == 0.0    # auto-synced at 30
    assert res.handle_update_sync(upd(3, 3, 3.0, [5.0], "a"), now=25.0)["accepted"]   # earlier: taken as 30
    assert res.replica("a").ages(30.0)["b"] == 0.0
    for bad, err in ((float("nan"), NonFiniteError), ("30", InvalidTypeError), (10**400, NonFiniteError)):
        with pytest.raises(err):
            res.handle_updates_many("b", [1], [1.0], [[1.0]], [0.1], now=bad)
        with pytest.raises(err):
            res.handle_update_sync(upd(4, 4, 4.0, [1.0], "a"), now=bad)
    assert 4 not in res.replica("a").registers
    with pytest.raises(NonFiniteError, match="clock"):
        res.read_clock()
    # a valid now with a refused batch (an existing region's, validated by its replica; one
    # update): the clock's high-water mark stays at the last accepted write's 30
    with pytest.raises(NonFiniteError):
        res.handle_updates_many("b", [1], [1.0], [[float("nan")]], [0.1], now=1e6)
    with pytest.raises(DimensionMismatchError):
        res.handle_update_sync(upd(4, 4, 4.0, [1.0, 2.0], "a"), now=1e6)
    clock.t = 0.0
    assert res.read_clock() == 30.0


def test_strong_even_split_has_no_majority_anywhere():
    res = StatisticalCAPResolver(ConsistencyModel.STRONG, clock=Clock(), regions=["a", "b", "c", "d"])
    res.partition([["a", "b"], ["c", "d"]])  # 2 of 4 is not a majority: no split brain
    for region in "abcd":
        with pytest.raises(QuorumUnavailableError):
            res.handle_update_sync(upd(region, 1, 0.0, [1.0], region))
    res.heal()
    assert res.handle_update_sync(upd("ok", 1, 0.0, [1.0], "c"))["accepted"]


def test_bad_checkpoints():
    res = StatisticalCAPResolver(clock=Clock(), regions=["a", "b"])
    res.handle_update_sync(upd(0, 0, 0.0, [1.0], "a"))
    state_ = res.to_dict()
    with pytest.raises(InvalidInputError):
        StatisticalCAPResolver.from_bytes(b"nope")
    with pytest.raises(InvalidInputError):
        StatisticalCAPResolver.from_dict(state_, regions=["x"])
    broken = dict(state_)
    del broken["born"]
    with pytest.raises(InvalidInputError):
        StatisticalCAPResolver.from_dict(broken)
    broken = dict(state_)
    broken["replica[a].registers.features"] = np.array([[np.nan]])
    with pytest.raises(InvalidInputError):
        StatisticalCAPResolver.from_dict(broken)
    ok = StatisticalCAPResolver.from_dict(state_, clock=Clock())
    assert ok.global_estimate("a")["global_estimate"]["count"] == 1


def test_strong_written_through_rows_reach_the_next_majority():
    res = StatisticalCAPResolver(ConsistencyModel.STRONG, clock=Clock(), regions=list("abcde"))
    res.partition([["a", "b", "c"], ["d", "e"]])
    res.handle_update_sync(upd("w", 1, 0.0, [4.0], "a"))  # written through to b and c only
    res.partition([["a"], ["b", "d", "e"], ["c"]])  # b carries it into the new majority
    for region in "bde":
        assert res.replica(region).registers.get(1)["features"].tolist() == [4.0]
        assert res.global_estimate(region)["global_estimate"]["count"] == 1


def test_auto_sync_keeps_a_whole_network_at_full_confidence_without_explicit_syncs():
    t = [0.0]
    r = StatisticalCAPResolver(clock=lambda: t[0], regions=["eu", "us"], max_staleness_seconds=5.0)
    for i in range(60):
        t[0] = float(i)
        region = "eu" if i % 2 else "us"
        res = r.handle_update_sync(StatisticalUpdate(i, f"a{i}", t[0], [float(i)], 0.0, region))
    assert res["confidence_factor"] == 1.0
    assert r.global_estimate("eu")["global_estimate"]["count"] >= 58   # peers' writes arrived
    # with it turned off, the same schedule goes stale
    t[0] = 0.0
    off = StatisticalCAPResolver(clock=lambda: t[0], regions=["eu", "us"], auto_sync_seconds=None)
    for i in range(60):
        t[0] = float(i)
        res = off.handle_update_sync(StatisticalUpdate(i, f"a{i}", t[0], [float(i)], 0.0, "eu" if i % 2 else "us"))
        if i == 29:
            off.sync()          # one exchange, then none: the peer's part of the view ages
    assert res["confidence_factor"] < 0.9
    # during a partition auto-sync cannot cross the cut: confidence falls
    r.partition([["eu"], ["us"]])
    for i in range(60, 100):
        t[0] = float(i)
        res = r.handle_update_sync(StatisticalUpdate(i, f"a{i}", t[0], [1.0], 0.0, "eu"))
    counts = res["global_estimate"]["region_counts"]
    w_us = counts["us"] / sum(counts.values())
    expected = (1 - w_us) + w_us * math.exp(-0.1 * (res["staleness_seconds"] - 5.0))
    assert res["confidence_factor"] == pytest.approx(expected, rel=1e-12)
    assert res["confidence_factor"] < 0.75


# ---------------------------------------------------------------- ids holding a NUL character
# NumPy string arrays drop trailing NULs: "a\x00" would be "a" in a batch's arrays and
# "a\x00" in a single update's register, and two replicas would never agree. Refused.

@pytest.mark.parametrize("make", [
    lambda: upd("u1", "a\x00", 1.0, [1.0, 1.0], "eu"),
    lambda: upd("u\x00", "a", 1.0, [1.0, 1.0], "eu"),
])
def test_handle_update_refuses_a_nul_in_an_id_and_changes_nothing(make):
    r = StatisticalCAPResolver(regions=["eu", "us"], clock=Clock(1.0))
    r.handle_update_sync(upd("u0", "a", 0.5, [0.0, 0.0], "eu"))
    before = state(r)
    with pytest.raises(InvalidInputError, match="NUL"):
        r.handle_update_sync(make())
    assert_same(before, state(r))


@pytest.mark.parametrize("agent_ids, update_ids", [
    (["b", "a\x00"], None),
    (np.array(["b", "a\x00"], dtype=object), None),
    (np.array(["b", "x\x00y"]), None),
    (["b", "c"], ["u1", "u2\x00"]),
])
def test_handle_updates_many_refuses_a_nul_in_an_id_and_changes_nothing(agent_ids, update_ids):
    r = StatisticalCAPResolver(regions=["eu", "us"], clock=Clock(1.0))
    r.handle_update_sync(upd("u0", "a", 0.5, [0.0, 0.0], "eu"))
    before = state(r)
    with pytest.raises(InvalidInputError, match="NUL"):
        r.handle_updates_many("eu", agent_ids, [1.0, 1.0], [[5.0, 5.0], [6.0, 6.0]], [0.0, 0.0], update_ids)
    with pytest.raises(InvalidInputError, match="NUL"):       # a region's first write too
        r.handle_updates_many("us", agent_ids, [1.0, 1.0], [[5.0, 5.0], [6.0, 6.0]], [0.0, 0.0], update_ids)
    assert_same(before, state(r))
    assert r.replica("eu").registers.get("a")["features"].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- exact estimates

def test_alternating_1e10_gives_a_positive_variance_and_a_real_interval():
    """The issue's reproducer: +-1e10 written 20,000 times to one agent; the interval had zero width."""
    from fractions import Fraction

    res = StatisticalCAPResolver(clock=Clock(), regions=["eu"], auto_sync_seconds=None)
    res.handle_updates_many("eu", np.arange(1, 10), np.zeros(9), np.arange(1, 10, dtype=float)[:, None],
                            np.full(9, 0.5))
    for i in range(20_000):
        res.handle_updates_many("eu", [0], [float(i)], [[1e10 if i % 2 == 0 else -1e10]], [0.5])
    est = res.global_estimate("eu")["global_estimate"]
    values = [Fraction(v) for v in range(1, 10)] + [Fraction(-1e10)]
    mean = sum(values) / 10
    m2 = sum((v - mean) ** 2 for v in values)
    assert est["mean"].tolist() == [float(mean)]
    lo, hi = est["confidence_interval"]
    half = res._z * math.sqrt(float(m2) / (9 * 10))
    assert hi[0] - lo[0] > 0
    assert math.isclose((hi[0] - lo[0]) / 2, half, rel_tol=1e-12)


def test_replicas_with_identical_registers_report_identical_views():
    """Reproducer: one region saw the churn, the other only the final state (4.49999902 vs 4.5)."""
    res = StatisticalCAPResolver(clock=Clock(), regions=["eu", "us"], auto_sync_seconds=None)
    rng = np.random.default_rng(0)
    for t in range(2000):
        res.handle_updates_many("eu", rng.integers(0, 8, 1), [float(t)], [[rng.choice([1e8, -1e8]) + 0.3]], [0.0])
    res.handle_updates_many("eu", np.arange(8), np.full(8, 1e4), (np.arange(8) + 1.0)[:, None], np.zeros(8))
    res.sync()
    assert res.replica("eu").registers == res.replica("us").registers
    eu, us = (res.global_estimate(r)["global_estimate"] for r in ("eu", "us"))
    assert eu["mean"].tolist() == us["mean"].tolist() == [4.5]
    assert [a.tolist() for a in eu["confidence_interval"]] == [a.tolist() for a in us["confidence_interval"]]
    assert eu["confidence_interval"][1][0] - eu["confidence_interval"][0][0] > 0


# ---------------------------------------------------------------- bounded duplicate guard

def test_per_item_path_with_a_new_id_per_call_stays_bounded():
    res = StatisticalCAPResolver(clock=Clock(), regions=["eu"], dedup_window=100, auto_sync_seconds=None)
    for i in range(3000):
        res.handle_update_sync(upd(f"u{i}", i % 10, float(i), [float(i)], "eu"))
    rep = res.replica("eu")
    assert len(rep.seen_update_ids) == 100
    again = res.handle_update_sync(upd("u2950", 3, 1e9, [0.0], "eu"))      # a recent re-send: ignored
    assert again["duplicate"] and not again["applied"]
    back = StatisticalCAPResolver.from_bytes(res.to_bytes(), clock=Clock())
    assert back.replica("eu").seen_update_ids == rep.seen_update_ids


# ---------------------------------------------------------------- one lock: safe under threads

def test_four_threads_end_in_the_serial_state():
    import threading

    def writes(k):
        rng = np.random.default_rng(k)
        ids = np.arange(k * 1000, k * 1000 + 400)
        X = rng.normal(size=(400, 2))
        return [(ids[i:i + 50], X[i:i + 50]) for i in range(0, 400, 50)], [
            upd(f"{k}-{i}", int(ids[i]), 5.0, X[i] + 1, f"r{k % 2}") for i in range(60)]

    work = [writes(k) for k in range(4)]

    def run(res, k, barrier=None):
        batches, items = work[k]
        if barrier is not None:
            barrier.wait()
        region = f"r{k % 2}"
        for (ids, X), item in zip(batches, items, strict=False):
            res.handle_updates_many(region, ids, np.full(ids.size, 1.0), X, np.zeros(ids.size),
                                    update_ids=[f"b{k}-{int(i)}" for i in ids])
            res.handle_update_sync(item)
            res.global_estimate(region)
        for item in items[len(batches):]:
            res.handle_update_sync(item)
        res.sync()

    serial = StatisticalCAPResolver(clock=Clock(), regions=["r0", "r1"], feature_dimensions=2)
    for k in range(4):
        run(serial, k)
    serial.sync()
    shared = StatisticalCAPResolver(clock=Clock(), regions=["r0", "r1"], feature_dimensions=2)
    barrier, errors = threading.Barrier(4), []

    def target(k):
        try:
            run(shared, k, barrier)
        except Exception as exc:  # noqa: BLE001 - the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.sync()
    assert errors == []
    for region in ("r0", "r1"):
        a, b = serial.global_estimate(region)["global_estimate"], shared.global_estimate(region)["global_estimate"]
        assert a["count"] == b["count"] == 1600 and a["region_counts"] == b["region_counts"] == {"r0": 800, "r1": 800}
        assert a["mean"].tolist() == b["mean"].tolist()          # exact sums: any interleaving, same bits
        assert [x.tolist() for x in a["confidence_interval"]] == [x.tolist() for x in b["confidence_interval"]]
        ra, rb = serial.replica(region).registers.to_dict(), shared.replica(region).registers.to_dict()
        for key in ("int_ids", "features", "timestamp", "anomaly_score", "regions"):
            assert np.array_equal(ra[key], rb[key]), key
        assert serial.replica(region).seen_update_ids == shared.replica(region).seen_update_ids


# ---------------------------------------------------------------- damaged checkpoints: typed errors

def _resolver_state():
    res = StatisticalCAPResolver(clock=Clock(), regions=["eu", "us"])
    res.handle_updates_many("eu", [1, 2], [0.0, 1.0], [[1.0], [2.0]], [0.1, 0.2], update_ids=[5, 6])
    res.handle_update_sync(upd("x", "a", 2.0, [3.0], "us"))
    res.sync()
    res.partition([["eu"], ["us"]])
    return res


@pytest.mark.parametrize("key, value", [
    ("groups", np.array([0.5, 1.5])), ("groups", np.array([0, -1])), ("born", np.array([0, 0])),
    ("born", np.array([np.nan, 0.0])), ("start", np.array("0")), ("dim", np.array(1.0)), ("dim", np.array(0)),
    ("regions", np.array([["eu", "us"]])), ("regions", np.array(["eu", "eu"])), ("format", np.array([1])),
    ("replica[eu].sender", np.array("us")), ("replica[zz].sender", np.array("zz")),
    ("replica[eu].version.counts", np.array([2**63 - 1, 1])),
])
def test_resolver_from_dict_refuses_tampered_fields(key, value):
    state_ = _resolver_state().to_dict()
    state_[key] = value
    with pytest.raises(InvalidInputError):
        StatisticalCAPResolver.from_dict(state_, clock=Clock())


def test_resolver_from_bytes_fuzz_only_typed_errors():
    import random

    res = _resolver_state()
    data = res.to_bytes()
    rng = random.Random(0)
    for _ in range(150):
        raw = bytearray(data)
        if rng.random() < 0.3:
            raw = raw[:rng.randrange(len(raw))]
        else:
            i = rng.randrange(len(raw))
            raw[i] ^= 1 << rng.randrange(8)
        try:
            back = StatisticalCAPResolver.from_bytes(bytes(raw), clock=Clock())
        except InvalidInputError:
            continue
        assert_same(state(back), state(res))     # an unnoticed flip (zip metadata) changes no value


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


@pytest.mark.parametrize("path", ["handle_update", "handle_updates_many"])
def test_the_resolver_reads_its_clock_once_per_write(path):
    clock, calls = counting_clock()
    r = StatisticalCAPResolver(consistency_model=ConsistencyModel.STATISTICAL, clock=clock, regions=["eu", "us"])
    before = len(calls)
    if path == "handle_update":
        asyncio.run(r.handle_update(StatisticalUpdate("u1", 1, 0.0, [1.0, 2.0], 0.0, "eu")))
    else:
        r.handle_updates_many("eu", [1], [0.0], [[1.0, 2.0]], [0.0])
    assert len(calls) - before == 1


def test_a_refused_async_update_starts_no_background_sync():
    async def run():
        r = StatisticalCAPResolver(clock=lambda: 5.0, regions=["eu"], sync_interval_seconds=0.5)
        with pytest.raises(NonFiniteError):
            await r.handle_update(StatisticalUpdate("u1", 1, float("nan"), [1.0], 0.0, "eu"))
        refused = r._sync_task
        await r.handle_update(StatisticalUpdate("u2", 1, 0.0, [1.0], 0.0, "eu"))
        accepted = r._sync_task is not None and not r._sync_task.done()
        await r.stop_background_sync()
        return refused, accepted
    refused, accepted = asyncio.run(run())
    assert refused is None and accepted


def test_per_item_writes_report_the_exact_view_of_the_batch_path():
    """handle_update_sync (the one-row path, replace and revert of one id, values from 1e-300 to
    1e99, subnormals, scores to 1e300) reports the view of one batch of the final rows, and that
    view is the exact one: the mean is float(Fraction), the interval mean -+ z sqrt(M2 / (n (n-1)))."""
    from fractions import Fraction

    extremes = [1e-300, 9e99, 5e-324, -1e-310, 0.0, -0.0, 1.0 / 3, 2.0**-1000, -9e99]
    rng = np.random.default_rng(3)
    one = StatisticalCAPResolver(clock=Clock(), regions=["eu"], auto_sync_seconds=None)
    final = {}
    for i in range(300):
        agent = int(rng.integers(8))
        if i % 6 == 5 and agent in final:
            x, s = final[agent]                     # write the old values back (a revert)
        else:
            x = [float(v) for v in rng.choice(extremes, 2)] if i % 3 else rng.normal(size=2).tolist()
            s = float(rng.choice([1e300, -1e-300, 0.25]))
        r = one.handle_update_sync(StatisticalUpdate(f"u{i}", agent, float(i), x, s, "eu"), now=0.0)
        assert r["applied"]
        final[agent] = (x, s)
    agents = sorted(final)
    batch = StatisticalCAPResolver(clock=Clock(), regions=["eu"], auto_sync_seconds=None)
    batch.handle_updates_many("eu", agents, np.zeros(len(agents)), [final[a][0] for a in agents],
                              [final[a][1] for a in agents], now=0.0)
    a, b = one.global_estimate("eu")["global_estimate"], batch.global_estimate("eu")["global_estimate"]
    rows = [[Fraction(v) for v in final[k][0]] + [Fraction(final[k][1])] for k in agents]
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows, strict=True)]
    m2 = [sum((r[c] - mean[c]) ** 2 for r in rows) for c in range(3)]

    def rounded(q):    # correctly rounded, inf beyond the float range (as IEEE rounding gives)
        try:
            return float(q)
        except OverflowError:
            return math.inf

    half = [one._z * math.sqrt(rounded(v) / (n * (n - 1))) / 1.0 for v in m2]
    assert math.isinf(half[2])        # the scores' M2 (about 1e600) is beyond the float range
    for est in (a, b):
        assert est["count"] == n
        assert est["mean"].tolist() == [float(v) for v in mean[:2]]
        assert est["mean_anomaly_score"] == float(mean[2])
        lo, hi = est["confidence_interval"]
        assert lo.tolist() == [float(mean[c]) - half[c] for c in range(2)]
        assert hi.tolist() == [float(mean[c]) + half[c] for c in range(2)]
        assert est["anomaly_score_interval"] == (float(mean[2]) - half[2], float(mean[2]) + half[2])
    assert one.replica("eu").estimate_exact() == batch.replica("eu").estimate_exact()


@pytest.mark.parametrize("model", ["statistical", "strong", "eventual"])
def test_the_checked_one_row_write_gives_handle_update_syncs_state_and_report(model):
    """The detector's per-item write (_handle_checked: values checked by the caller) leaves the
    state handle_update_sync leaves, with its report, or with report=False its confidence
    factor alone; a first write of a region or of the dimension takes the general path."""
    t = [0.0]
    public = StatisticalCAPResolver(model, clock=lambda: t[0], regions=["eu", "us"])
    checked = StatisticalCAPResolver(model, clock=lambda: t[0], regions=["eu", "us"])
    rng = np.random.default_rng(4)
    for step in range(40):
        t[0] = 0.4 * step
        region = ["eu", "us", "ap"][step % 3] if step > 3 else "eu"     # "ap": born by its first write
        agent = int(rng.integers(0, 12))
        agent = agent if agent % 3 else f"agent-{agent}"                # int and str ids
        x = rng.normal(size=3)
        uid = f"u{step % 30}"                                           # re-sent ids: duplicates
        update = StatisticalUpdate(uid, agent, float(step // 2), x, float(step), region)
        want = public.handle_update_sync(update, now=t[0])
        if step % 2:
            got = checked._handle_checked(region, agent, float(step // 2), x, float(step), uid, t[0])
            assert repr(got) == repr(want)
        else:
            got = checked._handle_checked(region, agent, float(step // 2), x, float(step), uid, t[0], report=False)
            assert got["confidence_factor"] == want["confidence_factor"]
    a, b = public.to_dict(), checked.to_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for region in public.regions:
        assert repr(public.global_estimate(region)) == repr(checked.global_estimate(region))


def test_the_checked_one_row_write_refuses_a_non_finite_score_and_changes_nothing():
    r = StatisticalCAPResolver(clock=lambda: 0.0, regions=["eu"])
    r.handle_update_sync(StatisticalUpdate("u0", 1, 0.0, [1.0, 2.0], 0.0, "eu"))
    before = r.to_dict()
    with pytest.raises(NonFiniteError):
        r._handle_checked("eu", 2, 0.0, np.array([1.0, 2.0]), math.inf, "u1", 0.0, report=False)
    after = r.to_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
