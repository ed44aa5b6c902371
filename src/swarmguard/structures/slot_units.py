"""Per-feature power-of-two units of a :class:`~swarmguard.structures.slot_tree.SlotTree`.

Units: a power of two per feature
---------------------------------
Features are stored as given, but every deviation is multiplied by a
per-feature power of two, ``unit = 2**-e``, *before* anything is squared:
offsets and co-moments of the nodes are kept in those internal units
(the slot tree's :meth:`~swarmguard.structures.slot_tree.SlotTree.root_state`,
:meth:`~swarmguard.structures.slot_tree.SlotTree.nodes_state`, and
:meth:`PowerOfTwoUnits.deviations` here), and the slot tree's
:meth:`~swarmguard.structures.slot_tree.SlotTree.root_moments` /
:meth:`~swarmguard.structures.slot_tree.SlotTree.nodes_moments` and
:meth:`PowerOfTwoUnits.to_user` here convert back.
Multiplying by a power of two is exact in binary, so the internal numbers of a
dataset and of the same dataset times ``2**k`` are bitwise equal, and features
of magnitude 1e-300 are squared as numbers near 1 instead of underflowing (or
1e-162 ones to subnormals that break the factorisation).

``e`` is chosen from the data whenever every node is recomputed (the first
data, growth, re-anchoring): the exponent of the largest ``|x - shift|`` of the
feature (of ``|shift|`` for a constant feature). A feature that is zero in every
vector so far has no unit yet (``unit_known`` False, a placeholder ``e = 1``);
the first vector that is non-zero there gives the feature its unit *from its own
value*, on the batch and the per-item path alike. That is exact and O(d): every
stored deviation, offset and co-moment of such a feature is exactly 0 in any
unit, so no square is ever formed in the placeholder.

The units then stay inside a band (hysteresis, so a feature is not rescaled on
every wobble): scaled deviations up to ``2**100`` (squares far from overflow)
and scaled variances down to ``2**-200`` (far from underflow). Data whose
scaled deviation would exceed ``2**100`` are detected in the caller's units
*before* the update (so no square is formed in a unit that could overflow) and
trigger a full rebuild with new units; a flush that finds a feature's variance
below ``2**-200`` internal units (and 2**64 below its value when the unit was
chosen) rebuilds too. A collapse of the spread between flushes cannot hide from
that check: the per-feature error budget flushes as soon as a feature's
co-moment falls more than about 2**15 below what its accumulated error was
measured against. Rebuilds are O(state), as a growth step, and happen only when
a feature's magnitude changes by dozens of binary orders.

Multiplying by a unit is exact as long as the factor and the product are
normal; units are kept in ``2**-1000 .. 2**1000`` (normal), and products of two
units (``M2 * 2**(e_i + e_j)``, which may fall below the normal range) are
applied with :func:`numpy.ldexp` on the summed exponent, one correctly rounded
step, never as a subnormal or zero factor (:func:`scale_outer`).

This module holds those units' constants, :func:`scale_outer` and the slot
tree's methods that choose, adopt and apply them (a mixin: the state lives on
the tree).
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["PowerOfTwoUnits", "scale_outer", "MAX_UNIT_EXPONENT"]

_HIGH = 2.0**100        # a scaled deviation above: choose the units again (squares stay far from overflow)
_LOW_VAR = 2.0**-200    # a scaled variance below (and 2**64 below its value at the choice): choose again
_FALL = 2.0**-64
_MAX_EXP = 1000         # |e| bound: 2**1000 is finite, and scales subnormals into the normal range
MAX_UNIT_EXPONENT = _MAX_EXP

# ndarray.any() goes through a Python wrapper; the ufunc's reduce is the same test, a
# third of the time on a 10-vector (the per-item path makes several such tests)
_any = np.logical_or.reduce


def scale_outer(m2: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``m2 * 2**(e_i + e_j)``, exactly (one correctly rounded step), as a new array.

    The product of two units may lie below the normal range (2**-1022) or even
    below the smallest subnormal while ``m2 * 2**(e_i + e_j)`` is a normal
    number; forming the factor first would round it (or flush it to 0). ldexp on
    the summed exponent applies it in one step.

    Examples
    --------
    >>> import numpy as np
    >>> float(scale_outer(np.array([[2.0**200]]), np.array([-550]))[0, 0]) == 2.0**-900
    True
    """
    e = np.asarray(exponent, dtype=np.int64)
    return np.ldexp(m2, e[:, None] + e[None, :])


