"""Cohorts found by clustering: k-means with the number of cohorts chosen by BIC.

Why
---
One ellipsoid cannot describe a population made of several groups: a point
between two groups lies near the pooled mean and scores low under any single
Mahalanobis distance, plain or robust (issue 12's third failure group,
*multimodal populations*). The remedy kept inside the tree's model is a
mixture of cohorts: each agent is placed in the cohort of its nearest cluster
and, with ``score_levels="all"``, is scored against that cohort's own
(trimmed) moments as well as the population's; the decision p-value is the
smallest level's times the number of levels (Bonferroni), as for any cohort.

How many cohorts
----------------
``k`` is chosen by the Bayesian information criterion (Schwarz, 1978) of the
hard-assignment Gaussian mixture whose components are the clusters' own
moments: ``-2 log L + p log n`` with ``p = k (d + d (d + 1) / 2) + k - 1``
parameters. ``log L`` needs only each cluster's count, mean and covariance, so
it is computed from the same mergeable moments the tree keeps. A population
with one group keeps ``k = 1`` (nothing changes); ``k`` stops growing once a
cluster would hold fewer than ``min_size`` members -- the protocol's warm-up,
by default: a smaller cohort would not be scored anyway.

Clustering
----------
Lloyd's k-means on the features standardised by the population's standard
deviations (so that units do not decide the clusters), seeded k-means++
initialisation (Arthur & Vassilvitskii, 2007), the least-inertia of ``starts``
runs (one run can merge two groups and split a third: BIC would then prefer
one cohort too many), at most ``iterations`` steps each.
It is a batch step over the stored vectors, ``O(n k d)`` per step, run at a
round boundary; placing one new vector is ``O(k d)`` (:meth:`CohortClustering.assign`).
The per-cohort moments themselves are tree nodes: mergeable, exact on revert.
The clustering is not: a cluster's number is an accident of its fit (seed, rows, their
order), so trees merged across nodes hold the same cohorts only when every node places its
agents with one shared fit (:meth:`CohortClustering.assign`); two fits, even on the same
rows with another seed, may number the same groups differently. The same rows and seed give
the same fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError

__all__ = ["CohortClustering", "find_cohorts", "MAX_COHORTS"]

MAX_COHORTS = 8        # a cap on cost: every level scored adds one factorisation per cohort


@dataclass(frozen=True)
class CohortClustering:
    """The chosen clustering: ``k`` cohorts, each row's ``labels``, the centres (standardised units)."""

    k: int
    labels: np.ndarray
    centres: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    bic: dict[int, float] = field(default_factory=dict)

    def assign(self, X: np.ndarray) -> np.ndarray:
        """The cohort (nearest centre) of each row of ``X``: O(k d) a row."""
        Z = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        return _nearest(Z, self.centres)


def _nearest(Z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = (Z * Z).sum(1)[:, None] - 2.0 * Z @ centres.T + (centres * centres).sum(1)[None, :]
    return np.argmin(d2, axis=1)


def _kmeans(Z: np.ndarray, k: int, rng: np.random.Generator, iterations: int, starts: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The least-inertia of ``starts`` seeded k-means++ runs."""
    best = None
    for _ in range(starts):
        labels, centres = _one_kmeans(Z, k, rng, iterations)
        inertia = float(((Z - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centres)
    return best[1], best[2]


def _one_kmeans(Z: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    n = Z.shape[0]
    centres = np.empty((k, Z.shape[1]))
    centres[0] = Z[rng.integers(n)]
    closest = ((Z - centres[0]) ** 2).sum(1)
    for j in range(1, k):                       # k-means++: the next centre drawn in proportion to D²
        total = closest.sum()
        pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres[j] = Z[pick]
        closest = np.minimum(closest, ((Z - centres[j]) ** 2).sum(1))
    labels = _nearest(Z, centres)
    for _ in range(iterations):
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, Z)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        new = _nearest(Z, centres)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, centres


def _log_likelihood(Z: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Hard-assignment Gaussian log-likelihood from each cluster's count, mean and covariance."""
    n, d = Z.shape
    total = 0.0
    for c in range(k):
        rows = Z[labels == c]
        m = rows.shape[0]
        cov = np.atleast_2d(np.cov(rows.T, ddof=1))
        var = np.diag(cov)
        lam = min(1.0, d / m)                    # the scorer's shrinkage toward the diagonal ("auto")
        reg = (1.0 - lam) * cov + np.diag(lam * var + 1e-9 * np.maximum(var, 1e-12 * max(var.mean(), 1e-300)))
        sign, logdet = np.linalg.slogdet(reg)
        if sign <= 0:
            return -math.inf
        total += m * math.log(m / n) - 0.5 * m * (logdet + d * math.log(2.0 * math.pi)) - 0.5 * (m - 1) * d
    return total


def find_cohorts(X: np.ndarray, *, max_cohorts: int = MAX_COHORTS, min_size: int = 1000, seed: int = 0,
                 iterations: int = 25, starts: int = 3) -> CohortClustering:
    """Cluster the rows of ``X`` into the ``k <= max_cohorts`` cohorts of least BIC (see the module).

    Examples
    --------
    >>> r = np.random.default_rng(0)
    >>> X = np.vstack([r.normal(size=(300, 2)), r.normal(size=(300, 2)) + 10.0])
    >>> fit = find_cohorts(X, min_size=50)
    >>> fit.k, int(np.bincount(fit.labels).min())
    (2, 300)
    >>> find_cohorts(r.normal(size=(600, 2)), min_size=50).k
    1
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or not np.isfinite(X).all():
        raise InvalidInputError("find_cohorts needs a finite 2-d array of at least two rows")
    if not (isinstance(max_cohorts, int) and max_cohorts >= 1 and isinstance(min_size, int) and min_size >= 2):
        raise InvalidInputError("max_cohorts must be an int >= 1 and min_size an int >= 2")
    n, d = X.shape
    mean = X.mean(0)
    sd = X.std(0)
    scale = np.where(sd > 0, sd, 1.0)
    Z = (X - mean) / scale
    # a constant feature tells the clusters nothing, but it is degenerate in every cluster, and the variance
    # floor of a degenerate direction scales with the cluster's own variances: each split then "gains" likelihood
    # from it alone (one constant column next to one Gaussian one made 4 cohorts). The BIC reads the others only.
    informative = sd > 0
    Zb, d = Z[:, informative], int(informative.sum())
    labels1 = np.zeros(n, dtype=np.int64)
    if d == 0:
        return CohortClustering(k=1, labels=labels1, centres=Z.mean(0)[None, :], mean=mean, scale=scale,
                                bic={1: 0.0})
    best = (-2.0 * _log_likelihood(Zb, labels1, 1) + d * (d + 3) / 2 * math.log(n), 1, labels1, Z.mean(0)[None, :])
    bic = {1: best[0]}
    rng = np.random.default_rng(seed)
    for k in range(2, max_cohorts + 1):
        if k * min_size > n:
            break
        labels, centres = _kmeans(Z, k, rng, iterations, starts)
        if np.bincount(labels, minlength=k).min() < min_size:
            break
        params = k * (d + d * (d + 1) / 2) + k - 1
        bic[k] = -2.0 * _log_likelihood(Zb, labels, k) + params * math.log(n)
        if bic[k] < best[0]:
            best = (bic[k], k, labels, centres)
    _, k, labels, centres = best
    return CohortClustering(k=k, labels=labels.astype(np.int64), centres=centres, mean=mean, scale=scale, bic=bic)
