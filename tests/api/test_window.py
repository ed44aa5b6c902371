"""window_rounds: windowed moments per node, checked against exact arithmetic and NumPy from scratch."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard import (
    BehavioralDistributedProtocol,
    DistributedBehavioralDetector,
    HierarchicalStatisticalTree,
    InvalidInputError,
    InvalidTypeError,
    Moments,
)
from tests._exact import exact_mean_cov

D = 3


def play(seed: int = 0, window: int = 3, rounds: int = 9, n: int = 120):
    """A tree with a window fed rounds of random subsets (batch and per item, moves, removals);
    returns it and, from our own bookkeeping, each agent's vector, cohort and last round."""
    rng = np.random.default_rng(seed)
    tree = HierarchicalStatisticalTree(branching_factor=4, feature_dimensions=D, window_rounds=window)
    vec, cohort, last = {}, {}, {}
    names = np.array(["eu", "us", "ap"])
    for r in range(1, rounds + 1):
        who = np.sort(rng.choice(n, size=int(rng.integers(10, n // 2)), replace=False))
        X = rng.normal(size=(who.size, D)) * np.array([1.0, 3.0, 0.5]) + r * np.array([1.0, -2.0, 0.5]) + 1e3
        regions = names[rng.integers(0, 3, size=who.size)]
        tree.update_many(who, X, cohorts=regions)        # opens round r
        for a, x, c in zip(who.tolist(), X, regions.tolist(), strict=True):
            vec[a], cohort[a], last[a] = x, c, r
        for a in rng.choice(n, size=4, replace=False).tolist():     # per item, in the open round
            x = rng.normal(size=D) + r + 1e3
            c = str(names[rng.integers(0, 3)])
            tree.update_agent(a, x, cohort=(c,))
            vec[a], cohort[a], last[a] = x, c, r
        gone = [a for a in list(vec) if rng.random() < 0.02]
        for a in gone:
            tree.remove_agent(a)
            del vec[a], cohort[a], last[a]
    return tree, vec, cohort, last


def inside_rows(vec, cohort, last, round_now, window, region=None):
    ids = [a for a in sorted(vec) if last[a] > round_now - window and (region is None or cohort[a] == region)]
    return ids, np.array([vec[a] for a in ids])


@pytest.mark.parametrize("seed,window", [(0, 1), (1, 3), (2, 5)])
def test_windowed_statistics_are_the_exact_moments_of_the_members_inside(seed, window):
    tree, vec, cohort, last = play(seed, window)
    assert tree.current_round == 9
    for region in (None, "eu", "us", "ap"):
        ids, X = inside_rows(vec, cohort, last, 9, window, region)
        s = tree.get_window_statistics(() if region is None else (region,))
        assert s["count"] == len(ids) > 2
        mean, cov = exact_mean_cov(X)
        assert np.allclose(s["mean"], mean, rtol=1e-13, atol=0)
        assert np.allclose(s["covariance"], cov, rtol=1e-11, atol=1e-11 * np.abs(cov).max())
    # the full moments are untouched by the window: everyone, stale or not
    assert tree.get_global_statistics()["count"] == len(vec)
    ids = sorted(vec)
    assert tree.in_window(ids).tolist() == [last[a] > 9 - window for a in ids]


def test_cohorts_windowed_moments_merge_into_the_populations():
    tree, vec, cohort, last = play(3, 3)
    parts = []
    for region in ("eu", "us", "ap"):
        _, X = inside_rows(vec, cohort, last, 9, 3, region)
        s = tree.get_window_statistics((region,))
        m = Moments.from_array(X)
        assert m.count == s["count"] and np.allclose(m.mean, s["mean"], rtol=1e-13)
        parts.append(m)
    merged = Moments.merge_all(parts)
    s = tree.get_window_statistics()
    assert merged.count == s["count"]
    assert np.allclose(merged.covariance(), s["covariance"], rtol=1e-11)


def test_a_window_as_long_as_the_run_gives_todays_scores():
    rng = np.random.default_rng(4)
    plain = HierarchicalStatisticalTree(feature_dimensions=D)
    wide = HierarchicalStatisticalTree(feature_dimensions=D, window_rounds=100)
    for r in range(5):
        who = np.sort(rng.choice(300, size=200, replace=False)) if r else np.arange(300)
        X = rng.normal(size=(who.size, D)) + r
        plain.update_many(who, X)
        wide.update_many(who, X)
    a = BehavioralDistributedProtocol(plain, warm_up=10).score_many(fdr=0.01)
    b = BehavioralDistributedProtocol(wide, warm_up=10).score_many(fdr=0.01)
    assert np.allclose(a["mahalanobis_squared"], b["mahalanobis_squared"], rtol=1e-10)
    assert (a["is_anomaly"] == b["is_anomaly"]).all()


def numpy_window_d2(X_inside: np.ndarray, X_stale: np.ndarray):
    """From scratch, no shrinkage: inside members leave-one-out among the inside, stale
    members against all the inside."""
    loo = np.empty(X_inside.shape[0])
    for i in range(X_inside.shape[0]):
        others = np.delete(X_inside, i, axis=0)
        diff = X_inside[i] - others.mean(axis=0)
        loo[i] = diff @ np.linalg.solve(np.cov(others.T), diff)
    diff = X_stale - X_inside.mean(axis=0)
    out = np.einsum("ij,ij->i", diff, np.linalg.solve(np.cov(X_inside.T), diff.T).T)
    return loo, out


def test_scores_are_leave_one_out_inside_and_against_the_window_for_stale_members():
    tree, vec, cohort, last = play(5, 2)
    protocol = BehavioralDistributedProtocol(tree, shrinkage=0.0, warm_up=10)
    ids = sorted(vec)
    res = protocol.score_many(ids, fdr=None)
    d2 = dict(zip(ids, res["mahalanobis_squared"].tolist(), strict=True))
    inside, X_in = inside_rows(vec, cohort, last, 9, 2)
    stale = [a for a in ids if a not in set(inside)]
    assert stale and inside
    loo, out = numpy_window_d2(X_in, np.array([vec[a] for a in stale]))
    assert np.allclose([d2[a] for a in inside], loo, rtol=1e-6)
    assert np.allclose([d2[a] for a in stale], out, rtol=1e-6)
    # the per-item answer is the batch answer
    one = protocol.score_agent_sync(inside[0])
    assert one["mahalanobis_squared"] == pytest.approx(d2[inside[0]], rel=1e-9)


def test_per_item_update_joins_the_window_and_is_scored_leave_one_out():
    tree, vec, cohort, last = play(6, 2)
    protocol = BehavioralDistributedProtocol(tree, shrinkage=0.0, warm_up=10)
    stale = next(a for a in sorted(vec) if last[a] <= 7)
    x = np.array([5.0, -5.0, 5.0]) + 1e3
    info = protocol.update_agent_behavior_sync({"agent_id": stale, "features": x})
    vec[stale], last[stale] = x, 9
    inside, X_in = inside_rows(vec, cohort, last, 9, 2)
    k = inside.index(stale)
    loo, _ = numpy_window_d2(X_in, X_in[:1])
    assert info["mahalanobis_squared"] == pytest.approx(loo[k], rel=1e-6)
    assert tree.in_window([stale]).tolist() == [True]


def test_serialised_tree_keeps_its_window_and_expires_the_same_members():
    tree, vec, cohort, last = play(7, 3)
    back = HierarchicalStatisticalTree.from_dict(tree.to_dict())
    assert back.window_rounds == 3 and back.current_round == tree.current_round
    a, b = tree.get_window_statistics(), back.get_window_statistics()
    assert a["count"] == b["count"] and np.allclose(a["covariance"], b["covariance"], rtol=1e-12)
    ids = sorted(vec)
    assert (back.in_window(ids) == tree.in_window(ids)).all()
    for t in (tree, back):
        t.advance_round()
    assert (back.in_window(ids) == tree.in_window(ids)).all()
    assert back.get_window_statistics()["count"] == tree.get_window_statistics()["count"] == \
        sum(last[x] > 10 - 3 for x in ids)


@pytest.mark.parametrize("value,error", [(0, InvalidInputError), (-2, InvalidInputError),
                                         (1.5, InvalidTypeError), (True, InvalidTypeError),
                                         ("2", InvalidTypeError)])
def test_bad_window_is_refused_with_a_typed_error(value, error):
    with pytest.raises(error, match="window_rounds"):
        HierarchicalStatisticalTree(feature_dimensions=D, window_rounds=value)
    with pytest.raises(error, match="window_rounds"):
        DistributedBehavioralDetector(feature_dimensions=D, window_rounds=value)
    assert issubclass(error, (ValueError, TypeError))


def test_refusals_change_nothing():
    tree, vec, cohort, last = play(8, 2)
    before = tree.to_dict()
    with pytest.raises(InvalidInputError):
        tree.update_many([1, 1], np.zeros((2, D)))                  # a refused batch opens no round
    after = tree.to_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    plain = HierarchicalStatisticalTree(feature_dimensions=D)
    for call in (plain.advance_round, plain.get_window_statistics, lambda: plain.in_window([1])):
        with pytest.raises(InvalidInputError, match="no window"):
            call()
    state = tree.to_dict()
    state["window_last_round"] = state["window_last_round"] + 100      # rounds from the future
    with pytest.raises(InvalidInputError, match="window_last_round"):
        HierarchicalStatisticalTree.from_dict(state)


def test_ray_refuses_a_robust_window_before_ray_starts():
    # a window alone runs on Ray (tests/engines/test_ray_modes.py); trimmed moments drawn from
    # the window are not merged there yet
    code = (
        "import sys\n"
        "import swarmguard as sg\n"
        "from swarmguard.errors import InvalidInputError\n"
        "try:\n"
        "    sg.DistributedBehavioralDetector(backend='ray', window_rounds=3, scoring='robust')\n"
        "except InvalidInputError as exc:\n"
        "    assert 'ray' in str(exc) and 'window_rounds' in str(exc); print('refused')\n"
        "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr


def test_robust_with_a_window_trims_the_members_inside_and_scores_stale_ones_as_outsiders():
    from tests.api.test_robust_scoring import numpy_kept, numpy_robust_d2, population

    stale = population(0) - 30.0                 # last round's population, far behind
    X = population(1)
    tree = HierarchicalStatisticalTree(feature_dimensions=3, window_rounds=1)
    protocol = BehavioralDistributedProtocol(tree, scoring="robust", warm_up=10)
    tree.update_many(np.arange(1000, 1000 + stale.shape[0]), stale)
    tree.update_many(np.arange(X.shape[0]), X)   # opens round 2: the stale rows leave the window
    kept = numpy_kept(X)                          # judged against the window's moments, not everyone's
    stats = tree.get_trimmed_statistics()
    assert stats["count"] == kept.sum() and tree.get_window_statistics()["count"] == X.shape[0]
    np.testing.assert_allclose(stats["covariance"], np.cov(X[kept].T), rtol=1e-12, atol=1e-13)
    ids = np.concatenate([np.arange(X.shape[0]), np.arange(1000, 1000 + stale.shape[0])])
    res = protocol.score_many(ids, fdr=None)
    want = numpy_robust_d2(np.vstack([X, stale]), np.concatenate([kept, np.zeros(stale.shape[0], bool)]))
    np.testing.assert_allclose(res["mahalanobis_squared"], want, rtol=1e-7)
    back = HierarchicalStatisticalTree.from_dict(tree.to_dict())
    assert back.get_trimmed_statistics()["count"] == kept.sum()
    np.testing.assert_allclose(back.get_trimmed_statistics()["covariance"], stats["covariance"], rtol=1e-12)
    tree.advance_round()                          # everyone leaves the window, trimmed moments too
    assert tree.get_window_statistics()["count"] == 0 == tree.get_trimmed_statistics()["count"]


def test_warm_up_counts_the_members_inside_the_window():
    rng = np.random.default_rng(9)
    tree = HierarchicalStatisticalTree(feature_dimensions=D, window_rounds=1)
    protocol = BehavioralDistributedProtocol(tree, warm_up=100, score_levels="all")
    tree.update_many(np.arange(500), rng.normal(size=(500, D)), cohorts="eu")
    X = rng.normal(size=(40, D))
    X[0] += 50.0
    res = protocol.update_and_score_many(np.arange(40), X, fdr=None)   # 40 inside, 500 members
    assert res["warming_up"] and not res["is_anomaly"].any()
    assert res["levels"][("eu",)]["warming_up"]
    assert protocol.score_vectors(X[:1])["warming_up"]
    tree.update_many(np.arange(500), np.vstack([X, rng.normal(size=(460, D))]))   # now 500 inside
    res = protocol.score_many(fdr=None)
    assert not res["warming_up"] and res["is_anomaly"][0]


_OPS = st.lists(st.one_of(
    st.tuples(st.just("batch"), st.lists(st.integers(0, 29), min_size=1, max_size=20, unique=True)),
    st.tuples(st.just("item"), st.integers(0, 29), st.sampled_from(["eu", "us"])),
    st.tuples(st.just("remove"), st.integers(0, 29)),
    st.tuples(st.just("advance"),)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS, window=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_any_sequence_of_changes_keeps_the_window_exact(ops, window, seed):
    rng = np.random.default_rng(seed)
    tree = HierarchicalStatisticalTree(branching_factor=3, feature_dimensions=2, window_rounds=window)
    vec, last, r = {}, {}, 0
    for op in ops:
        if op[0] == "batch":
            r += 1
            X = rng.normal(size=(len(op[1]), 2)) * 3.0 + r
            tree.update_many(op[1], X)
            for a, x in zip(op[1], X, strict=True):
                vec[a], last[a] = x, r
        elif op[0] == "item":
            x = rng.normal(size=2) + r
            tree.update_agent(op[1], x, cohort=(op[2],))
            vec[op[1]], last[op[1]] = x, r
        elif op[0] == "remove" and op[1] in vec:
            tree.remove_agent(op[1])
            del vec[op[1]], last[op[1]]
        elif op[0] == "advance":
            r += 1
            tree.advance_round()
    assert tree.current_round == r
    inside = [a for a in sorted(vec) if last[a] > r - window]
    if vec:
        assert tree.in_window(sorted(vec)).tolist() == [last[a] > r - window for a in sorted(vec)]
    s = tree.get_window_statistics()
    assert s["count"] == len(inside)
    if len(inside) >= 2:
        mean, cov = exact_mean_cov(np.array([vec[a] for a in inside]))
        assert np.allclose(s["mean"], mean, rtol=1e-12, atol=1e-12)
        assert np.allclose(s["covariance"], cov, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(cov).max()))


def test_stale_members_are_scored_but_not_judged_and_take_no_part_in_the_fdr():
    rng = np.random.default_rng(10)
    tree = HierarchicalStatisticalTree(feature_dimensions=D, window_rounds=1)
    protocol = BehavioralDistributedProtocol(tree, warm_up=10)
    tree.update_many(np.arange(300), rng.normal(size=(300, D)))             # round 1: everyone
    X = rng.normal(size=(200, D)) + 20.0                                    # the population moved
    X[0] += 15.0
    tree.update_many(np.arange(200), X)                                     # round 2: 100 left behind
    res = protocol.score_many(fdr=0.01)
    ids = np.asarray(res["agent_ids"]).astype(int)
    inside = ids < 200
    assert (res["in_window"] == inside).all()
    assert (res["mahalanobis_squared"][~inside] > 100).all()               # far from the population now
    assert not res["is_anomaly"][~inside].any()                             # ... but not judged
    assert res["is_anomaly"][ids == 0].all()
    # the FDR cut is the one over the members inside alone
    alone = BehavioralDistributedProtocol(tree, warm_up=10).score_many(np.arange(200), fdr=0.01)
    assert (alone["is_anomaly"] == res["is_anomaly"][inside]).all()
    assert alone["p_value_cutoff"] == res["p_value_cutoff"]
    stale = protocol.score_agent_sync(250)
    assert stale["in_window"] is False and stale["is_anomaly"] is False and stale["mahalanobis_squared"] > 100
    fresh = protocol.score_agent_sync(0)
    assert fresh["in_window"] is True and fresh["is_anomaly"] is True


@pytest.mark.parametrize("field,value", [("window_rounds", np.array(2.7)), ("window_rounds", np.array(True)),
                                         ("window_rounds", np.array([2, 3])), ("window_round", np.array(9.5)),
                                         ("window_round", np.array(-1))])
def test_a_state_whose_window_fields_are_not_whole_rounds_is_refused(field, value):
    tree, vec, cohort, last = play(3, 2)
    state = tree.to_dict()
    if field == "window_round":
        state["window_last_round"] = np.zeros_like(state["window_last_round"])
    state[field] = value
    with pytest.raises(InvalidInputError, match=field):
        HierarchicalStatisticalTree.from_dict(state)


def test_a_state_that_keeps_trimmed_members_outside_the_window_is_refused():
    # The trimmed moments are drawn from the window; a member kept there but stale would never
    # expire from them. A serialised tree never holds one: a hand-made state is refused.
    tree, vec, cohort, last = play(4, 2)
    BehavioralDistributedProtocol(tree, scoring="robust")
    state = tree.to_dict()
    stale = state["window_last_round"] <= state["window_round"] - 2
    assert stale.any() and not (state["trimmed_kept"] & stale).any()
    back = HierarchicalStatisticalTree.from_dict(state)
    assert back.get_trimmed_statistics()["count"] == tree.get_trimmed_statistics()["count"]
    state["trimmed_kept"] = state["trimmed_kept"] | stale
    with pytest.raises(InvalidInputError, match="trimmed_kept"):
        HierarchicalStatisticalTree.from_dict(state)


@pytest.mark.parametrize("copier", [lambda t: pickle.loads(pickle.dumps(t)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_a_copied_tree_keeps_its_window_and_trimmed_trees_live(copier):
    # The second slot trees read their roots through views of their stores, which a copy must
    # bind to its own stores (a copy with stale views read a root no batch updated): a copy of
    # a tree with a window and trimmed moments goes on exactly as the original does.
    tree, vec, cohort, last = play(6, 2)
    BehavioralDistributedProtocol(tree, scoring="robust")
    twin = copier(tree)
    rng = np.random.default_rng(60)
    steps = [(int(a), rng.normal(size=D) * 4.0) for a in rng.integers(0, 120, size=30)]
    batch = rng.normal(size=(30, D)) * 2.0 + 1.0
    known = np.array(sorted(vec)[:30])
    for t in (tree, twin):
        t.update_many(known, batch)                      # a batch first: it rebuilds the roots in the stores
        for k, (a, x) in enumerate(steps):
            t.update_agent(a, x)
            if k % 10 == 9:
                t.advance_round()
        t.remove_agent(steps[0][0])
    for read in (HierarchicalStatisticalTree.get_window_statistics, HierarchicalStatisticalTree.get_trimmed_statistics):
        a, b = read(tree), read(twin)
        assert a["count"] == b["count"] and np.array_equal(a["mean"], b["mean"])
        assert np.array_equal(a["covariance"], b["covariance"])
    ids = sorted(a for a in vec if a in tree)
    assert (twin.in_window(ids) == tree.in_window(ids)).all()
    scored = [BehavioralDistributedProtocol(t, scoring="robust", warm_up=10).score_many(ids, fdr=None) for t in (tree, twin)]
    assert np.array_equal(scored[0]["mahalanobis_squared"], scored[1]["mahalanobis_squared"])
