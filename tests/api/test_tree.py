import copy
import pickle
import warnings

import numpy as np
import pytest

from swarmguard import (
    BehavioralDistributedProtocol,
    DimensionMismatchError,
    EmptyInputError,
    HierarchicalStatisticalTree,
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
    SwarmGuardError,
    UnknownAgentError,
    UnknownCohortError,
)
from tests._exact import exact_mean_cov


def snapshot(tree: HierarchicalStatisticalTree):
    """Everything observable: agents, vectors, cohorts and the statistics of each cohort."""
    state = tree.to_dict() if len(tree) else {}
    stats = {p: tree.get_cohort_statistics(p) for p in tree.cohorts()} if tree.feature_dimensions else {}
    return state, stats, len(tree)


def assert_same(a, b):
    (sa, ta, na), (sb, tb, nb) = a, b
    assert na == nb and sa.keys() == sb.keys() and ta.keys() == tb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    for p in ta:
        for k in ("count", "mean", "covariance"):
            np.testing.assert_array_equal(ta[p][k], tb[p][k])


def check_stats(stats, rows, rtol=1e-10):
    assert stats["count"] == len(rows)
    mean, cov = exact_mean_cov(rows)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(stats["covariance"], cov, rtol=rtol, atol=1e-12 * np.abs(cov).max())
    np.testing.assert_allclose(stats["variance"], np.diag(cov), rtol=rtol)
    np.testing.assert_allclose(stats["std"], np.sqrt(np.diag(cov)), rtol=rtol)


# ---------------------------------------------------------------------- checked features (validated once)
def _two_trees_and_rounds(seed=4, n=400, d=3):
    rng = np.random.default_rng(seed)
    trees = [HierarchicalStatisticalTree(feature_dimensions=d) for _ in range(2)]
    protocols = [BehavioralDistributedProtocol(t, warm_up=10) for t in trees]
    rounds = [rng.normal(size=(n, d)) * 10.0 ** rng.uniform(-200, 90) for _ in range(3)]
    return trees, protocols, rounds


def test_the_tree_and_protocol_given_checked_features_answer_as_given_the_raw_array():
    from swarmguard.validation import check_feature_matrix
    trees, protocols, rounds = _two_trees_and_rounds()
    ids = np.arange(rounds[0].shape[0])
    cohorts = np.array(["eu", "us"])[ids % 2]
    for X in rounds:
        raw = protocols[0].update_and_score_many(ids, X.tolist(), cohorts=cohorts, explain=True)
        checked = protocols[1].update_and_score_many(ids, check_feature_matrix(X, 3), cohorts=cohorts,
                                                     explain=True)
        for key in ("mahalanobis_squared", "p_value", "is_anomaly", "feature_contributions"):
            np.testing.assert_array_equal(raw[key], checked[key])
    a, b = (t.get_cohort_statistics(("eu",)) for t in trees)
    np.testing.assert_array_equal(a["covariance"], b["covariance"])
    np.testing.assert_array_equal(trees[0].get_agent_features(5), trees[1].get_agent_features(5))


def test_checked_features_do_not_excuse_bad_ids_or_a_wrong_dimension_and_leave_the_tree_as_it_was():
    from swarmguard.validation import check_feature_matrix
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many([1, 2, 3], np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]]))
    before = tree.to_dict()
    with pytest.raises(InvalidInputError):              # the same id twice
        tree.update_many([1, 1], check_feature_matrix([[5.0, 5.0], [6.0, 6.0]], 2))
    with pytest.raises(DimensionMismatchError):         # checked for 3 features, the tree has 2
        tree.update_many([4], check_feature_matrix([[5.0, 5.0, 5.0]], 3))
    with pytest.raises(DimensionMismatchError):         # one row for two ids
        tree.update_many([4, 5], check_feature_matrix([[5.0, 5.0]], 2))
    after = tree.to_dict()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_global_and_cohort_statistics_follow_updates_moves_and_removals():
    rng = np.random.default_rng(0)
    tree = HierarchicalStatisticalTree(branching_factor=3, feature_dimensions=4)
    truth: dict = {}
    place: dict = {}
    regions = [("eu-west", "c1"), ("eu-west", "c2"), ("us-east",), None]
    for step in range(600):
        agent = int(rng.integers(0, 120)) if step % 5 else f"s{rng.integers(0, 20)}"
        x = rng.normal(loc=100.0, size=4)
        cohort = regions[int(rng.integers(0, 4))] if rng.random() < 0.3 else None
        tree.update_agent(agent, x, cohort=cohort)
        truth[agent] = x
        if cohort is not None:
            place[agent] = cohort
        place.setdefault(agent, ())
        if step % 37 == 0 and truth:
            victim = list(truth)[int(rng.integers(0, len(truth)))]
            tree.remove_agent(victim)
            del truth[victim]
            del place[victim]
    assert len(tree) == len(truth)
    check_stats(tree.get_global_statistics(), np.array(list(truth.values())))
    for path in [("eu-west",), ("eu-west", "c1"), ("us-east",)]:
        members = [a for a, p in place.items() if p[: len(path)] == path]
        if len(members) > 2:
            check_stats(tree.get_cohort_statistics(path), np.array([truth[a] for a in members]))
    for agent, p in place.items():
        assert tree.agent_cohort(agent) == p
        np.testing.assert_array_equal(tree.get_agent_features(agent), truth[agent])


