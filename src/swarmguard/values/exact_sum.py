"""Exact, mergeable sums of float64 values (a fixed-size "superaccumulator").

Every finite float64 is an integer multiple of 2**-1074 below 2**1024, so it is
an integer of at most 2098 bits. We cut that integer range into *limbs* of
26 bits: limb ``k`` counts units of ``2**(26*k - 1074)``. A float64's 53-bit
significand, shifted to its exponent, always falls into three consecutive
limbs, each of magnitude below 2**26 (:func:`float_limbs`).

Adding limbs is integer addition, so it is exact, associative and commutative:
the state after any order, split or merge of the same values is the same
integer. Limb sums are formed with ``np.bincount`` in float64, which is exact
as long as no partial sum reaches 2**53, i.e. for up to 2**27 limbs of
magnitude < 2**26 per call; larger inputs are cut into calls of that size and
their (integer) results added in int64.

Rounding back to a float is *correct rounding* of the exact sum, the same
value as :func:`math.fsum` over all contributions, bit for bit
(:func:`round_limbs`): carries are propagated, the top non-zero limb and the three
below it are read into two floats whose one addition rounds once, every lower limb
folded into a sticky bit (round-to-odd with 25 spare bits, so the single
rounding is the correct one).

The limbs are the one exact-accumulation core of the package: :class:`ExactSum`
(one value), the consensus' per-(agent, source) sums (``exact_group_sums``,
``structures/pair_sums.py``) and the bounded route of
:class:`~swarmguard.values.exact_moments.ExactMoments` (sums of products of limbs,
read back with :func:`limbs_to_ints`) all add them.

Two things differ from :func:`math.fsum`, both documented:
an exact sum beyond the float range rounds to ``inf`` in :func:`round_limbs`
(``math.fsum`` raises ``OverflowError``; :meth:`ExactSum.get` raises
:class:`ExactSumOverflowError`, a subclass of it), and ``math.fsum`` raises on
*intermediate* overflow (``fsum([1e308, 1e308, -1e308])``) where the exact sum
is finite and returned here.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import ExactSumOverflowError, InvalidInputError
from ..validation import as_float_vector, check_finite_float
from .npz import dict_from_bytes, dict_to_bytes

__all__ = [
    "ExactSum",
    "ExactSumOverflowError",
    "LIMB_BITS",
    "N_LIMBS",
    "float_limbs",
    "grouped_limb_sums",
    "round_limbs",
    "limbs_to_fraction",
    "limbs_to_ints",
    "exact_group_sums",
    "normalise_limbs",
    "canonical_limbs",
]

_FORMAT_VERSION = 1
LIMB_BITS = 26
_MASK = (1 << LIMB_BITS) - 1
UNIT_EXP = -1074  # limb 0 counts units of 2**-1074, the smallest subnormal
_UNIT_EXP = UNIT_EXP
# Values use limbs 0..80 (2098 bits); 3 more limbs of headroom absorb the carry of
# up to 2**63 contributions, so the last limb never overflows int64.
N_LIMBS = 84
# bincount sums limbs (< 2**26) in float64; up to 2**27 of them stay below 2**53.
_BINCOUNT_CHUNK = 1 << 26


# --------------------------------------------------------------------- kernels
def float_limbs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut finite float64 values into three exact 26-bit limbs each.

    Parameters
    ----------
    values : (n,) float64 array, all finite.

    Returns
    -------
    first : (n,) int64
        Number of each value's lowest limb; limb ``k`` is worth ``2**(26*k - 1074)``.
    limb : (3, n) int64
        Signed limb values, ``|limb| < 2**26``: ``values[i] == sum_j limb[j, i] *
        2**(26*(first[i] + j) - 1074)`` exactly.

    Examples
    --------
    >>> import numpy as np
    >>> from fractions import Fraction
    >>> first, limb = float_limbs(np.array([-0.75]))
    >>> sum(Fraction(int(limb[j, 0])) * Fraction(2) ** int(26 * (first[0] + j) - 1074)
    ...     for j in range(3))
    Fraction(-3, 4)
    """
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    n = x.size
    first = np.empty(n, dtype=np.int64)
    limb = np.empty((3, n), dtype=np.int64)
    # Blocks that stay in cache are several times faster than whole-array temporaries.
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = x[start:stop]
        kernel = _limbs_block if np.isfinite(block).all() else _bit_limbs_block
        kernel(block, first[start:stop], limb[:, start:stop])
    return first, limb


