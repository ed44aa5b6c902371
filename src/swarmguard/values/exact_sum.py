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
from .exact_group_sums import _certified_group_sums, exact_group_sums  # noqa: F401  (its old home)
from .limbs import (
    LIMB_BITS,
    N_LIMBS,
    UNIT_EXP,
    _flat_terms,
    canonical_limbs,
    float_limbs,
    grouped_limb_sums,
    limbs_to_fraction,
    limbs_to_ints,
    normalise_limbs,
    round_limbs,
)
from .npz import NpzBytes

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
    "UNIT_EXP",
]

_FORMAT_VERSION = 1


# --------------------------------------------------------------------- the value
class ExactSum(NpzBytes):
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