def test_update_many_matches_single_updates_and_is_vectorised_for_moves():
    rng = np.random.default_rng(1)
    ids = np.arange(5000)
    X = rng.normal(size=(5000, 3))
    regions = np.array(["a", "b", "c"])[rng.integers(0, 3, size=5000)]
    batch = HierarchicalStatisticalTree(feature_dimensions=3)
    batch.update_many(ids, X, cohorts=regions)
    X2 = rng.normal(loc=2.0, size=(2000, 3))
    moved = np.array(["b", "c", "a"])[rng.integers(0, 3, size=2000)]
    batch.update_many(ids[:2000], X2, cohorts=moved)
    X[:2000] = X2
    regions[:2000] = moved
    check_stats(batch.get_global_statistics(), X)
    for r in "abc":
        check_stats(batch.get_cohort_statistics(r), X[regions == r])
    assert len(batch) == 5000
    assert batch.agent_cohort(17) == (str(regions[17]),)


def test_dimension_is_fixed_by_the_first_vector_when_omitted():
    tree = HierarchicalStatisticalTree(branching_factor=10)
    assert tree.feature_dimensions is None
    tree.update_agent("a", [1.0, 2.0, 3.0])
    assert tree.feature_dimensions == 3
    with pytest.raises(DimensionMismatchError):
        tree.update_agent("b", [1.0, 2.0])


def test_string_and_int_ids_and_lookup():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(np.array(["x", "y", "z"]), np.eye(3)[:, :2])
    tree.update_many(["y", "w"], [[5.0, 5.0], [1.0, 1.0]])
    assert len(tree) == 4 and "w" in tree and "q" not in tree
    np.testing.assert_array_equal(tree.get_agent_features("y"), [5.0, 5.0])
    mixed = HierarchicalStatisticalTree(feature_dimensions=1)
    mixed.update_many([1, "1", (2, "b")], [[1.0], [2.0], [3.0]])
    assert len(mixed) == 3 and mixed.get_agent_features((2, "b"))[0] == 3.0


def test_statistics_of_tiny_and_empty_trees_are_nan_not_errors():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    s = tree.get_global_statistics()
    assert s["count"] == 0 and np.isnan(s["mean"]).all()
    tree.update_agent(1, [1.0, 1.0])
    s = tree.get_global_statistics()
    assert s["count"] == 1 and np.isnan(s["covariance"]).all()
    np.testing.assert_array_equal(s["mean"], [1.0, 1.0])


def test_serialisation_round_trip():
    rng = np.random.default_rng(2)
    tree = HierarchicalStatisticalTree(branching_factor=4, feature_dimensions=3)
    tree.update_many(np.arange(50), rng.normal(size=(50, 3)), cohorts=[("r", str(i % 3)) for i in range(50)])
    back = HierarchicalStatisticalTree.from_dict(tree.to_dict())
    for p in tree.cohorts():
        a, b = tree.get_cohort_statistics(p), back.get_cohort_statistics(p)
        assert a["count"] == b["count"]
        np.testing.assert_allclose(a["covariance"], b["covariance"], rtol=1e-12)


