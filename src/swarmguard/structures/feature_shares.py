"""Each feature's part of a squared Mahalanobis distance: non-negative, summing to it exactly.

The signed split ``c_j = e_j (A⁻¹ e)_j`` sums to ``D² = eᵀ A⁻¹ e`` but a feature
correlated with another can take a negative part and the other more than all
of ``D²`` (two correlated features that move apart): an operator reading
"f3: 140 %, f5: −45 %" learns little. The parts used everywhere instead
(``feature_contributions`` of the protocol, ``swarmguard detect --explain``,
the simulation report, ``/v1/agents/{id}`` and the dashboard) are those of the
deviation in the **ZCA-cor whitening basis** of ``A``::

    V = diag(A),  P = V^(-1/2) A V^(-1/2)      (A's correlation matrix)
    W = P^(-1/2) V^(-1/2),  z = W e,           so  |z|² = eᵀ A⁻¹ e
    part_j = z_j² · D² / |z|²,   share_j = z_j² / |z|²

Why this basis: ``W`` is a whitening (``WᵀW = A⁻¹``), so the parts are
non-negative and add up to ``D²`` exactly, the shares to 1; it is the one
whitening whose coordinates stay closest to the standardised features
(``z_j`` is maximally correlated with ``e_j / σ_j``: Kessy, Lewin & Strimmer,
"Optimal whitening and decorrelation", The American Statistician 72(4), 2018),
so ``z_j`` reads as "feature j, with what it shares with the others taken out
symmetrically"; and it is invariant to each feature's units (scaling a feature
scales ``V`` and ``e`` alike, leaving ``P`` and ``z``), which a whitening of the
covariance itself (ZCA, PCA) is not. With uncorrelated features it is the
plain ``e_j² / σ_j²``. One basis per population: every member's shares are read
in the same coordinates. The leave-one-out score's correction (a scalar per
member, :mod:`swarmguard.structures.scoring`) is spread over the parts in
proportion, as it was over the signed ones.
"""

from __future__ import annotations

import numpy as np

from ..lazy_import import module_on_first_use

__all__ = ["whitened_part_of_one", "whitened_parts", "zca_cor_whitening"]

_TINY_EIGEN = 1e-300
_lapack = module_on_first_use("scipy.linalg.lapack")   # imported on first use: see swarmguard.lazy_import


def zca_cor_whitening(A: np.ndarray) -> np.ndarray:
    """``W = P^(-1/2) V^(-1/2)`` for a symmetric positive definite ``A`` (module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[4.0, 2.0], [2.0, 9.0]])
    >>> W = zca_cor_whitening(A)
    >>> bool(np.allclose(W.T @ W, np.linalg.inv(A)))
    True
    >>> e = np.array([2.0, 3.0]); z = W @ e
    >>> bool(np.isclose(z @ z, e @ np.linalg.solve(A, e))), bool((z * z >= 0).all())
    (True, True)
    """
    A = np.asarray(A, dtype=np.float64)
    s = 1.0 / np.sqrt(A.diagonal())
    P = A * s
    P *= s[:, None]
    # LAPACK's divide-and-conquer eigensolver directly: the per-item score pays this on every
    # call, and numpy.linalg.eigh's wrapper costs as much again on a 10 x 10 matrix
    w, Q, info = _lapack().dsyevd(P, compute_v=1, lower=1, overwrite_a=1)
    if info != 0:                 # pragma: no cover - a symmetric finite matrix always converges
        w, Q = np.linalg.eigh(A * s * s[:, None])
    # positive for a factorised A; a floor keeps a near-singular one finite
    floor = _TINY_EIGEN * max(float(w[-1]), 1.0)
    if w[0] < floor:
        np.maximum(w, floor, out=w)
    np.sqrt(w, out=w)
    W = (Q / w) @ Q.T
    W *= s
    return W


def whitened_parts(E: np.ndarray, W: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Each row's parts of its ``d2``: ``z_j² · d2 / |z|²`` with ``z = W e`` (zeros where ``z = 0``).

    ``E``: (m, d) deviations, or one (d,) deviation with a scalar ``d2``.
    """
    if E.ndim == 1:               # the per-item path: scalars, no array temporaries
        z = W @ E
        z *= z
        total = float(z.sum())
        if total > 0:
            z *= float(d2) / total
            return z
        return np.zeros_like(z)
    Z = E @ W.T
    Z *= Z
    total = Z.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(total > 0, np.asarray(d2, dtype=np.float64)[..., None] / np.where(total > 0, total, 1.0), 0.0)
    return Z * scale


def whitened_part_of_one(A: np.ndarray, e: np.ndarray, d2: float) -> np.ndarray:
    """:func:`whitened_parts` of one deviation, without forming ``W``: ``z = Q Λ^(-1/2) Qᵀ (e / σ)``
    from ``P``'s eigenvectors (the per-item score's path: two matrix-vector products instead
    of a matrix product; the same ``z`` to rounding)."""
    s = 1.0 / np.sqrt(A.diagonal())
    P = A * s
    P *= s[:, None]
    w, Q, info = _lapack().dsyevd(P, compute_v=1, lower=1, overwrite_a=1)
    if info != 0:                 # pragma: no cover - a symmetric finite matrix always converges
        return whitened_parts(e, zca_cor_whitening(A), np.float64(d2))
    floor = _TINY_EIGEN * max(float(w[-1]), 1.0)
    if w[0] < floor:
        np.maximum(w, floor, out=w)
    y = (e * s) @ Q
    y /= np.sqrt(w)
    z = Q @ y
    z *= z
    total = float(z.sum())
    if total > 0:
        z *= float(d2) / total
        return z
    return np.zeros_like(z)