_BLOCK = 16384
_LIMB_SCALE = float(1 << LIMB_BITS)


def _limbs_block(x: np.ndarray, first_out: np.ndarray, limb_out: np.ndarray) -> None:
    e = np.frexp(x)[1]                                     # |x| < 2**e
    # Grid position of the significand's last bit: x == m * 2**(position - 1074) with
    # m < 2**53 an integer; subnormals and zeros sit at 0.
    position = np.where(x != 0, np.maximum(e + 1021, 0), 0)
    first = position // LIMB_BITS
    # y = x / 2**(26*(first + 3) - 1074): |y| < 1 with every bit at 2**-78 or above, so the
    # scaling, and cutting y into three 26-bit integers (trunc, subtract), are exact; a
    # negative x gives negative limbs.
    y = np.ldexp(x, 996 - LIMB_BITS * first)
    for j in (2, 1, 0):
        y *= _LIMB_SCALE
        part = np.trunc(y)
        limb_out[j] = part
        y -= part
    first_out[:] = first


_U = np.uint64


def _bit_limbs_block(x: np.ndarray, first_out: np.ndarray, limb_out: np.ndarray) -> None:
    """:func:`_limbs_block` from the bit pattern: the same limbs for finite values, and the
    limbs a non-finite value has always had here (its exponent field read as 2**1024)."""
    bits = x.view(np.uint64)
    biased = (bits >> _U(52)) & _U(0x7FF)
    normal = (biased != 0).astype(np.uint64)
    significand = (bits & _U((1 << 52) - 1)) | (normal << _U(52))
    # Position of the significand's last bit above 2**-1074 (subnormals sit at 0).
    position = biased + (_U(1) - normal) - _U(1)
    first = (position * _U(20165)) >> _U(19)  # == position // 26 for position < 2**11
    shift = position - first * _U(LIMB_BITS)
    mask = _U(_MASK)
    low = (significand & mask) << shift  # < 2**51
    middle = ((significand >> _U(LIMB_BITS)) << shift) + (low >> _U(LIMB_BITS))  # < 2**53
    negative = (bits >> _U(63)).astype(bool)
    parts = ((low & mask), (middle & mask), (middle >> _U(LIMB_BITS)))
    for j, part in enumerate(parts):
        signed = part.view(np.int64)
        np.negative(signed, out=signed, where=negative)
        limb_out[j] = signed
    first_out[:] = first.view(np.int64)


