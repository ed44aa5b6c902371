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

Sums of many rows take one of two exact routes, chosen per row:

* **Error-free slicing** (the Ozaki scheme, :func:`_sliced_sums`), the fast path:
  each column is cut, on a grid aligned to its largest value, into slices of
  ``beta`` bits, small enough that every product of two slices and every sum of
  ``n`` such products is an integer below ``2**53``, which float64 holds exactly
  whatever order the BLAS matrix product adds in. Data spanning a few binades
  costs 3-4 slices per column.
* **Integer limbs** (:func:`_limb_sums`), the bounded path: each value is cut into
  three 26-bit limbs on the global grid of :mod:`.exact_sum` (the core the exact
  evidence sums use), and limb products are added with ``np.bincount``. Its cost
  per row is fixed (about ``6 k (k + 1) / 2`` integer terms), whatever the values.

The number of slices follows the exponent range of a column, so rows are first
grouped by exponent band (:func:`_banded_rows`): per column, the window of
``_MAX_SLICES`` slices that holds the most values; rows inside every column's
window are sliced, and the rest get another band pass or, at last, the limbs.
Ordinary data stay on the fast path; a batch spanning 1e-300 to 1e96 in every
column costs about what the limbs cost (tens of milliseconds per 10 000 rows),
not the ~80 slices per column a single grid would need. A handful of rows goes
through plain Python integers instead (faster for the per-item path, and the
same numbers). Every route gives the same integers, so which one a row took
never shows in the result.

One-row changes (the per-item path, :meth:`ExactMoments._change_row`) fold the
off-diagonal part of ``S2`` lazily: the count, ``S1`` and the diagonal of ``S2``
(all that a mean, a variance or a confidence interval reads) change at once in
O(k); the rows themselves wait in a short list, and their k (k - 1) / 2 cross
products are added in one exact batch (:func:`exact_cross_sums`, the same
integers) when something reads the off-diagonal sums (``m2``, ``sums``, ``==``,
``to_moments``) or when ``_FOLD_ROWS`` rows wait. The value is the same exact
number either way: folding changes when the products are added, never what they
add up to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError, NonFiniteError
from ..validation import as_feature_matrix, check_positive_int
from . import cross_sum_kernels as _kernels
from .cross_sum_kernels import _diagonal_pairs, _pairs, row_change_diagonal, row_change_sums
from .moments import Moments

__all__ = ["ExactMoments", "exact_cross_sums", "row_change_diagonal", "row_change_sums"]

# One-row changes whose cross products may wait before they are folded into S2 (the rows a
# fold adds in one exact batch: about a millisecond for k = 11, well under a µs per change).
_FOLD_ROWS = 1024


