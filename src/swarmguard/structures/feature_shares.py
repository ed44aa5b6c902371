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

import threading
import weakref

import numpy as np

from ..errors import NonFiniteError
from ..lazy_import import module_on_first_use

__all__ = ["CORRELATION_DRIFT", "CorrelationRoot", "DeferredParts", "correlation_inverse_root", "whitened_parts", "zca_cor_whitening"]

_TINY_EIGEN = 1e-300
#: largest change of any correlation before the per-item path's kept ``P^(-1/2)`` is
#: recomputed (:class:`CorrelationRoot`); correlations are in [-1, 1], so the bound is absolute
CORRELATION_DRIFT = 1e-5
#: the deferred calls a root keeps before it forgets those whose results were dropped unread
#: (and checks the others, when more than half are still readable)
_PRUNE_AT = 64
_lapack = module_on_first_use("scipy.linalg.lapack")   # imported on first use: see swarmguard.lazy_import


def correlation_inverse_root(P: np.ndarray) -> np.ndarray:
    """``P^(-1/2)`` of a symmetric positive definite correlation matrix ``P`` (overwritten)."""
    # LAPACK's divide-and-conquer eigensolver directly: numpy.linalg.eigh's wrapper costs as
    # much again on a 10 x 10 matrix
    w, Q, info = _lapack().dsyevd(P, compute_v=1, lower=1, overwrite_a=1)
    if info != 0:                 # pragma: no cover - a symmetric finite matrix always converges
        raise NonFiniteError("the correlation matrix's eigendecomposition did not converge")
    # positive for a factorised A; a floor keeps a near-singular one finite
    floor = _TINY_EIGEN * max(float(w[-1]), 1.0)
    if w[0] < floor:
        np.maximum(w, floor, out=w)
    np.sqrt(w, out=w)
    return (Q / w) @ Q.T


