"""Version vectors: per region, how many of that region's writes a replica has seen.

A replica's vector says "I hold every write of region p up to sequence number
``vv[p]``, or something newer that superseded it". Delta sync ships exactly the
register entries whose ``(writer, seq)`` dot the peer's vector does not cover.
Merge is the element-wise maximum: commutative, associative and idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ..validation import MAX_NAME_LENGTH, check_name_text

__all__ = ["VersionVector", "check_region_name", "MAX_COUNT"]

MAX_COUNT = 1 << 62
"""Largest version counter (and writer sequence number) accepted: far beyond any real
count (146 years at 10**9 writes a second), and far enough below 2**63 that adding
a batch to it cannot overflow int64. A delta claiming more is malformed."""


def check_region_name(name: Any) -> str:
    """Region ids are non-empty strings (ints are accepted and become their decimal text).

    A name follows :func:`~swarmguard.validation.check_name_text`: no NUL, no
    separator character, at most ``MAX_NAME_LENGTH`` characters.

    >>> check_region_name("eu"), check_region_name(3)
    ('eu', '3')
    """
    if isinstance(name, (bool, np.bool_)):
        raise InvalidTypeError(f"a region id must be a string or an int, got {name!r}")
    if isinstance(name, (int, np.integer)):
        try:
            text = str(int(name))
        except ValueError as exc:    # beyond Python's int-to-text digit limit: far past the length cap
            raise InvalidInputError(f"a region id has at most {MAX_NAME_LENGTH} characters: {exc}") from exc
        return check_name_text(text, "region name")
    if isinstance(name, (str, np.str_)) and str(name):
        return check_name_text(str(name), "region name")
    if isinstance(name, str):
        raise InvalidInputError("a region id must be a non-empty string")
    raise InvalidTypeError(f"a region id must be a string or an int, got {type(name).__name__}")


class VersionVector:
    """Map region -> highest sequence number seen; absent regions count as 0.

    Examples
    --------
    >>> a = VersionVector({"eu": 3})
    >>> b = VersionVector({"eu": 1, "us": 2})
    >>> a |= b
    >>> a.to_mapping()
    {'eu': 3, 'us': 2}
    >>> b <= a, a <= b
    (True, False)
    >>> a.increment("us")
    3
    """

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[str, int] | None = None):
        self._counts: dict[str, int] = {}
        for name, count in (counts or {}).items():
            if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)):
                raise InvalidTypeError(f"version counts must be integers, got {count!r} for {name!r}")
            count = int(count)
            if not 0 <= count <= MAX_COUNT:
                raise InvalidInputError(f"version counts must be in [0, 2**62], got {count} for {name!r}")
            if count:
                self._counts[check_region_name(name)] = count

    def __getitem__(self, region: str) -> int:
        return self._counts.get(region, 0)

    def increment(self, region: str, by: int = 1) -> int:
        """Advance ``region``'s counter by ``by`` and return the new value."""
        value = self._counts.get(region, 0) + int(by)
        if value > MAX_COUNT:
            raise InvalidInputError(f"version counter of {region!r} would pass 2**62")
        self._counts[region] = value
        return value

    def regions(self) -> list[str]:
        return sorted(self._counts)

    def as_array(self, regions: Iterable[str]) -> np.ndarray:
        """Counters for ``regions`` in that order, as int64."""
        return np.array([self._counts.get(r, 0) for r in regions], dtype=np.int64)

    # ------------------------------------------------------------------ merging
    def __ior__(self, other: VersionVector) -> VersionVector:
        if not isinstance(other, VersionVector):
            return NotImplemented
        for name, count in other._counts.items():
            if count > self._counts.get(name, 0):
                self._counts[name] = count
        return self

    def __or__(self, other: VersionVector) -> VersionVector:
        if not isinstance(other, VersionVector):
            return NotImplemented
        result = self.copy()
        result |= other
        return result

    # ``+=`` is the project's merge verb; for a join-semilattice it is the same as ``|=``.
    __iadd__ = __ior__
    __add__ = __or__

    def __le__(self, other: VersionVector) -> bool:
        """True when every counter here is covered by ``other``."""
        if not isinstance(other, VersionVector):
            return NotImplemented
        return all(count <= other[name] for name, count in self._counts.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # mutable

    def copy(self) -> VersionVector:
        vv = VersionVector()
        vv._counts = dict(self._counts)
        return vv

    def to_mapping(self) -> dict[str, int]:
        return {name: self._counts[name] for name in sorted(self._counts)}

    def __repr__(self) -> str:
        return f"VersionVector({self.to_mapping()})"

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, np.ndarray]:
        """``{"regions": str array, "counts": int64 array}``, sorted by region."""
        names = sorted(self._counts)
        return {
            "regions": np.array(names, dtype=np.str_) if names else np.empty(0, dtype="<U1"),
            "counts": np.array([self._counts[n] for n in names], dtype=np.int64),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> VersionVector:
        if not isinstance(state, Mapping):
            raise InvalidTypeError(f"version vector state is a mapping, got {type(state).__name__}")
        try:
            names = np.asarray(state["regions"])
            counts = np.asarray(state["counts"])
        except KeyError as exc:
            raise InvalidInputError(f"version vector state lacks field {exc}") from exc
        if names.ndim != 1 or counts.shape != names.shape:
            raise InvalidInputError("version vector state has inconsistent shapes")
        if names.size and names.dtype.kind != "U":
            raise InvalidTypeError("version vector regions must be strings")
        if counts.size and counts.dtype.kind not in "iu":
            raise InvalidTypeError("version vector counts must be integers")
        if counts.size and (int(counts.min()) < 0 or int(counts.max()) > MAX_COUNT):
            raise InvalidInputError("version vector counts must be in [0, 2**62]")
        if len(set(names.tolist())) != names.size:
            raise InvalidInputError("version vector state repeats a region")
        return cls(dict(zip(names.tolist(), counts.tolist(), strict=True)))
