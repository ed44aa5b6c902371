"""Input validation, kept in one place (as scikit-learn's ``utils.validation``).

Every public entry point validates user input here, once, before touching state,
so a rejected call leaves every structure exactly as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable
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


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message never copies a huge input."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


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


def check_agent_id(agent_id: Any) -> Hashable:
    """An agent id: see :func:`check_key`."""
    return check_key(agent_id, "agent_id")


def check_cohort(cohort: Any) -> tuple[str, ...] | None:
    """Normalise a cohort path: None, a name, or a sequence of names -> tuple of str.

    Each name follows :func:`check_name_text` (no NUL, no ``NAME_SEPARATOR``, at
    most ``MAX_NAME_LENGTH`` characters); a path has at most ``MAX_COHORT_DEPTH`` names.

    >>> check_cohort(["eu-west", "rack-7"])
    ('eu-west', 'rack-7')
    """
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
    if len(parts) > MAX_COHORT_DEPTH:
        raise InvalidInputError(f"a cohort path has at most {MAX_COHORT_DEPTH} names, got {len(parts)}")
    for p in parts:
        if not isinstance(p, str) or not p:
            raise InvalidInputError(f"cohort names must be non-empty strings, got {_short_repr(p)} "
                                    f"in {_short_repr(cohort)}")
        check_name_text(p, "cohort name")
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


def check_key(value: Any, name: str) -> Hashable:
    """Ids (agent, evidence, source): any hashable except None, bools and floats, at any depth of a tuple.

    Floats are refused because NaN != NaN (an id that could never be found
    again) and 1.0 == 1; bools because True == 1 would alias the id 1. NumPy
    integers and strings become Python ones, so ``np.int64(3)`` and ``3`` are
    the same id.

    >>> check_key(np.int64(3), "evidence_id")
    3
    """
    if value is None:
        raise InvalidInputError(f"{name} must not be None")
    if isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must not be a bool ({value!r} would alias an int id)")
    if isinstance(value, (float, np.floating, complex, np.complexfloating)):
        raise InvalidTypeError(f"{name} must be an int, str or other hashable, not a float ({value!r})")
    if isinstance(value, tuple):
        return tuple(check_key(part, name) for part in value)
    try:
        hash(value)
    except TypeError as exc:
        raise InvalidTypeError(f"{name} must be hashable, got {type(value).__name__}") from exc
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, str):
        return check_id_text(str(value), name)
    return value


# ---------------------------------------------------------------------- ids and names: NUL, separator, length
# NumPy string arrays (dtype "U") pad with NUL characters and drop trailing ones,
# so "a\x00" becomes "a" on its way into an array: the batch path would overwrite
# agent "a", and replicas that hold the id as a string and as an array would
# disagree forever. Every id and name that is a string is therefore refused if it
# holds a NUL anywhere (one rule, the same on every path).
# Names (regions, cohorts) are also joined with NAME_SEPARATOR in checkpoints (the
# tree's cohort paths): a name holding it would read back as two names, so it is
# refused too. Lengths are capped so that one hostile string cannot blow up memory
# (a NumPy string array stores every element at the longest element's width).

MAX_ID_LENGTH = 1000
"""Longest string id (agent, update, evidence, source), in characters."""

MAX_NAME_LENGTH = 1000
"""Longest region or cohort name, in characters."""

MAX_COHORT_DEPTH = 100
"""Most names in one cohort path (the tree keeps a node for every prefix)."""

NAME_SEPARATOR = "\x1f"
"""Joins the names of a cohort path in checkpoints; refused inside a name."""


def _nul_error(name: str, value: str, index: int | None = None) -> InvalidInputError:
    where = "" if index is None else f"[{index}]"
    return InvalidInputError(
        f"{name}{where} holds a NUL character ('\\x00'): {_short_repr(value)}; NumPy string arrays drop "
        "trailing NULs, so such an id would alias another"
    )


def _length_error(name: str, value: str, limit: int, index: int | None = None) -> InvalidInputError:
    where = "" if index is None else f"[{index}]"
    return InvalidInputError(f"{name}{where} has {len(value)} characters, at most {limit} are allowed: "
                             f"{_short_repr(value, 40)}")


def _separator_error(name: str, value: str, index: int | None = None) -> InvalidInputError:
    where = "" if index is None else f"[{index}]"
    return InvalidInputError(
        f"{name}{where} holds the separator character {NAME_SEPARATOR!r}: {_short_repr(value)}; "
        "checkpoints join names with it, so such a name would read back as two")


def check_id_text(value: str, name: str, limit: int = MAX_ID_LENGTH) -> str:
    """Return the string ``value``, refusing a NUL character anywhere in it and more
    than ``limit`` characters.

    >>> check_id_text("agent-7", "agent_id")
    'agent-7'
    """
    if len(value) > limit:
        raise _length_error(name, value, limit)
    if "\x00" in value:
        raise _nul_error(name, value)
    return value


def check_id_texts(values: list, name: str, limit: int = MAX_ID_LENGTH) -> None:
    """Refuse a NUL in any of ``values`` (a list of ``str``) or one longer than ``limit``,
    naming the first such element."""
    if values and max(map(len, values)) > limit:     # C-level: no per-element Python loop
        i = next(i for i, v in enumerate(values) if len(v) > limit)
        raise _length_error(name, values[i], limit, i)
    if "\x00" in "".join(values):   # one C-level scan: no per-element Python loop on the clean path
        i = next(i for i, v in enumerate(values) if "\x00" in v)
        raise _nul_error(name, values[i], i)


def check_id_str_array(arr: np.ndarray, name: str, limit: int = MAX_ID_LENGTH) -> None:
    """Refuse a NUL inside any element of a NumPy ``U`` array (trailing ones are already gone),
    or an element longer than ``limit`` characters.

    An element's code points that are not NUL number its length unless a NUL
    sits inside it: one vectorised count instead of a search per element. The
    length needs no scan unless the array's width exceeds ``limit``.
    """
    if arr.size == 0 or arr.dtype.itemsize == 0:
        return
    if arr.dtype.itemsize // 4 > limit:
        lengths = np.char.str_len(arr).ravel()
        if int(lengths.max()) > limit:
            i = int(np.flatnonzero(lengths > limit)[0])
            raise _length_error(name, str(arr.ravel()[i]), limit, i)
    codes = np.ascontiguousarray(arr).view(np.uint32)
    if int(np.count_nonzero(codes)) != int(np.char.str_len(arr).sum()):
        lengths = np.char.str_len(arr).ravel()
        per_row = np.count_nonzero(codes.reshape(arr.size, -1), axis=1)
        i = int(np.flatnonzero(per_row != lengths)[0])
        raise _nul_error(name, str(arr.ravel()[i]), i)


def check_name_text(value: str, name: str) -> str:
    """A region or cohort name: no NUL, no ``NAME_SEPARATOR``, at most ``MAX_NAME_LENGTH`` characters.

    >>> check_name_text("eu-west", "region")
    'eu-west'
    """
    check_id_text(value, name, MAX_NAME_LENGTH)
    if NAME_SEPARATOR in value:
        raise _separator_error(name, value)
    return value


def check_name_texts(values: list, name: str) -> None:
    """:func:`check_name_text` of every element of a list of ``str``, naming the first bad one."""
    check_id_texts(values, name, MAX_NAME_LENGTH)
    if NAME_SEPARATOR in "".join(values):
        i = next(i for i, v in enumerate(values) if NAME_SEPARATOR in v)
        raise _separator_error(name, values[i], i)


def check_name_str_array(arr: np.ndarray, name: str) -> None:
    """:func:`check_name_text` of every element of a NumPy ``U`` array, vectorised."""
    check_id_str_array(arr, name, MAX_NAME_LENGTH)
    if arr.size and arr.dtype.itemsize:
        codes = np.ascontiguousarray(arr).view(np.uint32).reshape(arr.size, -1)
        bad = (codes == ord(NAME_SEPARATOR)).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _separator_error(name, str(arr.ravel()[i]), i)


def as_name_array(values: Any, n: int, what: str) -> np.ndarray:
    """``n`` names as a NumPy string array: one ``str`` for every row, or ``n`` of them.

    ``values`` may be a NumPy string array, an object array of ``str`` (a pandas
    column) or any sequence of ``str``; a non-string element is an
    :class:`InvalidTypeError` naming it; each name follows :func:`check_name_text`
    (no NUL, no ``NAME_SEPARATOR``, at most ``MAX_NAME_LENGTH`` characters).

    Names are checked once per distinct name, and one name for every row (a
    ``str``, a sequence repeating one name, or a broadcast array) comes back as
    a read-only broadcast view of that one name: it costs one name, not ``n``
    copies of it (a 1,000-character name for 10**6 rows would otherwise be a
    4 GB array). Several distinct names give an ordinary array, ``n`` times the
    longest name wide.

    >>> as_name_array(np.array(["eu", "us"], dtype=object), 2, "regions").tolist()
    ['eu', 'us']
    >>> as_name_array("eu", 3, "regions").strides
    (0,)
    """
    if isinstance(values, str):
        return _one_name(check_name_text(values, what), n)
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        arr = values
        if _is_one_name(arr):
            # a broadcast name: every row is the same element, so checking one checks all
            check_name_str_array(arr[:1], what)
        else:
            check_name_str_array(arr, what)
    else:
        if isinstance(values, bytes) or not hasattr(values, "__len__") or (
                isinstance(values, np.ndarray) and values.dtype.kind != "O"):
            kind = f"dtype {values.dtype}" if isinstance(values, np.ndarray) else type(values).__name__
            raise InvalidTypeError(f"{what} must be one name or {n} names (str), got {kind}")
        if isinstance(values, np.ndarray) and values.ndim != 1:
            raise DimensionMismatchError(f"{what} must be {n} names (one per row), got shape {values.shape}")
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if not set(map(type, items)) <= {str}:      # the C-level test first; the loop only to name the culprit
            for i, v in enumerate(items):
                if not isinstance(v, str):
                    raise InvalidTypeError(f"{what}[{i}] is not a str: {v!r} ({type(v).__name__})")
        # distinct names only (hashing a str is cached): joining n copies of a long name to scan it
        # would cost n times its length
        distinct = list(dict.fromkeys(items))
        try:
            check_name_texts(distinct, what)
        except InvalidInputError:
            check_name_texts(items, what)            # again, to name the first bad row, not its distinct index
            raise                                    # pragma: no cover - the line above raises
        if len(items) != n:
            raise DimensionMismatchError(f"{what} must be {n} names (one per row), got shape ({len(items)},)")
        if len(distinct) == 1 and n > 1:
            return _one_name(distinct[0], n)
        arr = np.array(items, dtype=str) if items else np.empty(0, dtype="<U1")
    if arr.shape != (n,):
        raise DimensionMismatchError(f"{what} must be {n} names (one per row), got shape {arr.shape}")
    return arr


def _is_one_name(names: np.ndarray) -> bool:
    """Whether ``names`` (1-D) is one element seen ``names.size`` times (a broadcast: stride 0)."""
    return names.ndim == 1 and names.size > 1 and names.strides == (0,)


def unique_names(names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(names, return_inverse=True)`` for a 1-D string array, without copying a broadcast one.

    :func:`as_name_array` gives one name for every row as a broadcast view;
    ``np.unique`` would first flatten it into ``n`` copies of the name.

    >>> names, inverse = unique_names(as_name_array("eu", 3, "regions"))
    >>> names.tolist(), inverse.tolist()
    (['eu'], [0, 0, 0])
    """
    if _is_one_name(names):
        return names[:1].copy(), np.zeros(names.size, dtype=np.intp)
    names, inverse = np.unique(names, return_inverse=True)
    return names, inverse.ravel()