def _flat_terms(first: np.ndarray, limb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, value) of every limb, flattened limb-major."""
    index = (first[None, :] + np.arange(3, dtype=np.int64)[:, None]).ravel()
    return index, limb.ravel()


def _split_wide(index: np.ndarray, limb: np.ndarray, group: np.ndarray):
    """Rewrite limbs of magnitude > 2**26 as several smaller limbs (same value)."""
    wide = np.abs(limb) > _MASK
    if not wide.any():
        return index, limb, group
    parts = [(index[~wide], limb[~wide], group[~wide])]
    i, v, g = index[wide], limb[wide], group[wide]
    while v.size:
        low, high = v & _MASK, v >> LIMB_BITS  # floor split: v == low + high * 2**26
        parts.append((i, low, g))
        small = np.abs(high) <= _MASK
        parts.append((i[small] + 1, high[small], g[small]))
        i, v, g = i[~small] + 1, high[~small], g[~small]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def grouped_limb_sums(
    group: np.ndarray, index: np.ndarray, limb: np.ndarray, n_groups: int,
    base: int | None = None, width: int | None = None,
) -> tuple[int, np.ndarray]:
    """Add limbs per group into a dense, limb-major window (exact integer sums).

    Parameters
    ----------
    group, index, limb : (n,) int64 arrays
        Group number in ``[0, n_groups)``, limb number and limb value of each term.
    n_groups : int
    base, width : int, optional
        The window's first limb and its number of limbs; by default the
        smallest window over the data plus 3 limbs of carry headroom.

    Returns
    -------
    base : int
    sums : (width, n_groups) int64
        ``sums[j, g]`` is the exact sum of group ``g``'s limbs numbered ``base + j``.
    """
    group = np.asarray(group, dtype=np.int64).ravel()
    index = np.asarray(index, dtype=np.int64).ravel()
    limb = np.asarray(limb, dtype=np.int64).ravel()
    index, limb, group = _split_wide(index, limb, group)
    # Zero limbs add nothing; ignoring them keeps a zero (stored at limb 0) from
    # stretching the window down to 2**-1074.
    nonzero = limb != 0
    if base is None:
        base = int(index.min(where=nonzero, initial=1 << 20)) if nonzero.any() else 0
    if width is None:
        top = int(index.max(where=nonzero, initial=-1)) if nonzero.any() else base
        width = top - base + 1 + 3
    sums = np.zeros(width * n_groups, dtype=np.int64)
    # Zero terms may sit outside the window; clipping moves them in, where they add 0.
    cell = np.clip(index - base, 0, width - 1) * n_groups + group
    for start in range(0, cell.size, _BINCOUNT_CHUNK):
        stop = start + _BINCOUNT_CHUNK
        part = np.bincount(cell[start:stop], weights=limb[start:stop], minlength=width * n_groups)
        sums += part.astype(np.int64)
    return base, sums.reshape(width, n_groups)


def normalise_limbs(sums: np.ndarray) -> None:
    """Propagate carries in place along axis 0: limbs in [0, 2**26), the last one signed."""
    for j in range(sums.shape[0] - 1):
        carry = sums[j] >> LIMB_BITS
        sums[j] &= _MASK
        sums[j + 1] += carry


def canonical_limbs(sums: np.ndarray) -> None:
    """Normalise in place to sign-magnitude form: every limb of a column has the
    column's sign and magnitude < 2**26, so equal sums have equal limbs whatever
    the window (the top limb must be headroom)."""
    normalise_limbs(sums)
    negative = sums[-1] < 0
    if negative.any():
        sub = -sums[:, negative]
        normalise_limbs(sub)
        sums[:, negative] = -sub


def round_limbs(sums: np.ndarray, base: int) -> np.ndarray:
    """Correctly rounded float64 value of each column of a limb window.

    Parameters
    ----------
    sums : (width, m) int64
        Limb sums as returned by :func:`grouped_limb_sums` (not modified); the
        limbs above the data must hold the carries, with the top one left for
        the sign (2 spare limbs suffice for fewer than 2**26 terms per cell).
    base : int
        Limb number of row 0.

    Returns
    -------
    (m,) float64
        ``RN(sum_j sums[j] * 2**(26*(base+j) - 1074))`` for each column: the
        value ``math.fsum`` gives; ``±inf`` beyond the float range; ``+0.0`` for 0.
    """
    sums = np.asarray(sums, dtype=np.int64)
    out = np.empty(sums.shape[1], dtype=np.float64)
    for start in range(0, sums.shape[1], _ROUND_BLOCK):  # blocks that stay in cache
        out[start:start + _ROUND_BLOCK] = _round_block(sums[:, start:start + _ROUND_BLOCK], base)
    return out


_ROUND_BLOCK = 32768


def _round_block(sums: np.ndarray, base: int) -> np.ndarray:
    d = np.array(sums, dtype=np.int64, copy=True)
    width, m = d.shape
    normalise_limbs(d)
    negative = d[-1] < 0
    if negative.any():
        d *= np.where(negative, -1, 1)
        normalise_limbs(d)
    top = np.zeros(m, dtype=np.int64)
    lowest = np.full(m, width, dtype=np.int64)
    for j in range(width):
        np.copyto(top, j, where=d[j] != 0)
        np.copyto(lowest, width - 1 - j, where=d[width - 1 - j] != 0)
    flat = d.ravel()
    cols = np.arange(m)

    def limb_at(k: np.ndarray) -> np.ndarray:  # limb k of each column, 0 below limb 0
        return np.where(k >= 0, flat[np.maximum(k, 0) * m + cols], 0)

    t0, t1, t2, t3 = flat[top * m + cols], limb_at(top - 1), limb_at(top - 2), limb_at(top - 3)
    high = t0.astype(np.float64) * 2.0**78 + t1.astype(np.float64) * 2.0**52  # exact: 52 bits
    sticky = (lowest < top - 3).astype(np.int64)
    low = ((t2 << LIMB_BITS) | t3 | sticky).astype(np.float64)  # exact, < 2**52
    with np.errstate(over="ignore"):
        value = np.ldexp(high + low, LIMB_BITS * (base + top - 3) + _UNIT_EXP)
    value[d[-1] > _MASK] = np.inf  # cannot happen with enough headroom; kept as a guard
    np.negative(value, out=value, where=negative)
    value[lowest == width] = 0.0
    return value


def limbs_to_ints(sums: np.ndarray) -> list[int]:
    """Each column of a (width, m) limb window as one Python integer (limb ``j`` worth ``2**(26*j)``).

    Limbs need not be normalised: any signed int64 values are added exactly.
    Multiply by ``2**(26*base - 1074)`` for the value on the global grid.

    Examples
    --------
    >>> import numpy as np
    >>> limbs_to_ints(np.array([[1, -1], [2, 0]]))
    [134217729, -1]
    """
    sums = np.asarray(sums, dtype=np.int64)
    if sums.ndim != 2:
        raise InvalidInputError(f"a limb window is 2-D (width, m), got shape {sums.shape}")
    rows = sums.tolist()
    out = []
    for c in range(sums.shape[1]):
        x = 0
        for row in reversed(rows):        # Horner from the most significant limb
            x = (x << LIMB_BITS) + row[c]
        out.append(x)
    return out


def limbs_to_fraction(sums: np.ndarray, base: int = 0) -> Fraction:
    """Exact rational value of one limb vector (for tests and audits)."""
    (total,) = limbs_to_ints(np.asarray(sums, dtype=np.int64).reshape(-1, 1))
    return Fraction(total) * Fraction(2) ** (LIMB_BITS * base + _UNIT_EXP)


def exact_group_sums(group: np.ndarray, values: np.ndarray, n_groups: int,
                     extra: float | None = None, counts: np.ndarray | None = None) -> np.ndarray:
    """``math.fsum`` of ``values`` per group, vectorised (finite input only).

    ``extra``, when given, is one more term added to every group (a prior).
    Groups of at most two terms take one float pass (``np.bincount`` adds
    ``0.0 + a + b`` in order, and one IEEE addition is correctly rounded, so
    that *is* ``math.fsum([a, b])``, signed zeros included). Groups of three
    to ``_FAST_MAX_TERMS`` terms try a certified float path
    (:func:`_certified_group_sums`: error-free transformations plus a proof
    that the result is the correctly rounded one); the groups it cannot
    certify, and larger groups, go through the limbs. ``counts`` (terms per
    group, without ``extra``) saves a pass when the caller has it.

    Examples
    --------
    >>> import numpy as np
    >>> exact_group_sums(np.array([0, 1, 0, 1]), np.array([1e16, 1.0, 2.0, 2.0]), 2).tolist()
    [1.0000000000000002e+16, 3.0]
    """
    values = np.asarray(values, dtype=np.float64)
    group = np.asarray(group, dtype=np.int64)
    if n_groups == 0:
        return np.zeros(0)
    if counts is None:
        counts = np.bincount(group, minlength=n_groups)
    with np.errstate(over="ignore"):  # an overflow gives inf, as the limb path does
        out = np.bincount(group, weights=values, minlength=n_groups)
        if extra is not None:
            out = out + extra
    many = counts >= (3 - (extra is not None))
    if not many.any():
        return out
    if many.all():
        slow_groups, slow_group_of, slow_values, slow_counts = np.arange(n_groups), group, values, counts
    else:
        selected = many[group]
        slow_groups = np.flatnonzero(many)
        # Renumber the slow groups 0..k-1 (a search over them: cheaper than a cumsum over
        # every group when few groups are slow).
        slow_group_of = np.searchsorted(slow_groups, group[selected])
        slow_values = values[selected]
        slow_counts = counts[slow_groups]
    sums, done = _certified_group_sums(slow_group_of, slow_values, slow_counts, extra)
    out[slow_groups[done]] = sums[done]
    if not done.all():
        rest = np.flatnonzero(~done)
        keep = ~done[slow_group_of]
        renumber = np.searchsorted(rest, slow_group_of[keep])
        out[slow_groups[rest]] = _limb_group_sums(renumber, slow_values[keep], rest.size, extra)
    return out


# Groups of up to this many terms try the certified float path; it lays them out as a
# dense (terms, groups) float array of at most _FAST_CELLS cells per step.
_FAST_MAX_TERMS = 64
_FAST_CELLS = 1 << 18


def _certified_group_sums(group: np.ndarray, values: np.ndarray, counts: np.ndarray,
                          extra: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Correctly rounded sums per group where a float computation can prove them.

    Returns ``(sums, done)``: ``sums[g]`` equals ``math.fsum`` of group ``g``'s
    terms (plus ``extra``) wherever ``done[g]``; other groups must be summed
    another way. ``counts[g]`` is the number of terms of group ``g``
    (``group`` in ``[0, counts.size)``).

    Method, per group (all vectorised over groups):

    1. A tree of Knuth TwoSums (``a + b = s + e`` exactly, no overflow) reduces
       the terms to one float ``s`` and exact error terms ``e1``:
       ``S = s + sum(e1)``. The same tree on ``e1`` gives ``sum(e1) = E + sum(e2)``.
    2. ``r = fl(s + E)`` and its exact error ``t`` (TwoSum): ``S = r + t + sum(e2)``.
    3. If every ``e2`` is zero, ``S = s + E`` exactly and ``r``, one IEEE
       addition of it, is its correct rounding (ties included): certified.
    4. Else ``|S - r| <= |t| + |E2| + delta``, ``E2`` the float sum of ``e2`` and
       ``delta = gamma_(m-1) sum|e2| <= A m 2**-52`` (``A`` the float sum of
       ``|e2|``, ``m`` their number; additions that underflow are exact). If that
       bound, rounded up, is below half the gap from ``r`` to its nearer
       neighbour float, ``S`` lies strictly inside ``r``'s rounding interval and
       ``RN(S) = r``: certified. ``r = 0``, non-finite values and near-ties are
       never certified (they fall back to the limbs).
    """
    n_groups = counts.size
    sums = np.zeros(n_groups)
    done = np.zeros(n_groups, dtype=bool)
    off = int(extra is not None)
    fast = counts + off <= _FAST_MAX_TERMS
    if not fast.any():
        return sums, done
    if not fast.all():  # only fast groups are laid out; the others stay not done
        keep = fast[group]
        group, values = group[keep], values[keep]
        counts = np.where(fast, counts, 0)
    n = values.size
    if n > 1 and not (group[1:] >= group[:-1]).all():
        order = np.argsort(group, kind="stable")
        group, values = group[order], values[order]
    ends = np.cumsum(counts)
    starts = ends - counts
    rank = np.arange(n, dtype=np.int64) - starts[group] + off
    terms = counts + off
    # Groups are laid out by width class (terms in (w/2, w]) so that padding wastes
    # at most half of each block; blocks hold at most _FAST_CELLS cells.
    renumber = np.empty(n_groups, dtype=np.int64)
    low = 0
    for width in (4, 8, 16, 32, 64):
        in_class = fast & (terms > low) & (terms <= width)
        low = width
        chosen = np.flatnonzero(in_class)
        if chosen.size == 0:
            continue
        renumber[chosen] = np.arange(chosen.size)
        mine = in_class[group]
        local, c_rank, c_values = renumber[group[mine]], rank[mine], values[mine]
        per_block = max(_FAST_CELLS // width, 1)
        cuts = np.searchsorted(local, np.arange(0, chosen.size + per_block, per_block))
        for i, g_lo in enumerate(range(0, chosen.size, per_block)):
            g_hi = min(g_lo + per_block, chosen.size)
            e_lo, e_hi = cuts[i], cuts[i + 1]
            block = chosen[g_lo:g_hi]
            sums[block], done[block] = _certified_block(
                local[e_lo:e_hi] - g_lo, c_rank[e_lo:e_hi], c_values[e_lo:e_hi], g_hi - g_lo, width, extra)
    done &= fast
    return sums, done


def _two_sum_tree(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce the rows of ``x`` (terms x groups) by a tree of Knuth TwoSums.

    Returns ``(s, e)``: ``s`` (groups,) and the error terms ``e`` (rows - 1, groups)
    with ``sum(x[:, g]) == s[g] + sum(e[:, g])`` exactly, barring overflow (which
    leaves a non-finite ``s``)."""
    errors = []
    while x.shape[0] > 1:
        h = x.shape[0] // 2
        a, b = x[:h], x[h:2 * h]
        s = a + b
        bp = s - a
        errors.append((a - (s - bp)) + (b - bp))  # a + b == s + e exactly
        x = np.concatenate([s, x[2 * h:]]) if x.shape[0] % 2 else s
    e = np.concatenate(errors) if errors else np.zeros((0, x.shape[1]))
    return x[0], e


def _certified_block(group, rank, values, k, width, extra):
    """Certified sums of ``k`` groups laid out as a (width, k) array; see
    :func:`_certified_group_sums`. Returns ``(r, ok)``."""
    x = np.zeros((width, k))
    if extra is not None:
        x[0] = extra
    x[rank, group] = values
    with np.errstate(over="ignore", invalid="ignore"):
        s, e1 = _two_sum_tree(x)            # S = s + sum(e1)
        big_e, e2 = _two_sum_tree(e1) if e1.shape[0] else (np.zeros(k), e1)  # sum(e1) = E + sum(e2)
        r = s + big_e
        rp = r - s
        t = (s - (r - rp)) + (big_e - rp)     # s + E == r + t exactly
        # S = r + t + sum(e2). No second-level error: S == s + E exactly and
        # r = fl(s + E) is its correct rounding (one IEEE addition, ties included).
        abs_e2 = np.abs(e2).sum(axis=0)
        exact = abs_e2 == 0
        # Otherwise |S - r| <= |t| + |E2| + delta with E2 the float sum of e2 and
        # delta = gamma_(m-1) * sum|e2| <= abs_e2 * m * 2**-52 (m = rows of e2); S is
        # strictly inside r's rounding interval when that is below half the gap to the
        # nearer neighbour of r (bound rounded up, plus an absolute margin for underflow).
        m = max(e2.shape[0], 1)
        bound = (np.abs(t) + np.abs(e2.sum(axis=0)) + abs_e2 * (m * 2.0**-52)) * (1.0 + 2.0**-40) + 2.0**-1060
        gap = np.minimum(np.nextafter(r, np.inf) - r, r - np.nextafter(r, -np.inf))
        ok = (exact | (bound < 0.5 * gap)) & (r != 0) & np.isfinite(r) & np.isfinite(abs_e2)
    return r, ok


def _limb_group_sums(group: np.ndarray, values: np.ndarray, n_groups: int, extra: float | None) -> np.ndarray:
    index, limb = _flat_terms(*float_limbs(values))
    g = np.tile(group, 3)
    if extra is not None:
        e_first, e_limb = float_limbs(np.array([extra]))
        index = np.concatenate([index, np.repeat(e_first[0] + np.arange(3), n_groups)])
        limb = np.concatenate([limb, np.repeat(e_limb[:, 0], n_groups)])
        g = np.concatenate([g, np.tile(np.arange(n_groups, dtype=np.int64), 3)])
    base, sums = grouped_limb_sums(g, index, limb, n_groups)
    return round_limbs(sums, base)


# --------------------------------------------------------------------- the value
class ExactSum:
    """An exact sum of float64 values: fixed size, mergeable, serialisable.

    The state is 84 int64 limbs (672 bytes) and a count, whatever the number of
    values. Updates, reverts and merges are integer additions, so the result
    does not depend on the order of arrival or on how the values were split and
    merged; :meth:`get` returns the correctly rounded sum, equal to
    :func:`math.fsum` of every value added, bit for bit.

    Examples
    --------
    >>> import math
    >>> values = [1e16, 1.0, -1e16, 1e-300, 3.5]
    >>> a = ExactSum()
    >>> a.update_many(values[:2])
    >>> b = ExactSum()
    >>> for v in values[2:]:
    ...     b.update(v)
    >>> a += b
    >>> a.get() == math.fsum(values), a.get()
    (True, 4.5)
    >>> a.revert(3.5)
    >>> a.get(), a.count
    (1.0, 4)
    >>> ExactSum.from_bytes(a.to_bytes()) == a
    True
    """

    __slots__ = ("limbs", "count")

    def __init__(self) -> None:
        self.limbs = np.zeros(N_LIMBS, dtype=np.int64)
        self.count = 0

    # ------------------------------------------------------------------ updates
    def _add_values(self, values: np.ndarray, sign: int) -> None:
        # the shared core: limbs on the global grid, added per limb position
        index, limb = _flat_terms(*float_limbs(values))
        _, total = grouped_limb_sums(np.zeros(index.size, np.int64), index, limb, 1, base=0, width=N_LIMBS)
        self.limbs += total[:, 0] if sign > 0 else -total[:, 0]
        normalise_limbs(self.limbs[:, None])
        self.count += sign * values.size

    def update(self, x: Any) -> None:
        """Add one finite value."""
        x = check_finite_float(x, "x")
        self._add_values(np.array([x]), +1)

    def update_many(self, values: Any) -> None:
        """Add every value of a 1-D array (all finite, else nothing is added)."""
        values = as_float_vector(values, "values", allow_empty=True)
        self._add_values(values, +1)

    def revert(self, x: Any) -> None:
        """Remove one value that was added before (exact inverse of :meth:`update`)."""
        x = check_finite_float(x, "x")
        if self.count < 1:
            raise InvalidInputError("cannot revert from an empty ExactSum")
        self._add_values(np.array([x]), -1)

    def revert_many(self, values: Any) -> None:
        """Remove values that were added before."""
        values = as_float_vector(values, "values", allow_empty=True)
        if values.size > self.count:
            raise InvalidInputError(f"cannot revert {values.size} values from an ExactSum of {self.count}")
        self._add_values(values, -1)

    # ------------------------------------------------------------------ merging
    def __iadd__(self, other: ExactSum) -> ExactSum:
        if not isinstance(other, ExactSum):
            return NotImplemented
        self.limbs += other.limbs
        normalise_limbs(self.limbs[:, None])
        self.count += other.count
        return self

    def __add__(self, other: ExactSum) -> ExactSum:
        if not isinstance(other, ExactSum):
            return NotImplemented
        result = self.copy()
        result += other
        return result

    def __isub__(self, other: ExactSum) -> ExactSum:
        """Remove a part that was merged in before (inverse of ``+=``)."""
        if not isinstance(other, ExactSum):
            return NotImplemented
        if other.count > self.count:
            raise InvalidInputError(f"cannot subtract an ExactSum of {other.count} from one of {self.count}")
        self.limbs -= other.limbs
        normalise_limbs(self.limbs[:, None])
        self.count -= other.count
        return self

    def __sub__(self, other: ExactSum) -> ExactSum:
        if not isinstance(other, ExactSum):
            return NotImplemented
        result = self.copy()
        result -= other
        return result

    @classmethod
    def merge_all(cls, parts: Iterable[ExactSum]) -> ExactSum:
        """The exact sum of many parts."""
        result = cls()
        for p in parts:
            if not isinstance(p, ExactSum):
                raise InvalidInputError(f"merge_all needs ExactSum parts, got {type(p).__name__}")
            result.limbs += p.limbs
            result.count += p.count
        normalise_limbs(result.limbs[:, None])
        return result

    # ------------------------------------------------------------------ results
    def get(self) -> float:
        """The correctly rounded sum (``math.fsum`` of every value added)."""
        value = float(round_limbs(self.limbs[:, None], 0)[0])
        if not np.isfinite(value):
            raise ExactSumOverflowError("the exact sum is beyond the float64 range")
        return value

    def to_fraction(self) -> Fraction:
        """The exact sum as a :class:`fractions.Fraction`."""
        return limbs_to_fraction(self.limbs, 0)

    # ------------------------------------------------------------------ plumbing
    def copy(self) -> ExactSum:
        result = ExactSum()
        result.limbs = self.limbs.copy()
        result.count = self.count
        return result

    def __len__(self) -> int:
        return self.count

    def __eq__(self, other: object) -> bool:
        """Same exact sum and count (the normalised limbs are canonical)."""
        if not isinstance(other, ExactSum):
            return NotImplemented
        return self.count == other.count and np.array_equal(self.limbs, other.limbs)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        try:
            shown = repr(self.get())
        except ExactSumOverflowError:
            shown = "overflow"
        return f"ExactSum(count={self.count}, sum={shown})"

    def to_dict(self) -> dict[str, np.ndarray]:
        """The state as a dict of NumPy arrays (copies)."""
        return {
            "version": np.array(_FORMAT_VERSION),
            "count": np.array(self.count, dtype=np.int64),
            "limbs": self.limbs.copy(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ExactSum:
        """Rebuild from :meth:`to_dict` output, validating every field."""
        try:
            version = int(np.asarray(state["version"]))
            count = int(np.asarray(state["count"]))
            limbs = np.asarray(state["limbs"])
        except KeyError as exc:
            raise InvalidInputError(f"ExactSum state lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"ExactSum state is malformed: {exc}") from exc
        if version != _FORMAT_VERSION:
            raise InvalidInputError(f"unsupported ExactSum format version {version}")
        if limbs.shape != (N_LIMBS,) or limbs.dtype != np.int64:
            raise InvalidInputError(f"ExactSum limbs must be {N_LIMBS} int64, got {limbs.dtype} {limbs.shape}")
        if count < 0:
            raise InvalidInputError(f"ExactSum count must be >= 0, got {count}")
        normal = limbs.copy()
        normalise_limbs(normal[:, None])
        if not np.array_equal(normal, limbs):
            raise InvalidInputError("ExactSum limbs are not normalised")
        result = cls()
        result.limbs, result.count = limbs.copy(), count
        return result

    def to_bytes(self) -> bytes:
        """Serialise to bytes (an ``.npz`` archive, no pickle)."""
        return dict_to_bytes(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> ExactSum:
        """Inverse of :meth:`to_bytes`."""
        state = dict_from_bytes(data, "ExactSum")
        return cls.from_dict(state)

