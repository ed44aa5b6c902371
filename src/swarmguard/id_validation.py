"""Checks of ids and names at the boundary: agent, evidence and source ids, region and cohort names.

One rule for every id (:func:`check_key`: any hashable but None, bools and
floats; a string without NUL, at most :data:`MAX_ID_LENGTH` characters), one for
every name (:func:`check_name_text`: no NUL, no :data:`NAME_SEPARATOR`), their
vectorised forms over NumPy string arrays, and the ids that cross a wire
(int64 or str: :func:`check_wire_id`). :mod:`swarmguard.validation` re-exports
every name here; the feature and scalar checks live there.

>>> check_agent_id(np.int64(3))
3
>>> check_cohort("eu-west")
('eu-west',)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from .errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidTypeError,
)

__all__ = [
    "check_agent_id",
    "check_cohort",
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


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message never copies a huge input."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


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