def _correlation(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(P, V^(-1/2))``: ``A``'s correlation matrix and its inverse standard deviations."""
    s = 1.0 / np.sqrt(A.diagonal())
    P = A * s
    P *= s[:, None]
    return P, s


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
    P, s = _correlation(np.asarray(A, dtype=np.float64))
    W = correlation_inverse_root(P)
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


class CorrelationRoot:
    """``P^(-1/2)`` of one population's correlation matrix, kept between per-item scores.

    The per-item path (``update_agent_behavior``, ``process_agent_behavior``) scores one
    agent against a population that each call changes by one member: an eigendecomposition
    per call would cost it more than the score (issue 11: no per-item work the batch path
    does once). Only ``P^(-1/2)`` is kept, the part of ``W = P^(-1/2) V^(-1/2)`` that moves
    slowly; ``V``, the deviation and ``D²`` are the current population's on every call.
    Refresh policy: ``P^(-1/2)`` is recomputed whenever some correlation of the current
    ``A`` differs from the kept one by more than :data:`CORRELATION_DRIFT` (checked for
    every call whose parts can still be read, in call order, so no change of population, mode, unit or tree can leave a
    stale root behind; a different dimension always refreshes). Right after a refresh the
    parts are exactly :func:`whitened_parts` with :func:`zca_cor_whitening` of the current
    ``A``, the batch path's.

    :meth:`deferred` takes a call's ``(A, e, d2)`` without computing anything: its parts
    are computed when first read (most per-item callers read the decision only, issue 11).
    The calls whose parts can still be read are checked against the kept root in call
    order before any of them is read (or :attr:`refreshes` is), so every part read is the
    one :meth:`parts` would have answered had it been called for those calls; a call whose
    result was dropped unread takes no part in the sequence (nobody can read it) and costs
    no check.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[4.0, 2.0], [2.0, 9.0]]); e = np.array([2.0, 3.0])
    >>> root = CorrelationRoot()
    >>> parts = root.parts(A, e, 1.5)
    >>> bool(np.allclose(parts, whitened_parts(e, zca_cor_whitening(A), 1.5), rtol=1e-14)), root.refreshes
    (True, 1)
    >>> _ = root.parts(A * 4.0, e, 1.5); root.refreshes      # new units, same correlations
    1
    >>> later = root.deferred(A, e * 2.0, 6.0)               # nothing computed yet
    >>> bool(np.array_equal(later.value(), root.parts(A, e * 2.0, 6.0))), later.value() is later.value()
    (True, True)
    """

    __slots__ = ("_kept", "_refreshes", "_pending", "_lock")

    def __init__(self):
        # (P, P^(-1/2)) as one value: a reader in another thread never sees one without the other
        self._kept: tuple[np.ndarray, np.ndarray] | None = None
        self._refreshes = 0
        self._pending: list[weakref.ref] = []   # deferred calls not yet checked, in call order
        self._lock = threading.Lock()

    @property
    def correlation(self) -> np.ndarray | None:
        """The kept correlation matrix ``P`` (None before the first call)."""
        self._resolve()
        return None if self._kept is None else self._kept[0]

    @property
    def inverse_root(self) -> np.ndarray | None:
        """The kept ``P^(-1/2)`` (None before the first call)."""
        self._resolve()
        return None if self._kept is None else self._kept[1]

    @property
    def refreshes(self) -> int:
        """How many times ``P^(-1/2)`` was computed."""
        self._resolve()
        return self._refreshes

    def parts(self, A: np.ndarray, e: np.ndarray, d2: float) -> np.ndarray:
        """One deviation's parts of ``d2``: ``z_j² · d2 / |z|²``, ``z = P_kept^(-1/2) V^(-1/2) e``."""
        with self._lock:
            self._resolve_locked()
            root, s = self._check(A)
        return whitened_parts(e * s, root, d2)

    def deferred(self, A: np.ndarray, e: np.ndarray, d2: float) -> DeferredParts:
        """:meth:`parts` of this call, computed on first read (``A`` and ``e`` are kept, not copied:
        the caller hands over arrays it no longer changes)."""
        later = DeferredParts(self, A, e, d2)
        with self._lock:
            pending = self._pending
            pending.append(weakref.ref(later))
            if len(pending) > _PRUNE_AT:
                pending[:] = [r for r in pending if r() is not None]   # results dropped unread: forget them
                if len(pending) > _PRUNE_AT // 2:
                    # results kept unread: check them now, so that each holds the shared root and
                    # its V^(-1/2), not its A (memory as the eager parts'), in call order as ever
                    self._resolve_locked()
        return later

    def _check(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kept ``P^(-1/2)`` for ``A`` (refreshed if ``A``'s correlations drifted) and ``V^(-1/2)``."""
        P, s = _correlation(A)
        kept = self._kept
        # "not <=": a NaN difference refreshes too
        if kept is None or kept[0].shape != P.shape or not (np.abs(P - kept[0]).max() <= CORRELATION_DRIFT):
            kept = self._kept = (P, correlation_inverse_root(P.copy()))
            self._refreshes += 1
        return kept[1], s

    def __getstate__(self) -> tuple:
        # pickled / deep-copied (with the protocol holding it) as the eager root was: the kept
        # (P, P^(-1/2)) and the count, the calls still readable checked first, in call order
        # (a lock and weak references to other objects' parts are no state)
        with self._lock:
            self._resolve_locked()
            return self._kept, self._refreshes

    def __setstate__(self, state: tuple) -> None:
        self._kept, self._refreshes = state
        self._pending = []
        self._lock = threading.Lock()

    def _resolve(self) -> None:
        if self._pending:
            with self._lock:
                self._resolve_locked()

    def _resolve_locked(self) -> None:
        """Check the deferred calls still readable against the kept root, in call order."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        for ref in pending:
            later = ref()
            if later is not None and later._root is None and later._value is None:
                later._root, later._s = self._check(later._A)
                later._A = None


class DeferredParts:
    """One per-item call's feature parts, computed on first read (:meth:`CorrelationRoot.deferred`).

    >>> import numpy as np
    >>> DeferredParts.ready(np.array([1.0, 2.0])).value()
    array([1., 2.])
    """

    __slots__ = ("_owner", "_A", "_e", "_d2", "_root", "_s", "_value", "__weakref__")

    def __init__(self, owner: CorrelationRoot | None, A: np.ndarray | None, e: np.ndarray | None, d2: float):
        self._owner, self._A, self._e, self._d2 = owner, A, e, d2
        self._root = self._s = self._value = None

    @classmethod
    def ready(cls, value: np.ndarray) -> DeferredParts:
        """Parts already known (e.g. the zeros of a population too small to score)."""
        later = cls(None, None, None, 0.0)
        later._value = value
        return later

    def value(self) -> np.ndarray:
        """The parts (computed once; the same array on every read)."""
        value = self._value
        if value is None:
            owner = self._owner            # None once another thread has set the value
            if owner is not None:
                with owner._lock:
                    if self._value is None:
                        owner._resolve_locked()
                        if self._root is None:    # pragma: no cover - checked by _resolve_locked
                            self._root, self._s = owner._check(self._A)
                        self._value = whitened_parts(self._e * self._s, self._root, self._d2)
                        self._owner = self._A = self._e = self._root = self._s = None
            value = self._value
        return value