class PowerOfTwoUnits:
    """The unit methods of :class:`~swarmguard.structures.slot_tree.SlotTree`: choose the
    per-feature exponents, adopt them for new features, apply them and undo them."""

    def _units_stale(self, diag: np.ndarray, n: float) -> bool:
        """Whether a feature's spread has fallen so far below its unit that squares could underflow."""
        var = diag * (1.0 / (n - 1.0))
        v0 = self._var_at_unit
        # var == 0 counts when the feature had a spread at the choice (its squares may have underflowed)
        shrunk = (var < _LOW_VAR) & np.where(v0 > 0, var < v0 * _FALL, var > 0)
        woke = ~self._unit_known & ((var > 0) | (self._root_off != 0))
        return bool((shrunk | woke).any())

    def _choose_units(self, D: np.ndarray) -> None:
        """Per-feature powers of two from deviations ``D = X - shift`` of every stored vector."""
        spread = np.abs(D).max(axis=0) if D.shape[0] else np.zeros(self.dim)
        ref = np.where(spread > 0, spread, np.abs(self.shift))
        self._unit_known = ref > 0
        self._all_known = bool(self._unit_known.all())
        _, e = np.frexp(np.where(self._unit_known, ref, 1.0))
        self.exponent = np.clip(e, -_MAX_EXP, _MAX_EXP).astype(np.int64)
        self.unit = np.ldexp(1.0, -self.exponent)
        with np.errstate(over="ignore"):          # beyond the float range: no finite x is too far
            self._limit = np.ldexp(_HIGH, self.exponent)
        self.unit_choices += 1

    def _adopt_units(self, X: np.ndarray) -> None:
        """Give features without a unit yet one from the first non-zero values ``X`` (rows or a vector).

        Such a feature holds 0 in every stored vector, its shift is 0, and so is
        every deviation, offset and co-moment entry of it: in any unit. Choosing its
        unit now, from the new values themselves, is exact and O(d), and no square
        is formed in the placeholder unit (where 1e-300 would underflow).
        """
        spread = np.abs(X) if X.ndim == 1 else np.abs(X).max(axis=0)
        new = ~self._unit_known & (spread > 0)
        if not new.any():
            return
        _, e = np.frexp(spread[new])
        e = np.clip(e, -_MAX_EXP, _MAX_EXP).astype(np.int64)
        self.exponent[new] = e
        self.unit[new] = np.ldexp(1.0, -e)
        with np.errstate(over="ignore"):
            self._limit[new] = np.ldexp(_HIGH, e)
        self._unit_known[new] = True
        self._all_known = bool(self._unit_known.all())

    def deviations(self, X: np.ndarray) -> np.ndarray:
        """``(X - shift) * unit``: vectors as the nodes' internal units see them (a new array)."""
        D = np.subtract(X, self.shift)
        D *= self.unit
        return D

    def to_user(self, off: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, M2) in the caller's units from an internal (offset, M2); exact but for under/overflow."""
        scale = np.ldexp(1.0, self.exponent)
        return self.shift + off * scale, scale_outer(m2, self.exponent)

    def _too_far(self, X: np.ndarray, bound: float | None = None) -> bool:
        """Whether vectors ``X`` lie outside the units' safe band (choose the units again).

        Compared in the caller's units (``|x - shift| > 2**100 / unit``), since the
        scaled deviation itself may overflow. ``bound``, a bound on every ``|x|``
        (the validator's), settles most batches without a pass over the columns:
        ``|x - s| <= |x| + |s|`` and rounding is monotone, so no rounded
        ``|x_j - s_j|`` exceeds the rounded ``bound + max|s|``; when that is within
        every feature's limit, no column's test below could be true.
        """
        if X.size == 0:
            return False
        if bound is not None and bound + float(np.maximum.reduce(np.abs(self.shift))) <= float(
                np.minimum.reduce(self._limit)):
            return False
        if X.ndim == 1:         # one vector (the per-item path): Python floats, no reduction set-up
            return any(map(operator.gt, np.abs(X - self.shift).tolist(), self._limit.tolist()))
        # Rows: each column's extremes only (rounding is monotone, so the largest |x - shift|
        # of a column is at its largest or smallest x), without an (n, d) temporary.
        above = np.fmax.reduce(X, axis=0) - self.shift     # (fmax: a NaN hides no other value)
        below = self.shift - np.fmin.reduce(X, axis=0)
        return bool(_any(np.maximum(above, below) > self._limit))
