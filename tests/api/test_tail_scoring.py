"""scoring="tails" and "fused": tail evidence from per-node sketches, checked against NumPy counts."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys

import numpy as np
import pytest

from swarmguard import (
    BehavioralData,
    BehavioralDistributedProtocol,
    DistributedBehavioralDetector,
    HierarchicalStatisticalTree,
)
from swarmguard.structures.cauchy_combination import cauchy_combine
from swarmguard.structures.scoring_modes import DEFAULT_SCORING


def population(seed: int = 0, n: int = 40, d: int = 3) -> np.ndarray:
    """Few enough members that every sketch is exact (REQ keeps all values below its first compaction)."""
    r = np.random.default_rng(seed)
    X = np.column_stack([r.standard_t(3, n), r.lognormal(0.0, 1.0, n), r.normal(size=n)])[:, :d]
    X[0] = [12.0, 30.0, 0.1][:d]
    return X


def numpy_tail_p(members: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cauchy combination (equal weights) of each feature's two-sided empirical tail among ``members``."""
    L = (members[None, :, :] <= rows[:, None, :]).mean(1)
    R = (members[None, :, :] >= rows[:, None, :]).mean(1)
    return cauchy_combine(np.minimum(1.0, 2.0 * np.minimum(L, R)))


def make(X, scoring, cohorts=None, **kw):
    tree = HierarchicalStatisticalTree(feature_dimensions=X.shape[1], branching_factor=4)
    protocol = BehavioralDistributedProtocol(tree, scoring=scoring, warm_up=10, **kw)
    tree.update_many(np.arange(X.shape[0]), X, cohorts=cohorts)
    return tree, protocol


def test_tails_p_values_are_the_empirical_tails_combined():
    X = population(0)
    _, protocol = make(X, "tails")
    res = protocol.score_many(fdr=None)
    np.testing.assert_allclose(res["p_value"], numpy_tail_p(X, X), rtol=1e-12)
    np.testing.assert_allclose(res["tail_p_value"], res["p_value"], rtol=0)
    assert int(np.argmin(res["p_value"])) == 0


def test_fused_p_values_combine_the_robust_distance_and_the_tails():
    X = population(1)
    _, fused = make(X, "fused")
    _, robust = make(X, "robust")
    res, ref = fused.score_many(fdr=None), robust.score_many(fdr=None)
    np.testing.assert_array_equal(res["distance_p_value"], ref["p_value"])
    np.testing.assert_array_equal(res["mahalanobis_squared"], ref["mahalanobis_squared"])
    expected = cauchy_combine(np.column_stack([ref["p_value"], numpy_tail_p(X, X)]))
    np.testing.assert_allclose(res["p_value"], expected, rtol=1e-12)


def test_cohort_levels_read_the_cohorts_own_sketches():
    X = population(2, n=48)
    groups = np.where(np.arange(X.shape[0]) % 3 == 0, "a", "b")
    _, protocol = make(X, "tails", cohorts=[(g,) for g in groups], score_levels="all")
    res = protocol.score_many(fdr=None)
    agents = np.asarray(res["agent_ids"], dtype=np.int64)      # the batch's rows, in the tree's order
    for g in ("a", "b"):
        level = res["levels"][(g,)]
        rows = agents[np.asarray(level["rows"])]
        assert set(rows.tolist()) == set(np.flatnonzero(groups == g).tolist())
        np.testing.assert_allclose(level["p_value"], numpy_tail_p(X[groups == g], X[rows]), rtol=1e-12)
    np.testing.assert_allclose(res["levels"][()]["p_value"], numpy_tail_p(X, X[agents]), rtol=1e-12)


def test_a_removed_or_changed_member_leaves_the_sketches_exactly():
    X = population(3)
    tree, protocol = make(X, "tails")
    protocol.score_many(fdr=None)                 # sketches built
    tree.remove_agent(0)
    tree.update_agent(5, X[5] + 100.0)
    now = X.copy()
    now[5] += 100.0
    keep = np.arange(1, X.shape[0])
    res = protocol.score_many(list(keep), fdr=None)
    np.testing.assert_allclose(res["p_value"], numpy_tail_p(now[keep], now[keep]), rtol=1e-12)