def test_depth_grows_logarithmically():
    tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=2)
    tree.update_many(np.arange(10_000), np.random.default_rng(3).normal(size=(10_000, 2)))
    assert tree.depth == 4          # 10^4 slots: log_10 levels


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda t: t.update_agent(1, [1.0, 2.0]), DimensionMismatchError),
        (lambda t: t.update_agent(1, [1.0, np.nan, 0.0]), NonFiniteError),
        (lambda t: t.update_agent(1, ["a", "b", "c"]), InvalidTypeError),
        (lambda t: t.update_agent(None, [1.0, 2.0, 3.0]), InvalidInputError),
        (lambda t: t.update_agent(1.5, [1.0, 2.0, 3.0]), InvalidTypeError),
        (lambda t: t.update_agent([1], [1.0, 2.0, 3.0]), InvalidTypeError),
        (lambda t: t.update_agent(1, [1.0, 2.0, 3.0], cohort=("",)), InvalidInputError),
        (lambda t: t.update_agent(1, [1.0, 2.0, 3.0], cohort=7), InvalidTypeError),
        (lambda t: t.update_many([1, 2], np.zeros((0, 3))), EmptyInputError),
        (lambda t: t.update_many([1, 2], np.ones((2, 4))), DimensionMismatchError),
        (lambda t: t.update_many([1, 2, 3], np.ones((2, 3))), DimensionMismatchError),
        (lambda t: t.update_many([1, 1], np.ones((2, 3))), InvalidInputError),
        (lambda t: t.update_many([500, 500], np.ones((2, 3))), InvalidInputError),
        (lambda t: t.update_many([7, 8], [[1.0, 2.0, 3.0], [1.0, np.inf, 0.0]]), NonFiniteError),
        (lambda t: t.update_many([7, 8], np.ones((2, 3)), cohorts=["a"]), DimensionMismatchError),
        (lambda t: t.update_many([7, 8], np.ones((2, 3)), cohorts=["a", ""]), InvalidInputError),
        (lambda t: t.update_many(np.array([1.0, 2.0]), np.ones((2, 3))), InvalidTypeError),
        (lambda t: t.update_many([7, 8], np.array([["a", "b", "c"], ["d", "e", "f"]])), InvalidTypeError),
    ],
)
def test_bad_input_is_a_typed_value_error_and_changes_nothing(call, error):
    rng = np.random.default_rng(4)
    tree = HierarchicalStatisticalTree(branching_factor=3, feature_dimensions=3)
    tree.update_many(np.arange(30), rng.normal(size=(30, 3)), cohorts=[("r", str(i % 2)) for i in range(30)])
    tree.update_agent(3, [9.0, 9.0, 9.0])   # a pending per-item change too
    before = snapshot(tree)
    with pytest.raises(error) as info:
        call(tree)
    assert isinstance(info.value, SwarmGuardError) and isinstance(info.value, ValueError)
    assert_same(before, snapshot(tree))


def test_unknown_agent_and_cohort_are_key_errors():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_agent(1, [0.0, 0.0])
    before = snapshot(tree)
    with pytest.raises(UnknownAgentError) as info:
        tree.remove_agent(2)
    assert isinstance(info.value, KeyError) and isinstance(info.value, SwarmGuardError)
    with pytest.raises(UnknownCohortError):
        tree.get_cohort_statistics(("nowhere",))
    assert_same(before, snapshot(tree))


@pytest.mark.parametrize(
    "kwargs", [{"branching_factor": 1}, {"branching_factor": 2.5}, {"feature_dimensions": 0}, {"recompute_every": 0}]
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(SwarmGuardError):
        HierarchicalStatisticalTree(**kwargs)


# ---------------------------------------------------------------------- ids: NUL characters, object arrays

def _tree_state(tree):
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in tree.to_dict().items()}, len(tree), tree.version


