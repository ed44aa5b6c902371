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


# ---------------------------------------------------------------- issue 10 review: units per item, budget per feature, band
def _assert_root_matches_internal(t: SlotTree, X: np.ndarray, occupied: np.ndarray, rel: float) -> None:
    """The root (no flush) against the exact co-moment of the stored vectors in the tree's current units."""
    n, off, m2 = t.root_state()
    rows = X[occupied]
    assert n == rows.shape[0]
    assert np.all(np.isfinite(m2))
    _, cov_ex = exact_mean_cov(t.deviations(rows))
    scale = np.sqrt(np.outer(np.diag(cov_ex), np.diag(cov_ex)))
    np.testing.assert_array_less(np.abs(m2 / (n - 1) - cov_ex), rel * scale + 1e-300)


@pytest.mark.parametrize("path", ["insert", "replace", "write"])
def test_a_feature_that_starts_at_zero_takes_its_unit_from_the_first_item_that_is_not(path):
    # Reproducer: the first vector was 0 in feature 1, so the feature got a placeholder
    # unit 2**-1; later 1e-300 values were squared in it (underflow to exactly 0), and
    # until a flush the root said the feature was constant: every score ignored it.
    rng = np.random.default_rng(11)
    X = rng.normal(size=(60, 2)) * np.array([1.0, 1e-300])
    t = SlotTree(dim=2, branching=4, min_levels=1, recompute_every=10**9)
    t.ensure_capacity(60)
    if path == "insert":
        X[0, 1] = 0.0
        for i in range(60):
            t.insert(i, X[i])
    else:
        first = X.copy()
        first[:, 1] = 0.0
        t.write(np.arange(60), first)
        choices = t.unit_choices
        if path == "replace":
            for i in range(60):
                t.replace(i, X[i])
        else:
            t.write(np.arange(60), X)
        assert t.unit_choices == choices          # no rebuild: O(d), the feature held only zeros
    _, e1 = np.frexp(np.abs(X[X[:, 1] != 0, 1][0]))
    assert -1000 < t.exponent[1] <= -990 and t.exponent[1] >= e1     # 1e-300 ≈ 2**-997, from the data
    _assert_root_matches_internal(t, X, np.ones(60, dtype=bool), 1e-12)
    assert t.root_state()[2][1, 1] > 0


@pytest.mark.parametrize("small", [1.0, 1e-300])
def test_an_outlier_leaving_spends_its_own_features_budget(small):
    # Reproducer: the error budget was one number over all features, so the outlier's
    # departure (its feature's co-moment cancels down by 2**330) spent almost nothing of
    # it; the root kept a variance of 5.6e-19 for a feature whose exact one is ~1e-102.
    # With a 1e100 feature beside, a 1e-300 feature must get its own budget as well.
    rng = np.random.default_rng(12)
    X = rng.normal(size=(100, 3)) * np.array([small, 1e100, small])
    t = SlotTree(dim=3, branching=4, min_levels=1, recompute_every=10**9)
    t.write(np.arange(100), X)
    occ = np.ones(100, dtype=bool)
    X[0, 0] = 1e50 * small                        # in, per item
    t.replace(0, X[0])
    _assert_root_matches_internal(t, X, occ, 1e-9)
    X[0, 0] = 0.3 * small                          # and out again
    t.replace(0, X[0])
    _assert_root_matches_internal(t, X, occ, 1e-9)
    for i in range(1, 40):                         # ordinary per-item traffic keeps it exact
        X[i] = rng.normal(size=3) * np.array([small, 1e100, small])
        t.replace(i, X[i])
        _assert_root_matches_internal(t, X, occ, 1e-9)


def test_a_feature_tiny_next_to_a_huge_one_is_not_starved_by_its_budget():
    # A collapse in the 1e-300 feature alone (its spread falls by 2**40 over many
    # per-item steps) is checked against that feature's own co-moment.
    rng = np.random.default_rng(13)
    n = 80
    X = rng.normal(size=(n, 2)) * np.array([1e100, 1e-300])
    t = SlotTree(dim=2, branching=4, min_levels=1, recompute_every=10**9)
    t.write(np.arange(n), X)
    occ = np.ones(n, dtype=bool)
    for i in range(n - 2):
        X[i, 1] = X[i, 1] * 2.0**-40 + 1e-301      # all but two agents shrink toward a constant
        t.replace(i, X[i])
    _assert_root_matches_internal(t, X, occ, 1e-9)
    X[n - 2:, 1] = X[0, 1]
    for i in (n - 2, n - 1):
        t.replace(i, X[i])
    _assert_root_matches_internal(t, X, occ, 1e-9)
    assert t.flushes >= 1


