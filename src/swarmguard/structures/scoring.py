"""Leave-one-out Mahalanobis scoring from population moments.

An agent is scored against its population *without itself*, exactly, from the
population's moments (count ``n``, mean ``μ``, co-moment ``S``, the agent
included). With ``e = x - μ``, removing the agent gives

* mean ``μ' = μ - e / (n - 1)``, so ``x - μ' = e · n / (n - 1)``;
* co-moment ``S' = S - n / (n - 1) · e eᵀ``, covariance ``S' / (n - 2)``.

Regularisation shrinks the leave-one-out covariance toward a diagonal target
``T = diag(S / (n - 1))`` (the population's variances) and adds a tiny ridge::

    Σ_reg = (1 - λ) S' / (n - 2) + λ T + ρ T̃

Because the target is the population's, ``Σ_reg = A - c e eᵀ`` with one matrix
``A = (1 - λ) S / (n - 2) + λ T + ρ T̃`` shared by every member and
``c = (1 - λ) n / ((n - 1)(n - 2))``. One Cholesky factorisation of ``A`` then
scores every member exactly (Sherman–Morrison)::

    t = eᵀ A⁻¹ e,   D² = (n / (n - 1))² · t / (1 - c t)

and each feature's part of ``D²`` is that of ``e`` in the ZCA-cor whitening basis of
``A``, ``z_j² · D² / |z|²`` with ``z = W e`` and ``WᵀW = A⁻¹``
(:mod:`swarmguard.structures.feature_shares`): non-negative, summing to ``D²``.

``λ`` is the ``shrinkage`` argument: a number in [0, 1], or ``"auto"`` for
``min(1, d / n)``, which vanishes as the population grows. ``T̃`` is ``T``
with each variance raised to at least ``1e-12`` of the mean variance, and
``ρ = 1e-9``, so
constant or collinear features never produce inf or NaN: a deviation in a
feature every other member holds constant scores huge but finite. Should the
matrix still not factorise with the ridge raised to the target itself
(co-moments no real population has), members are scored against the diagonal
target alone; non-finite co-moments raise :class:`~swarmguard.NonFiniteError`.
The moments are expected in units where squares neither under- nor overflow
(the tree's power-of-two units, :mod:`swarmguard.structures.slot_tree`):
scores are invariant under a per-feature scaling of ``e``, ``mean`` and ``m2``
by powers of two, bit for bit.

The floor is therefore taken *in the units the moments come in*: "the mean
variance" is the mean of the variances in the power-of-two units, each
feature's divided by ``4**e`` (its unit squared), not in the caller's units,
where a 1e100 feature would floor a 1e-300 one out of existence. With fresh
units every feature's largest deviation is in [1/2, 1), so the floor binds
only for a feature whose spread is below about 1e-6 of its unit. The exact
test reference (``tests/_exact.py::exact_loo_squared_distance``) applies the
same rule in the same units.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from ..errors import NonFiniteError
from ..lazy_import import module_on_first_use
from .chi2 import chi2_sf
from .feature_shares import CorrelationRoot, DeferredParts, whitened_parts, zca_cor_whitening

__all__ = ["LeaveOneOutScorer", "MIN_POPULATION", "score_population", "combine_levels", "nonnegative_d2"]

MIN_POPULATION = 3          # leave-one-out covariance needs n - 1 >= 2
_RIDGE = 1e-9
_VAR_FLOOR = 1e-12
_TINY = 1e-300

_lapack = module_on_first_use("scipy.linalg.lapack")   # imported on first use: see swarmguard.lazy_import


class LeaveOneOutScorer:
    """Factorised, regularised covariance of one population, for its members.

    Parameters
    ----------
    count, mean, m2
        The population's moments, members to be scored included.
    shrinkage : float or "auto"
        λ above.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    >>> mu = X.mean(0); S = (X - mu).T @ (X - mu)
    >>> sc = LeaveOneOutScorer(5, mu, S, shrinkage=0.0)
    >>> d2 = sc.score_many(X - mu)
    >>> others = X[:4]; diff = X[4] - others.mean(0)
    >>> exact = diff @ np.linalg.solve(np.cov(others.T), diff)
    >>> bool(np.isclose(d2[4], exact, rtol=1e-6))
    True
    """

    __slots__ = ("n", "d", "mean", "lam", "chol", "c", "scale", "ok", "_whitening", "_a")

    def __init__(self, count: float, mean: np.ndarray, m2: np.ndarray, shrinkage: float | str = "auto"):
        n = float(count)
        d = mean.shape[0]
        self.n, self.d, self.mean = n, d, mean
        self.ok = n >= MIN_POPULATION
        self._whitening = self._a = None
        if not self.ok:
            self.lam = self.c = self.scale = 0.0
            self.chol = None
            return
        lam = min(1.0, d / n) if isinstance(shrinkage, str) else shrinkage
        self.lam = lam
        m2_diag = m2.diagonal()
        # Python floats for the d diagonal entries: a NumPy reduction costs several µs of
        # set-up on a 10-vector, more than the per-item score's arithmetic (fsum: the
        # trace correctly rounded, as the exact reference's)
        diag_values = m2_diag.tolist()
        try:
            trace = math.fsum(diag_values)
        except OverflowError:       # beyond the float range, as a NumPy sum's inf: refused below
            trace = math.inf
        except ValueError:          # -inf + inf: A holds them, refused below
            trace = math.nan
        floor = _VAR_FLOOR * (trace / d if trace > 0 else (n - 1.0))   # on the co-moment scale
        k1 = (1.0 - lam) / (n - 2.0)
        A = m2 * k1
        diag_view = A.reshape(-1)[:: d + 1]
        if k1 > 0 and min(diag_values) > floor:
            # Common case: no variance needs the floor, so the diagonal term is
            # diag(M2) (λ + ρ) / (n - 1), one in-place scaling of A's diagonal.
            diag_view *= 1.0 + (lam + _RIDGE) / ((n - 1.0) * k1)
        else:
            target = m2_diag * (1.0 / (n - 1.0))
            diag_view += lam * target + _RIDGE * np.maximum(target, floor / (n - 1.0))
        if not (math.isfinite(floor) and np.logical_and.reduce(np.isfinite(A), axis=None)):
            # Unreachable from validated features (the tree scales them by powers of two
            # so no co-moment overflows); a typed error rather than a NaN score.
            raise NonFiniteError("population co-moments hold non-finite values: cannot score")
        chol, info = _lapack().dpotrf(A, lower=1, clean=1)
        ridge = _RIDGE
        while info != 0:
            # Numerically indefinite (rounding on a singular matrix): strengthen the ridge.
            target = m2_diag * (1.0 / (n - 1.0))
            if ridge > 1.0:
                # Still indefinite (co-moments no population can have, e.g. merged from
                # damaged parts): score against the diagonal target alone, which is
                # positive by its floor, rather than fail after the tree has changed.
                if ridge == np.inf:  # pragma: no cover - a positive diagonal always factorises
                    raise NonFiniteError("population co-moments could not be factorised")
                ridge = np.inf
                A = np.diag(np.maximum(np.maximum(target, floor / (n - 1.0)), _TINY) * (1.0 + _RIDGE))
            else:
                ridge *= 100.0
                A = m2 * k1
                A.reshape(-1)[:: d + 1] += lam * target + ridge * np.maximum(target, floor / (n - 1.0))
            chol, info = _lapack().dpotrf(A, lower=1, clean=1)
        self.chol = chol
        self._a = A                  # dpotrf left it as it was: the whitening's matrix
        self.c = (1.0 - lam) * n / ((n - 1.0) * (n - 2.0))
        self.scale = (n / (n - 1.0)) ** 2

    def whitening(self) -> np.ndarray:
        """``W`` with ``WᵀW = A⁻¹``, the ZCA-cor whitening the feature parts are read in
        (computed on first use: a scorer that explains nothing never pays its eigensolve)."""
        if self._whitening is None:
            self._whitening = zca_cor_whitening(self._a)
        return self._whitening

    def score(self, e: np.ndarray, root: CorrelationRoot | None = None) -> tuple[float, np.ndarray]:
        """Leave-one-out D² of one member with deviation ``e = x - μ``, and feature parts.

        ``root``: the population's kept ``P^(-1/2)`` (:class:`~swarmguard.structures.feature_shares.CorrelationRoot`,
        refreshed there when the correlations drift), which the per-item path keeps between
        calls; without one the parts are computed from this scorer's ``A`` alone.
        """
        if not self.ok:
            return 0.0, np.zeros(self.d)
        d2 = self._distance(e)
        if d2 < 0.0:          # rounding (module docstring): 0, so sqrt and the χ² p-value are defined
            d2 = 0.0
        return d2, (CorrelationRoot() if root is None else root).parts(self._a, e, d2)

    def score_deferred(self, e: np.ndarray, root: CorrelationRoot) -> tuple[float, DeferredParts]:
        """:meth:`score` with the parts computed when first read (``.value()``): the per-item path,
        whose callers mostly read the decision only. ``e`` is kept, not copied."""
        if not self.ok:
            return 0.0, DeferredParts.ready(np.zeros(self.d))
        d2 = self._distance(e)
        if d2 < 0.0:          # rounding (module docstring): 0, so sqrt and the χ² p-value are defined
            d2 = 0.0
        return d2, root.deferred(self._a, e, d2)

    def _distance(self, e: np.ndarray) -> float:
        """One member's D², as computed: ``e·g`` sums signed terms, so it may round below 0
        (:meth:`score` and :meth:`score_deferred` take that as 0)."""
        g, _ = _lapack().dpotrs(self.chol, e, lower=1)
        t = float(e.dot(g))
        factor = self.scale / max(1.0 - self.c * t, _TINY)
        return t * factor

    def score_many(self, E: np.ndarray, explain: bool = False, overwrite: bool = False):
        """Leave-one-out D² of many members (rows of ``E = X - μ``); shares if ``explain``.

        ``overwrite``: ``E`` is the caller's scratch (a C-contiguous temporary it
        reads no more), so the triangular solve may work in it instead of a copy
        (the same arithmetic)."""
        m = E.shape[0]
        if not self.ok:
            z = np.zeros(m)
            return (z, np.zeros((m, self.d))) if explain else z
        d2 = nonnegative_d2(self._distances(E, explain, overwrite))
        if explain:
            return d2, whitened_parts(E, self.whitening(), d2)
        return d2

    def _distances(self, E: np.ndarray, explain: bool, overwrite: bool) -> np.ndarray:
        """:meth:`score_many`'s D², as computed (a new array): with ``explain`` ``t`` sums signed
        terms, so it may round below 0 (:meth:`score_many` takes that as 0)."""
        if explain:
            G, _ = _lapack().dpotrs(self.chol, E.T, lower=1)
            t = (E * G.T).sum(axis=1)
        else:
            # t = |L⁻¹ e|²: one triangular solve instead of a full Cholesky solve.
            Z, _ = _lapack().dtrtrs(self.chol, E.T, lower=1, overwrite_b=int(overwrite))
            t = np.einsum("ij,ij->j", Z, Z)
        factor = self.scale / np.maximum(1.0 - self.c * t, _TINY)
        return t * factor


def nonnegative_d2(d2: np.ndarray) -> np.ndarray:
    """``d2`` (in place) with every value below 0 as 0, and returned.

    A squared Mahalanobis distance is ``eᵀA⁻¹e ≥ 0`` for a positive definite ``A``; a
    value below 0 is rounding of a sum of signed terms. Taken as 0 where a distance leaves
    a scorer, so ``sqrt`` and the χ² p-value (NaN below 0) are defined on every path, the
    per-item one (which raised after the tree had changed) and the batch one alike."""
    if d2.size and d2.min() < 0.0:
        np.maximum(d2, 0.0, out=d2)
    return d2


# ---------------------------------------------------------------------- a batch against its levels
# One core for every engine: the in-process protocol scores rows against the tree's nodes, the
# Ray shards against moments merged by the root aggregator; both hand their deviations here.

def score_population(E: np.ndarray, count: float, offset: np.ndarray, m2: np.ndarray, shrinkage: float | str,
                     warm_up: int, explain: bool = False, overwrite: bool = False):
    """Rows scored leave-one-out against the whole population.

    ``E``: the rows' deviations from the population's mean (in the moments'
    units); ``count``, ``offset`` (unused by the scorer but for its dimension),
    ``m2``: the population's moments. Returns ``(d2, p, warm, shares)``:
    squared distances, their χ²(d) p-values, whether the population is out of
    warm-up (and large enough to score) and, with ``explain``, each feature's
    share of ``d2`` (else None). ``overwrite``: ``E`` is scratch the caller reads
    no more (see :meth:`LeaveOneOutScorer.score_many`).
    """
    scorer = LeaveOneOutScorer(count, offset, m2, shrinkage)
    dim = E.shape[1]
    res = scorer.score_many(E, explain=explain, overwrite=overwrite)
    d2, shares = res if explain else (res, None)
    p = chi2_sf(d2, dim)
    return d2, p, bool(count >= warm_up and scorer.ok), shares


def combine_levels(p_population: np.ndarray, population_warm: bool,
                   groups: Iterable[tuple[Hashable, np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]],
                   shrinkage: float | str, warm_up: int, score: Any = None
                   ) -> tuple[np.ndarray, bool, np.ndarray, dict[Any, dict]]:
    """Score rows against every cohort above them; Bonferroni-combine with the population.

    ``groups`` yields, per cohort level, ``(key, rows, count, offset, m2, E)``:
    the rows (indices into the batch) that the cohort ``key`` holds, its
    moments and the rows' deviations from its mean. A level still warming up
    (fewer members than ``warm_up``) is reported but does not decide. Returns
    ``(decision_p, any_warm, n_levels, reports)``: each row's smallest live
    p-value times its number of levels (capped at 1), whether some level
    decides, the levels per row, and per cohort ``{"rows", "count",
    "mahalanobis_squared", "p_value", "warming_up"}``. ``score``, when given, scores a
    cohort's rows instead of the leave-one-out scorer: ``score(key, rows, count, offset, m2, E)``
    returns ``(d2, ok)`` (a scoring mode's own rule, e.g. trimmed moments), or
    ``(d2, ok, p)`` when the mode's p-values are not χ²(d) ones (tail evidence).
    """
    p_min = (p_population if population_warm else np.ones_like(p_population)).copy()
    n_levels = np.ones(p_population.shape[0])
    any_warm = population_warm
    reports: dict[Any, dict] = {}
    for key, rows, count, offset, m2, E in groups:
        if score is None:
            sc = LeaveOneOutScorer(count, offset, m2, shrinkage)
            cd2, ok = sc.score_many(E), sc.ok
        else:
            got = score(key, rows, count, offset, m2, E)
            cd2, ok = got[0], got[1]
        # a mode with its own p-values (tail evidence) returns them third
        cp = got[2] if score is not None and len(got) > 2 else chi2_sf(cd2, E.shape[1])
        warm = count >= warm_up and ok
        reports[key] = {"rows": rows, "count": int(round(count)), "mahalanobis_squared": cd2, "p_value": cp,
                        "warming_up": not warm}
        n_levels[rows] += 1
        if warm:
            any_warm = True
            p_min[rows] = np.minimum(p_min[rows], cp)
    return np.minimum(1.0, p_min * n_levels), bool(any_warm), n_levels, reports