def _objects(*values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


@pytest.mark.parametrize("call", [
    lambda t: t.update_agent("a\x00", [9.0, 9.0]),                     # NumPy would store it as "a"
    lambda t: t.update_agent(("rack", "a\x00"), [9.0, 9.0]),
    lambda t: t.update_many(["c", "a\x00"], [[9.0, 9.0], [8.0, 8.0]]),
    lambda t: t.update_many(_objects("a\x00"), [[9.0, 9.0]]),          # an object array (pandas)
    lambda t: t.update_many(np.array(["x\x00y"]), [[9.0, 9.0]]),       # inside: kept by NumPy, refused all the same
    lambda t: t.update_many(["\x00"], [[9.0, 9.0]]),
])
def test_a_string_id_holding_a_nul_is_refused_and_changes_nothing(call):
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(["a", "b"], [[1.0, 0.0], [0.0, 1.0]])
    before = _tree_state(tree)
    with pytest.raises(InvalidInputError, match="NUL"):
        call(tree)
    assert _tree_state(tree) == before
    np.testing.assert_array_equal(tree.get_agent_features("a"), [1.0, 0.0])


def test_update_many_takes_an_object_array_of_strings_as_a_string_array():
    X = np.arange(12.0).reshape(6, 2)
    ids = np.array([f"agent-{i}" for i in range(6)])
    a, b = HierarchicalStatisticalTree(feature_dimensions=2), HierarchicalStatisticalTree(feature_dimensions=2)
    a.update_many(ids, X, cohorts=np.array(["eu", "us"] * 3))
    b.update_many(ids.astype(object), X, cohorts=np.array(["eu", "us"] * 3, dtype=object))
    assert _tree_state(a)[:2] == _tree_state(b)[:2]
    assert b.get_cohort_statistics(("us",))["count"] == 3


@pytest.mark.parametrize("probe, error", [
    ([0, "zz"], UnknownAgentError), (["zz"], UnknownAgentError), (np.array(["zz"]), UnknownAgentError),
    (np.array([2**63], dtype=np.uint64), UnknownAgentError), ([0, (1, 2)], UnknownAgentError),
    ([0, 1.5], InvalidTypeError), ([[0]], InvalidTypeError), (np.array([0.0]), InvalidTypeError),
])
def test_lookups_with_mixed_or_unknown_ids_are_typed(probe, error):
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(np.arange(3), np.eye(3, 2))
    with pytest.raises(error):
        tree.slots_of(probe)


def test_four_threads_updating_one_tree_give_the_exact_statistics_and_refused_calls_commit_nothing():
    """Each thread writes its own agents (batches, single updates, moves between its cohorts)
    and sends batches the tree refuses; the statistics are those of the final vectors, exactly
    (Fraction), for the population and every cohort, as when the same calls run one by one."""
    from tests._threads import run_threads
    rng = np.random.default_rng(21)
    plans = [(t, np.arange(1000 * t, 1000 * t + 60), rng.normal(size=(4, 60, 3)) + t) for t in range(4)]

    def work(tree, plan):
        t, ids, X = plan
        refused = 0
        for k in range(X.shape[0]):
            cohort = (f"c{t}", f"r{k % 2}")
            tree.update_many(ids[:40], X[k, :40], cohorts=cohort)
            for i in range(40, 60):
                tree.update_agent(int(ids[i]), X[k, i], cohort=cohort)
            bad = X[k, :40].copy()
            bad[7, 1] = np.nan
            for call in (lambda bad=bad, cohort=cohort: tree.update_many(ids[:40], bad * 9.0, cohorts=cohort),
                         lambda cohort=cohort: tree.update_agent(int(ids[0]), [np.inf, 0.0, 0.0], cohort=cohort),
                         lambda k=k: tree.update_many(ids[:2], X[k, :2], cohorts=[("ok",), ("a\x1fb",)])):
                try:
                    call()
                except InvalidInputError:
                    refused += 1
            tree.get_global_statistics()              # reads interleaved with the writes
        return refused

    serial, threaded = HierarchicalStatisticalTree(feature_dimensions=3), HierarchicalStatisticalTree(feature_dimensions=3)
    assert [work(serial, p) for p in plans] == run_threads([lambda p=p: work(threaded, p) for p in plans]) == [12] * 4
    final = np.concatenate([X[-1] for _, _, X in plans])
    for tree in (serial, threaded):
        assert len(tree) == 240
        for t, ids, X in plans:
            for i, a in enumerate(ids.tolist()):
                np.testing.assert_array_equal(tree.get_agent_features(a), X[-1, i])
                assert tree.agent_cohort(a) == (f"c{t}", "r1")
            check_stats(tree.get_cohort_statistics((f"c{t}",)), X[-1])
            assert tree.get_cohort_statistics((f"c{t}", "r0"))["count"] == 0
        check_stats(tree.get_global_statistics(), final)


# ------------------- ids, duplicates and refused calls: nothing created, nothing changed


def frozen(tree):
    """The agents' state, the cohorts, the dimension and the size: what a refused call must not change."""
    state = tree.to_dict() if len(tree) else {}
    return {k: v.copy() for k, v in state.items()}, tree.cohorts(), tree.feature_dimensions, len(tree)


def assert_unchanged(before, tree):
    after = frozen(tree)
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        np.testing.assert_array_equal(before[0][k], after[0][k])


def test_string_ids_of_different_lengths_are_different_agents():
    t = HierarchicalStatisticalTree(feature_dimensions=1)
    t.update_many(np.array([f"agent-{i}" for i in range(1, 10)]), np.zeros((9, 1)))
    t.update_many(np.array(["agent-10"]), [[99.0]])
    assert len(t) == 10 and "agent-10" in t
    assert t.get_agent_features("agent-1")[0] == 0.0
    proto = BehavioralDistributedProtocol(t, warm_up=3)
    res = proto.score_many(np.array(["agent-10", "agent-1"]))
    assert res["mahalanobis_squared"][0] > res["mahalanobis_squared"][1]


@pytest.mark.parametrize("cohorts", [None, ("newc", "x")])
def test_a_rejected_duplicate_batch_creates_no_dimension_and_no_cohort(cohorts):
    t = HierarchicalStatisticalTree()
    with pytest.raises(InvalidInputError):
        t.update_many([1, 1], np.ones((2, 3)), cohorts=cohorts)
    assert t.feature_dimensions is None and t.cohorts() == [()] and len(t) == 0
    t2 = HierarchicalStatisticalTree(feature_dimensions=2)
    t2.update_many([5, 6], np.ones((2, 2)))
    before = frozen(t2)
    with pytest.raises(InvalidInputError):
        t2.update_many([7, 7], np.ones((2, 2)), cohorts=cohorts)
    assert_unchanged(before, t2)


def test_unhashable_cohort_entries_and_odd_ids_are_typed_errors():
    t = HierarchicalStatisticalTree(feature_dimensions=1)
    t.update_many([1], [[0.0]])
    before = frozen(t)
    with pytest.raises(InvalidTypeError):
        t.update_many([2, 3], [[1.0], [2.0]], cohorts=[{"a": 1}, "b"])
    for bad in (("a", float("nan")), True, np.True_, ("a", ("b", 1.5))):
        with pytest.raises(InvalidTypeError):
            t.update_agent(bad, [1.0])
    assert_unchanged(before, t)


# -------- numerics: non-finite and overflowing values, features of very different scales


def test_non_finite_arrays_on_the_fast_path_raise_a_typed_error_without_warnings():
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bad in (np.array([np.inf, 0.0]), np.array([np.nan, 1.0])):
            with pytest.raises(NonFiniteError):
                t.update_agent(1, bad)
        with pytest.raises(InvalidInputError):
            t.update_agent(1, np.array([1e200, 0.0]))      # would overflow the co-moment
    assert len(t) == 0


def test_small_features_do_not_drift_behind_large_ones():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(scale=1e3, size=1000), rng.normal(scale=1e-3, size=1000)])
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    t.update_many(np.arange(1000), X)
    for _ in range(20):
        i = int(rng.integers(1000))
        odd = X[i].copy()
        odd[1] = 1e4
        t.update_agent(i, odd)
        t.update_agent(i, X[i])
    n, _, m2 = t._tree.root_moments()          # the root as streaming scoring sees it
    cov = np.cov(X.T)
    np.testing.assert_allclose(m2 / (n - 1), cov, rtol=1e-9, atol=1e-9 * np.sqrt(np.outer(np.diag(cov), np.diag(cov))).min())