def test_products_of_two_units_below_the_normal_range_are_applied_exactly():
    # Reproducer: M2 in the caller's units was M2 * (2**e_i * 2**e_j); with e ≈ -560 the
    # factor 2**-1120 is below the smallest subnormal, so a covariance of about 1e-280
    # (a normal number) came out 0. Applied as ldexp on the summed exponent it is exact.
    from swarmguard.structures.slot_tree import scale_outer
    m2 = np.array([[2.0**200, 3.0], [3.0, 2.0**-60]])
    got = scale_outer(m2, np.array([-560, -560]))
    assert got[0, 0] == 2.0**-920 and got[0, 1] == np.ldexp(3.0, -1120) and got[1, 1] == 0.0
    rng = np.random.default_rng(14)
    X = rng.normal(size=(50, 2)) * 2.0**-560
    t = SlotTree(dim=2, branching=4, min_levels=1)
    t.write(np.arange(50), X)
    X[0] = X[0] * 2.0**85                          # far out but inside the band: no rebuild
    choices = t.unit_choices
    t.replace(0, X[0])
    assert t.unit_choices == choices
    n, mean, m2 = t.root_moments()
    _, cov_ex = exact_mean_cov(X)
    assert cov_ex[0, 0] > 1e-300                   # a normal number, from two units of 2**-560
    np.testing.assert_allclose(np.diag(m2) / (n - 1), np.diag(cov_ex), rtol=1e-9)


def test_units_stay_in_their_band_through_moves_across_the_whole_range():
    # Per-item moves over 390 decimal orders, up and down: after every one the root
    # (no flush) equals the exact co-moment in the current units, finite, and no stored
    # deviation lies beyond 2**100 units (no square was formed where it could overflow).
    rng = np.random.default_rng(15)
    n = 64
    X = rng.normal(size=(n, 2)) * 1e-300
    t = SlotTree(dim=2, branching=4, min_levels=1, recompute_every=10**9)
    t.write(np.arange(n), X)
    occ = np.ones(n, dtype=bool)
    for _ in range(120):
        i = int(rng.integers(n))
        X[i] = rng.normal(size=2) * 10.0 ** rng.uniform(-300, 90, size=2)
        t.replace(i, X[i])
        assert np.abs(t.deviations(X[occ])).max() <= 2.0**100
        _assert_root_matches_internal(t, X, occ, 1e-9)
        var = np.diag(t.root_state()[2]) / (n - 1)
        t.flush()
        var = np.diag(t.root_state()[2]) / (n - 1)
        assert np.all(var >= 2.0**-200)            # never left with squares near underflow


@pytest.mark.parametrize("scales", [(1e-300, 1e-300, 1e-300), (1.0, 1.0, 1.0), (1e300, 1e300, 1e300),
                                    (1e-300, 1.0, 1e300)])
def test_the_per_item_error_budget_holds_against_exact_arithmetic_from_1e_300_to_1e300(scales):
    # The per-item path books each change's rounding bound (Cauchy–Schwarz on the rank-two
    # step of a replace) and flushes when a feature's bound reaches its budget: between
    # flushes the root's co-moment stays within that budget (1e-11 of each feature's own
    # co-moment, off-diagonals against the geometric mean) of the exact co-moment of the
    # stored vectors (Fractions), at every magnitude, with outliers a million standard
    # deviations out entering and leaving, and on an offset 1e4 spreads from zero.
    from swarmguard.structures.slot_tree import _ERROR_BUDGET

    rng = np.random.default_rng(21)
    n, d = 100, 3
    scale = np.array(scales)

    def draw(k=None, spread=1.0):
        size = d if k is None else (k, d)
        return (1e4 + spread * rng.normal(size=size)) * scale   # shift near 1e4 spreads: cancellation

    X = draw(n)
    t = SlotTree(dim=d, branching=4, min_levels=1, recompute_every=10**9)
    t.write(np.arange(n), X)
    occ = np.ones(n, dtype=bool)
    worst = 0.0
    steps = 600
    i = 0
    for step in range(steps):
        out = step % 40 == 0
        if step % 40 != 1:                          # step 1 of 40: the outlier's own slot, it leaves
            i = int(rng.integers(n))
        X[i] = draw(spread=1e6 if out else 1.0)
        t.replace(i, X[i])
        if out or step % 40 == 1 or step % 7 == 0:   # outliers entering, leaving, and ordinary steps
            n_, off, m2 = t.root_state()
            _, cov_ex = exact_mean_cov(t.deviations(X[occ]))
            ref = np.sqrt(np.outer(np.diag(cov_ex), np.diag(cov_ex)))
            err = np.abs(m2 / (n_ - 1) - cov_ex) / ref
            worst = max(worst, float(err.max()))
            np.testing.assert_array_less(err, _ERROR_BUDGET)
    assert worst > 0                                # the root did carry rounding between flushes
    assert 15 <= t.flushes < steps // 4             # outliers leaving flush; ordinary steps accumulate
    t.flush()
    n_, off, m2 = t.root_state()
    _, cov_ex = exact_mean_cov(t.deviations(X))
    np.testing.assert_allclose(m2 / (n_ - 1), cov_ex, rtol=1e-12)