def test_per_item_answer_equals_the_batch_answer():
    X = population(4)
    for scoring in ("tails", "fused"):
        _, protocol = make(X, scoring, cohorts=[("a",) if i % 2 else ("b",) for i in range(X.shape[0])],
                           score_levels="all")
        item = asyncio.run(protocol.update_agent_behavior(BehavioralData(7, X[7] + 3.0)))
        batch = protocol.score_many([7], fdr=None, explain=True)
        assert item["p_value"] == pytest.approx(float(batch["p_value"][0]), rel=1e-12)
        assert item["decision_p_value"] == pytest.approx(float(batch["decision_p_value"][0]), rel=1e-12)
        assert item["is_anomaly"] == bool(batch["is_anomaly"][0])


def test_explained_tails_are_each_features_share_of_the_tail_score():
    X = population(5)
    _, protocol = make(X, "tails")
    res = protocol.score_many(fdr=None, explain=True)
    np.testing.assert_allclose(res["feature_contributions"].sum(axis=1), res["tail_score"], rtol=1e-12)


def test_score_vectors_counts_an_outside_vector_in():
    X = population(6)
    tree, protocol = make(X, "tails")
    new = np.array([[100.0, 100.0, 100.0]])
    n = X.shape[0]
    res = protocol.score_vectors(new)
    # above every member on every feature: right tail 1 / (n + 1), two-sided 2 / (n + 1) on each
    expected = cauchy_combine(np.full((1, 3), 2.0 / (n + 1)))
    np.testing.assert_allclose(res["p_value"], expected, rtol=1e-12)
    assert len(tree) == n


def test_tail_sketches_survive_serialisation():
    X = population(7)
    tree, protocol = make(X, "tails")
    back = HierarchicalStatisticalTree.from_dict(tree.to_dict())
    res = BehavioralDistributedProtocol(back, scoring="tails", warm_up=10).score_many(fdr=None)
    np.testing.assert_allclose(res["p_value"], protocol.score_many(fdr=None)["p_value"], rtol=1e-12)
    assert back._sketches is not None


def test_a_compacted_population_still_finds_a_far_outlier():
    r = np.random.default_rng(8)
    X = np.column_stack([r.standard_t(3, 20_000), r.lognormal(size=20_000)])
    X[0] = [200.0, 1e4]
    _, protocol = make(X, "tails", fdr=0.05)
    res = protocol.score_many()
    assert not protocol.tree._tail_sketches(0).exact
    assert int(np.argmin(res["p_value"])) == 0
    # the smallest member tail is 1/n per feature: two-sided 2/n on both -- the rank floor, which BH at
    # fdr=0.05 over 20,000 agents cannot reject alone (it needs p <= 0.05 / 20,000): the documented limit
    assert not bool(res["is_anomaly"][0])
    assert res["p_value"][0] == pytest.approx(float(cauchy_combine(np.full((1, 2), 2 / 20_000))[0]), rel=1e-9)


@pytest.mark.parametrize("scoring", ["tails", "fused"])
def test_the_detector_runs_a_round_in_the_mode(scoring):
    X = population(9, n=60)
    det = DistributedBehavioralDetector(scoring=scoring, feature_dimensions=3, warm_up=10)
    out = det.process_round(np.arange(60), X, ["r"] * 60)
    assert det.protocol.scoring == scoring and det.tree._sketches is not None
    assert len(out.agent_ids) == 60 if hasattr(out, "agent_ids") else out is not None