def exact_cross_sums(X: Any, weights: Any = None) -> tuple[list[int], int, list[int], int]:
    """Exact weighted column sums and cross-product sums of the rows of ``X``.

    Parameters
    ----------
    X : (n, k) float64 array, finite (any magnitude).
    weights : (n,) array of +1 / -1, optional (default all +1).

    Raises
    ------
    NonFiniteError
        ``X`` holds NaN or an infinity.
    InvalidInputError
        ``X`` is not 2-D, or a weight is not +1 / -1 (the routes would read
        other weights differently: the small-batch route as -1, the others as +1).

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
    if X.ndim != 2:
        raise InvalidInputError(f"X must be a 2-D (n, k) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise NonFiniteError("X holds a non-finite value (NaN or inf)")
    return _exact_cross_sums(X, _unit_weights(weights, X.shape[0]))


def _unit_weights(weights: Any, n: int) -> np.ndarray:
    """``weights`` as int64 +1 (add) / -1 (remove), one per row; None is all +1."""
    if weights is None:
        return np.ones(n, np.int64)
    w = np.asarray(weights)
    if w.shape != (n,) or not np.isin(w, (-1, 1)).all():
        raise InvalidInputError("weights must be +1 or -1, one per row")
    return w.astype(np.int64)


def _exact_cross_sums(X: np.ndarray, w: np.ndarray) -> tuple[list[int], int, list[int], int]:
    """:func:`exact_cross_sums` for validated input (finite float64 (n, k), weights ±1 int64)."""
    n, k = X.shape
    if n <= _kernels._SMALL_ROWS:
        return _kernels._small_sums(X.tolist(), w.tolist(), k)
    per = max(1, min(_kernels._CHUNK_ROWS, _kernels._CHUNK_CELLS // max(k * _kernels._MAX_SLICES, 1)))
    total = ExactMoments(k)
    for lo in range(0, n, per):
        for sums in _kernels._chunk_sums(X[lo:lo + per], w[lo:lo + per]):
            total._add_sums(0, *sums)
    return total._s1, total._e1, total._s2, total._e2


def _aligned(values: list[int], e: int, target: int) -> list[int]:
    return values if e == target else [v << (e - target) for v in values]


def _plus_shifted(ours: list[int], theirs: list[int], shift: int) -> list[int]:
    """``ours + theirs * 2**shift``, element by element (a new list)."""
    # a shift by 0 is the common case (the one-row path writes on this grid): skip it
    if shift:
        return [a + (b << shift) for a, b in zip(ours, theirs, strict=True)]
    return [a + b for a, b in zip(ours, theirs, strict=True)]


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

    # _pending_rows / _pending_weights: one-row changes whose off-diagonal cross products
    # are not in _s2 yet (count, _s1 and the diagonal of _s2 always include them): the exact
    # value of an off-diagonal S2 entry is _s2's plus the pending rows' weighted products.
    __slots__ = ("dim", "count", "_s1", "_e1", "_s2", "_e2", "_pending_rows", "_pending_weights")

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")
        self.count = 0
        self._s1 = [0] * self.dim
        self._e1 = 0
        self._s2 = [0] * (self.dim * (self.dim + 1) // 2)
        self._e2 = 0
        self._pending_rows: list[list[float]] = []
        self._pending_weights: list[int] = []

    # ------------------------------------------------------------------ updates
    def _onto_grids(self, e1: int, e2: int) -> tuple[int, int]:
        """Move our sums onto the finer of our grids and ``e1`` / ``e2``; return the shifts that
        put sums on grids ``e1`` / ``e2`` onto ours."""
        if e1 < self._e1:
            self._s1, self._e1 = _aligned(self._s1, self._e1, e1), e1
        if e2 < self._e2:
            self._s2, self._e2 = _aligned(self._s2, self._e2, e2), e2
        return e1 - self._e1, e2 - self._e2

    def _add_sums(self, count: int, s1: list[int], e1: int, s2: list[int], e2: int) -> None:
        d1, d2 = self._onto_grids(e1, e2)
        self._s1 = _plus_shifted(self._s1, s1, d1)
        self._s2 = _plus_shifted(self._s2, s2, d2)
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
        self._pending_rows, self._pending_weights = [], []

    def _fold(self) -> None:
        """Add the pending rows' off-diagonal cross products to ``S2`` (one exact batch).

        The value does not change (it always counted them); afterwards ``_s2`` holds
        it alone, as every reader of the off-diagonal sums expects.
        """
        rows = self._pending_rows
        if not rows:
            return
        weights = self._pending_weights
        self._pending_rows, self._pending_weights = [], []
        _, _, s2, e2 = _exact_cross_sums(np.array(rows, dtype=np.float64), np.array(weights, dtype=np.int64))
        for p in _diagonal_pairs(self.dim):
            s2[p] = 0                    # the diagonal counted these rows already
        self._add_sums(0, [0] * self.dim, self._e1, s2, e2)

    def add_rows(self, X: Any, weights: Any = None) -> None:
        """Add (weight +1) or remove (weight -1) the rows of an (n, k) array, exactly."""
        X = as_feature_matrix(X, self.dim, "X")
        w = _unit_weights(weights, X.shape[0])
        if X.shape[0] == 0:
            return
        net = int(w.sum())
        if self.count + net < 0:
            raise InvalidInputError(f"cannot remove {-net} rows from moments of {self.count}")
        self._add_sums(net, *_exact_cross_sums(X, w))

    def _add_rows(self, X: np.ndarray, weights: np.ndarray) -> None:
        """:meth:`add_rows` for validated input (float64 (n, k), weights ±1 int64)."""
        if X.shape[0]:
            self._add_sums(int(weights.sum()), *_exact_cross_sums(X, weights))

    def _change_row(self, removed: list[float] | None, added: list[float] | None) -> tuple:
        """Remove the row ``removed`` and add ``added`` (validated finite floats; either may be
        None), exactly, in O(k): the count, ``S1`` and the diagonal of ``S2`` at once
        (:func:`row_change_diagonal`), the cross products folded later (:meth:`_fold`).
        Returns the change so that a caller can add the same change to a total with
        :meth:`_add_row_change`."""
        change = (
            (added is not None) - (removed is not None),
            *row_change_diagonal(removed, added, min(self._e1, self._e2 // 2)),
            removed, added)
        self._add_row_change(change)
        return change

    def _add_row_change(self, change: tuple) -> None:
        """Apply a change :meth:`_change_row` returned (to this, or another moments' total)."""
        count, s1, e1, dg, e2, removed, added = change
        d1, d2 = self._onto_grids(e1, e2)
        self._s1 = _plus_shifted(self._s1, s1, d1)
        s2 = self._s2            # a list of this object's own (every assignment makes a new one)
        for p, v in zip(_diagonal_pairs(self.dim), dg, strict=True):
            if v:
                s2[p] += v << d2 if d2 else v
        self.count += count
        rows, weights = self._pending_rows, self._pending_weights
        if removed is not None:
            rows.append(removed)
            weights.append(-1)
        if added is not None:
            rows.append(added)
            weights.append(1)
        if len(rows) >= _FOLD_ROWS:
            self._fold()
        if self._e1 < -256 or self._e2 < -512:
            self._normalise()

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
        if other._pending_rows:      # its rows' cross products are still to come: ours too now
            self._pending_rows.extend(other._pending_rows)
            self._pending_weights.extend(other._pending_weights)
            if len(self._pending_rows) >= _FOLD_ROWS:
                self._fold()
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
        out._pending_rows, out._pending_weights = list(self._pending_rows), list(self._pending_weights)
        return out

    # ------------------------------------------------------------------ exact values
    def sums(self) -> tuple[list[Fraction], list[Fraction]]:
        """``(S1, S2)`` as exact fractions (S2 as the upper-triangle list); for tests and audits."""
        self._fold()
        f1, f2 = Fraction(2) ** self._e1, Fraction(2) ** self._e2
        return [v * f1 for v in self._s1], [v * f2 for v in self._s2]

    def __eq__(self, other: object) -> bool:
        """Same count and the same exact sums."""
        if not isinstance(other, ExactMoments):
            return NotImplemented
        if self.dim != other.dim or self.count != other.count:
            return False
        self._fold()
        other._fold()
        e1, e2 = min(self._e1, other._e1), min(self._e2, other._e2)
        return (_aligned(self._s1, self._e1, e1) == _aligned(other._s1, other._e1, e1)
                and _aligned(self._s2, self._e2, e2) == _aligned(other._s2, other._e2, e2))

    __hash__ = None  # mutable

    # ------------------------------------------------------------------ rounded statistics
    def mean(self) -> np.ndarray:
        """Correctly rounded mean vector (zeros while empty)."""
        if self.count == 0:
            return np.zeros(self.dim)
        return np.array(self._mean_list())

    def _mean_list(self) -> list[float]:
        """:meth:`mean` as a list of floats (count > 0); one shared divisor, the same roundings."""
        n, e1 = self.count, self._e1
        if e1 >= 0:
            return [_ratio_to_float(v, e1, n) for v in self._s1]
        den = n << -e1
        try:
            return [v / den for v in self._s1]      # CPython's int / int rounds correctly
        except OverflowError:
            return [_ratio_to_float(v, e1, n) for v in self._s1]

    def _m2_diagonal_list(self) -> list[float]:
        """:meth:`m2_diagonal` as a list of floats (count > 0), the same roundings."""
        n, k, s1, s2 = self.count, self.dim, self._s1, self._s2
        e = min(self._e2, 2 * self._e1)
        sh2, sh1 = self._e2 - e, 2 * self._e1 - e
        # diagonal entry (c, c) is pair number c*k - c*(c-1)/2 in the row-major upper triangle
        nums = [n * (s2[c * k - c * (c - 1) // 2] << sh2) - ((s1[c] * s1[c]) << sh1) for c in range(k)]
        if e >= 0:
            return [_ratio_to_float(v, e, n) for v in nums]
        den = n << -e
        try:
            return [v / den for v in nums]
        except OverflowError:
            return [_ratio_to_float(v, e, n) for v in nums]

    def _m2_entry(self, p: int, a: int, b: int) -> float:
        """``M2[a, b]`` (pair ``p``) correctly rounded; an off-diagonal entry needs :meth:`_fold` first."""
        n = self.count
        e = min(self._e2, 2 * self._e1)
        num = n * (self._s2[p] << (self._e2 - e)) - ((self._s1[a] * self._s1[b]) << (2 * self._e1 - e))
        return _ratio_to_float(num, e, n)

    def m2_diagonal(self) -> np.ndarray:
        """Correctly rounded ``sum (x_c - mean_c)**2`` per column (never negative)."""
        if self.count == 0:
            return np.zeros(self.dim)
        return np.array(self._m2_diagonal_list())

    def m2(self) -> np.ndarray:
        """Correctly rounded centred co-moment matrix (symmetric; zeros while empty)."""
        k = self.dim
        out = np.zeros((k, k))
        if self.count == 0:
            return out
        self._fold()
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
