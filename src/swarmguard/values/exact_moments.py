"""Exact moments: count, per-column sums and sums of cross products, as integers.

Every finite float64 is an integer times a power of two, so the sums
``S1[c] = sum_i x[i, c]`` and ``S2[a, b] = sum_i x[i, a] * x[i, b]`` of any
rows are exact rationals with a power-of-two denominator: we keep them as
Python integers ``I`` with a common exponent ``e`` (value ``I * 2**e``).
Adding and removing rows is integer addition, so the state after any order of
writes, removals and merges of the same rows is the same number, and every
statistic derived from it is the same float, bit for bit. The derived values
are correctly rounded from the exact ones::

    mean[c]  = RN(S1[c] / n)
    M2[a, b] = RN(S2[a, b] - S1[a] * S1[b] / n)     (the centred co-moment)

so ``M2[c, c]`` is never negative (the exact value is a sum of squares) and
the variance of identical values is exactly 0.

Sums of many rows are formed with BLAS (:func:`exact_cross_sums`) by
error-free slicing (the Ozaki scheme): each column is cut, on a grid aligned
to its largest value, into slices of ``beta`` bits, small enough that every
product of two slices and every sum of ``n`` such products is an integer below
``2**53``, which float64 holds exactly whatever order the matrix product adds
in. Slices that are zero in every row are dropped, so data spanning a few
binades costs a few slices per column; data spanning 1e-300 to 1e100 in one
batch costs up to ~80 slices per column (slower, still exact). A handful of
rows goes through plain Python integers instead (faster for the per-item path,
and the same numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
from ..validation import as_feature_matrix, check_positive_int
from .moments import Moments

__all__ = ["ExactMoments", "exact_cross_sums"]

# Up to this many rows, Python integers beat the slicing's fixed NumPy overhead.
_SMALL_ROWS = 6
# Rows per matrix product (keeps slices >= 16 bits wide: n * 2**(2*beta) <= 2**53).
_CHUNK_ROWS = 1 << 20
# Most (rows x slice columns) cells per matrix product (memory bound of one step).
_CHUNK_CELLS = 1 << 23


def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle index pairs (a <= b), row-major: the layout of ``S2``."""
    return np.triu_indices(k)


