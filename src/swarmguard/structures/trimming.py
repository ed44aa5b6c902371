"""Trimmed moments: the tree's second set of moments, over the members not flagged.

Why
---
Outliers inflate the covariance they are scored against (*masking*): a
cluster of anomalies widens the ellipsoid until none of them looks far. The
remedy of the reweighted MCD (Rousseeuw & Van Driessen's FAST-MCD reweighting
step, also scikit-learn's ``MinCovDet``) is to re-estimate the moments from
the members that the first estimate does not flag, and score everyone
against those.

Rule (one step, streaming)
--------------------------
A member is *kept* when its leave-one-out squared distance under the **full**
moments (:class:`~swarmguard.structures.scoring.LeaveOneOutScorer`,
``shrinkage="auto"``) is at most ``χ²_d(q)``, the ``q = 0.975`` quantile: the
reweighting cut-off of the reweighted MCD, chosen for that reason (under
Gaussian members it drops 2.5 % of them, a small loss of efficiency, and it
drops any member whose distance is implausible at that level), not tuned to
any data. While the population has fewer than ``d + 3`` members nobody is
dropped (a leave-one-out covariance of fewer members is singular but for the
shrinkage, and its distances mean little).

The kept members' moments are the *same moments type* as the full ones, over
a subset: a second :class:`~swarmguard.structures.slot_tree.SlotTree` with
the same layout, in which a slot is occupied when its member is kept. So
every node of the tree has trimmed moments too, they merge with Chan's
formula like the full ones (a cohort's trimmed moments are the merge of its
pages'), a change costs O(log n) nodes, a removal is exact, and a tree
rebuilt from its vectors and its members' kept/dropped flags holds the same
numbers (what :meth:`HierarchicalStatisticalTree.to_dict` stores).

When a flag is decided (the approximation)
------------------------------------------
A member's flag is decided when *its own* vector is written, against the full
moments at that moment: after a batch (``update_many``) every written row is
judged against the moments that include the whole batch; a per-item update
judges that one member. Other members keep the flags they were given when
they were last written, even though the full moments have moved since: the
trimmed moments are exactly those of the members whose *latest judgement*
kept them, not a fixed point of the rule (re-judging everyone would cost
O(n) per update). Where the population moves slowly between a member's
writes, the judgement changes little; :meth:`TrimmedMoments.rejudge`
re-decides every member at once (O(n d²)), for a caller that wants the
one-step estimate exactly.

Scores (:class:`TrimmedScorer`)
-------------------------------
Against the trimmed moments ``(n_t, μ_t, S_t)``: a kept member, counted in
them, is scored leave-one-out (exactly as the full mode does); a dropped
member, or a vector not in the tree, is scored against them as they are
(its "others" are exactly the kept members), with the same regularisation:
``Σ = (1 - λ) S_t / (n_t - 1) + λ T + ρ T̃``, ``T = diag(S_t) / (n_t - 1)``.
Both distances are divided by the consistency factor of a covariance trimmed
at ``χ²_d(q)`` (Croux & Haesbroeck, 1999: ``c = q / P(χ²_{d+2} <= χ²_d(q))``
for Gaussian members), so that a Gaussian member's distance is again about
χ²(d) and its p-value keeps its meaning.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import NonFiniteError
from ..lazy_import import module_on_first_use
from .chi2 import chi2_sf
from .feature_shares import whitened_parts, zca_cor_whitening
from .member_subset import MemberSubsetMoments
from .scoring import _RIDGE, _TINY, _VAR_FLOOR, MIN_POPULATION, LeaveOneOutScorer, nonnegative_d2
from .slot_tree import SlotTree

__all__ = ["TRIM_QUANTILE", "TrimmedMoments", "TrimmedScorer", "consistency_factor", "judge_rows",
           "score_trimmed_population", "trim_threshold", "trimmed_level_scorer"]

TRIM_QUANTILE = 0.975
_special = module_on_first_use("scipy.special")   # imported on first use: see swarmguard.lazy_import


def trim_threshold(d: int, quantile: float = TRIM_QUANTILE) -> float:
    """``χ²_d(quantile)``: members whose leave-one-out D² exceeds it are dropped."""
    return float(_special().chdtri(d, 1.0 - quantile))


def consistency_factor(d: int, quantile: float = TRIM_QUANTILE) -> float:
    """``q / P(χ²_{d+2} <= χ²_d(q))`` (> 1): how much a Gaussian covariance trimmed at
    ``χ²_d(q)`` underestimates the covariance (Croux & Haesbroeck, 1999).

    >>> round(consistency_factor(1), 4)    # 0.975 / P(χ²₃ <= 5.024) = 0.975 / 0.8299
    1.1748
    """
    return quantile / float(_special().chdtr(d + 2, trim_threshold(d, quantile)))


def _min_judged(d: int) -> int:
    return max(MIN_POPULATION, d + 3)


def judge_rows(count: float, offset: np.ndarray, m2: np.ndarray, E: np.ndarray, threshold: float) -> np.ndarray:
    """The trimming rule: whether each member is kept, judged against the full moments.

    ``(count, offset, m2)`` are the full moments the members are counted in,
    ``E`` the members' deviations from their mean (in the moments' units) and
    ``threshold`` :func:`trim_threshold`. A member is kept when its
    leave-one-out D² (``shrinkage="auto"``) is at most ``threshold``;
    everyone is kept while ``count < max(MIN_POPULATION, d + 3)``. Both
    :meth:`TrimmedMoments.judge` (one tree) and an engine that merged the full
    moments of many trees (the Ray engine's region shards) use it, so they
    judge alike.
    """
    if count < _min_judged(offset.shape[0]):
        return np.ones(E.shape[0], dtype=bool)
    return LeaveOneOutScorer(count, offset, m2, "auto").score_many(E) <= threshold


class TrimmedMoments(MemberSubsetMoments):
    """The kept members' moments, one node per node of the full :class:`SlotTree`.

    Parameters
    ----------
    full : SlotTree
        The tree of every member; its layout is mirrored (same slots, same nodes).
    quantile : float
        ``q`` of the rule above.

    Examples
    --------
    >>> import numpy as np
    >>> full = SlotTree(dim=1, branching=2, min_levels=1)
    >>> X = np.array([[0.0], [1.0], [2.0], [1.0], [0.5], [1.5], [100.0]])
    >>> full.write(np.arange(7), X)
    >>> trim = TrimmedMoments(full)
    >>> trim.write(full, np.arange(7), X)
    >>> trim.kept(np.arange(7)).tolist()
    [True, True, True, True, True, True, False]
    >>> float(trim.tree.root_state()[0])
    6.0
    """

    def __init__(self, full: SlotTree, quantile: float = TRIM_QUANTILE):
        super().__init__(full)
        self.quantile = quantile
        self.threshold = trim_threshold(full.dim, quantile)

    # ------------------------------------------------------------------ the rule
    def judge(self, full: SlotTree, X: np.ndarray) -> np.ndarray:
        """Whether each row of ``X`` (members of ``full``, their latest vectors) is kept."""
        n, off, m2 = full.root_state()
        if n < _min_judged(full.dim):
            return np.ones(X.shape[0], dtype=bool)
        return judge_rows(n, off, m2, full.deviations(X) - off, self.threshold)

    # ------------------------------------------------------------------ changes
    def write(self, full: SlotTree, slots: np.ndarray, X: np.ndarray, keep: np.ndarray | None = None) -> None:
        """After ``full.write(slots, X)``: judge those rows (or take ``keep``) and write the kept."""
        self._sync_layout(full)
        if keep is None:
            keep = self.judge(full, X)
        dropped = slots[~keep]
        self.tree.write(slots[keep], X[keep])
        self.clear(dropped)

    def leave_out(self, full: SlotTree, slots: np.ndarray) -> None:
        """After ``full.write(slots, X)`` when the flags are decided elsewhere (:meth:`write` with
        ``keep`` later): the written members are out of the trimmed moments until then."""
        self._sync_layout(full)
        self.clear(slots)

    def set_one(self, full: SlotTree, slot: int, x: np.ndarray) -> None:
        """After a per-item insert or replace of ``slot`` in ``full``: judge it, O(d³ + d² log n)."""
        self._sync_layout(full)
        keep = bool(self.judge(full, x[None, :])[0])
        held = bool(self.tree.occupied[slot])
        if keep:
            if held:
                self.tree.replace(slot, x)
            else:
                self.tree.insert(slot, x)
        elif held:
            self.tree.remove(slot)

    def rejudge(self, full: SlotTree) -> None:
        """Judge every member again against the current full moments (O(n d²))."""
        full.flush()
        slots = np.flatnonzero(full.occupied)
        self.write(full, slots, full.X[slots])

    # ------------------------------------------------------------------ reads
    def kept(self, slots: np.ndarray) -> np.ndarray:
        """Whether the members at ``slots`` are counted in the trimmed moments."""
        return self.tree.occupied_at(slots)


class TrimmedScorer:
    """Scores against one set of trimmed moments: leave-one-out for kept members, as they
    are for the others (see the module's docstring).

    Parameters
    ----------
    count, offset, m2
        The trimmed moments (in the trimmed tree's units).
    shrinkage : float or "auto"
    quantile : float or None
        The trimming quantile (for the consistency factor); None: moments not
        trimmed, no factor (vectors not in the tree scored against the full moments).
    """

    __slots__ = ("inside", "chol", "ok", "d", "factor")

    def __init__(self, count: float, offset: np.ndarray, m2: np.ndarray, shrinkage: float | str,
                 quantile: float | None = TRIM_QUANTILE):
        d = offset.shape[0]
        self.d = d
        self.factor = 1.0 if quantile is None else 1.0 / consistency_factor(d, quantile)
        self.inside = LeaveOneOutScorer(count, offset, m2, shrinkage)
        n = float(count)
        self.ok = n >= MIN_POPULATION - 1
        self.chol = _outside_factor(n, m2, shrinkage) if self.ok else None

    def score_many(self, E: np.ndarray, kept: np.ndarray, explain: bool = False):
        """D² of rows with deviations ``E`` from the trimmed mean; ``kept`` says which rows are
        counted in the moments (scored leave-one-out). With ``explain``, feature shares too."""
        m = E.shape[0]
        d2 = np.zeros(m)
        shares = np.zeros((m, self.d)) if explain else None
        if kept.any():
            res = self.inside.score_many(E[kept], explain=explain)
            if explain:
                d2[kept], shares[kept] = res
            else:
                d2[kept] = res
        out = ~kept
        if out.any() and self.chol is not None:
            Eo = E[out]
            G, _ = _lapack().dpotrs(self.chol, Eo.T, lower=1)
            prod = Eo * G.T
            d2[out] = nonnegative_d2(prod.sum(axis=1))     # rounding below 0: 0 (scoring.nonnegative_d2)
            if explain:          # the same whitened parts as the members inside (feature_shares)
                shares[out] = whitened_parts(Eo, zca_cor_whitening(self.chol @ self.chol.T), d2[out])
        d2 *= self.factor
        if explain:
            shares *= self.factor
            return d2, shares
        return d2


def score_trimmed_population(E: np.ndarray, count: float, offset: np.ndarray, m2: np.ndarray,
                             kept: np.ndarray, shrinkage: float | str, quantile: float | None,
                             warm_count: float, warm_up: int, explain: bool = False):
    """Rows scored against the population's trimmed moments: ``(d2, p, warm, shares)``.

    ``(count, offset, m2)`` are the trimmed (or windowed, ``quantile=None``)
    moments, ``E`` the rows' deviations from their mean in their units and
    ``kept`` whether each row is counted in them (:class:`TrimmedScorer`).
    The level is warm when ``warm_count`` (the members the population is
    judged on) reaches ``warm_up`` and three members are counted (kept members
    are scored leave-one-out). ``shares`` is None without ``explain``. The
    in-process protocol and the Ray engine's region shards (on moments merged
    over many trees) both score so.
    """
    scorer = TrimmedScorer(count, offset, m2, shrinkage, quantile=quantile)
    res = scorer.score_many(E, kept, explain=explain)
    d2, shares = res if explain else (res, None)
    warm = bool(warm_count >= warm_up and scorer.inside.ok)
    return d2, chi2_sf(d2, E.shape[1]), warm, shares


def trimmed_level_scorer(kept_counts: Any, kept: np.ndarray, shrinkage: float | str, quantile: float | None):
    """For :func:`~swarmguard.structures.scoring.combine_levels`: a cohort's rows scored against
    its trimmed moments (``kept_counts[path]``: its kept members' count, read when the level is
    scored; ``kept``: whether each row is counted). A level with fewer than
    ``MIN_POPULATION - 1`` kept members is not scored; the in-process protocol and the Ray
    engine's region shards both use it."""
    def score(key: Any, rows: np.ndarray, count: float, offset: np.ndarray, m2: np.ndarray, E: np.ndarray):
        scorer = TrimmedScorer(kept_counts[key], offset, m2, shrinkage, quantile=quantile)
        if not scorer.ok:
            return np.zeros(E.shape[0]), False
        return scorer.score_many(E, kept[rows]), scorer.inside.ok
    return score


_lapack = module_on_first_use("scipy.linalg.lapack")


def _outside_factor(n: float, m2: np.ndarray, shrinkage: float | str) -> np.ndarray:
    """Cholesky factor of ``(1 - λ) S / (n - 1) + λ T + ρ T̃`` (the leave-one-out scorer's
    regularisation, for a vector not counted in ``S``), the ridge raised as that scorer's."""
    d = m2.shape[0]
    lam = min(1.0, d / max(n, 1.0)) if isinstance(shrinkage, str) else float(shrinkage)
    target = m2.diagonal() / (n - 1.0)
    trace = math.fsum(target.tolist())
    floor = _VAR_FLOOR * (trace / d if trace > 0 else 1.0)
    if not (math.isfinite(floor) and np.isfinite(m2).all()):
        raise NonFiniteError("trimmed co-moments hold non-finite values: cannot score")
    ridge = _RIDGE
    while True:
        if ridge > 1.0:
            A = np.diag(np.maximum(np.maximum(target, floor), _TINY) * (1.0 + _RIDGE))
        else:
            A = m2 * ((1.0 - lam) / (n - 1.0))
            A.reshape(-1)[:: d + 1] += lam * target + ridge * np.maximum(target, floor)
        chol, info = _lapack().dpotrf(A, lower=1, clean=1)
        if info == 0:
            return chol
        if ridge > 1.0:  # pragma: no cover - a positive diagonal always factorises
            raise NonFiniteError("trimmed co-moments could not be factorised")
        ridge *= 100.0
