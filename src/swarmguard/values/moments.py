"""Mergeable moments: count, mean vector and centred co-moment matrix.

The state is kept *shifted*: ``mean = shift + offset`` where ``shift`` is a
float vector near the data (the first data seen) and every update works on
``x - shift``. A correctly rounded subtraction is accurate relative to its
result, so the deviations the co-moment is built from keep their digits even
when the data sit at 1e7 with a spread of 0.1 (NIST StRD NumAcc4), where raw
sums of squares lose every digit. Merging uses the Chan/Pébay pairwise
formulas, never raw sums of squares.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import (
    DimensionMismatchError,
    InsufficientDataError,  # defined in errors.py, still importable from here
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
)
from ..validation import as_feature_matrix, as_feature_vector, check_positive_int
from .npz import NpzBytes

__all__ = ["Moments", "InsufficientDataError", "combine_groups", "population_statistics"]

_FORMAT_VERSION = 1


def population_statistics(count: int, mean: np.ndarray, m2: np.ndarray, ddof: int,
                          std: np.ndarray | None = None) -> dict[str, Any]:
    """``count``, ``mean``, ``covariance`` (``m2 / (count - ddof)``), ``variance``, ``std``
    and ``ddof`` of a population, NaN where undefined (the mean of nobody, the covariance
    of ``ddof`` or fewer members). ``std``: the standard deviations when the caller has
    them without squaring (from units where they cannot underflow); default ``sqrt(variance)``.

    The one place statistics are read off moments: the tree's and the Ray engine's
    ``get_global_statistics``.

    >>> s = population_statistics(3, np.array([1.0]), np.array([[8.0]]), 1)
    >>> s["covariance"].tolist(), s["std"].tolist()
    ([[4.0]], [2.0])
    """
    ddof = check_positive_int(ddof, "ddof", minimum=0)
    count = int(count)
    cov = m2 / (count - ddof) if count > ddof else np.full_like(m2, np.nan)
    mean = np.full_like(mean, np.nan) if count == 0 else mean
    var = np.diagonal(cov).copy()
    if count <= ddof:
        std = var
    elif std is None:
        std = np.sqrt(np.maximum(var, 0.0))
    return {"count": count, "mean": mean, "covariance": cov, "variance": var, "std": std, "ddof": ddof}


def combine_groups(
    counts: np.ndarray, offsets: np.ndarray, m2s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge groups of moments that share one shift, vectorised over leading axes.

    Parameters
    ----------
    counts : (..., k) array
        Counts of the k groups to merge (zeros allowed).
    offsets : (..., k, d) array
        Group means minus the common shift.
    m2s : (..., k, d, d) array
        Centred co-moment matrices of the groups.

    Returns
    -------
    count (...,), offset (..., d), m2 (..., d, d)
        The moments of the union of the k groups: the k-way form of Chan's
        formula, ``M2 = sum M2_i + sum n_i (m_i - m)(m_i - m)^T``.

    Examples
    --------
    >>> import numpy as np
    >>> n, off, m2 = combine_groups(np.array([1.0, 1.0]), np.array([[0.0], [2.0]]),
    ...                             np.zeros((2, 1, 1)))
    >>> float(n), float(off[0]), float(m2[0, 0])
    (2.0, 1.0, 2.0)
    """
    n = counts.sum(axis=-1)
    safe = np.where(n > 0, n, 1.0)
    off = np.einsum("...k,...kd->...d", counts, offsets) / safe[..., None]
    dev = offsets - off[..., None, :]
    weighted = dev * counts[..., None]
    m2 = m2s.sum(axis=-3) + np.matmul(np.swapaxes(weighted, -1, -2), dev)
    return n, off, m2


