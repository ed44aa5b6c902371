"""Correctly rounded per-group sums of float64 values (``math.fsum`` of each group, vectorised).

A certified float fast path where the groups are small and well conditioned, the
limb kernels of :mod:`swarmguard.values.limbs` everywhere else."""

from __future__ import annotations

import numpy as np

from .limbs import _flat_terms, float_limbs, grouped_limb_sums, round_limbs

__all__ = ["exact_group_sums"]

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
