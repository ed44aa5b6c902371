"""Bytes for a state that is a dict of arrays: an ``.npz`` archive, never pickle.

Every mergeable value (moments, exact sums, registers, replicas, a resolver's
checkpoint) serialises through these two functions, so a region, an actor, a
checkpoint and a replica travel the same way.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self

import numpy as np

from ..errors import InvalidInputError

__all__ = ["dict_to_bytes", "dict_from_bytes", "NpzBytes", "reading_fields", "int_scalar",
           "float_scalar", "str_scalar", "str_list", "int_list", "float_list"]


def dict_to_bytes(state: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a dict of arrays.

    >>> import numpy as np
    >>> dict_from_bytes(dict_to_bytes({"a": np.arange(3)}), "example")["a"].tolist()
    [0, 1, 2]
    """
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()


def dict_from_bytes(data: bytes, what: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`dict_to_bytes`; corrupt input is an ``InvalidInputError`` naming ``what``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError/OSError on corrupt input
        raise InvalidInputError(f"bytes are not a serialised {what}: {exc}") from exc


class NpzBytes:
    """``to_bytes`` / ``from_bytes`` for a value whose state is its ``to_dict`` / ``from_dict``
    dict of arrays: an ``.npz`` archive, no pickle; bytes that are no archive are an
    ``InvalidInputError`` naming the class.
    """

    __slots__ = ()

    def to_bytes(self) -> bytes:
        """Serialise to bytes (an ``.npz`` archive of :meth:`to_dict`, no pickle)."""
        return dict_to_bytes(self.to_dict())  # type: ignore[attr-defined]

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Inverse of :meth:`to_bytes` (through :meth:`from_dict`, which validates every field)."""
        return cls.from_dict(dict_from_bytes(data, cls.__name__))  # type: ignore[attr-defined]


@contextmanager
def reading_fields(what: str) -> Iterator[None]:
    """A block that reads the fields of a loaded state called ``what``: a missing field
    (``KeyError``) is "``what`` lacks field ...", a ``TypeError`` or ``ValueError`` is
    "``what`` is malformed: ...", both ``InvalidInputError``; an ``InvalidInputError`` the block
    raised itself goes out as it is.

    >>> with reading_fields("example state"):
    ...     {}["format"]
    Traceback (most recent call last):
    ...
    swarmguard.errors.InvalidInputError: example state lacks field 'format'
    """
    try:
        yield
    except KeyError as exc:
        raise InvalidInputError(f"{what} lacks field {exc}") from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{what} is malformed: {exc}") from exc


# ---------------------------------------------------------------------- strict readers of loaded fields
# A loader reads exactly what the arrays say or refuses them (InvalidInputError):
# no float-to-int truncation, no uint64 wrap-around, no ``str()`` of an array
# standing in for a name, no NaN where a time belongs.
def _array(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - whatever object it is, refuse it typed
        raise InvalidInputError(f"{what} is not an array: {exc}") from exc


def _scalar(value: Any, what: str) -> np.ndarray:
    arr = _array(value, what)
    if arr.ndim != 0:
        raise InvalidInputError(f"{what} must be a scalar, got shape {arr.shape}")
    return arr


def int_scalar(value: Any, what: str, low: int, high: int) -> int:
    """An integer scalar in ``[low, high]``."""
    arr = _scalar(value, what)
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{what} must be an integer, got dtype {arr.dtype}")
    out = int(arr)
    if not low <= out <= high:
        raise InvalidInputError(f"{what} must be in [{low}, {high}], got {out}")
    return out


def float_scalar(value: Any, what: str) -> float:
    """A finite float scalar."""
    arr = _scalar(value, what)
    if arr.dtype.kind != "f" or not np.isfinite(arr):
        raise InvalidInputError(f"{what} must be a finite float, got {arr!r}")
    return float(arr)


def str_scalar(value: Any, what: str) -> str:
    """A string scalar."""
    arr = _scalar(value, what)
    if arr.dtype.kind != "U":
        raise InvalidInputError(f"{what} must be a string, got dtype {arr.dtype}")
    return str(arr[()])


def str_list(value: Any, what: str) -> list[str]:
    """A 1-D string array, as a list."""
    arr = _array(value, what)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind != "U"):
        raise InvalidInputError(f"{what} must be a 1-D string array, got {arr.dtype} {arr.shape}")
    return arr.tolist()


def int_list(value: Any, what: str, n: int, low: int, high: int) -> list[int]:
    """A 1-D integer array of length ``n`` with values in ``[low, high]``, as a list."""
    arr = _array(value, what)
    if arr.shape != (n,) or (n and arr.dtype.kind not in "iu"):
        raise InvalidInputError(f"{what} must be {n} integers, got {arr.dtype} {arr.shape}")
    out = arr.tolist()
    if out and not (low <= min(out) and max(out) <= high):
        raise InvalidInputError(f"{what} must lie in [{low}, {high}]")
    return [int(v) for v in out]


def float_list(value: Any, what: str, n: int) -> list[float]:
    """A 1-D finite float array of length ``n``, as a list."""
    arr = _array(value, what)
    if arr.shape != (n,) or (n and arr.dtype.kind != "f"):
        raise InvalidInputError(f"{what} must be {n} floats, got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what} must be finite")
    return [float(v) for v in arr.tolist()]