def test_the_band_check_of_many_rows_is_the_element_wise_rule_at_the_bands_edge():
    # The batch check looks at each column's extremes only; rounding of x - shift is
    # monotone, so it decides as |x - shift| > limit checked element by element, also
    # for limits one ulp either side of the largest deviation.
    rng = np.random.default_rng(22)
    decided = set()
    for _ in range(300):
        Y = rng.normal(size=(5, 3)) * 10.0 ** rng.uniform(-300, 300)
        t = SlotTree(3, 2, 1)
        t.write(np.arange(5), rng.normal(size=(5, 3)) * 10.0 ** rng.uniform(-300, 300))
        edge = np.abs(Y - t.shift).max(axis=0)
        t._limit = edge * rng.choice([1.0, np.nextafter(1.0, 0.0), np.nextafter(1.0, 2.0)], size=3)
        rule = bool((np.abs(Y - t.shift) > t._limit).any())
        assert t._too_far(Y) == rule
        assert t._too_far(Y[0]) == bool((np.abs(Y[0] - t.shift) > t._limit).any())
        decided.add(rule)
    assert decided == {True, False}


def test_merged_nodes_are_the_exact_moments_of_their_slots_through_the_fewest_nodes():
    # nodes_state merges a node in place of all b of its children (level by level): the
    # moments are those of every slot below the given nodes, exactly (Fractions), and a
    # contiguous run of 300 level-1 nodes needs a handful of nodes, not 300.
    rng = np.random.default_rng(23)
    b, n = 4, 4096
    t = SlotTree(dim=2, branching=b, min_levels=1)
    X = rng.normal(loc=50.0, size=(n, 2))
    occ = rng.random(n) < 0.9
    t.write(np.flatnonzero(occ), X[occ])
    for i in rng.choice(np.flatnonzero(occ), 30, replace=False).tolist():   # pending per-item changes
        X[i] = rng.normal(loc=50.0, size=2)
        t.replace(i, X[i])
    run = np.arange(37, 337)
    scattered = np.unique(rng.choice(n // b, 120, replace=False))
    for nodes, contiguous in ((run, True), (scattered, False), (np.concatenate([run, np.arange(512, 768)]), True)):
        cover = t.node_cover(1, nodes)
        if contiguous:
            assert cover.size < nodes.size // 8
        slots = (nodes[:, None] * b + np.arange(b)).ravel()
        rows = X[slots[occ[slots]]]
        cnt, off, m2 = t.nodes_state(1, nodes)
        mean, m2_user = t.to_user(off, m2)
        assert cnt == rows.shape[0]
        mean_ex, cov_ex = exact_mean_cov(rows)
        np.testing.assert_allclose(mean, mean_ex, rtol=1e-14)
        np.testing.assert_allclose(m2_user / (cnt - 1), cov_ex, rtol=1e-12)


def test_the_band_check_given_the_validators_bound_decides_as_the_element_wise_rule():
    # With a bound on |x| (the validator's), the check may skip its pass over the columns
    # only where no element could be beyond its limit: the same decision as the rule, at the
    # band's edge (limits one ulp either side) and far from it, for bounds that are exact
    # and for looser ones.
    rng = np.random.default_rng(23)
    decided, skipped = set(), 0
    for _ in range(400):
        size = 3 if rng.random() < 0.5 else 1           # features of one magnitude, or of many
        Y = rng.normal(size=(6, 3)) * 10.0 ** rng.uniform(-300, 90, size=size)
        t = SlotTree(3, 2, 1)
        t.write(np.arange(6), rng.normal(size=(6, 3)) * 10.0 ** rng.uniform(-300, 90, size=size))
        if rng.random() < 0.5:
            edge = np.abs(Y - t.shift).max(axis=0)
            t._limit = edge * rng.choice([1.0, np.nextafter(1.0, 0.0), np.nextafter(1.0, 2.0)], size=3)
        rule = bool((np.abs(Y - t.shift) > t._limit).any())
        bound = float(np.abs(Y).max()) * rng.choice([1.0, 2.0])
        assert t._too_far(Y, bound) == rule
        decided.add(rule)
        skipped += bound + float(np.abs(t.shift).max()) <= float(t._limit.min())
    assert decided == {True, False} and 50 < skipped < 350   # both ways of deciding were taken
