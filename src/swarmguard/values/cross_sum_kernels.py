"""The kernels of exact column sums and cross-product sums of float64 rows, as integers.

The kernels behind :class:`~swarmguard.values.exact_moments.ExactMoments` (see
that module for the method): error-free slicing (:func:`_sliced_sums`, the fast
path), integer limbs (:func:`_limb_sums`, the bounded path), rows grouped by
exponent band (:func:`_banded_rows`), and plain Python integers for a handful of
rows (:func:`row_change_sums`, the per-item path; :func:`row_change_diagonal`, its
O(k) part that a one-row write needs at once). Chunks are added up by
:func:`~swarmguard.values.exact_moments.exact_cross_sums`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .exact_sum import LIMB_BITS, UNIT_EXP, float_limbs, limbs_to_ints

__all__ = ["row_change_diagonal", "row_change_sums"]

_LIMB_MASK = (1 << LIMB_BITS) - 1

# Up to this many rows, Python integers beat the slicing's fixed NumPy overhead.
_SMALL_ROWS = 6
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
    (the cross products are folded later, see
    :meth:`~swarmguard.values.exact_moments.ExactMoments._change_row`).

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