def _one_name(name: str, n: int) -> np.ndarray:
    """``n`` rows of ``name`` as a read-only view of one element (stride 0)."""
    return np.broadcast_to(np.array([name]), (n,))


# ---------------------------------------------------------------------- ids on the wire
_INT64 = np.iinfo(np.int64)


def is_wire_id(value: Any) -> bool:
    """Whether ``value`` is an id arrays hold without pickle: a str, or an int (not a
    bool) that fits in int64 (the test behind the stores' and checkpoints' own errors;
    unlike :func:`check_wire_id`, no NUL or length rule: a store holds any str).

    >>> is_wire_id(3), is_wire_id("a"), is_wire_id(2**63), is_wire_id(True), is_wire_id((1,))
    (True, True, False, False, False)
    """
    if isinstance(value, str):
        return True
    return (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            and _INT64.min <= int(value) <= _INT64.max)


def check_wire_id(value: Any, name: str = "agent_id") -> int | str:
    """One id (agent or update): an int that fits in 64 bits, or a string without NUL characters.

    >>> check_wire_id(np.int64(3)), check_wire_id("a")
    (3, 'a')
    """
    if isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name}: ids must be ints or strings, got {value!r}")
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not _INT64.min <= value <= _INT64.max:
            raise InvalidInputError(f"{name}: int ids must fit in 64 bits (int64), got {value}")
        return value
    if isinstance(value, str):
        return check_id_text(str(value), name)
    if value is None:
        raise InvalidInputError(f"{name} must not be None")
    raise InvalidTypeError(
        f"{name}: ids must be ints or strings (they travel between replicas as arrays), "
        f"got {type(value).__name__} {value!r}"
    )


