"""Input validation, kept in one place (as scikit-learn's ``utils.validation``).

Every public entry point validates user input here, once, before touching state,
so a rejected call leaves every structure exactly as it was.

This module holds the checks of feature vectors and matrices
(:class:`CheckedFeatures`) and of scalar parameters; the checks of ids and names
live in :mod:`swarmguard.id_validation` and are re-exported here, so every
check is importable from this one module.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    InvalidTypeError,
    NonFiniteError,
)
from .id_validation import (  # re-exported: the id and name checks lived here
    MAX_COHORT_DEPTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    NAME_SEPARATOR,
    _short_repr,
    as_name_array,
    as_wire_id_array,
    check_agent_id,
    check_cohort,
    check_id_str_array,
    check_id_text,
    check_id_texts,
    check_key,
    check_name_str_array,
    check_name_text,
    check_name_texts,
    check_wire_id,
    is_wire_id,
    unique_names,
)

__all__ = [
    "as_feature_vector",
    "as_feature_matrix",
    "CheckedFeatures",
    "check_feature_matrix",
    "check_positive_int",
    "check_fraction",
    "check_finite_float",
    "check_agent_id",
    "check_cohort",
    "as_finite_vector",
    "as_float_vector",
    "check_nonnegative_float",
    "check_key",
    "check_id_text",
    "check_id_texts",
    "check_id_str_array",
    "check_wire_id",
    "is_wire_id",
    "as_wire_id_array",
    "as_name_array",
    "unique_names",
    "check_name_text",
    "check_name_texts",
    "check_name_str_array",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_COHORT_DEPTH",
    "NAME_SEPARATOR",
]


def _as_float_array(values: Any, what: str) -> np.ndarray:
    if type(values) is np.ndarray and values.dtype == np.float64:
        return values                     # the hot path: nothing to convert
    if isinstance(values, (str, bytes)):
        raise InvalidTypeError(f"{what} must be numeric, got a {type(values).__name__}")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists, odd objects
        raise InvalidTypeError(f"{what} could not be read as a numeric array: {exc}") from exc
    kind = arr.dtype.kind
    if kind == "c":
        raise InvalidTypeError(f"{what} must be real, got dtype {arr.dtype}")
    if kind not in "iufO":
        raise InvalidTypeError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except OverflowError as exc:      # a Python int beyond the float range (10**400)
            raise NonFiniteError(f"{what} holds a number too large for a float: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise InvalidTypeError(f"{what} must be numeric: {exc}") from exc
    else:
        arr = arr.astype(np.float64, copy=False)
    return arr


MAX_ABS_VALUE = 1e100
"""Largest feature magnitude accepted: squares and sums of squares of a billion
such values stay far from float64 overflow (1.8e308)."""
_BELOW_MAX_ABS = MAX_ABS_VALUE.__gt__      # False for NaN and inf as for too large a value
_SHORT_VECTOR = 32                         # up to this length a vector is checked in Python floats


def _check_finite(arr: np.ndarray, what: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise NonFiniteError(f"{what} holds a non-finite value (NaN or inf) at index [{where}]")


def _check_magnitude(arr: np.ndarray, what: str) -> None:
    """Features only: squares of larger values would overflow the co-moments."""
    if arr.size and np.abs(arr).max() >= MAX_ABS_VALUE:
        bad = np.argwhere(np.abs(arr) >= MAX_ABS_VALUE)[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise InvalidInputError(
            f"{what} holds a value of magnitude >= {MAX_ABS_VALUE:g} at index [{where}]; rescale the feature"
        )


def as_feature_vector(x: Any, dim: int | None, what: str = "features") -> np.ndarray:
    """Return ``x`` as a finite float64 vector of length ``dim`` (any length if None).

    >>> as_feature_vector([1, 2], 2)
    array([1., 2.])
    """
    if type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1 and x.shape[0] == dim:
        # Hot path: one comparison per value rejects NaN, ±inf and overflowing magnitudes alike
        # (Python floats for a short vector: cheaper than two NumPy calls' set-up)
        if dim <= _SHORT_VECTOR:
            if all(map(_BELOW_MAX_ABS, map(abs, x.tolist()))):
                return x
        elif np.maximum.reduce(np.abs(x)) < MAX_ABS_VALUE:
            return x
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
    _check_magnitude(arr, what)
    return arr


def as_feature_matrix(X: Any, dim: int | None, what: str = "X") -> np.ndarray:
    """Return ``X`` as a finite, C-contiguous float64 (n, dim) matrix with n >= 1.

    A :class:`CheckedFeatures` is taken as it is (its dimension compared, no pass
    over its values): it was checked by these rules when it was made; its
    matrix comes back read-only.
    """
    if type(X) is CheckedFeatures:
        return check_feature_matrix(X, dim, what).X
    return _checked_matrix(X, dim, what)[0]


# Set on every CheckedFeatures this module issues (bypassing __init__, which refuses
# everyone): a mark of where it came from, never a key to the constructor.
_ISSUED = object()


@dataclass(frozen=True, slots=True, eq=False)
class CheckedFeatures:
    """A round's feature matrix, checked once at the boundary: the parts trust it.

    ``X`` is a read-only view of a finite, C-contiguous float64 ``(n, d)``
    matrix (``n, d >= 1``) whose every value lies in ``[-bound, bound]`` with
    ``bound < MAX_ABS_VALUE`` (the rules of :func:`as_feature_matrix`): a matrix of
    its own, which nobody can write (with ``check_feature_matrix(..., copy=False)``,
    the parts' own calls, possibly the caller's memory, trusted during that call
    only). The tree,
    the protocol, the CAP resolver and the replicas take one wherever they take
    a feature matrix and do not check it again; their public entry points still
    check raw input exactly as before.

    Only :func:`check_feature_matrix` (and :meth:`rows`, a subset of checked rows)
    makes one: calling the class directly (or ``dataclasses.replace``, which calls
    it) raises :class:`InvalidTypeError`, so an unchecked array cannot pass for a
    checked one by accident; a copy or an unpickled one is checked again.

    >>> checked = check_feature_matrix([[1.0, -2.0], [3.0, 0.5]], 2)
    >>> checked.X.shape, checked.bound, checked.X.flags.writeable
    ((2, 2), 3.0, False)
    >>> CheckedFeatures(np.zeros((1, 1)), 0.0)
    Traceback (most recent call last):
    ...
    swarmguard.errors.InvalidTypeError: CheckedFeatures is made only by check_feature_matrix
    """

    X: np.ndarray
    bound: float
    _issued: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # _issue makes one without calling __init__, so every call of it is a forgery: by hand,
        # with the token or without, and dataclasses.replace (which calls __init__ with every
        # field copied, the token included: a NaN matrix under a small bound would pass)
        raise InvalidTypeError("CheckedFeatures is made only by check_feature_matrix")

    def __reduce__(self):
        # a copy (copy, deepcopy) or an unpickled one is checked again: the bytes it comes
        # back from are nobody's word, and its matrix is a fresh one, read-only as well
        return (check_feature_matrix, (self.X, None))

    @property
    def n(self) -> int:
        """Rows."""
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        """Features per row."""
        return self.X.shape[1]

    def rows(self, index: np.ndarray) -> CheckedFeatures:
        """The rows at ``index`` (a non-empty integer array), checked still: a subset of
        checked rows holds only checked values (``bound`` stays a bound).

        A boolean mask, an empty index or a row number out of range is refused
        (``np.take`` would read a mask as the row numbers 0 and 1)."""
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise InvalidTypeError(f"rows takes a 1-D integer array of row numbers, got {index.dtype} "
                                   f"of shape {index.shape}")
        if index.size == 0:
            raise EmptyInputError("rows needs at least one row number")
        n = self.X.shape[0]
        if int(index.min()) < -n or int(index.max()) >= n:
            raise InvalidInputError(f"a row number is outside [-{n}, {n})")
        return _issue(np.take(self.X, index, axis=0), self.bound, own=True)


def _issue(arr: np.ndarray, bound: float, own: bool = False) -> CheckedFeatures:
    """A CheckedFeatures over ``arr``; ``own``: nobody else holds ``arr`` (a copy or a
    conversion), which is then made read-only too, so the view cannot be made writable."""
    if own:
        arr.flags.writeable = False
    view = arr.view()
    view.flags.writeable = False        # the view only: a caller's own array stays writable
    checked = object.__new__(CheckedFeatures)       # not __init__, which refuses every caller
    object.__setattr__(checked, "X", view)
    object.__setattr__(checked, "bound", bound)
    object.__setattr__(checked, "_issued", _ISSUED)
    return checked


def check_feature_matrix(X: Any, dim: int | None, what: str = "X", *, copy: bool = True) -> CheckedFeatures:
    """:func:`as_feature_matrix`, returned as a :class:`CheckedFeatures` (with a bound on |x|).

    The same rules and the same typed errors; a :class:`CheckedFeatures` is returned
    as it is once its dimension matches. The clean path costs two reductions over
    the values (their largest and smallest: NaN propagates through both, and ±inf
    and magnitudes of ``MAX_ABS_VALUE`` and beyond fail the comparison) and no
    temporary array; only a matrix that fails them is searched for the first bad
    value, to name it.

    ``copy`` (the default): the CheckedFeatures holds a read-only matrix of its own
    (a copy where ``X`` is an array, or a view of one, that its owner can still
    write), so it cannot go stale: writing NaN into ``X`` afterwards changes
    nothing a part is later handed. ``copy=False`` is for a part's own call (the
    detector's round, the tree's and the resolver's batch writes): no copy, the
    matrix may be a read-only view of the caller's memory, trusted only during the
    call that checked it.
    """
    if type(X) is CheckedFeatures:
        if X.X.shape[1] != dim and dim is not None:
            raise DimensionMismatchError(f"{what} has {X.X.shape[1]} features per row, expected {dim}")
        return X
    arr, bound = _checked_matrix(X, dim, what)
    own = arr is not X and arr.base is None       # a conversion of ours: nobody else can write it
    if copy and not own:
        arr, own = arr.copy(), True
    return _issue(arr, bound, own)


def _checked_matrix(X: Any, dim: int | None, what: str) -> tuple[np.ndarray, float]:
    """The rules of :func:`as_feature_matrix`: the matrix and the largest |x|."""
    arr = _as_float_array(X, what)
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{what} must be a 2-D (n, d) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise EmptyInputError(f"{what} has no rows")
    if arr.shape[1] == 0 or (dim is not None and arr.shape[1] != dim):
        raise DimensionMismatchError(
            f"{what} has {arr.shape[1]} features per row, expected {dim}"
        )
    high = float(np.maximum.reduce(arr, axis=None))
    low = float(np.minimum.reduce(arr, axis=None))
    if not (high < MAX_ABS_VALUE and low > -MAX_ABS_VALUE):     # False for NaN too
        _check_finite(arr, what)
        _check_magnitude(arr, what)
    return np.ascontiguousarray(arr), max(high, -low)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, requiring ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite float (:class:`NonFiniteError` for NaN, ±inf and
    numbers beyond the float range such as ``10**400``).

    >>> check_finite_float(3, "timestamp")
    3.0
    """
    if type(value) is float and math.isfinite(value):      # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a real number, got {_short_repr(value)}")
    try:
        value = float(value)
    except OverflowError as exc:          # an int (or Fraction) beyond the float range: 10**400
        raise NonFiniteError(f"{name} must be finite, got a number too large for a float ({exc})") from exc
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


def as_finite_vector(values: Any, n: int | None, what: str) -> np.ndarray:
    """Per-row scalars of a batch (timestamps, scores): :func:`as_float_vector` of length ``n``.

    Empty is allowed only when ``n == 0``.

    >>> as_finite_vector([1, 2.5], 2, "timestamps")
    array([1. , 2.5])
    """
    arr = as_float_vector(values, what, allow_empty=(n == 0))
    if n is not None and arr.shape[0] != n:
        raise DimensionMismatchError(f"{what} has {arr.shape[0]} values, expected {n}")
    return arr


def check_nonnegative_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite float >= 0."""
    value = check_finite_float(value, name)
    if value < 0:
        raise InvalidInputError(f"{name} must be >= 0, got {value}")
    return value