@pytest.mark.parametrize("scoring", ["tails", "fused"])
def test_ray_refuses_a_sketch_mode_before_ray_starts(scoring):
    code = (
        "import sys\n"
        "import swarmguard as sg\n"
        "from swarmguard.errors import InvalidInputError\n"
        "try:\n"
        f"    sg.DistributedBehavioralDetector(backend='ray', scoring={scoring!r})\n"
        "except InvalidInputError as exc:\n"
        f"    assert 'ray' in str(exc) and {scoring!r} in str(exc); print('refused')\n"
        "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "refused", out.stderr


# ---------------------------------------------------------------- calibrated p-values through the protocol
def _heavy_counts(seed, q, calibrate, scoring="robust"):
    """tests/structures/test_score_null.py's heavy-tailed population (Student-t(3), log-normal, 5 % planted
    anomalies from round 2 on), through update_and_score_many round by round: (false flags, flags, planted
    anomalies flagged, planted anomaly-rounds) over the rounds after the warm-up."""
    from tests.structures.test_score_null import FRAC, ROUNDS, WARM, D, N, _draw
    r = np.random.default_rng(seed)
    lab = np.zeros(N, dtype=bool)
    lab[r.choice(N, int(FRAC * N), replace=False)] = True
    feat = np.stack([r.choice(D, 2, replace=False) for _ in range(N)])
    sign = r.choice([-1.0, 1.0], size=(N, 2))
    tree = HierarchicalStatisticalTree(feature_dimensions=D)
    protocol = BehavioralDistributedProtocol(tree, scoring=scoring, fdr=q, calibrate=calibrate)
    false = flags = hits = 0
    for t in range(ROUNDS):
        res = protocol.update_and_score_many(np.arange(N), _draw(r, lab & (t >= WARM), feat, sign))
        if t < WARM:
            continue
        f = res["is_anomaly"]
        false, flags, hits = false + int((f & ~lab).sum()), flags + int(f.sum()), hits + int((f & lab).sum())
        assert res["method"].endswith("calibrated") == calibrate
    return false, flags, hits, int(lab.sum()) * (ROUNDS - WARM)


def _heavy_stream(seed, q, calibrate, scoring="robust"):
    """Realised FDR and recall of :func:`_heavy_counts`."""
    false, flags, hits, planted = _heavy_counts(seed, q, calibrate, scoring)
    return false / max(flags, 1), hits / planted


_POOLED_SEEDS = range(10, 16)     # not the seeds of the per-seed tests


@functools.cache
def _pooled(scoring, q):
    """Realised FDR (false flags over flags) and recall pooled over six independent streams: the FDR is an
    expectation, so its estimate is pooled rather than required of every stream."""
    counts = np.array([_heavy_counts(seed, q, True, scoring) for seed in _POOLED_SEEDS]).sum(0)
    false, flags, hits, planted = counts.tolist()
    return false / max(flags, 1), hits / planted


@pytest.mark.slow
@pytest.mark.parametrize("q", [0.01, 0.05])
@pytest.mark.parametrize("scoring", [DEFAULT_SCORING, "robust", "fused"])
def test_calibrated_realised_fdr_is_at_most_q_in_the_default_and_robust_modes(scoring, q):
    fdr, _ = _pooled(scoring, q)
    assert fdr <= q


@pytest.mark.slow
@pytest.mark.parametrize(("scoring", "q"), [(DEFAULT_SCORING, 0.01), (DEFAULT_SCORING, 0.05),
                                            ("robust", 0.01), ("robust", 0.05), ("fused", 0.01), ("fused", 0.05)])
def test_calibrated_recall_of_planted_anomalies_is_at_least_095(scoring, q):
    # the default mode was a strict xfail at q=0.01 (recall 0.0) while its null held raw distances: the round
    # the anomalies appear inflates the plain covariance and shrinks every distance ~15-fold, so the planted
    # anomalies scored below the clean rounds' tail (recall 0 even with an oracle keeping them out of the null);
    # its null now compares distances relative to their round's median (score_null, "Relative scores")
    _, recall = _pooled(scoring, q)
    assert recall >= 0.95


@pytest.mark.slow
def test_the_default_modes_chi_square_p_values_find_the_planted_anomalies():
    # without calibrate the same stream's planted anomalies are found too (the widened covariance alone does
    # not hide them), at the price of the χ² p-values' false flags on heavy tails
    false, flags, hits, planted = _heavy_counts(_POOLED_SEEDS[0], 0.01, False, DEFAULT_SCORING)
    assert hits / planted >= 0.95 and flags > 0


def _first_anomaly_round(seed, relative, n=4000, d=6, q=0.01):
    """Two clean heavy-tailed rounds (Student-t(3), log-normal), then a round where 5 % of the agents move 50
    robust standard deviations in 2 random features, through the default mode with calibrate=True; ``relative``
    False puts back the null of raw distances. The last round's result and the null's growth in it."""
    from swarmguard.structures.score_null import ScoreNull
    r = np.random.default_rng(seed)
    anomalous = np.arange(n) < n // 20
    feat = np.stack([r.choice(d, 2, replace=False) for _ in range(n)])
    sign = r.choice([-1.0, 1.0], size=(n, 2))
    protocol = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=d), fdr=q, calibrate=True)
    assert protocol.null.relative
    protocol.null = ScoreNull(relative=relative)
    for t in range(3):
        X = np.column_stack([r.standard_t(3, size=(n, d // 2)), r.lognormal(0.0, 0.75, size=(n, d - d // 2))])
        scale = 1.4826 * np.median(np.abs(X - np.median(X, 0)), 0)
        rows = np.flatnonzero(anomalous) if t == 2 else np.array([], dtype=int)
        for c in range(2):
            X[rows, feat[rows, c]] += sign[rows, c] * 50.0 * scale[feat[rows, c]]
        before = protocol.null.count
        res = protocol.update_and_score_many(np.arange(n), X)
    return res, protocol.null.count - before, anomalous


@pytest.mark.parametrize("seed", [0, 1])
def test_the_round_anomalies_first_appear_in_does_not_poison_the_default_modes_null(seed):
    q = 0.01
    res, admitted, anomalous = _first_anomaly_round(seed, relative=True, q=q)
    flags = res["is_anomaly"]
    assert res["method"].endswith("calibrated")
    # the anomalies are flagged in their first round, so they stay out of the null: what enters is every
    # member not flagged and the ceil(q R) lowest flags (so at most that many anomalies)
    hits, R = int((flags & anomalous).sum()), int(flags.sum())
    assert hits >= 0.95 * anomalous.sum()
    assert admitted == anomalous.size - R + int(np.ceil(q * R))
    assert anomalous.sum() - hits + np.ceil(q * R) <= 0.05 * anomalous.sum()
    # the null's scale is the round's median distance (which the covariance the anomalies inflate shrinks)
    assert res["null_scale"] == pytest.approx(float(np.median(res["mahalanobis_squared"])), rel=1e-12)
    # the same stream with a null of raw distances: the first round flags none, and all of them enter it
    raw, raw_admitted, _ = _first_anomaly_round(seed, relative=False, q=q)
    assert not raw["is_anomaly"].any() and raw_admitted == anomalous.size


@pytest.mark.slow
@pytest.mark.parametrize("q", [0.01, 0.05])
def test_calibrated_robust_scoring_keeps_the_realised_fdr_at_most_q(q):
    for seed in (0, 1):
        fdr, recall = _heavy_stream(seed, q, calibrate=True)
        assert fdr <= q and recall >= 0.95
    # the χ² p-values of the same distances are not: heavy tails make many false flags
    fdr, _ = _heavy_stream(0, q, calibrate=False)
    assert fdr > 5 * q


def test_calibrate_is_checked_and_the_null_fills_round_by_round():
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    with pytest.raises(TypeError, match="calibrate"):
        BehavioralDistributedProtocol(tree, calibrate="yes")
    protocol = BehavioralDistributedProtocol(tree, calibrate=True, fdr=0.05, warm_up=10)
    X = np.random.default_rng(0).normal(size=(1200, 2))
    first = protocol.update_and_score_many(np.arange(1200), X)
    assert "parametric_p_value" not in first and protocol.null.count == 1200    # warm-up: all admitted
    second = protocol.update_and_score_many(np.arange(1200), X + 0.0)
    null = np.sort(first["null_score"]).astype(np.float32)
    s = second["null_score"].astype(np.float32)
    expected = (1 + null.size - np.searchsorted(null, s, side="left")) / (null.size + 1)
    np.testing.assert_allclose(second["p_value"], expected, rtol=0.1)
    assert "parametric_p_value" in second


def test_per_item_changes_reach_the_sketches_once_more_than_n_over_10000_are_pending():
    X = np.random.default_rng(11).normal(size=(20_000, 2))
    tree, protocol = make(X, "tails")
    assert tree._tail_sketches(0).count == 20_000          # a batch write: the next read refreshes
    for k in range(2):                                       # n // 10,000 = 2 changes may wait
        tree.update_agent(20_000 + k, [50.0, 50.0])
        assert tree._tail_sketches(0).count == 20_000
    tree.update_agent(20_002, [50.0, 50.0])                  # the third is one too many: applied, all three
    sketches = tree._tail_sketches(0)
    assert sketches.count == 20_003
    far = tree._tree.deviations(np.array([[50.0, 50.0]]))     # the sketches hold the moments' internal units
    np.testing.assert_array_equal(sketches.tail_probabilities(far).right, [[3 / 20_003] * 2])


@pytest.mark.parametrize("scoring", ["robust", "tails"])
def test_per_item_path_keeps_the_modes_own_p_values_under_calibrate(scoring):
    # documented: calibration is a batch's; the per-item path keeps the mode's p-values in every
    # mode (as the plain mode's hot path always did), it used to read the null in the other modes
    r = np.random.default_rng(3)
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    protocol = BehavioralDistributedProtocol(tree, scoring=scoring, calibrate=True, fdr=0.05, warm_up=10)
    X = r.standard_t(3, size=(1500, 2))
    for _ in range(2):
        protocol.update_and_score_many(np.arange(1500), X)
    assert protocol.null.warm
    null_before = protocol.null.count
    info = protocol.update_agent_behavior_sync(BehavioralData(5, [3.0, 3.0]))
    batch = protocol.score_many([5])
    assert batch["method"].endswith("calibrated") and batch["p_value"][0] != batch["parametric_p_value"][0]
    assert info["p_value"] == pytest.approx(batch["parametric_p_value"][0], rel=1e-9)
    assert info["levels"][0]["p_value"] == info["p_value"]
    assert protocol.null.count == null_before             # per-item calls admit nothing


@pytest.mark.parametrize("scoring", ["tails", "fused"])
def test_with_a_window_the_tails_are_read_from_the_windows_members(scoring):
    # the distance is against the window's members; so must the tails be (they used to be read
    # from every member's sketch, stale ones included). Integer values: float32 keeps them apart;
    # few enough that every sketch is exact.
    r = np.random.default_rng(4)
    tree = HierarchicalStatisticalTree(feature_dimensions=2, branching_factor=4, window_rounds=1)
    protocol = BehavioralDistributedProtocol(tree, scoring=scoring, warm_up=10)
    old = r.integers(90, 110, size=(30, 2)).astype(float)
    new = r.integers(-20, 20, size=(40, 2)).astype(float)
    protocol.update_and_score_many(np.arange(30), old)          # sketches built: the old round
    res = protocol.update_and_score_many(np.arange(30, 70), new)   # a new round: old members leave
    sketches = tree._tail_sketches(0)
    assert sketches.exact and sketches.count == tree.get_window_statistics()["count"] == 40
    np.testing.assert_allclose(res["tail_p_value"], numpy_tail_p(new, new), rtol=1e-12)
    everyone = protocol.score_many(np.arange(70))
    inside = everyone["in_window"]
    assert inside.sum() == 40 and not inside[:30].any()
    np.testing.assert_allclose(everyone["tail_p_value"][30:], numpy_tail_p(new, new), rtol=1e-12)
    # a stale member is not in the sketches: counted in as an outsider, (W + 1) / (n + 1)
    L = ((new[None, :, :] <= old[:, None, :]).sum(1) + 1) / 41
    R = ((new[None, :, :] >= old[:, None, :]).sum(1) + 1) / 41
    np.testing.assert_allclose(everyone["tail_p_value"][:30],
                               cauchy_combine(np.minimum(1.0, 2.0 * np.minimum(L, R))), rtol=1e-12)
    outside = protocol.score_vectors(old[:5])
    np.testing.assert_allclose(outside["tail_p_value"], everyone["tail_p_value"][:5], rtol=1e-12)


def test_ray_checks_calibrate_as_in_process_then_refuses_it_with_a_window_before_ray_starts():
    # calibrate=True runs on Ray (tests/engines/test_ray_modes.py); with a window it is refused
    code = (
        "import sys\n"
        "import swarmguard as sg\n"
        "from swarmguard.errors import InvalidInputError, InvalidTypeError\n"
        "try:\n"
        "    sg.DistributedBehavioralDetector(backend='ray', calibrate='yes')\n"
        "except InvalidTypeError as exc:\n"
        "    assert isinstance(exc, TypeError) and 'calibrate' in str(exc); print('typed')\n"
        "try:\n"
        "    sg.DistributedBehavioralDetector(backend='ray', calibrate=True, window_rounds=3)\n"
        "except InvalidInputError as exc:\n"
        "    assert 'ray' in str(exc) and 'calibrate' in str(exc); print('refused')\n"
        "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["typed", "refused"], out.stderr


def test_far_outliers_are_answered_not_refused():
    # a vector from outside far beyond the population: its internal units pass float32's range
    # (the sketches' type); it is beyond every sketched value and is read at the edge
    X = np.random.default_rng(5).normal(size=(30, 2))
    tree, protocol = make(X, "fused")
    out = protocol.score_vectors([[1e99, 0.0]])
    L = ((X[None, :, :] <= np.array([[1e99, 0.0]])[:, None, :]).sum(1) + 1) / 31
    R = ((X[None, :, :] >= np.array([[1e99, 0.0]])[:, None, :]).sum(1) + 1) / 31
    np.testing.assert_allclose(out["tail_p_value"], cauchy_combine(np.minimum(1.0, 2.0 * np.minimum(L, R))),
                               rtol=1e-12)
    # calibrated robust scoring: a distance past float32's range enters the null, the round is answered
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    protocol = BehavioralDistributedProtocol(tree, scoring="robust", calibrate=True, fdr=0.05, warm_up=10)
    Y = np.zeros((1200, 2))
    Y[:, 1] = np.arange(1200) % 7
    for k in range(3):
        if k == 2:
            Y[0] = [1e9, 1e9]
        res = protocol.update_and_score_many(np.arange(1200), Y)
    assert res["null_score"][0] > float(np.finfo(np.float32).max)
    assert res["p_value"][0] == 1 / (2 * 1200 + 1)            # beyond every earlier score: the floor
    assert protocol.null.count == 3 * 1200 - int(res["is_anomaly"].sum())


def test_calibrated_per_member_cut_keeps_its_false_flag_rate_round_after_round():
    # without fdr the cut is per member at alpha: about alpha * m normal members are flagged
    # whatever R is, and putting back only ceil(alpha R) of them thinned the null round after
    # round (measured: a false-flag rate of 0.010 -> 0.027 in ten rounds at alpha = 0.01)
    r = np.random.default_rng(6)
    n, alpha = 10_000, 0.01
    tree = HierarchicalStatisticalTree(feature_dimensions=3)
    protocol = BehavioralDistributedProtocol(tree, scoring="robust", calibrate=True, significance_level=alpha)
    rates = []
    for _ in range(8):
        X = np.column_stack([r.standard_t(3, n), r.lognormal(0.0, 1.0, n), r.standard_t(3, n)])
        res = protocol.update_and_score_many(np.arange(n), X)
        rates.append(res["is_anomaly"].mean())        # no anomalies: every flag is false
    # rounds 4..7 pooled: 400 expected false flags, a binomial spread of 0.0005 in the rate
    assert res["method"].endswith("calibrated") and np.mean(rates[4:]) <= 1.3 * alpha


def test_calibrated_default_mode_p_values_are_exact_conformal_ones_over_the_batch_median():
    """Independent of the sketch: with a null small enough to stay exact, the protocol's calibrated
    p-values in the default mode are (1 + #{held >= s / median}) / (n + 1) in exact rational
    arithmetic, ``held`` being every earlier round's distance over that round's median distance."""
    import math
    from fractions import Fraction

    from swarmguard.structures.score_null import SCALE_ROWS, ScoreNull

    def median(values):
        v = sorted(Fraction(float(x)) for x in values)
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    r = np.random.default_rng(5)
    n, d = SCALE_ROWS, 3
    protocol = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=d), calibrate=True,
                                             fdr=None, warm_up=10)
    assert protocol.null.relative
    protocol.null = ScoreNull(k=254, min_null=n, relative=True)      # k large enough to stay exact over n (254: the most)
    first = protocol.update_and_score_many(np.arange(n), r.standard_t(4, size=(n, d)))
    assert not protocol.null.warm or protocol.null.count == n
    m1 = median(first["mahalanobis_squared"])
    assert math.isclose(first["null_scale"], float(m1), rel_tol=1e-15)
    held = [Fraction(float(x)) / Fraction(first["null_scale"]) for x in first["mahalanobis_squared"]]
    assert protocol.null.exact and protocol.null.warm
    X = r.standard_t(4, size=(n, d))
    X[:20] += 8.0
    second = protocol.update_and_score_many(np.arange(n), X)
    scale = Fraction(second["null_scale"])
    assert abs(scale - median(second["mahalanobis_squared"])) <= scale * Fraction(1, 10**15)
    want = [Fraction(1 + sum(h >= Fraction(float(x)) / scale for h in held), n + 1)
            for x in second["mahalanobis_squared"]]
    got = [Fraction(float(p)) for p in second["p_value"]]
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= Fraction(1, 10**12)
    assert second["method"].endswith("calibrated") and "parametric_p_value" in second


def test_small_calibrated_rounds_are_each_measured_by_their_own_median_and_report_the_nulls_floor():
    """Rounds under SCALE_ROWS rows (a population of 300): each round's ``null_scale`` is its own
    median distance (an exact sorted median in rational arithmetic), not the first round's; the
    result gives the null's size and its smallest p-value 1/(n+1) as the round met it."""
    from fractions import Fraction

    from swarmguard.structures.score_null import SCALE_ROWS

    def median(values):
        v = sorted(Fraction(float(x)) for x in values)
        return float(v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2)

    r = np.random.default_rng(8)
    n, d = 300, 3
    assert n < SCALE_ROWS
    protocol = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=d), calibrate=True,
                                             fdr=0.05, warm_up=10)
    scales = []
    for k in range(6):
        before = protocol.null.count
        res = protocol.update_and_score_many(np.arange(n), (1.0 + k) * r.standard_t(4, size=(n, d)))
        assert res["null_scale"] == median(res["mahalanobis_squared"])
        assert res["null_count"] == before
        assert res["null_p_floor"] == (None if before < protocol.null.min_null else 1.0 / (before + 1))
        assert protocol.null.last_scale is None
        scales.append(res["null_scale"])
    assert len(set(scales)) == len(scales)
    assert res["method"].endswith("calibrated")


def test_a_calibrated_round_result_reports_the_null_it_was_tested_against():
    """process_round's RoundResult carries null_count / null_p_floor as the protocol's batch result
    does: the null's size before the round admitted its members and 1/(n+1) once warm (None before,
    and all four null keys None without calibrate)."""
    from swarmguard.api.detector import DistributedBehavioralDetector
    from swarmguard.structures.score_null import DEFAULT_MIN_NULL
    r = np.random.default_rng(4)
    n, d = 700, 3
    det = DistributedBehavioralDetector(feature_dimensions=d, calibrate=True, fdr=0.05, clock=lambda: 0.0)
    floors = []
    for _ in range(3):
        before = det.protocol.null.count
        res = det.process_round(np.arange(n), r.standard_t(4, size=(n, d)), ["eu"] * n)
        assert res["null_count"] == before and isinstance(res["null_count"], int)
        assert res["null_p_floor"] == (1.0 / (before + 1.0) if before >= DEFAULT_MIN_NULL else None)
        floors.append(res["null_p_floor"])
    assert floors[0] is None and floors[1] is None and floors[2] == 1.0 / (2 * n + 1)
    plain = DistributedBehavioralDetector(feature_dimensions=d, clock=lambda: 0.0)
    res = plain.process_round(np.arange(n), r.standard_normal((n, d)), ["eu"] * n)
    assert all(res[k] is None for k in ("null_score", "null_scale", "null_count", "null_p_floor"))


def test_the_nulls_floor_bounds_the_population_levels_flags_not_the_cohort_levels():
    """The smallest group BH can flag on calibrated p-values (ScoreNull.fewest_flags) is a bound on
    what the population level can flag: a cohort level keeps its chi-square p-values, which have no
    floor. One agent 40 sigma out, a warm null of 2,000: with score_levels="all" it is flagged (its
    cohort's p-value), though fewest_flags says 200; on the population level alone it is not."""
    from swarmguard.api.detector import DistributedBehavioralDetector
    r = np.random.default_rng(0)
    n, d, q = 2000, 3, 0.01
    ids = np.arange(n)
    cohorts = np.array([f"c{i % 4}" for i in ids])
    for levels, flagged in (("all", True), ("population", False)):
        det = DistributedBehavioralDetector(feature_dimensions=d, calibrate=True, fdr=q, score_levels=levels,
                                            clock=lambda: 0.0)
        for _round in range(2):
            X = r.standard_normal((n, d))
            X[0] += 40.0
            fewest = det.protocol.null.fewest_flags(n, q, 2 if levels == "all" else 1)
            res = det.process_round(ids, X, ["eu"] * n, cohorts=cohorts)
        assert res["null_count"] == n and fewest > 1                 # the second round was calibrated
        assert res["p_value"][0] >= res["null_p_floor"]              # the population level's p-value has a floor
        assert bool(res["is_anomaly"][0]) is flagged and res["is_anomaly"].sum() == int(flagged)


def test_a_round_scored_under_warm_up_leaves_the_null_alone():
    """A batch whose population is under ``warm_up`` judges nobody, and its distances (against a few
    members' moments; 0 for a lone one) are no draws of the null: they must not enter it, else a run of
    one-agent rounds fills ``min_null`` with zeros and every member of the next full round is flagged."""
    from swarmguard.structures.score_null import DEFAULT_MIN_NULL
    r = np.random.default_rng(12)
    protocol = BehavioralDistributedProtocol(HierarchicalStatisticalTree(feature_dimensions=2, window_rounds=1),
                                             calibrate=True, fdr=0.01, warm_up=50)
    for k in range(DEFAULT_MIN_NULL + 100):              # one agent a round: the window holds one member
        res = protocol.update_and_score_many(np.array([k]), r.normal(size=(1, 2)))
        assert res["warming_up"] and protocol.null.count == 0
    full = protocol.update_and_score_many(np.arange(10_000, 10_400), r.normal(size=(400, 2)))
    assert not full["warming_up"] and "parametric_p_value" not in full      # the null is still cold
    assert protocol.null.count == 400                   # the first judged round enters it
    assert not full["is_anomaly"].any()                 # normal members, chi-squared (Gaussian) p-values
