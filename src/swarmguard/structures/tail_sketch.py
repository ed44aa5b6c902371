"""Per-feature quantile sketches (Apache DataSketches' REQ) and tail probabilities read from them.

One :class:`FeatureSketches` holds, per feature of a population (a tree node, a
shard, a region), two DataSketches *relative-error* quantile sketches
(``req_floats_sketch`` in high-rank-accuracy mode): one of the values, for the
right tail, and one of their negatives, for the left tail. Sketches of two
populations merge into the sketch of their union, so they travel up a tree,
between shards and in checkpoints exactly like the moments do
(:meth:`FeatureSketches.merge`; :meth:`FeatureSketches.to_bytes` uses the
library's own serialisation, never pickle).

Why REQ and not KLL
-------------------
KLL's guarantee is *additive*: a rank within ``ε(k) · n`` (``ε`` = 1.3 % for
``k = 200``, the library's ``get_normalized_rank_error``), uniformly. A tail
probability of an anomaly is ``1e-3 .. 1e-5``, far below ``ε``: measured on
200 000 values with ``k = 400``, KLL reported *no* value at or above the 20th
largest (the top retained values weigh 256 each), which makes tail evidence
wrong exactly where it is read. REQ (Cormode, Karnin, Liberty, Thaler & Veselý,
2021, "Relative error streaming quantiles", PODS) bounds the error of the count
of values at or above ``y`` *relative to that count*: in high-rank-accuracy
mode the top of the distribution is kept exactly and a count ``c`` from the top
is off by at most ``O(ε) · c`` (``ε ~ 1/k`` up to a log factor). On the same
data REQ with ``k = 12`` counted the top 1, 2, 3, 5, …, 500 values exactly and
the top 2000 as 1982. Two sketches per feature put both tails at the top.

What is approximate, and how much
---------------------------------
Values are kept as float32 (REQ's type): values closer than ``2**-24`` relative
tie, and a tie counts on both sides (both tails are inclusive), which can only
make a probability larger. A sketch is exact until its first compaction (about
``4k`` values); beyond it the library's ``get_rank_lower_bound`` /
``get_rank_upper_bound`` (relative, at 1–3 standard deviations) bound every
rank; :meth:`FeatureSketches.tail_bounds` returns them for the tail
probabilities. Compaction is randomised by the library (its own generator,
which Python cannot seed): two sketches of the same values agree within the
bounds, not bit for bit once compacted, so answers that depend on a compacted
sketch are reproducible within those bounds only, on one engine or across engines.

No revert
---------
Quantile sketches have no deletion: a value cannot be taken out. A node whose
members change is *rebuilt* from its current members' values (or from its
children's sketches, :mod:`swarmguard.structures.sketch_tree`): a sketch of
exactly the current members, with the same bounds -- never one that still
counts a removed or replaced value.

Tail probabilities (ECOD, Li et al. 2022)
-----------------------------------------
For a value ``x`` of feature ``j``, :meth:`FeatureSketches.tail_probabilities`
returns the left tail ``P(X_j <= x)`` and the right tail ``P(X_j >= x)``,
read from each sketch with one library call for all the rows (``get_cdf`` at
the rows' distinct values: the library's own ranks).
``members=True`` (an agent scored against a population it belongs to) floors
each count at one value -- the agent's own; ``members=False`` (a value from
outside) counts it in, ``(W + 1) / (n + 1)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import (
    DimensionMismatchError,
    InvalidInputError,
    MissingDependencyError,
    NonFiniteError,
)
from ..lazy_import import module_on_first_use

__all__ = ["FeatureSketches", "TailProbabilities", "DEFAULT_SKETCH_K"]

DEFAULT_SKETCH_K = 12       # REQ's default; the top of each tail is kept exactly
MAX_SKETCH_K = 254          # the Python binding stores k in one byte (see FeatureSketches)
_MAGIC = b"SGREQ1"
_HEADER = struct.Struct("<6sII")   # magic, features, k
_LENGTH = struct.Struct("<Q")
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_datasketches = module_on_first_use("datasketches")


def _library():
    try:
        return _datasketches()
    except ImportError:    # pragma: no cover - the `tails` extra is installed by make test
        raise MissingDependencyError(
            "tail sketches need Apache DataSketches: pip install 'swarmguard[tails]'") from None


@dataclass(frozen=True)
class TailProbabilities:
    """Per-feature tail probabilities of rows against a population (arrays ``(m, d)``).

    ``left[i, j] = P(X_j <= x_ij)``, ``right[i, j] = P(X_j >= x_ij)``;
    ``skewness[j]``: the population's quantile skewness of feature ``j``
    (:meth:`FeatureSketches.quantile_skewness`); ``exact``: whether every
    sketch read still held all its values.
    """

    left: np.ndarray
    right: np.ndarray
    skewness: np.ndarray
    exact: bool


def _count_at_least(sketch, x: np.ndarray) -> np.ndarray:
    """Weight of the sketch's retained values ``>= x`` (``x`` float32), one library call.

    ``get_cdf`` (exclusive) at the sorted distinct queries gives ``P(X < x)``; the
    count at or above is ``n (1 - P)``, an integer sum of weights (rounded back).
    """
    distinct, where = np.unique(x, return_inverse=True)
    below = np.asarray(sketch.get_cdf(distinct, False), dtype=np.float64)[:-1]
    return np.rint(float(sketch.n) * (1.0 - below))[where.reshape(-1)]


def _as_float32(X: np.ndarray) -> np.ndarray:
    if not np.isfinite(X).all():
        raise NonFiniteError("sketched features must be finite")
    if X.size and np.abs(X).max() > _FLOAT32_MAX:
        raise NonFiniteError("sketched features must lie within float32's range (pass them in scaled units)")
    return X.astype(np.float32)


class FeatureSketches:
    """Two REQ quantile sketches per feature of one population (its left and right tails).

    Parameters
    ----------
    features : int
        Number of features ``d``.
    k : int
        REQ's accuracy parameter, an even number in 4 .. 254. The C++ library
        allows up to 1024, but the ``datasketches`` Python binding keeps ``k``
        in one byte (``req_floats_sketch(1000).k == 232``), so a larger value
        would silently become another one and no longer load back.

    Examples
    --------
    >>> import numpy as np
    >>> s = FeatureSketches(2)
    >>> s.update_many(np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]]))
    >>> t = s.tail_probabilities(np.array([[3.0, 10.0]]))
    >>> t.left.tolist(), t.right.tolist()
    ([[1.0, 0.25]], [[0.25, 1.0]])
    """

    __slots__ = ("k", "_right", "_left")

    def __init__(self, features: int, k: int = DEFAULT_SKETCH_K):
        if not isinstance(features, (int, np.integer)) or isinstance(features, bool) or features < 1:
            raise InvalidInputError(f"features must be a positive integer, got {features!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 4 <= k <= MAX_SKETCH_K or k % 2:
            raise InvalidInputError(f"sketch k must be an even integer in [4, {MAX_SKETCH_K}], got {k!r}")
        lib = _library()
        self.k = int(k)
        self._right = [lib.req_floats_sketch(self.k, True) for _ in range(int(features))]
        self._left = [lib.req_floats_sketch(self.k, True) for _ in range(int(features))]

    # ------------------------------------------------------------------ state
    @property
    def features(self) -> int:
        return len(self._right)

    @property
    def count(self) -> int:
        """Values seen per feature (every row adds one to each feature)."""
        return int(self._right[0].n)

    @property
    def exact(self) -> bool:
        """True while no sketch has compacted: every probability is the exact empirical one."""
        return not any(s.is_estimation_mode() for s in self._right + self._left)

    def _check_rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.features:
            raise DimensionMismatchError(f"expected rows of {self.features} features, got shape {X.shape}")
        return X

    def update_many(self, X: np.ndarray) -> None:
        """Add rows ``X`` (``(m, d)``, finite, within float32's range) to the sketches.

        Raises
        ------
        DimensionMismatchError, NonFiniteError
            Before any sketch changes.
        """
        columns = np.ascontiguousarray(_as_float32(self._check_rows(X)).T)
        if columns.shape[1] == 0:
            return
        negated = -columns
        for j in range(self.features):
            self._right[j].update(columns[j])
            self._left[j].update(negated[j])

    def merge(self, other: FeatureSketches) -> None:
        """Merge ``other`` into these sketches (the sketch of the union of both populations)."""
        if not isinstance(other, FeatureSketches):
            raise InvalidInputError(f"can only merge FeatureSketches, got {type(other).__name__}")
        if other.features != self.features:
            raise DimensionMismatchError(f"cannot merge sketches of {other.features} features into {self.features}")
        if other.k != self.k:
            raise InvalidInputError(f"cannot merge sketches with k={other.k} into k={self.k}")
        if other.count == 0:
            return
        for j in range(self.features):
            self._right[j].merge(other._right[j])
            self._left[j].merge(other._left[j])

    @classmethod
    def merged(cls, parts: list[FeatureSketches], features: int, k: int = DEFAULT_SKETCH_K) -> FeatureSketches:
        """A new sketch of the union of ``parts`` (which are left unchanged)."""
        out = cls(features, k)
        for part in parts:
            out.merge(part)
        return out

    def copy(self) -> FeatureSketches:
        return FeatureSketches.from_bytes(self.to_bytes())

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        """The sketches in DataSketches' own serial form, behind a small header."""
        chunks = [_HEADER.pack(_MAGIC, self.features, self.k)]
        for sketch in self._right + self._left:
            body = sketch.serialize()
            chunks += [_LENGTH.pack(len(body)), body]
        return b"".join(chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSketches:
        """Inverse of :meth:`to_bytes`.

        Raises
        ------
        InvalidInputError
            Bytes that are not sketches written by :meth:`to_bytes`.
        """
        data = bytes(data)
        try:
            magic, features, k = _HEADER.unpack_from(data, 0)
        except struct.error:
            raise InvalidInputError("feature sketches: truncated header") from None
        if magic != _MAGIC or features < 1 or not 4 <= k <= MAX_SKETCH_K:
            raise InvalidInputError("feature sketches: not a swarmguard sketch header")
        lib = _library()
        sketches = []
        at = _HEADER.size
        for _ in range(2 * features):
            try:
                (length,) = _LENGTH.unpack_from(data, at)
            except struct.error:
                raise InvalidInputError("feature sketches: truncated") from None
            body = data[at + _LENGTH.size: at + _LENGTH.size + length]
            if len(body) != length:
                raise InvalidInputError("feature sketches: truncated sketch")
            try:
                sketch = lib.req_floats_sketch.deserialize(body)
            except Exception as exc:     # the library raises its own error types
                raise InvalidInputError(f"feature sketches: {exc}") from None
            if sketch.k != k or not sketch.is_hra():
                raise InvalidInputError("feature sketches: a sketch differs from the header's kind")
            sketches.append(sketch)
            at += _LENGTH.size + length
        if at != len(data) or len({int(s.n) for s in sketches}) != 1:
            raise InvalidInputError("feature sketches: trailing bytes or unequal counts")
        out = cls.__new__(cls)
        out.k = int(k)
        out._right, out._left = sketches[:features], sketches[features:]
        return out

    # ------------------------------------------------------------------ reading
    def quantiles(self, ranks: np.ndarray) -> np.ndarray:
        """``(len(ranks), d)`` quantiles of every feature (NaN when empty)."""
        ranks = np.asarray(ranks, dtype=np.float64)
        if self.count == 0:
            return np.full((ranks.size, self.features), np.nan)
        return np.array([s.get_quantiles(ranks.tolist()) for s in self._right], dtype=np.float64).T

    def quantile_skewness(self) -> np.ndarray:
        """Bowley's quantile skewness per feature, ``(Q3 + Q1 - 2 Q2) / (Q3 - Q1)`` (0 if ``Q3 = Q1``).

        ECOD takes the sign of the sample skewness to choose a feature's tail; the
        sketch holds quantiles, not third moments, and the quantile form is not
        moved by the few outliers the tails are meant to find.
        """
        q1, q2, q3 = self.quantiles(np.array([0.25, 0.5, 0.75]))
        spread = q3 - q1
        safe = np.where(spread > 0, spread, 1.0)
        return np.where(spread > 0, (q3 + q1 - 2.0 * q2) / safe, 0.0)

    def _counts(self, X: np.ndarray, left_too: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """Weights at or below (left) and at or above (right) each value of ``X``
        (``left_too=False``: the right ones only, left None).

        A query beyond float32's range is read at its edge: every sketched value lies within
        it, so the counts are the same (an outside vector far from the population must be
        answered, not refused)."""
        if not np.isfinite(X).all():
            raise NonFiniteError("sketched features must be finite")
        X32 = np.clip(X, -_FLOAT32_MAX, _FLOAT32_MAX).astype(np.float32)
        left = np.empty(X.shape) if left_too else None
        right = np.empty(X.shape)
        for j in range(self.features):
            right[:, j] = _count_at_least(self._right[j], X32[:, j])
            if left is not None:
                left[:, j] = _count_at_least(self._left[j], -X32[:, j])
        return left, right

    def _inside(self, X: np.ndarray, members: Any) -> np.ndarray:
        """``members`` (one bool, or one per row of ``X``) as a column, checked; the population's size checked."""
        if self.count == 0:
            raise InvalidInputError("tail probabilities of an empty population")
        inside = np.asarray(members, dtype=bool)
        if inside.ndim > 1 or (inside.ndim == 1 and inside.shape != (X.shape[0],)):
            raise DimensionMismatchError(f"members must be one bool or one per row ({X.shape[0]}), got shape {inside.shape}")
        return np.broadcast_to(inside, (X.shape[0],))[:, None]

    def _tail(self, counts: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """Counts at or beyond each value as tail probabilities: a member's floored at its own
        value, ``max(W, 1) / n``; an outsider counted in, ``(W + 1) / (n + 1)``."""
        n = float(self.count)
        return np.minimum(np.where(inside, np.maximum(counts, 1.0) / n, (counts + 1.0) / (n + 1.0)), 1.0)

    def right_tail_probabilities(self, X: np.ndarray, members: Any = True) -> np.ndarray:
        """The right tail probabilities of :meth:`tail_probabilities` alone (its ``right``), without
        the left sketches' rank queries or the skewness (what a score null reads).

        Raises
        ------
        InvalidInputError
            The sketches are empty.
        """
        X = self._check_rows(X)
        inside = self._inside(X, members)
        _, right = self._counts(X, left_too=False)
        return self._tail(right, inside)

    def tail_probabilities(self, X: np.ndarray, members: bool = True) -> TailProbabilities:
        """Left and right tail probabilities of every value of ``X`` (``(m, d)``).

        ``members``: the rows belong to the sketched population (each count is
        floored at 1, the row's own value); else each is counted in,
        ``(W + 1) / (n + 1)``. One bool for all the rows, or one per row.

        Raises
        ------
        InvalidInputError
            The sketches are empty.
        """
        X = self._check_rows(X)
        inside = self._inside(X, members)
        left, right = self._counts(X)
        return TailProbabilities(self._tail(left, inside), self._tail(right, inside), self.quantile_skewness(),
                                 self.exact)

    def tail_bounds(self, X: np.ndarray, std_devs: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The library's bounds on the exact tails of ``X``: ``(left_lo, left_hi, right_lo, right_hi)``.

        Each bound is ``1 - get_rank_upper/lower_bound(1 - tail, std_devs)`` of the sketch
        the tail is read from (REQ's a-priori relative bounds, ``std_devs`` in 1..3),
        around the raw tails ``W / n`` (no floor, the row not counted in). A Python loop
        over the rows: for checks, not for scoring.
        """
        X = self._check_rows(X)
        n = float(self.count)
        left, right = self._counts(X)
        out = []
        for side, tails in ((0, left / n), (1, right / n)):
            lo = np.empty_like(tails)
            hi = np.empty_like(tails)
            for j in range(self.features):
                sketch = (self._right if side else self._left)[j]
                for i, t in enumerate(tails[:, j]):
                    rank = 1.0 - float(t)       # the sketch's inclusive rank below the value
                    hi[i, j] = 1.0 - sketch.get_rank_lower_bound(rank, std_devs)
                    lo[i, j] = 1.0 - sketch.get_rank_upper_bound(rank, std_devs)
            out += [lo, hi]
        return tuple(out)