def _wire_ids_from_items(items: list, name: str) -> np.ndarray:
    """A list of ids -> int64 array, str array, or object array (ints and strs mixed)."""
    kinds = set(map(type, items))
    if kinds <= {int}:
        try:
            return np.array(items, dtype=np.int64)
        except OverflowError:
            pass                     # the loop below names the id that does not fit
    elif kinds == {str}:
        check_id_texts(items, name)
        return np.array(items, dtype=str)
    values = []
    for i, v in enumerate(items):
        values.append(check_wire_id(v, f"{name}[{i}]"))
    n_str = sum(isinstance(v, str) for v in values)
    if n_str == 0:
        return np.array(values, dtype=np.int64)
    if n_str == len(values):
        return np.array(values, dtype=str)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def as_wire_id_array(ids: Any, n: int | None = None, name: str = "agent_ids") -> np.ndarray:
    """Validate a batch of ids as the replicas take them; return them as one array.

    The result is an int64 array (every id an int), a NumPy string array (every
    id a string) or an object array of Python ints and strs (both kinds). Ints
    must fit in int64 (uint64 arrays too); strings must not hold a NUL (a NumPy
    string array would drop a trailing one). Object arrays (a pandas column) are
    taken element by element. This is the one check every batch entry point
    (tree, replicas, detector, Ray driver) applies before changing anything.

    >>> as_wire_id_array(np.array(["a", "b"], dtype=object)).tolist()
    ['a', 'b']
    >>> as_wire_id_array([3, "a"]).tolist()
    [3, 'a']
    """
    if isinstance(ids, (str, bytes)) or np.isscalar(ids) or not hasattr(ids, "__len__"):
        raise InvalidTypeError(f"{name} must be a 1-D sequence of ids, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise DimensionMismatchError(f"{name} must be 1-D, got shape {ids.shape}")
        kind = ids.dtype.kind
        if kind == "i":
            out = ids
        elif kind == "u":
            if ids.size and int(ids.max()) > _INT64.max:
                i = int(np.argmax(ids > _INT64.max))
                raise InvalidInputError(f"{name}[{i}]: int ids must fit in 64 bits (int64), got {int(ids[i])}")
            out = ids.astype(np.int64)
        elif kind == "U":
            check_id_str_array(ids, name)
            out = ids
        elif kind == "O":
            out = _wire_ids_from_items(ids.tolist(), name)
        else:
            raise InvalidTypeError(f"{name} must be ints or strings, got dtype {ids.dtype}")
    else:
        out = _wire_ids_from_items(list(ids), name)
    if n is not None and out.shape[0] != n:
        raise DimensionMismatchError(f"expected {n} agent ids, got {out.shape[0]}")
    return out
