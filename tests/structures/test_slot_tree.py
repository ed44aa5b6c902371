import numpy as np
import pytest

from swarmguard.structures.slot_tree import SlotTree
from tests._exact import exact_mean_cov


def assert_root_matches(tree: SlotTree, X: np.ndarray, occupied: np.ndarray, rel: float) -> None:
    n, mean, m2 = tree.root_moments()
    rows = X[occupied]
    assert n == rows.shape[0]
    mean_ex, cov_ex = exact_mean_cov(rows)
    spread = np.sqrt(np.diag(cov_ex))
    np.testing.assert_array_less(np.abs(mean - mean_ex), rel * np.abs(mean_ex) + rel * spread + 1e-300)
    cov = m2 / (n - 1)
    scale = np.sqrt(np.outer(np.diag(cov_ex), np.diag(cov_ex)))
    np.testing.assert_array_less(np.abs(cov - cov_ex), rel * scale + 1e-300)


def test_batch_write_builds_every_level_exactly():
    rng = np.random.default_rng(0)
    t = SlotTree(dim=3, branching=4, min_levels=2)
    X = np.zeros((300, 3))
    occ = rng.random(300) < 0.7
    X[occ] = rng.normal(loc=1e7, scale=0.1, size=(occ.sum(), 3))
    t.write(np.flatnonzero(occ), X[occ])
    assert_root_matches(t, X, occ, 1e-12)
    # every node of level 2 equals a fresh computation over its slots
    span = 16
    for j in range(3):
        sel = np.zeros(300, dtype=bool)
        sel[j * span:(j + 1) * span] = occ[j * span:(j + 1) * span]
        n, mean, m2 = t.nodes_moments(2, np.array([j]))
        assert n == sel.sum()
        np.testing.assert_allclose(mean, X[sel].mean(axis=0), rtol=1e-14)
        np.testing.assert_allclose(m2 / (n - 1), np.cov(X[sel].T), rtol=1e-9, atol=1e-16)


def test_root_stays_exact_through_outliers_entering_and_leaving():
    rng = np.random.default_rng(1)
    n_slots, d = 400, 3
    t = SlotTree(dim=d, branching=10, min_levels=2)
    X = rng.normal(loc=1e6, size=(n_slots, d))
    occ = np.ones(n_slots, dtype=bool)
    t.write(np.arange(n_slots), X)
    for i in range(4000):
        s = int(rng.integers(n_slots))
        kind = rng.random()
        if not occ[s]:
            X[s] = rng.normal(loc=1e6, size=d)
            t.insert(s, X[s].copy())
            occ[s] = True
        elif kind < 0.1 and occ.sum() > 10:
            t.remove(s)
            occ[s] = False
        else:
            # every 50th step an outlier 1e8 standard deviations out, removed soon after
            scale = 1e8 if i % 50 == 0 else 1.0
            X[s] = rng.normal(loc=1e6, scale=scale, size=d)
            t.replace(s, X[s].copy())
        if i % 500 == 0:
            assert_root_matches(t, X, occ, 1e-9)      # before any flush: the root alone
    assert_root_matches(t, X, occ, 1e-9)
    t.flush()
    assert_root_matches(t, X, occ, 1e-12)
    assert t.flushes >= 1  # the outliers spent the error budget


def test_per_item_changes_touch_only_their_paths():
    rng = np.random.default_rng(2)
    t = SlotTree(dim=2, branching=10, min_levels=2, recompute_every=10**9)
    n = 100_000
    t.write(np.arange(n), rng.normal(size=(n, 2)))
    before = t.nodes_recomputed
    k = 50
    for s in rng.integers(0, n, size=k):
        t.replace(int(s), rng.normal(size=2))
    assert t.nodes_recomputed == before      # nothing below the root yet
    t.flush()
    # each change costs at most one node per level: O(k log_b n), not O(n)
    assert 0 < t.nodes_recomputed - before <= k * t.levels
    assert t.levels == 5