def _small_sums(rows: list[list[float]], weights: list[int], k: int) -> tuple[list[int], int, list[int], int]:
    """Exact ``(S1, e1, S2, e2)`` of a few rows in Python integers."""
    parts = [[v.as_integer_ratio() for v in row] for row in rows]
    # v == p / q with q a power of two: v == p * 2**(1 - q.bit_length())
    e1 = 1 - max((q.bit_length() for row in parts for (p, q) in row if p), default=1)
    s1 = [0] * k
    s2 = [0] * (k * (k + 1) // 2)
    for row, w in zip(parts, weights, strict=True):
        ints = [p << (1 - q.bit_length() - e1) for (p, q) in row]
        signed = ints if w > 0 else [-v for v in ints]
        s1 = [a + b for a, b in zip(s1, signed, strict=True)]
        products = [x * y for a, x in enumerate(signed) for y in ints[a:]]
        s2 = [a + b for a, b in zip(s2, products, strict=True)]
    return s1, e1, s2, 2 * e1


def _trailing_zeros(m: np.ndarray) -> np.ndarray:
    """Trailing zero bits of positive int64 values (< 2**53)."""
    low = m & -m
    return np.frexp(low.astype(np.float64))[1].astype(np.int64) - 1


def _slice_columns(X: np.ndarray, beta: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Cut each column of X into slices of ``beta`` bits on a grid aligned to its top.

    Returns ``(H, col_c, col_s, top)``: ``H[:, j]`` holds integers below ``2**beta``
    (as float64) with ``X[:, c] == sum_{j: col_c[j] == c} H[:, j] * 2**(top[c] - beta*(col_s[j] + 1))``
    exactly; all-zero slices are left out. None when a column spans too many
    binades for float scaling to stay exact (the caller then uses integers).
    """
    n, k = X.shape
    big = np.abs(X).max(axis=0)
    top = np.frexp(big)[1].astype(np.int64)               # |x| < 2**top in each column
    scale = beta - top
    Y = np.ldexp(X, scale[None, :])    # exact when scaling up (|Y| < 2**beta: no overflow)
    down = scale < 0
    if down.any():                     # scaling down is exact unless bits fall below 2**-1074
        with np.errstate(under="ignore"):
            if not np.array_equal(np.ldexp(Y[:, down], -scale[down][None, :]), X[:, down]):
                return None
    parts, col_c, col_s = [], [], []
    step = float(2 ** beta)
    s = 0
    while True:
        Y, h = np.modf(Y)                                  # exact: fractional and integer parts
        keep = np.flatnonzero(h.any(axis=0))
        if keep.size:
            parts.append(h if keep.size == k else h[:, keep])
            col_c.append(keep)
            col_s.append(np.full(keep.size, s))
        if not Y.any():
            break
        Y *= step                                          # exact: |Y| < 1 before
        s += 1
    if not parts:
        return np.zeros((n, 0)), np.zeros(0, np.int64), np.zeros(0, np.int64), top
    return np.concatenate(parts, axis=1), np.concatenate(col_c), np.concatenate(col_s), top


def _slice_columns_int(X: np.ndarray, beta: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`_slice_columns` for any finite data, in integer arithmetic (slower)."""
    n, k = X.shape
    mask = np.uint64((1 << beta) - 1)
    frac, expo = np.frexp(X)
    mant = np.ldexp(np.abs(frac), 53).astype(np.uint64)  # exact: |x| == mant * 2**(expo - 53)
    low_bit = (expo - 53).astype(np.int64)
    nonzero = mant != 0
    big = np.int64(1 << 40)
    top = np.where(nonzero, expo, -big).max(axis=0)                 # |x| < 2**top in each column
    safe = np.where(nonzero, mant, 1).astype(np.int64)
    bottom = np.where(nonzero, low_bit + _trailing_zeros(safe), big).min(axis=0)
    live = top > -big
    top = np.where(live, top, 0)
    n_slices = np.where(live, -((bottom - top) // beta), 0)          # ceil((top - bottom) / beta)
    negative = np.signbit(X)
    parts, col_c, col_s = [], [], []
    for s in range(int(n_slices.max(initial=0))):
        shift = (top - beta * (s + 1))[None, :] - low_bit               # bits below the window
        right = np.clip(shift, 0, 63).astype(np.uint64)
        left = np.clip(-shift, 0, 63).astype(np.uint64)
        # the window's bits (exact; unsigned, so bits shifted past bit 63 just drop)
        h = (np.where(shift >= 0, mant >> right, mant << left) & mask).astype(np.int64)
        h = np.where(negative, -h, h)
        keep = np.flatnonzero((s < n_slices) & h.any(axis=0))
        if keep.size:
            parts.append(h[:, keep].astype(np.float64))
            col_c.append(keep)
            col_s.append(np.full(keep.size, s))
    if not parts:
        return np.zeros((n, 0)), np.zeros(0, np.int64), np.zeros(0, np.int64), top
    return np.concatenate(parts, axis=1), np.concatenate(col_c), np.concatenate(col_s), top


# OpenBLAS runs a product of at most this many multiply-adds on one thread; on a loaded
# machine its thread pool costs far more than the product (hundreds of ms).
_ONE_THREAD_GEMM = 1 << 18


def _gram(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A.T @ B`` in row blocks small enough for single-threaded BLAS (einsum for wide inputs)."""
    n, K = A.shape
    rows = _ONE_THREAD_GEMM // max(K * K, 1)
    if rows < 16:
        return np.einsum("ij,ik->jk", A, B)
    At = np.ascontiguousarray(A.T)
    G = np.zeros((K, K))
    for lo in range(0, n, rows):
        G += At[:, lo:lo + rows] @ B[lo:lo + rows]
    return G


def _sliced_sums(X: np.ndarray, w: np.ndarray) -> tuple[list[int], int, list[int], int]:
    """Exact ``(S1, e1, S2, e2)`` of the rows of X weighted by ``w`` (±1), by error-free slicing."""
    n, k = X.shape
    beta = (53 - int(n).bit_length()) // 2          # n * (2**beta - 1)**2 < 2**53
    sliced = _slice_columns(X, beta)
    H, col_c, col_s, top = sliced if sliced is not None else _slice_columns_int(X, beta)
    P = k * (k + 1) // 2
    if H.shape[1] == 0:
        return [0] * k, 0, [0] * P, 0
    wf = w.astype(np.float64)
    # Exact: every product is below 2**(2*beta) and every sum of n of them below 2**53,
    # whatever order the products are added in.
    G = _gram(H * wf[:, None], H).astype(np.int64)
    S1 = (wf @ H).astype(np.int64)
    n_s = int(col_s.max()) + 1
    # S2 per (pair, slice-sum d): value sum_d acc[p, d] * 2**(top_a + top_b - beta*(d + 2))
    pair_of = np.full((k, k), -1, np.int64)
    ia, ib = _pairs(k)
    pair_of[ia, ib] = np.arange(ia.size)
    p_idx = pair_of[col_c[:, None], col_c[None, :]]
    d_idx = col_s[:, None] + col_s[None, :]
    upper = p_idx >= 0
    acc = np.zeros((P, 2 * n_s - 1), np.int64)
    np.add.at(acc, (p_idx[upper], d_idx[upper]), G[upper])   # < n_s terms of < 2**53: no overflow
    acc1 = np.zeros((k, n_s), np.int64)
    np.add.at(acc1, (col_c, col_s), S1)
    top_l = top.tolist()
    live = np.zeros(k, bool)
    live[col_c] = True
    width1 = beta * n_s
    e1 = min(t for t, lv in zip(top_l, live.tolist(), strict=True) if lv) - width1
    s1 = []
    for c, row in enumerate(acc1.tolist()):
        x = 0
        for v in row:                            # Horner: slice 0 is the most significant
            x = (x << beta) + v
        s1.append(x << (top_l[c] - width1 - e1) if x else 0)
    width2 = beta * (2 * n_s)
    e2 = 2 * e1
    s2 = []
    for row, a, b in zip(acc.tolist(), ia.tolist(), ib.tolist(), strict=True):
        x = 0
        for v in row:
            x = (x << beta) + v
        # acc[p, d] has weight 2**(top_a + top_b - beta*(d + 2)); Horner put 2**(beta*(2 n_s - 2 - d)) on it
        s2.append(x << (top_l[a] + top_l[b] - width2 - e2) if x else 0)
    return s1, e1, s2, e2


def exact_cross_sums(X: np.ndarray, weights: np.ndarray | None = None) -> tuple[list[int], int, list[int], int]:
    """Exact weighted column sums and cross-product sums of the rows of ``X``.

    Parameters
    ----------
    X : (n, k) float64 array, finite.
    weights : (n,) array of +1 / -1, optional (default all +1).

    Returns
    -------
    s1, e1, s2, e2
        ``sum_i w_i X[i, c] == s1[c] * 2**e1`` and ``sum_i w_i X[i, a] X[i, b] ==
        s2[p] * 2**e2`` for the ``p``-th upper-triangle pair ``(a, b)``, ``a <= b``
        (row-major), exactly; Python integers.

    Examples
    --------
    >>> import numpy as np
    >>> s1, e1, s2, e2 = exact_cross_sums(np.array([[0.5, 3.0], [0.25, -1.0]]))
    >>> [v * 2.0**e1 for v in s1], [v * 2.0**e2 for v in s2]
    ([0.75, 2.0], [0.3125, 1.25, 10.0])
    """
    X = np.asarray(X, dtype=np.float64)
    n, k = X.shape
    w = np.ones(n, np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    if n <= _SMALL_ROWS:
        return _small_sums(X.tolist(), w.tolist(), k)
    per = max(1, min(_CHUNK_ROWS, _CHUNK_CELLS // max(k * 8, 1)))
    total = ExactMoments(k)
    for lo in range(0, n, per):
        s1, e1, s2, e2 = _sliced_sums(X[lo:lo + per], w[lo:lo + per])
        total._add_sums(0, s1, e1, s2, e2)
    return total._s1, total._e1, total._s2, total._e2


def _aligned(values: list[int], e: int, target: int) -> list[int]:
    return values if e == target else [v << (e - target) for v in values]


def _ratio_to_float(num: int, exp: int, den: int) -> float:
    """Correctly rounded ``num * 2**exp / den`` (CPython's int division rounds correctly);
    ``±inf`` beyond the float range, as IEEE rounding gives."""
    try:
        if exp >= 0:
            return (num << exp) / den
        return num / (den << -exp)
    except OverflowError:
        return math.inf if num > 0 else -math.inf


class ExactMoments:
    """Exact count, sums and cross-product sums of k-column rows (see the module docstring).

    Parameters
    ----------
    dim : int
        Number of columns k.

    Examples
    --------
    >>> import numpy as np
    >>> m = ExactMoments(1)
    >>> for _ in range(10000):
    ...     m.add_rows([[1e10]]); m.remove_rows([[1e10]]); m.add_rows([[-1e10]]); m.remove_rows([[-1e10]])
    >>> m.add_rows([[1e10], [-1e10], [3.0]])
    >>> m.count, m.mean().tolist(), bool(m.m2()[0, 0] == float(2 * 10**20 + 6))
    (3, [1.0], True)
    """

    __slots__ = ("dim", "count", "_s1", "_e1", "_s2", "_e2")

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")
        self.count = 0
        self._s1 = [0] * self.dim
        self._e1 = 0
        self._s2 = [0] * (self.dim * (self.dim + 1) // 2)
        self._e2 = 0

    # ------------------------------------------------------------------ updates
    def _add_sums(self, count: int, s1: list[int], e1: int, s2: list[int], e2: int) -> None:
        if e1 < self._e1:
            self._s1, self._e1 = _aligned(self._s1, self._e1, e1), e1
        if e2 < self._e2:
            self._s2, self._e2 = _aligned(self._s2, self._e2, e2), e2
        d1, d2 = e1 - self._e1, e2 - self._e2
        self._s1 = [a + (b << d1) for a, b in zip(self._s1, s1, strict=True)]
        self._s2 = [a + (b << d2) for a, b in zip(self._s2, s2, strict=True)]
        self.count += count
        if self._e1 < -256 or self._e2 < -512:
            self._normalise()   # a tiny value came and went: keep the integers short

    def _normalise(self) -> None:
        for attr_s, attr_e in (("_s1", "_e1"), ("_s2", "_e2")):
            values = getattr(self, attr_s)
            low = 0
            for v in values:
                low |= v
            if low == 0:
                setattr(self, attr_e, 0)
                continue
            tz = (low & -low).bit_length() - 1
            if tz:
                setattr(self, attr_s, [v >> tz for v in values])
                setattr(self, attr_e, getattr(self, attr_e) + tz)

    def _reset(self) -> None:
        self.count = 0
        self._s1 = [0] * self.dim
        self._s2 = [0] * len(self._s2)
        self._e1 = self._e2 = 0

    def add_rows(self, X: Any, weights: Any = None) -> None:
        """Add (weight +1) or remove (weight -1) the rows of an (n, k) array, exactly."""
        X = as_feature_matrix(X, self.dim, "X")
        if weights is None:
            w = np.ones(X.shape[0], np.int64)
        else:
            w = np.asarray(weights)
            if w.shape != (X.shape[0],) or not np.isin(w, (-1, 1)).all():
                raise InvalidInputError("weights must be +1 or -1, one per row")
            w = w.astype(np.int64)
        if X.shape[0] == 0:
            return
        net = int(w.sum())
        if self.count + net < 0:
            raise InvalidInputError(f"cannot remove {-net} rows from moments of {self.count}")
        self._add_sums(net, *exact_cross_sums(X, w))

    def _add_rows(self, X: np.ndarray, weights: np.ndarray) -> None:
        """:meth:`add_rows` for validated input (float64 (n, k), weights ±1 int64)."""
        if X.shape[0]:
            self._add_sums(int(weights.sum()), *exact_cross_sums(X, weights))

    def remove_rows(self, X: Any) -> None:
        """Remove rows that were added before (exact inverse of :meth:`add_rows`)."""
        X = as_feature_matrix(X, self.dim, "X")
        self.add_rows(X, -np.ones(X.shape[0], np.int64))

    def __iadd__(self, other: ExactMoments) -> ExactMoments:
        if not isinstance(other, ExactMoments):
            return NotImplemented
        if other.dim != self.dim:
            raise DimensionMismatchError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        self._add_sums(other.count, other._s1, other._e1, other._s2, other._e2)
        return self

    def __add__(self, other: ExactMoments) -> ExactMoments:
        if not isinstance(other, ExactMoments):
            return NotImplemented
        out = self.copy()
        out += other
        return out

    @classmethod
    def merge_all(cls, parts: Iterable[ExactMoments], dim: int) -> ExactMoments:
        """The exact sum of many parts (any order gives the same value)."""
        out = cls(dim)
        for p in parts:
            if not isinstance(p, ExactMoments):
                raise InvalidTypeError(f"merge_all takes ExactMoments, got a {type(p).__name__}")
            out += p
        return out

    def copy(self) -> ExactMoments:
        out = ExactMoments(self.dim)
        out.count, out._s1, out._e1, out._s2, out._e2 = self.count, list(self._s1), self._e1, list(self._s2), self._e2
        return out

    # ------------------------------------------------------------------ exact values
    def sums(self) -> tuple[list[Fraction], list[Fraction]]:
        """``(S1, S2)`` as exact fractions (S2 as the upper-triangle list); for tests and audits."""
        f1, f2 = Fraction(2) ** self._e1, Fraction(2) ** self._e2
        return [v * f1 for v in self._s1], [v * f2 for v in self._s2]

    def __eq__(self, other: object) -> bool:
        """Same count and the same exact sums."""
        if not isinstance(other, ExactMoments):
            return NotImplemented
        if self.dim != other.dim or self.count != other.count:
            return False
        e1, e2 = min(self._e1, other._e1), min(self._e2, other._e2)
        return (_aligned(self._s1, self._e1, e1) == _aligned(other._s1, other._e1, e1)
                and _aligned(self._s2, self._e2, e2) == _aligned(other._s2, other._e2, e2))

    __hash__ = None  # mutable

    # ------------------------------------------------------------------ rounded statistics
    def mean(self) -> np.ndarray:
        """Correctly rounded mean vector (zeros while empty)."""
        if self.count == 0:
            return np.zeros(self.dim)
        return np.array([_ratio_to_float(v, self._e1, self.count) for v in self._s1])

    def _m2_entry(self, p: int, a: int, b: int) -> float:
        n = self.count
        e = min(self._e2, 2 * self._e1)
        num = n * (self._s2[p] << (self._e2 - e)) - ((self._s1[a] * self._s1[b]) << (2 * self._e1 - e))
        return _ratio_to_float(num, e, n)

    def m2_diagonal(self) -> np.ndarray:
        """Correctly rounded ``sum (x_c - mean_c)**2`` per column (never negative)."""
        if self.count == 0:
            return np.zeros(self.dim)
        k = self.dim
        # diagonal entry (c, c) is pair number c*k - c*(c-1)/2 in the row-major upper triangle
        return np.array([self._m2_entry(c * k - c * (c - 1) // 2, c, c) for c in range(k)])

    def m2(self) -> np.ndarray:
        """Correctly rounded centred co-moment matrix (symmetric; zeros while empty)."""
        k = self.dim
        out = np.zeros((k, k))
        if self.count == 0:
            return out
        ia, ib = _pairs(k)
        for p, (a, b) in enumerate(zip(ia.tolist(), ib.tolist(), strict=True)):
            out[a, b] = out[b, a] = self._m2_entry(p, a, b)
        return out

    def to_moments(self) -> Moments:
        """As :class:`Moments` (shift = the rounded mean, offset 0, co-moment rounded once)."""
        m = Moments(self.dim)
        if self.count:
            m.count, m.shift, m.m2 = self.count, self.mean(), self.m2()
        return m

    def __repr__(self) -> str:
        return f"ExactMoments(dim={self.dim}, count={self.count}, mean={np.array2string(self.mean(), precision=4)})"
