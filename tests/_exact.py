"""Exact reference statistics with fractions.Fraction (the yardstick for every test)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def exact_mean_cov(X: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the float64 rows of X, computed exactly, rounded once."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    cols = [[Fraction(float(v)) for v in X[:, j]] for j in range(d)]
    means = [sum(c) / n for c in cols]
    devs = [[v - means[j] for v in cols[j]] for j in range(d)]
    cov = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            s = sum(a * b for a, b in zip(devs[i], devs[j], strict=True)) / (n - ddof)
            cov[i, j] = cov[j, i] = float(s)
    return np.array([float(m) for m in means]), cov


def exact_std(values, ddof: int = 1) -> float:
    """Standard deviation of float64 values: exact variance, then one correctly rounded sqrt."""
    fr = [Fraction(float(v)) for v in values]
    n = len(fr)
    mu = sum(fr) / n
    var = sum((v - mu) ** 2 for v in fr) / (n - ddof)
    # sqrt of the exactly rounded variance is within 1 ulp of the exact root
    return math.sqrt(float(var))


def significant_digits(value: float, reference: float) -> float:
    """How many significant decimal digits ``value`` shares with ``reference``."""
    if value == reference:
        return 17.0
    return -math.log10(abs(value - reference) / abs(reference))


def nist_numacc(k: int) -> tuple[list[float], float, float]:
    """NIST StRD NumAcc1..4 data with their certified mean and standard deviation."""
    if k == 1:
        return [10000001.0, 10000003.0, 10000002.0], 10000002.0, 1.0
    base = {2: 1.2, 3: 1000000.2, 4: 10000000.2}[k]
    lo = {2: 1.1, 3: 1000000.1, 4: 10000000.1}[k]
    hi = {2: 1.3, 3: 1000000.3, 4: 10000000.3}[k]
    values = [base] + [lo, hi] * 500
    return values, base, 0.1


def _solve_exact(A: list[list[Fraction]], b: list[Fraction]) -> list[Fraction]:
    """Gaussian elimination in exact rational arithmetic."""
    n = len(b)
    M = [row[:] + [b[i]] for i, row in enumerate(A)]
    for c in range(n):
        pivot = next(r for r in range(c, n) if M[r][c] != 0)
        M[c], M[pivot] = M[pivot], M[c]
        for r in range(n):
            if r != c and M[r][c] != 0:
                f = M[r][c] / M[c][c]
                M[r] = [a - f * p for a, p in zip(M[r], M[c], strict=True)]
    return [M[i][n] / M[i][i] for i in range(n)]


def power_of_two_exponents(X: np.ndarray) -> np.ndarray:
    """The tree's per-feature unit exponents for rows X written at once (``structures/slot_tree.py``).

    ``e`` is the binary exponent of the largest ``|x - shift|`` of the feature, with
    ``shift`` the float mean; ``|shift|`` for a constant feature, 1 for an all-zero one.
    """
    X = np.asarray(X, dtype=np.float64)
    shift = X.mean(axis=0)
    spread = np.abs(X - shift).max(axis=0)
    ref = np.where(spread > 0, spread, np.abs(shift))
    _, e = np.frexp(np.where(ref > 0, ref, 1.0))
    return np.clip(e, -1000, 1000).astype(np.int64)


def exact_loo_squared_distance(X: np.ndarray, i: int, shrinkage: float, ridge: float = 1e-9,
                               var_floor: float = 1e-12, exponents: np.ndarray | None = None) -> float:
    """Leave-one-out squared Mahalanobis distance of row i, exactly, with the documented regulariser.

    Σ = (1-λ)·cov(others) + diag(λ·T + ρ·max(T, floor)), T = the population's variances,
    where the floor is ``var_floor`` times the mean of T *in the power-of-two units*
    ``2**exponents`` (each feature's variance divided by ``4**e_j``; by default the
    tree's rule, :func:`power_of_two_exponents`), as ``docs/scoring.md`` states: the
    floor of a 1e-300 feature is not set by a 1e100 one. The arithmetic is done in
    those units (exact: powers of two), where the distance is the same.
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    e = power_of_two_exponents(X) if exponents is None else np.asarray(exponents, dtype=np.int64)
    unit = [Fraction(2) ** int(-k) for k in e]
    F = [[Fraction(float(v)) * unit[j] for j, v in enumerate(row)] for row in X]
    others = F[:i] + F[i + 1:]
    m = n - 1
    mu_o = [sum(r[j] for r in others) / m for j in range(d)]
    cov = [[sum((r[a] - mu_o[a]) * (r[b] - mu_o[b]) for r in others) / (m - 1) for b in range(d)] for a in range(d)]
    mu = [sum(r[j] for r in F) / n for j in range(d)]
    T = [sum((r[j] - mu[j]) ** 2 for r in F) / (n - 1) for j in range(d)]
    lam, rho = Fraction(shrinkage), Fraction(ridge)
    floor = Fraction(var_floor) * (sum(T) / d)
    A = [[(1 - lam) * cov[a][b] + ((lam * T[a] + rho * max(T[a], floor)) if a == b else 0) for b in range(d)]
         for a in range(d)]
    diff = [F[i][j] - mu_o[j] for j in range(d)]
    y = _solve_exact(A, diff)
    return float(sum(a * b for a, b in zip(diff, y, strict=True)))


def whitened_share_reference(X: np.ndarray, i: int, shrinkage, ridge: float = 1e-9) -> tuple[float, np.ndarray]:
    """Row ``i``'s leave-one-out D² (from the other rows directly) and each feature's share of it
    in the ZCA-cor whitening basis of the population's regularised covariance
    (``swarmguard.structures.feature_shares``), computed from the definition with SciPy's
    fractional matrix power, independently of the scorer.

    The basis matrix is ``A = (1 - λ) S / (n - 2) + λ T + ρ T̃`` (``S`` the co-moment of all
    rows, ``T`` their variances, ``T̃`` floored at 1e-12 of the mean), the deviation
    ``x_i - mean``; the shares are ``z_j² / |z|²`` with ``z = P^(-1/2) V^(-1/2) e``.
    """
    from scipy.linalg import fractional_matrix_power

    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    lam = min(1.0, d / n) if shrinkage == "auto" else float(shrinkage)
    mu = X.mean(axis=0)
    S = (X - mu).T @ (X - mu)
    target = np.diag(S) / (n - 1)
    floored = np.maximum(target, 1e-12 * target.mean())
    A = (1 - lam) * S / (n - 2) + np.diag(lam * target + ridge * floored)
    others = np.delete(X, i, axis=0)
    reg = (1 - lam) * np.cov(others.T) + np.diag(lam * target + ridge * floored)
    diff = X[i] - others.mean(axis=0)
    d2 = float(diff @ np.linalg.solve(reg, diff))
    v = np.sqrt(np.diag(A))
    P = A / np.outer(v, v)
    z = np.real(fractional_matrix_power(P, -0.5)) @ ((X[i] - mu) / v)
    return d2, z * z / (z @ z)