def test_cohort_statistics_follow_new_pages_sub_cohorts_and_growth_after_a_read():
    # A cohort's node cover is kept between reads: new pages of the cohort, a new
    # sub-cohort and the tree growing must each show in the next read (exact moments).
    rng = np.random.default_rng(31)
    tree = HierarchicalStatisticalTree(branching_factor=4, feature_dimensions=2)
    rows: dict[int, np.ndarray] = {}

    def add(ids, cohort):
        X = rng.normal(loc=3.0, size=(len(ids), 2))
        tree.update_many(np.asarray(ids), X, cohorts=cohort)
        rows.update({i: x for i, x in zip(ids, X, strict=True)})

    def check(members):
        stats = tree.get_cohort_statistics(("eu",))
        mean_ex, cov_ex = exact_mean_cov(np.array([rows[i] for i in members]))
        assert stats["count"] == len(members)
        np.testing.assert_allclose(stats["mean"], mean_ex, rtol=1e-13)
        np.testing.assert_allclose(stats["covariance"], cov_ex, rtol=1e-11)

    add(list(range(0, 300)), "eu")
    add(list(range(300, 400)), "us")
    check(range(0, 300))
    add(list(range(400, 700)), "eu")                       # new pages of the cohort
    check([*range(0, 300), *range(400, 700)])
    add(list(range(700, 800)), ("eu", "rack-1"))           # a new sub-cohort
    check([*range(0, 300), *range(400, 800)])
    add(list(range(800, 5000)), "eu")                      # the tree grows (a new layout)
    check([*range(0, 300), *range(400, 5000)])
    tree.update_agent(5, rng.normal(size=2), cohort="eu")  # a per-item change, then a read
    rows[5] = tree.get_agent_features(5)
    check([*range(0, 300), *range(400, 5000)])


