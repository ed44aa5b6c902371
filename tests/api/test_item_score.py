"""The per-item score dict's deferred feature parts (issue 11: computed only when read).

A read, of the key or of the dict as a whole, gives what the eager computation gave
(``CorrelationRoot.parts`` on each call in call order, itself checked against the
batch path in test_protocol_item_shares.py), at the key's place in the dict.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from swarmguard import BehavioralData, BehavioralDistributedProtocol, HierarchicalStatisticalTree
from swarmguard.api.item_score import ItemScore
from swarmguard.structures.feature_shares import CorrelationRoot, DeferredParts, zca_cor_whitening

EAGER_ORDER = ["agent_id", "is_anomaly", "mahalanobis_distance", "mahalanobis_squared", "p_value",
               "decision_p_value", "threshold", "threshold_squared", "significance_level", "decision_cutoff",
               "cohort", "population_count", "warming_up", "feature_contributions", "levels"]


def _protocol(n=3000, d=4, seed=5, score_levels="population"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ np.array([[1, .8, 0, 0], [0, .6, 0, 0], [0, 0, 1, .5], [0, 0, 0, .9]])
    tree = HierarchicalStatisticalTree(feature_dimensions=d)
    tree.update_many(np.arange(n), X, cohorts=[("a",) if i % 2 else ("b",) for i in range(n)])
    return BehavioralDistributedProtocol(tree, warm_up=10, score_levels=score_levels), X, rng


def _eager_parts(A_and_e, d2s):
    """The parts an eager root answers for these calls, in call order."""
    root = CorrelationRoot()
    return [root.parts(A, e, d2) for (A, e), d2 in zip(A_and_e, d2s, strict=True)]


def test_every_way_of_reading_gives_the_parts_at_their_place():
    proto, X, _ = _protocol()
    readers = [lambda s: s["feature_contributions"], lambda s: s.get("feature_contributions"),
               lambda s: dict(s)["feature_contributions"], lambda s: {**s}["feature_contributions"],
               lambda s: dict(s.items())["feature_contributions"], lambda s: list(s.values())[13],
               lambda s: copy.deepcopy(s)["feature_contributions"], lambda s: s.copy()["feature_contributions"],
               lambda s: pickle.loads(pickle.dumps(s))["feature_contributions"],
               lambda s: ({"x": 1} | s)["feature_contributions"]]
    for reader in readers:
        info = proto.score_agent_sync(7)
        assert isinstance(info, dict) and "feature_contributions" in info
        got = np.asarray(reader(info))
        assert list(info) == EAGER_ORDER and len(info) == len(EAGER_ORDER)
        assert got.sum() == pytest.approx(info["mahalanobis_squared"], rel=1e-12) and (got >= 0).all()
        # the population level holds the same array
        assert info["levels"][0]["feature_contributions"] is info["feature_contributions"]
        assert list(info["levels"][0])[-1] == "feature_contributions"


def test_json_and_equality_see_the_parts():
    proto, X, _ = _protocol()
    a, b = proto.score_agent_sync(3), proto.score_agent_sync(3)
    text = json.dumps(a, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v))
    assert "feature_contributions" in json.loads(text)
    plain = {k: v for k, v in b.items() if k not in ("feature_contributions", "levels")}
    c = proto.score_agent_sync(3)
    assert {k: v for k, v in c.items() if k not in ("feature_contributions", "levels")} == plain
    np.testing.assert_array_equal(c["feature_contributions"], b["feature_contributions"])


def test_writes_replace_the_parts_in_place_and_removal_removes_them():
    proto, X, _ = _protocol()
    info = proto.score_agent_sync(4)
    info["feature_contributions"] = "mine"
    assert info["feature_contributions"] == "mine" and list(info) == EAGER_ORDER
    other = proto.score_agent_sync(4)
    del other["feature_contributions"]
    assert "feature_contributions" not in other and len(other) == len(EAGER_ORDER) - 1
    with pytest.raises(KeyError):
        other["feature_contributions"]


def test_parts_read_late_or_out_of_order_are_the_eager_ones_call_by_call():
    """Calls whose results stay readable are checked against the kept root in call order, so
    reading them later, in any order, gives bit for bit the parts an eager root gave each call."""
    proto, X, rng = _protocol(n=20000)
    results = []
    for _ in range(40):            # moves that refresh the kept root on some calls, not on others
        agent = int(rng.integers(len(X)))
        results.append(proto.update_agent_behavior_sync(BehavioralData(agent, X[agent] + rng.normal(size=4) * 0.1)))
    assert proto._correlation_root(0)._pending      # nothing checked yet
    # replay: the A and e each call handed over
    calls, d2s = [], []
    for info in results:
        later = info._parts
        calls.append((later._A, later._e))
        d2s.append(info["mahalanobis_squared"])
    # reading forces every call's check, in call order; the arrays handed over are still here
    expected = _eager_parts(calls, d2s)
    assert 1 < proto._correlation_root(0).refreshes < len(results)
    for i in rng.permutation(len(results)):
        np.testing.assert_array_equal(results[i]["feature_contributions"], expected[i])


def test_a_root_refreshed_for_each_read_matches_the_batch_whitening():
    A = np.array([[4.0, 1.0], [1.0, 2.0]])
    e = np.array([1.0, -2.0])
    root = CorrelationRoot()
    later = root.deferred(A, e, 3.0)
    assert root.refreshes == 1                    # reading the count checks the pending call
    z = zca_cor_whitening(A) @ e
    np.testing.assert_allclose(later.value(), z * z * 3.0 / (z @ z), rtol=1e-14)


def test_a_dropped_result_costs_nothing_and_is_forgotten():
    root = CorrelationRoot()
    A = np.eye(3)
    for _ in range(1000):
        root.deferred(A, np.ones(3), 1.0)        # never read
    assert len(root._pending) <= 130
    assert root.refreshes == 0                   # nothing readable: no check, no eigensolve


def test_item_score_reads_as_a_dict_without_deferred_parts():
    s = ItemScore({"a": 1})
    assert s == {"a": 1} and list(s) == ["a"] and s.get("feature_contributions") is None


def test_results_kept_unread_are_checked_in_batches_and_still_read_the_eager_parts():
    rng = np.random.default_rng(3)
    base = np.array([[2.0, 0.9, 0.1], [0.9, 1.0, 0.3], [0.1, 0.3, 1.5]])
    calls = []
    for _ in range(300):                  # correlations drifting by about 1e-5 a call: some refresh
        step = rng.normal(size=(3, 3)) * 1.5e-5
        base = base + (step + step.T)
        calls.append((base.copy(), rng.normal(size=3), float(rng.uniform(1, 9))))
    root = CorrelationRoot()
    kept = [root.deferred(A, e, d2) for A, e, d2 in calls]
    # memory: a kept call is checked within a batch of the root's, then holds no A of its own
    assert sum(later._A is not None for later in kept) <= 65 and len(root._pending) <= 65
    eager = CorrelationRoot()
    expected = [eager.parts(A, e, d2) for A, e, d2 in calls]
    assert 1 < eager.refreshes < len(calls)
    for i in reversed(range(len(calls))):
        np.testing.assert_array_equal(kept[i].value(), expected[i])
    assert root.refreshes == eager.refreshes


@pytest.mark.parametrize("copier", [lambda p: pickle.loads(pickle.dumps(p)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_a_protocol_with_pending_parts_copies_as_before_and_its_copy_answers_the_eager_parts(copier):
    """The kept roots hold a lock and weak references now: a protocol that answered per-item calls
    (results kept unread) still pickles and deep-copies, as it did with eager roots, and the copy
    answers each later call's parts as an eager root carried over would."""
    proto, X, rng = _protocol(n=2000)
    kept = [proto.update_agent_behavior_sync(BehavioralData(a, X[a] * 1.01)) for a in (1, 2, 3)]
    clone = copier(proto)
    root, twin = proto._correlation_root(0), clone._correlation_root(0)
    assert twin.refreshes == root.refreshes and twin is not root
    np.testing.assert_array_equal(twin.inverse_root, root.inverse_root)
    a, b = proto.score_agent_sync(9), clone.score_agent_sync(9)
    np.testing.assert_array_equal(b["feature_contributions"], a["feature_contributions"])
    assert all(np.isfinite(k["feature_contributions"]).all() for k in kept)


def test_a_key_moved_behind_the_parts_is_never_seen_missing_by_another_thread():
    """Putting the parts in moves the keys after them out and back (dict order): a reader in another
    thread in that moment must wait and find them, as it always would in the eager dict."""
    import threading

    seen = {}

    class Hook(str):
        # hashed while the keys after the parts are moved: ask from another thread then
        def __hash__(self):
            if seen.get("armed") and "asked" not in seen:
                seen["asked"] = True
                reader = threading.Thread(target=lambda: seen.update(
                    levels_in="levels" in s, levels=s.get("levels", "missing")))
                reader.start()
                reader.join(0.3)     # a reader that waits for the move cannot answer before it ends
            return str.__hash__(self)

        __eq__ = str.__eq__

    s = ItemScore.deferred({"a": 1, "levels": [1], Hook("after"): 2}, DeferredParts.ready(np.zeros(2)), "levels")
    seen["armed"] = True
    assert s["feature_contributions"].shape == (2,)
    assert seen.get("asked")
    deadline = __import__("time").monotonic() + 5
    while "levels" not in seen and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.01)
    assert seen.get("levels_in") is True and seen.get("levels") == [1]
    assert list(s) == ["a", "feature_contributions", "levels", "after"]
