"""Input validation, kept in one place (as scikit-learn's ``utils.validation``).

Every public entry point validates user input here, once, before touching state,
so a rejected call leaves every structure exactly as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable
from typing import Any

import numpy as np

from .errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
)

__all__ = [
    "as_feature_vector",
    "as_feature_matrix",
    "check_positive_int",
    "check_fraction",
    "check_finite_float",
    "check_agent_id",
    "check_cohort",
    "as_float_vector",
    "check_key",
]


def _as_float_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise InvalidTypeError(f"{what} must be numeric, got a {type(values).__name__}")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists, odd objects
        raise InvalidTypeError(f"{what} could not be read as a numeric array: {exc}") from exc
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == object
    ):
        raise InvalidTypeError(f"{what} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InvalidTypeError(f"{what} must be real, got dtype {arr.dtype}")
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise InvalidTypeError(f"{what} must be numeric: {exc}") from exc
    else:
        arr = arr.astype(np.float64, copy=False)
    return arr


def _check_finite(arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise NonFiniteError(f"{what} holds a non-finite value (NaN or inf) at index [{where}]")


def as_feature_vector(x: Any, dim: int | None, what: str = "features") -> np.ndarray:
    """Return ``x`` as a finite float64 vector of length ``dim`` (any length if None).

    >>> as_feature_vector([1, 2], 2)
    array([1., 2.])
    """
    arr = _as_float_array(x, what)
    if arr.ndim != 1:
        raise DimensionMismatchError(f"{what} must be a 1-D vector, got shape {arr.shape}")
    if arr.size == 0:
        raise EmptyInputError(f"{what} is empty")
    if dim is not None and arr.shape[0] != dim:
        raise DimensionMismatchError(
            f"{what} has {arr.shape[0]} features, expected {dim}"
        )
    _check_finite(arr, what)
    return arr


def as_feature_matrix(X: Any, dim: int | None, what: str = "X") -> np.ndarray:
    """Return ``X`` as a finite, C-contiguous float64 (n, dim) matrix with n >= 1."""
    arr = _as_float_array(X, what)
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{what} must be a 2-D (n, d) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise EmptyInputError(f"{what} has no rows")
    if arr.shape[1] == 0 or (dim is not None and arr.shape[1] != dim):
        raise DimensionMismatchError(
            f"{what} has {arr.shape[1]} features per row, expected {dim}"
        )
    _check_finite(arr, what)
    return np.ascontiguousarray(arr)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, requiring ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{name} must be finite, got {value}")
    return value


def check_fraction(
    value: Any, name: str, *, low: float = 0.0, high: float = 1.0,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """Return ``value`` as a float in [low, high] (ends open where asked)."""
    value = check_finite_float(value, name)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise InvalidInputError(f"{name} must be in {lb}{low}, {high}{rb}, got {value}")
    return value


def check_agent_id(agent_id: Any) -> Hashable:
    """Agent ids are any hashable value except None and floats (NaN != NaN)."""
    if agent_id is None:
        raise InvalidInputError("agent_id must not be None")
    if isinstance(agent_id, (float, np.floating)):
        raise InvalidTypeError(f"agent_id must be an int, str or other hashable, not a float ({agent_id!r})")
    try:
        hash(agent_id)
    except TypeError as exc:
        raise InvalidTypeError(f"agent_id must be hashable, got {type(agent_id).__name__}") from exc
    if isinstance(agent_id, np.integer):
        return int(agent_id)
    if isinstance(agent_id, np.str_):
        return str(agent_id)
    return agent_id


def check_cohort(cohort: Any) -> tuple[str, ...] | None:
    """Normalise a cohort path: None, a name, or a sequence of names -> tuple of str."""
    if cohort is None:
        return None
    if isinstance(cohort, str):
        parts: tuple = (cohort,)
    elif isinstance(cohort, (tuple, list)):
        parts = tuple(cohort)
    else:
        raise InvalidTypeError(
            f"cohort must be a name or a sequence of names, got {type(cohort).__name__}"
        )
    for p in parts:
        if not isinstance(p, str) or not p:
            raise InvalidInputError(f"cohort names must be non-empty strings, got {p!r} in {cohort!r}")
    return parts


def as_float_vector(values: Any, what: str, *, allow_empty: bool = False) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array (a scalar is not accepted).

    >>> as_float_vector([1, 2.5], "x")
    array([1. , 2.5])
    """
    arr = _as_float_array(values, what)
    if arr.ndim != 1:
        raise DimensionMismatchError(f"{what} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise EmptyInputError(f"{what} is empty")
    _check_finite(arr, what)
    return np.ascontiguousarray(arr)


def check_key(value: Any, name: str) -> Hashable:
    """Ids (evidence, agent, source): any hashable except None, floats and bools.

    NumPy integers and strings become Python ones, so ``np.int64(3)`` and ``3``
    are the same id.

    >>> check_key(np.int64(3), "evidence_id")
    3
    """
    if isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must not be a bool, got {value!r}")
    if value is None:
        raise InvalidInputError(f"{name} must not be None")
    if isinstance(value, (float, np.floating)):
        raise InvalidTypeError(f"{name} must be an int, str or other hashable, not a float ({value!r})")
    try:
        hash(value)
    except TypeError as exc:
        raise InvalidTypeError(f"{name} must be hashable, got {type(value).__name__}") from exc
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    return value