def test_a_feature_whose_spread_collapses_next_to_a_grown_one_is_re_anchored():
    # An outlier sets feature 1's unit and shift, then leaves: its spread falls 1e11 while
    # feature 0's grew 1e12 inside its band. The re-anchoring test must weigh feature 1's
    # offset against its own co-moment (not the trace, which is feature 0's), or its
    # deviations keep a common offset 1e11 standard deviations wide and lose digits.
    rng = np.random.default_rng(7)
    X = rng.normal(size=(13, 2)) * np.array([1e3, 0.01])
    X[0, 1] = -1e9
    t = HierarchicalStatisticalTree(feature_dimensions=2)
    t.update_many(np.arange(13), X)
    X[1, 0] = 1e12
    t.update_agent(1, X[1])
    X[0] = rng.normal(size=2) * np.array([1e3, 0.01])
    t.update_agent(0, X[0])
    stats = t.get_global_statistics()
    mean_ex, cov_ex = exact_mean_cov(X)
    ref = np.sqrt(np.outer(np.diag(cov_ex), np.diag(cov_ex)))
    np.testing.assert_array_less(np.abs(stats["covariance"] - cov_ex) / ref, 1e-11)
    assert np.all(np.abs(stats["mean"] - mean_ex) <= 1e-13 * np.abs(X).max(axis=0))


def test_tree_batches_of_longer_string_ids_add_agents_instead_of_overwriting():
    from swarmguard import HierarchicalStatisticalTree

    tree = HierarchicalStatisticalTree(feature_dimensions=1)
    tree.update_many(np.array(["a1", "a100"]), np.array([[1.0], [2.0]]))
    tree.update_many(np.array(["a1000"]), np.array([[3.0]]))
    assert len(tree) == 3
    assert tree.get_agent_features("a100").tolist() == [2.0]


