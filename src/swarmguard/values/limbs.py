"""Exact float64 arithmetic in integer limbs: the kernels every exact sum uses.

A finite float64 is three 26-bit limbs at a position (:func:`float_limbs`); sums
of limbs are integers (:func:`grouped_limb_sums`), carried into canonical form
(:func:`normalise_limbs`, :func:`canonical_limbs`) and correctly rounded back to
a float (:func:`round_limbs`) or read as exact numbers (:func:`limbs_to_ints`,
:func:`limbs_to_fraction`). See :mod:`swarmguard.values.exact_sum` for the method."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..errors import InvalidInputError

__all__ = ["LIMB_BITS", "N_LIMBS", "UNIT_EXP", "float_limbs", "grouped_limb_sums", "normalise_limbs", "canonical_limbs",
           "round_limbs", "limbs_to_ints", "limbs_to_fraction"]

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
