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

import functools
import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError, NonFiniteError
from ..validation import as_feature_matrix, check_positive_int
from .exact_sum import LIMB_BITS, UNIT_EXP, float_limbs, limbs_to_ints
from .moments import Moments

__all__ = ["ExactMoments", "exact_cross_sums", "row_change_diagonal", "row_change_sums"]

_LIMB_MASK = (1 << LIMB_BITS) - 1

# Up to this many rows, Python integers beat the slicing's fixed NumPy overhead.
_SMALL_ROWS = 6
# One-row changes whose cross products may wait before they are folded into S2 (the rows a
# fold adds in one exact batch: about a millisecond for k = 11, well under a µs per change).
_FOLD_ROWS = 1024
# Rows per matrix product (keeps slices >= 16 bits wide: n * 2**(2*beta) <= 2**53).
_CHUNK_ROWS = 1 << 20
# Most (rows x slice columns) cells per matrix product (memory bound of one step).
_CHUNK_CELLS = 1 << 23


@functools.lru_cache(maxsize=64)
def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle index pairs (a <= b), row-major: the layout of ``S2`` (cached, read-only)."""
    ia, ib = np.triu_indices(k)
    ia.flags.writeable = ib.flags.writeable = False
    return ia, ib


@functools.lru_cache(maxsize=64)
def _pair_numbers(k: int) -> np.ndarray:
    """(k, k) table: the pair number of (a, b) for a <= b, -1 below the diagonal (cached, read-only)."""
    ia, ib = _pairs(k)
    table = np.full((k, k), -1, np.int64)
    table[ia, ib] = np.arange(ia.size)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=64)
def _diagonal_pairs(k: int) -> tuple[int, ...]:
    """Pair numbers of the diagonal entries ``(c, c)`` of ``S2`` (row-major upper triangle)."""
    return tuple(c * k - c * (c - 1) // 2 for c in range(k))


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


def row_change_sums(removed: list[float] | None, added: list[float] | None,
                    e1_floor: int = 0) -> tuple[list[int], int, list[int], int]:
    """Exact ``(S1, e1, S2, e2)`` of adding the row ``added`` and removing ``removed``.

    The one-row path (a register replaced, or first written): plain Python
    integers, no NumPy set-up. Each value is ``p / q`` with ``q`` a power of two
    (:meth:`float.as_integer_ratio`), so it is the integer ``p << (1 - q.bit_length() - e1)``
    on the grid ``2**e1``; ``e1`` is the finest grid of the two rows, and no
    coarser than ``e1_floor`` (pass the target's exponent: the sums then land on
    its grid and adding them needs no shift). The same numbers as
    :func:`exact_cross_sums` of the two rows with weights -1 and +1.

    Parameters
    ----------
    removed, added : list of finite floats (k each), or None for no row.
    e1_floor : int
        Use a grid at least this fine (``e1 <= e1_floor``).

    Examples
    --------
    >>> s1, e1, s2, e2 = row_change_sums([0.5, 3.0], [0.25, -1.0])   # replace a row
    >>> [v * 2.0**e1 for v in s1], [v * 2.0**e2 for v in s2]
    ([-0.25, -4.0], [-0.1875, -1.75, -8.0])
    """
    rows = [r for r in (removed, added) if r is not None]
    parts = [[v.as_integer_ratio() for v in row] for row in rows]
    e1 = e1_floor
    for row in parts:
        for p, q in row:
            if p:
                e = 1 - q.bit_length()
                if e < e1:
                    e1 = e
    ints = [[p << (1 - q.bit_length() - e1) if p else 0 for (p, q) in row] for row in parts]
    if added is not None and removed is not None:
        old, new = ints
        s1 = [b - a for a, b in zip(old, new, strict=True)]
        s2 = [new[a] * y - old[a] * z for a in range(len(new)) for y, z in zip(new[a:], old[a:], strict=True)]
    else:
        (row,) = ints
        if added is None:
            s1 = [-v for v in row]
            s2 = [-(x * y) for a, x in enumerate(row) for y in row[a:]]
        else:
            s1 = row
            s2 = [x * y for a, x in enumerate(row) for y in row[a:]]
    return s1, e1, s2, 2 * e1


def row_change_diagonal(removed: list[float] | None, added: list[float] | None,
                        e1_floor: int = 0) -> tuple[list[int], int, list[int], int]:
    """:func:`row_change_sums` without the off-diagonal products: ``(S1, e1, D, e2)``.

    ``D[c]`` is the change of ``S2[c, c]`` (the sum of squares of column ``c``);
    the same integers, on the same grid, as the entries of :func:`row_change_sums`
    at the diagonal pairs. O(k) instead of O(k²): what a one-row write needs at once
    (the cross products are folded later, see :meth:`ExactMoments._change_row`).

    >>> s1, e1, dg, e2 = row_change_diagonal([0.5, 3.0], [0.25, -1.0])
    >>> [v * 2.0**e1 for v in s1], [v * 2.0**e2 for v in dg]
    ([-0.25, -4.0], [-0.1875, -8.0])
    """
    if e1_floor <= 0:
        # The common case: every value already lies on the grid 2**e1_floor, so it is the
        # integer v * 2**-e1_floor, which ldexp computes exactly (scaling up by a power of
        # two never rounds; a value off the grid is no integer there, one too large for a
        # float is inf, no integer either: both take the general route below).
        up = -e1_floor
        try:
            old = None if removed is None else [int(y) for y in [_ldexp(v, up) for v in removed]
                                                if y.is_integer() or _off_grid()]
            new = None if added is None else [int(y) for y in [_ldexp(v, up) for v in added]
                                              if y.is_integer() or _off_grid()]
        except (_OffGrid, OverflowError):
            pass
        else:
            return _diagonal_change(old, new, e1_floor)
    e1 = e1_floor
    parts = []
    for row in (removed, added):
        if row is None:
            parts.append(None)
            continue
        ratios = [v.as_integer_ratio() for v in row]
        for p, q in ratios:
            if p:
                e = 1 - q.bit_length()
                if e < e1:
                    e1 = e
        parts.append(ratios)
    shift = 1 - e1            # p / q == p << (1 - q.bit_length() - e1) on the grid 2**e1
    old, new = [None if r is None else [p << (shift - q.bit_length()) if p else 0 for (p, q) in r]
                for r in parts]
    return _diagonal_change(old, new, e1)


_ldexp = math.ldexp


class _OffGrid(Exception):
    """A value below the grid's resolution (row_change_diagonal's general route takes it)."""


def _off_grid() -> bool:
    raise _OffGrid


def _diagonal_change(old: list[int] | None, new: list[int] | None, e1: int) -> tuple[list[int], int, list[int], int]:
    """``(S1, e1, D, 2 e1)`` of replacing the integer row ``old`` by ``new`` (either may be None)."""
    if old is None:
        return new, e1, [v * v for v in new], 2 * e1
    if new is None:
        return [-v for v in old], e1, [-(v * v) for v in old], 2 * e1
    s1 = [b - a for a, b in zip(old, new, strict=True)]
    # b² - a² = (b - a)(b + a): one product per column
    return s1, e1, [d * (a + b) for d, a, b in zip(s1, old, new, strict=True)], 2 * e1


# Most slices per column on the sliced path (a row whose values need more in some
# column takes another band pass, or the limbs). Up to about this many, the matrix
# product is still cheaper than the limbs' fixed cost per row. The scaling is exact
# only while _MAX_SLICES * beta (beta <= 26) stays well below 1022 binades.
_MAX_SLICES = 10
# Band passes before the remaining rows go to the limbs; a pass must take at least
# 1 / _BAND_MIN_SHARE of the rows still left, else they go to the limbs at once.
_BAND_PASSES = 3
_BAND_MIN_SHARE = 8
# (rows x pairs) per step of the limb path (its int64 temporaries, 256 KiB each, stay in cache).
_LIMB_CELLS = 1 << 15
# (slice rows x data rows) per slicing block (1 MiB of slices).
_SLICE_BLOCK_CELLS = 1 << 17
# frexp exponents of finite float64 lie in [-1073, 1024]; offset for a histogram.
_EXP_OFFSET = 1074
_EXP_BINS = 2100


def _magnitude_range(Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest non-zero magnitude of each row of ``Xt`` (0 and inf if all zero)."""
    k, m = Xt.shape
    big, small = np.zeros(k), np.full(k, np.inf)
    step = max(1, _SLICE_BLOCK_CELLS // k)
    for lo in range(0, m, step):                  # blocks: the |x| temporary stays in cache
        A = np.abs(Xt[:, lo:lo + step])
        np.maximum(big, A.max(axis=1), out=big)
        np.minimum(small, A.min(axis=1, where=A > 0, initial=np.inf), out=small)
    return big, small


def _banded_rows(Xt: np.ndarray, big: np.ndarray, small: np.ndarray, beta: int) -> np.ndarray | None:
    """The rows (columns of ``Xt``, data rows) the sliced path takes: within every column's band.

    A column's band is the window of ``_MAX_SLICES * beta - 53`` binades (frexp
    exponents) that holds the most of its non-zero values; zeros fit every band.
    A row inside every band needs at most ``_MAX_SLICES`` slices per column.
    Returns None when every row is inside (the common case, decided from each
    column's largest and smallest magnitude ``big``, ``small`` without a per-value pass).
    """
    width = _MAX_SLICES * beta - 53
    live = big > 0
    top = np.frexp(big)[1]
    low = np.frexp(np.where(live, small, 1.0))[1]
    wide = np.flatnonzero(live & (top - low > width))
    if wide.size == 0:
        return None
    inside = np.ones(Xt.shape[1], bool)
    for c in wide.tolist():
        values = np.abs(Xt[c])
        nonzero = values > 0
        e = np.frexp(values)[1]
        counts = np.bincount(e[nonzero] + _EXP_OFFSET, minlength=_EXP_BINS)
        cum = np.concatenate([[0], np.cumsum(counts)])
        held = cum[width + 1:] - cum[:-(width + 1)]        # values with exponent in [i, i + width]
        lo = int(np.argmax(held)) - _EXP_OFFSET
        inside &= ~nonzero | ((e >= lo) & (e <= lo + width))
    return inside


def _sliced_sums(Xt: np.ndarray, n_neg: int, beta: int,
                 big: np.ndarray, small: np.ndarray) -> tuple[list[int], int, list[int], int]:
    """Exact ``(S1, e1, S2, e2)`` of rows ``Xt[:, n_neg:]`` minus rows ``Xt[:, :n_neg]``, by slicing.

    ``Xt`` is (k, m): one data row per column; ``big`` and ``small`` are the
    largest and smallest non-zero magnitude per data column
    (:func:`_magnitude_range`). Each data column must span at most
    ``_MAX_SLICES * beta - 53`` binades (:func:`_banded_rows`), and
    ``m * (2**beta - 1)**2 < 2**53``.
    """
    k, m = Xt.shape
    P = k * (k + 1) // 2
    live = big > 0
    if not live.any():
        return [0] * k, 0, [0] * P, 0
    top = np.frexp(big)[1].astype(np.int64)                  # |x| < 2**top in each column
    low = np.frexp(np.where(live, small, 1.0))[1].astype(np.int64)
    # Every bit of a column lies in [2**(low - 53), 2**top): ceil((top - low + 53) / beta) slices.
    n_s = int(np.where(live, -((low - 53 - top) // beta), 0).max())
    scale = (beta - top).astype(np.int32)[:, None]
    step = float(2 ** beta)
    K = n_s * k                                               # slice s of column c: row s*k + c
    # Blocks of data rows whose slices stay in cache: one pass over the data, every
    # buffer reused (fresh large temporaries cost page faults and memory traffic).
    block = max(1, min(m, _SLICE_BLOCK_CELLS // K))
    Y, H = np.empty((k, block)), np.empty((K, block))
    sums = []
    for lo_r, hi_r in ((0, n_neg), (n_neg, m)):               # the removed rows, then the added
        G = np.zeros((K, K))
        S1 = np.zeros(K)
        for lo in range(lo_r, hi_r, block):
            b = min(block, hi_r - lo)
            y, h_all = Y[:, :b], H[:, :b]
            # Exact: |y| < 2**beta (no overflow), and the lowest bit lands at
            # 2**(beta - n_s*beta) or above, far from the subnormals.
            np.ldexp(Xt[:, lo:lo + b], scale, out=y)
            used = n_s
            for s in range(n_s):
                h = h_all[s * k:(s + 1) * k]
                np.trunc(y, out=h)                            # |h| < 2**beta, exact
                if s + 1 == n_s:
                    break
                y -= h                                        # exact: the fraction
                if not y.any():                               # the rest of the slices are zero
                    used = s + 1
                    break
                y *= step                                     # exact: |y| < 1 before
            u = used * k
            # Exact: every product is below 2**(2*beta) and every sum of m of them below
            # 2**53, whatever order BLAS (and the block sums) add in.
            G[:u, :u] += _gram(h_all[:u])
            S1[:u] += h_all[:u].sum(axis=1)
        sums.append((G, S1))
    (G_neg, S1_neg), (G_pos, S1_pos) = sums
    keep = np.flatnonzero((np.diagonal(G_pos) > 0) | (np.diagonal(G_neg) > 0))   # drop all-zero slices
    G = G_pos[np.ix_(keep, keep)].astype(np.int64) - G_neg[np.ix_(keep, keep)].astype(np.int64)
    S1 = S1_pos[keep].astype(np.int64) - S1_neg[keep].astype(np.int64)
    col_c, col_s = keep % k, keep // k
    n_s = int(col_s.max()) + 1
    # S2 per (pair, slice-sum d): value sum_d acc[p, d] * 2**(top_a + top_b - beta*(d + 2))
    ia, ib = _pairs(k)
    p_idx = _pair_numbers(k)[col_c[:, None], col_c[None, :]]
    d_idx = col_s[:, None] + col_s[None, :]
    upper = p_idx >= 0
    acc = np.zeros((P, 2 * n_s - 1), np.int64)
    np.add.at(acc, (p_idx[upper], d_idx[upper]), G[upper])   # < n_s terms of < 2**53: no overflow
    acc1 = np.zeros((k, n_s), np.int64)
    np.add.at(acc1, (col_c, col_s), S1)
    top_l = top.tolist()
    width1 = beta * n_s
    e1 = int(top[live].min()) - width1
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


# OpenBLAS runs a product of at most this many multiply-adds on one thread; on a loaded
# machine its thread pool costs far more than the product (hundreds of ms).
_ONE_THREAD_GEMM = 1 << 18


def _gram(H: np.ndarray) -> np.ndarray:
    """``H @ H.T`` in pieces of at most ``_ONE_THREAD_GEMM`` multiply-adds (one BLAS thread each).

    Column blocks of H for a symmetric update while ``K**2 * 64`` fits; for taller
    H (many columns times slices), row panels of the result as well."""
    K, m = H.shape
    cols = max(_ONE_THREAD_GEMM // max(K * K, 1), 64)
    rows = max(1, _ONE_THREAD_GEMM // (cols * K))
    G = np.zeros((K, K))
    for lo in range(0, m, cols):
        B = H[:, lo:lo + cols]
        if rows >= K:
            G += B @ B.T
        else:
            Bt = B.T
            for i in range(0, K, rows):
                G[i:i + rows] += B[i:i + rows] @ Bt
    return G


def _limb_sums(Xt: np.ndarray, w: np.ndarray) -> tuple[list[int], int, list[int], int]:
    """Exact ``(S1, e1, S2, e2)`` of the rows ``Xt[:, i]`` weighted by ``w[i]`` (±1), by integer limbs.

    ``Xt`` is (k, m): one data row per column. Every value is three signed 26-bit
    limbs on the global grid of :func:`~.exact_sum.float_limbs` (limb ``j`` of a
    value worth ``2**(26*(first + j) - 1074)``). The product of two values is the 9
    limb products, grouped by ``i + j`` into 5 int64 sums below ``3 * 2**52``; each
    is split at bit 26 and the halves that land on the same grid position added, so
    every term ``np.bincount`` adds is below ``2**29`` and its float64 sums stay
    exact. The cost per row is fixed whatever the values' exponents.
    """
    k, m = Xt.shape
    first, limb = float_limbs(Xt)
    first, limb = first.reshape(k, m), limb.reshape(3, k, m)
    signed = limb * w[None, None, :] if (w < 0).any() else limb
    # S1: per column and grid position; limb j of a value lands j positions above its first
    base1 = int(first.min())
    W1 = int(first.max()) - base1 + 3
    cell1 = ((first - base1) + (np.arange(k) * W1)[:, None]).ravel()
    total1 = np.zeros(k * W1 + 2, np.int64)
    for j in range(3):
        # |limb| < 2**26 and m < 2**27 terms per cell: float64 sums exact
        part = np.bincount(cell1, weights=signed[j].ravel().astype(np.float64), minlength=k * W1)
        total1[j:j + k * W1] += part.astype(np.int64)
    s1 = limbs_to_ints(total1[:k * W1].reshape(k, W1).T)
    # S2: products of limbs, per pair and grid position (pairs along axis 0: row gathers)
    ia, ib = _pairs(k)
    P = ia.size
    base2 = 2 * base1
    W = 2 * (W1 - 3) + 6                           # positions f_a + f_b + d, d = 0..5
    offsets = (np.arange(P) * W - base2)[:, None]
    total = np.zeros(P * W + 5, np.int64)
    mask = np.int64(_LIMB_MASK)
    per = max(64, _LIMB_CELLS // P)                 # rows per step (< 2**24: sums stay exact)
    for lo in range(0, m, per):
        hi = lo + per
        La = [signed[i][ia, lo:hi] for i in range(3)]
        Lb = [limb[j][ib, lo:hi] for j in range(3)]
        T = [La[0] * Lb[0],
             La[0] * Lb[1] + La[1] * Lb[0],
             La[0] * Lb[2] + La[1] * Lb[1] + La[2] * Lb[0],
             La[1] * Lb[2] + La[2] * Lb[1],
             La[2] * Lb[2]]                       # |T_d| < 3 * 2**52: exact in int64
        f = first[:, lo:hi]
        cell = (f[ia] + f[ib] + offsets).ravel()
        for d in range(6):
            # grid position f_a + f_b + d: the low 26 bits of T_d, the high part of T_(d-1)
            # (floor split: T == low + high * 2**26); |u| < 2**29 and fewer than 2**24
            # terms per cell, so the float64 sums are exact
            if d == 0:
                u = T[0] & mask
            elif d < 5:
                u = (T[d] & mask) + (T[d - 1] >> LIMB_BITS)
            else:
                u = T[4] >> LIMB_BITS
            part = np.bincount(cell, weights=u.ravel().astype(np.float64), minlength=P * W)
            total[d:d + P * W] += part.astype(np.int64)
    s2 = limbs_to_ints(total[:P * W].reshape(P, W).T)
    return s1, LIMB_BITS * base1 + UNIT_EXP, s2, LIMB_BITS * base2 + 2 * UNIT_EXP


def _chunk_sums(X: np.ndarray, w: np.ndarray) -> list[tuple[list[int], int, list[int], int]]:
    """Exact sums of one chunk's rows, as parts: band passes on the sliced path, the rest by limbs."""
    m, k = X.shape
    beta = (53 - int(m).bit_length()) // 2          # m * (2**beta - 1)**2 < 2**53
    negative = w < 0
    if not (negative[1:] > negative[:-1]).any():  # removals already first, as a replica writes them
        Xt = np.ascontiguousarray(X.T)
    else:                                           # removals first: each sign is one block
        order = np.concatenate([np.flatnonzero(negative), np.flatnonzero(~negative)])
        Xt = np.take(X.T, order, axis=1)
        negative = negative[order]
    out = []
    for _ in range(_BAND_PASSES):
        big, small = _magnitude_range(Xt)
        inside = _banded_rows(Xt, big, small, beta)
        if inside is None:
            out.append(_sliced_sums(Xt, int(negative.sum()), beta, big, small))
            return out
        taken = int(inside.sum())
        if taken * _BAND_MIN_SHARE < Xt.shape[1]:
            break
        band = Xt[:, inside]
        out.append(_sliced_sums(band, int(negative[inside].sum()), beta, *_magnitude_range(band)))
        Xt, negative = Xt[:, ~inside], negative[~inside]
        if Xt.shape[1] == 0:
            return out
    out.append(_limb_sums(Xt, np.where(negative, -1, 1).astype(np.int64)))
    return out


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
    if n <= _SMALL_ROWS:
        return _small_sums(X.tolist(), w.tolist(), k)
    per = max(1, min(_CHUNK_ROWS, _CHUNK_CELLS // max(k * _MAX_SLICES, 1)))
    total = ExactMoments(k)
    for lo in range(0, n, per):
        for sums in _chunk_sums(X[lo:lo + per], w[lo:lo + per]):
            total._add_sums(0, *sums)
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
    def _add_sums(self, count: int, s1: list[int], e1: int, s2: list[int], e2: int) -> None:
        if e1 < self._e1:
            self._s1, self._e1 = _aligned(self._s1, self._e1, e1), e1
        if e2 < self._e2:
            self._s2, self._e2 = _aligned(self._s2, self._e2, e2), e2
        d1, d2 = e1 - self._e1, e2 - self._e2
        # a shift by 0 is the common case (the one-row path writes on this grid): skip it
        if d1:
            self._s1 = [a + (b << d1) for a, b in zip(self._s1, s1, strict=True)]
        else:
            self._s1 = [a + b for a, b in zip(self._s1, s1, strict=True)]
        if d2:
            self._s2 = [a + (b << d2) for a, b in zip(self._s2, s2, strict=True)]
        else:
            self._s2 = [a + b for a, b in zip(self._s2, s2, strict=True)]
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
        if e1 < self._e1:
            self._s1, self._e1 = _aligned(self._s1, self._e1, e1), e1
        if e2 < self._e2:
            self._s2, self._e2 = _aligned(self._s2, self._e2, e2), e2
        d1, d2 = e1 - self._e1, e2 - self._e2
        if d1:
            self._s1 = [a + (b << d1) for a, b in zip(self._s1, s1, strict=True)]
        else:
            self._s1 = [a + b for a, b in zip(self._s1, s1, strict=True)]
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