@pytest.mark.slow
def test_a_million_replacements_do_not_drift():
    rng = np.random.default_rng(3)
    n_slots, d = 1000, 3
    t = SlotTree(dim=d, branching=10, min_levels=2)
    X = rng.normal(loc=5e6, scale=2.0, size=(n_slots, d))
    t.write(np.arange(n_slots), X)
    steps = 1_000_000
    slots = rng.integers(0, n_slots, size=steps)
    vecs = rng.normal(loc=5e6, scale=2.0, size=(steps, d))
    for s, v in zip(slots.tolist(), vecs, strict=True):
        t.replace(s, v)
    last = {}
    for i, s in enumerate(slots.tolist()):
        last[s] = i
    idx = np.fromiter(last.keys(), dtype=np.int64)
    X[idx] = vecs[np.fromiter(last.values(), dtype=np.int64)]
    assert_root_matches(t, X, np.ones(n_slots, dtype=bool), 1e-9)


# ---------------------------------------------------------------- issue 10: power-of-two units per feature
def _mixed_stream(t: SlotTree, X: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """A batch write, then inserts, replaces and removes on the per-item path."""
    t.ensure_capacity(X.shape[0])
    t.write(np.arange(150), X[:150])
    for s in range(150, 180):
        t.insert(s, X[s])
    for s in rng.choice(180, 40, replace=False).tolist():
        t.replace(int(s), X[s] + scale * 0.5)
    for s in range(170, 180):
        t.remove(s)


@pytest.mark.parametrize("k", [-990, -538, 300])
def test_internal_state_is_bitwise_the_same_for_the_data_times_a_power_of_two(k):
    X = np.random.default_rng(2).normal(loc=3.0, size=(200, 3))
    a, b = SlotTree(dim=3, branching=4, min_levels=2), SlotTree(dim=3, branching=4, min_levels=2)
    _mixed_stream(a, X, np.random.default_rng(5), 1.0)
    _mixed_stream(b, np.ldexp(X, k), np.random.default_rng(5), 2.0**k)
    np.testing.assert_array_equal(b.exponent - a.exponent, k)
    for x, y in zip(a.root_state(), b.root_state(), strict=True):
        np.testing.assert_array_equal(x, y)
    a.flush(), b.flush()
    np.testing.assert_array_equal(a.m2, b.m2)
    np.testing.assert_array_equal(a.off, b.off)


@pytest.mark.parametrize("scale", [1e-300, 1e-162, 1e98])
def test_root_moments_are_exact_in_the_callers_units(scale):
    rng = np.random.default_rng(3)
    X = rng.normal(loc=2.0, size=(120, 3)) * scale
    t = SlotTree(dim=3, branching=4, min_levels=2)
    t.write(np.arange(120), X)
    n, mean, m2 = t.root_moments()
    mean_ex, _ = exact_mean_cov(X)
    np.testing.assert_allclose(mean, mean_ex, rtol=1e-14)
    # the co-moment in internal units against the exact covariance, rescaled exactly
    _, cov_internal = exact_mean_cov(t.deviations(X))
    np.testing.assert_allclose(t.root_state()[2] / (n - 1), cov_internal, rtol=1e-12)
    assert np.all(np.abs(t.deviations(X)) <= 1.0)          # scaled before squaring
    if scale > 1e-150:
        _, cov_ex = exact_mean_cov(X)
        np.testing.assert_allclose(m2 / (n - 1), cov_ex, rtol=1e-12)


def test_units_are_chosen_again_when_data_leave_the_safe_band_both_ways():
    X = np.random.default_rng(4).normal(size=(64, 2))
    t = SlotTree(dim=2, branching=4, min_levels=1)
    t.write(np.arange(64), X * 1e-300)
    first = t.unit_choices
    t.replace(0, X[0] * 1e50)                 # per item, far above: a rebuild with new units
    assert t.unit_choices == first + 1 and t.pending == 0
    assert np.all(np.isfinite(t.root_state()[2]))
    t.replace(0, X[0] * 1e-300)               # the outlier leaves: the spread collapses
    t.flush()
    assert t.unit_choices == first + 2
    _, cov_internal = exact_mean_cov(t.deviations(X * 1e-300))
    np.testing.assert_allclose(t.root_state()[2] / 63, cov_internal, rtol=1e-12)
    assert cov_internal.diagonal().min() > 1e-3         # near 1 again, not underflowed