def _batch_moments(D: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and co-moment of the rows of D by the corrected two-pass method."""
    n = D.shape[0]
    mean = D.mean(axis=0)
    C = D - mean
    # Second pass corrects the mean for the rounding of the first (Björck).
    mean = mean + C.mean(axis=0)
    C = D - mean
    return n, mean, C.T @ C


class Moments(NpzBytes):
    """Count, mean and centred co-moment matrix of d-dimensional observations.

    Parameters
    ----------
    dim : int
        Number of features d.

    Examples
    --------
    >>> import numpy as np
    >>> a = Moments(2)
    >>> a.update_many(np.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> b = Moments(2)
    >>> b.update([5.0, 10.0])
    >>> a += b
    >>> a.count, a.mean.tolist()
    (3, [3.0, 6.0])
    >>> a.covariance().tolist()
    [[4.0, 8.0], [8.0, 16.0]]
    >>> a.revert([5.0, 10.0])
    >>> a.variance().tolist()
    [2.0, 8.0]
    """

    __slots__ = ("dim", "count", "shift", "offset", "m2")

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")
        self.count = 0
        self.shift = np.zeros(self.dim)
        self.offset = np.zeros(self.dim)
        self.m2 = np.zeros((self.dim, self.dim))

    # ------------------------------------------------------------------ updates
    def update(self, x: Any) -> None:
        """Add one observation (Welford's update on shifted data)."""
        x = as_feature_vector(x, self.dim, "x")
        if self.count == 0:
            self.shift = x.copy()
        d = x - self.shift
        delta = d - self.offset
        self.count += 1
        self.offset = self.offset + delta / self.count
        # (d - old mean)(d - new mean)^T == (n-1)/n delta delta^T, symmetric by construction.
        self.m2 = self.m2 + np.outer(delta, delta) * ((self.count - 1) / self.count)

    def revert(self, x: Any) -> None:
        """Remove one observation that was added before (the exact inverse of update)."""
        x = as_feature_vector(x, self.dim, "x")
        if self.count == 0:
            raise InsufficientDataError("cannot revert from empty moments")
        if self.count == 1:
            self._reset()
            return
        d = x - self.shift
        n = self.count
        prev_offset = self.offset - (d - self.offset) / (n - 1)
        delta = d - prev_offset
        self.m2 = self.m2 - np.outer(delta, delta) * ((n - 1) / n)
        self.offset = prev_offset
        self.count = n - 1

    def update_many(self, X: Any) -> None:
        """Add the rows of an (n, d) array."""
        X = as_feature_matrix(X, self.dim)
        other = Moments._from_matrix(X, self.dim)
        self._merge_in(other)

    def revert_many(self, X: Any) -> None:
        """Remove the rows of an (n, d) array that were added before."""
        X = as_feature_matrix(X, self.dim)
        if X.shape[0] > self.count:
            raise InsufficientDataError(
                f"cannot revert {X.shape[0]} observations from moments of {self.count}"
            )
        self -= Moments._from_matrix(X, self.dim)

    @classmethod
    def from_array(cls, X: Any) -> Moments:
        """Moments of the rows of an (n, d) array."""
        X = as_feature_matrix(X, None)
        return cls._from_matrix(X, X.shape[1])

    @classmethod
    def _from_matrix(cls, X: np.ndarray, dim: int) -> Moments:
        m = cls(dim)
        m.shift = X[0].copy()
        m.count, m.offset, m.m2 = _batch_moments(X - m.shift)
        return m

    # ------------------------------------------------------------------ merging
    def _aligned_offset(self, other: Moments) -> np.ndarray:
        """other's mean expressed relative to self's shift."""
        return (other.shift - self.shift) + other.offset

    def _merge_in(self, other: Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.shift = other.count, other.shift.copy()
            self.offset, self.m2 = other.offset.copy(), other.m2.copy()
            return
        nb = other.count
        n = self.count + nb
        delta = self._aligned_offset(other) - self.offset
        self.offset = self.offset + delta * (nb / n)
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * nb / n)
        self.count = n

    def _check_compatible(self, other: Any) -> Moments:
        if not isinstance(other, Moments):
            return NotImplemented
        if other.dim != self.dim:
            raise DimensionMismatchError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        return other

    def __iadd__(self, other: Moments) -> Moments:
        if self._check_compatible(other) is NotImplemented:
            return NotImplemented
        self._merge_in(other)
        return self

    def __add__(self, other: Moments) -> Moments:
        if self._check_compatible(other) is NotImplemented:
            return NotImplemented
        result = self.copy()
        result._merge_in(other)
        return result

    def __isub__(self, other: Moments) -> Moments:
        """Remove a sub-population that was merged in before (inverse of ``+=``)."""
        if self._check_compatible(other) is NotImplemented:
            return NotImplemented
        if other.count == 0:
            return self
        if other.count > self.count:
            raise InsufficientDataError(
                f"cannot subtract moments of {other.count} from moments of {self.count}"
            )
        if other.count == self.count:
            self._reset()
            return self
        nb = other.count
        na = self.count - nb
        other_off = self._aligned_offset(other)
        off_a = self.offset - (other_off - self.offset) * (nb / na)
        delta = other_off - off_a
        self.m2 = self.m2 - other.m2 - np.outer(delta, delta) * (na * nb / self.count)
        self.offset, self.count = off_a, na
        return self

    def __sub__(self, other: Moments) -> Moments:
        if self._check_compatible(other) is NotImplemented:
            return NotImplemented
        result = self.copy()
        result -= other
        return result

    # ------------------------------------------------------------------ statistics
    @property
    def mean(self) -> np.ndarray:
        """The mean vector (zeros while empty)."""
        return self.shift + self.offset

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Covariance matrix ``M2 / (count - ddof)``."""
        ddof = check_positive_int(ddof, "ddof", minimum=0)
        if self.count <= ddof:
            raise InsufficientDataError(
                f"covariance with ddof={ddof} needs more than {ddof} observations, have {self.count}"
            )
        return self.m2 / (self.count - ddof)

    def variance(self, ddof: int = 1) -> np.ndarray:
        """Per-feature variance (the diagonal of :meth:`covariance`)."""
        return np.diagonal(self.covariance(ddof)).copy()

    def std(self, ddof: int = 1) -> np.ndarray:
        """Per-feature standard deviation."""
        return np.sqrt(np.maximum(self.variance(ddof), 0.0))

    get = covariance  # River's verb

    # ------------------------------------------------------------------ plumbing
    def _reset(self) -> None:
        self.count = 0
        self.shift = np.zeros(self.dim)
        self.offset = np.zeros(self.dim)
        self.m2 = np.zeros((self.dim, self.dim))

    def copy(self) -> Moments:
        m = Moments(self.dim)
        m.count, m.shift, m.offset, m.m2 = self.count, self.shift.copy(), self.offset.copy(), self.m2.copy()
        return m

    def __len__(self) -> int:
        return self.count

    def __eq__(self, other: object) -> bool:
        """Exact equality of the stored state (same shift, same bits)."""
        if not isinstance(other, Moments):
            return NotImplemented
        return (
            self.dim == other.dim
            and self.count == other.count
            and np.array_equal(self.shift, other.shift)
            and np.array_equal(self.offset, other.offset)
            and np.array_equal(self.m2, other.m2)
        )

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"Moments(dim={self.dim}, count={self.count}, mean={np.array2string(self.mean, precision=4)})"

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, np.ndarray]:
        """The state as a dict of NumPy arrays (copies)."""
        return {
            "version": np.array(_FORMAT_VERSION),
            "count": np.array(self.count, dtype=np.int64),
            "shift": self.shift.copy(),
            "offset": self.offset.copy(),
            "m2": self.m2.copy(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Moments:
        """Rebuild moments from :meth:`to_dict` output, validating every field."""
        try:
            version = int(np.asarray(state["version"]))
            raw_count = np.asarray(state["count"])
            if raw_count.dtype.kind not in "iu" or raw_count.ndim != 0:
                raise InvalidTypeError(f"moments count must be an integer scalar, got {raw_count!r}")
            count = int(raw_count)
            shift = np.asarray(state["shift"], dtype=np.float64)
            offset = np.asarray(state["offset"], dtype=np.float64)
            m2 = np.asarray(state["m2"], dtype=np.float64)
        except KeyError as exc:
            raise InvalidInputError(f"moments state lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"moments state is malformed: {exc}") from exc
        if version != _FORMAT_VERSION:
            raise InvalidInputError(f"unsupported moments format version {version}")
        if shift.ndim != 1 or offset.shape != shift.shape or m2.shape != (shift.size, shift.size):
            raise DimensionMismatchError(
                f"moments state has inconsistent shapes {shift.shape}, {offset.shape}, {m2.shape}"
            )
        if count < 0:
            raise InvalidInputError(f"moments count must be >= 0, got {count}")
        if count == 0 and (offset.any() or m2.any()):
            raise InvalidInputError("empty moments (count 0) must have zero offset and co-moment")
        if not (np.isfinite(shift).all() and np.isfinite(offset).all() and np.isfinite(m2).all()):
            raise NonFiniteError("moments state holds non-finite values")
        m = cls(shift.size)
        m.count, m.shift, m.offset, m.m2 = count, shift.copy(), offset.copy(), m2.copy()
        return m

    @classmethod
    def merge_all(cls, parts: Iterable[Moments]) -> Moments:
        """Merge many moments at once (k-way Chan formula)."""
        parts = list(parts)
        if not parts:
            raise InvalidInputError("merge_all needs at least one Moments")
        for p in parts:
            if not isinstance(p, Moments):
                raise InvalidTypeError(f"merge_all takes Moments, got a {type(p).__name__}")
        dim = parts[0].dim
        if any(p.dim != dim for p in parts):
            raise DimensionMismatchError("merge_all needs Moments of one dimension")
        live = [p for p in parts if p.count]
        result = cls(dim)
        if not live:
            return result
        shift = live[0].shift
        counts = np.array([p.count for p in live], dtype=np.float64)
        offsets = np.stack([(p.shift - shift) + p.offset for p in live])
        m2s = np.stack([p.m2 for p in live])
        _, off, m2 = combine_groups(counts, offsets, m2s)
        result.count = sum(p.count for p in live)
        result.shift, result.offset, result.m2 = shift.copy(), off, m2
        return result