@pytest.mark.parametrize("copier", [lambda t: pickle.loads(pickle.dumps(t)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_a_copied_tree_keeps_updating_its_own_root(copier):
    # The slot tree's root is read through views of its flat store; a copy that
    # kept copies of those views would update a root that nobody reads.
    rng = np.random.default_rng(5)
    ids = [f"a{i}" for i in range(60)]
    tree = HierarchicalStatisticalTree()
    tree.update_many(ids, rng.normal(size=(60, 4)))
    twin = copier(tree)
    fresh = rng.normal(size=(60, 4))
    twin.update_many(ids, fresh)
    twin.update_agent("a0", fresh[0] + 3.0)
    fresh[0] += 3.0
    mean, cov = exact_mean_cov(fresh)
    stats = twin.get_global_statistics()
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats["covariance"], cov, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- to_dict(exact=True)
def _grown_tree(rounds: int = 8, seed: int = 0):
    """A tree grown round by round (more agents each round, interleaved cohorts, capacity
    doubling, a shift far from where it was anchored): the layout and the moments' anchor
    differ from those of a tree built from its final vectors."""
    rng = np.random.default_rng(seed)
    tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=3)
    for w in range(rounds):
        n = 30 + 40 * w
        ids = np.array([f"a-{i}" for i in range(n)])
        cohorts = [("eu",) if i % 3 else ("us", "x") for i in range(n)]
        tree.update_many(ids, rng.normal(size=(n, 3)) * (1 + w) + (5.0 if w == 0 else 0.0), cohorts=cohorts)
    moved = np.array(["a-1", "a-2", "a-4", "a-7"])      # leave holes (free slots) in the eu pages
    tree.update_many(moved, rng.normal(size=(4, 3)), cohorts=[("ap",)] * 4)
    return tree, rng


def _nodes(tree):
    t = tree._tree
    return t.cnt.tobytes(), t.off.tobytes(), t.m2.tobytes(), t.shift.tobytes()


def test_from_dict_of_an_exact_state_is_the_tree_bitwise_and_stays_so():
    tree, rng = _grown_tree()
    assert tree.to_dict(exact=True)["slot_pool_sizes"].sum() > 0
    again = HierarchicalStatisticalTree.from_dict(tree.to_dict(exact=True))
    plain = HierarchicalStatisticalTree.from_dict(tree.to_dict())
    assert _nodes(again) == _nodes(tree)
    assert _nodes(plain) != _nodes(tree)           # what exact=True is for: placed afresh, it differs
    for key in ("mean", "covariance"):
        assert tree.get_global_statistics()[key].tobytes() == again.get_global_statistics()[key].tobytes()
        assert (tree.get_cohort_statistics(("us", "x"))[key].tobytes()
                == again.get_cohort_statistics(("us", "x"))[key].tobytes())
    # the same later rounds (new agents in both cohorts, a new cohort): the same slots, bitwise
    for w in range(3):
        ids = np.array([f"a-{i}" for i in range(400 + 7 * w)] + [f"n-{w}", f"m-{w}"])
        cohorts = [("eu",) if i % 3 else ("us", "x") for i in range(ids.size - 2)] + [("ap",), ("eu",)]
        X = rng.normal(size=(ids.size, 3)) * 30
        tree.update_many(ids, X, cohorts=cohorts)
        again.update_many(ids, X, cohorts=cohorts)
        assert _nodes(again) == _nodes(tree)
        assert np.array_equal(tree.slots_of(ids)[0], again.slots_of(ids)[0])


@pytest.mark.parametrize("damage", ["slot twice", "foreign page", "pool size", "shift far", "capacity",
                                    "part of the fields", "float slots", "windowed"])
def test_from_dict_refuses_an_exact_state_that_no_tree_could_hold(damage):
    tree, _ = _grown_tree(3)
    state = tree.to_dict(exact=True)
    frozen = {k: v.copy() for k, v in state.items()}
    if damage == "slot twice":
        state["slot_of"] = state["slot_of"].copy()
        state["slot_of"][1] = state["slot_of"][0]
    elif damage == "foreign page":
        owner = state["slot_page_owner"].copy()
        owner[0] = (owner[0] + 1) % 3
        state["slot_page_owner"] = owner
    elif damage == "pool size":
        state["slot_pool_sizes"] = state["slot_pool_sizes"] + 1
    elif damage == "shift far":
        state["slot_shift"] = state["slot_shift"] + 1e40
    elif damage == "capacity":
        state["slot_capacity"] = np.array(3, dtype=np.int64)
    elif damage == "part of the fields":
        del state["slot_pool_slots"]
    elif damage == "float slots":
        state["slot_of"] = state["slot_of"].astype(float)
    else:
        state["window_rounds"], state["window_round"] = np.array(2), np.array(0)
        state["window_last_round"] = np.zeros(state["agent_ids"].shape, dtype=np.int64)
    before = {k: v.copy() for k, v in state.items()}
    with pytest.raises(InvalidInputError):
        HierarchicalStatisticalTree.from_dict(state)
    assert all(np.array_equal(before[k], state[k]) for k in before)      # the input is left as it was
    assert HierarchicalStatisticalTree.from_dict(frozen).to_dict(exact=True).keys() == frozen.keys()
