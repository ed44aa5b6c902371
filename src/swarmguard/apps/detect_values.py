"""Values of ``swarmguard detect``'s text inputs: numbers, ids, timestamps, and why one is refused.

The readers (:mod:`.detect_readers`) hand over columns of raw values (CSV text,
JSON values) or Arrow arrays; the functions here turn Python values into
NumPy arrays with a mask of the values refused, and word the reason for a
refused value exactly as :class:`~swarmguard.errors.MalformedInputError`
reports it (``feature 'x' is not a number: 'abc'``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from ..validation import MAX_ABS_VALUE

MAX_KEY_CHARS = 1_000           # longest agent id or cohort name: ids are kept in a fixed-width NumPy array
_PARQUET_HINT = "pip install 'swarmguard[parquet]'"


class _Missing:
    """A key absent from a JSON object."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()

def _pyarrow():
    """``(pyarrow, pyarrow.compute, pyarrow.parquet)``; :class:`MissingDependencyError` with the install hint."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            f"swarmguard detect reads and writes files with pyarrow, a dependency that is not installed "
            f"here: {_PARQUET_HINT}"
        ) from exc
    return pa, pc, pq


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


class _JsonNonFinite(float):
    """``NaN``, ``Infinity`` or ``-Infinity`` written as such in a JSON line (Python's ``json`` accepts them).

    ``json`` also reads a literal beyond float64, such as ``1e309``, as a plain
    ``inf``; this type tells the two apart, so that ``1e309`` is reported as
    too large and ``Infinity`` as not finite.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NaN" if self != self else ("Infinity" if self > 0 else "-Infinity")


class _JsonHugeInt(str):
    """A JSON integer with more digits than ``int()`` converts (``sys.get_int_max_str_digits()``, 4,300).

    Kept as its text, so that the row is refused naming its column, like any
    other number too large (an id: longer than ``MAX_KEY_CHARS``), instead of
    as a whole line of invalid JSON.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class _BeyondFloat64(float):
    """A plain ``inf`` read from a JSON number literal: the literal was beyond float64 (``1e309``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"a {'negative ' if self < 0 else ''}number beyond float64's range"


def _json_int(text: str) -> int | _JsonHugeInt:
    try:
        return int(text)
    except ValueError:          # more digits than int() converts
        return _JsonHugeInt(text)


_JSON_DECODE = json.JSONDecoder(parse_constant=_JsonNonFinite).decode
_JSON_DECODE_HUGE_INTS = json.JSONDecoder(parse_constant=_JsonNonFinite, parse_int=_json_int).decode
_INFINITY_WORDS = frozenset(("inf", "infinity"))


def _float_problem(what: str, v: Any) -> str:
    """Why ``v`` is not a finite number (for messages)."""
    if v is _MISSING or v is None:
        return f"{what} is missing"
    if isinstance(v, str):
        if not v.strip():
            return f"{what} is empty"
        try:
            f = float(v)
        except ValueError:
            return f"{what} is not a number: {_short(v)}"
        if math.isinf(f) and v.strip().lstrip("+-").lower() not in _INFINITY_WORDS:
            # a finite number, such as 1e309 or 400 digits, that float64 cannot hold
            return f"{what} is too large: {_short(v)} (magnitudes must be below {MAX_ABS_VALUE:g})"
    elif isinstance(v, _BeyondFloat64):
        return f"{what} is too large: {_short(v)} (magnitudes must be below {MAX_ABS_VALUE:g})"
    elif isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return f"{what} is not a number: {_short(v)}"
    else:
        try:
            f = float(v)
        except OverflowError:
            return f"{what} is too large: {_short(v)} (magnitudes must be below {MAX_ABS_VALUE:g})"
    if not math.isfinite(f):
        return f"{what} is not finite: {_short(v)}"
    if abs(f) >= MAX_ABS_VALUE:
        return f"{what} is too large: {_short(v)} (magnitudes must be below {MAX_ABS_VALUE:g})"
    return f"{what} is invalid: {_short(v)}"   # pragma: no cover - every rejection is named above


def _one_float(v: Any) -> float:
    """``v`` as a float, or NaN when it is not a number (bools, None, text that is not a number)."""
    if isinstance(v, bool) or v is None or v is _MISSING:
        return math.nan
    if isinstance(v, (str, int, float)):
        try:
            return float(v)
        except (ValueError, OverflowError):
            return math.nan
    return math.nan


def _py_floats(vals: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Text or JSON values -> (float64 array, bad mask). Bad: missing, non-numeric, NaN, inf."""
    n = len(vals)
    a = None
    if set(map(type, vals)) <= {str, int, float}:
        try:
            a = np.fromiter(map(float, vals), np.float64, n)
        except (ValueError, OverflowError):
            a = None
    if a is None:
        a = np.fromiter(map(_one_float, vals), np.float64, n)
    return a, ~np.isfinite(a)


def _py_keys(vals: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """Ids or cohort names (text; JSON ints become their decimal text), whitespace-stripped."""
    n = len(vals)
    types = set(map(type, vals))
    if types == {str}:
        keys = list(map(str.strip, vals))
    elif types == {int}:
        keys = list(map(str, vals))
    else:
        keys = [v.strip() if isinstance(v, str) else
                str(v) if isinstance(v, int) and not isinstance(v, bool) else "" for v in vals]
    lengths = np.fromiter(map(len, keys), np.intp, n)
    return keys, (lengths == 0) | (lengths > MAX_KEY_CHARS)


_TRUE_WORDS = frozenset({"true", "t", "yes", "y"})
_FALSE_WORDS = frozenset({"false", "f", "no", "n"})


def _one_label(v: Any) -> int:
    """1 (anomaly), 0, or -1 (not a label): a bool, a finite number (non-zero is an anomaly), or the
    words true/t/yes/y and false/f/no/n in any case."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v != 0) if math.isfinite(v) else -1
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE_WORDS:
            return 1
        if s in _FALSE_WORDS:
            return 0
        try:
            f = float(s)
        except ValueError:
            return -1
        return int(f != 0) if math.isfinite(f) else -1
    return -1


def _py_labels(vals: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth labels (``--label-column``) -> (bool array, bad mask); truthy is an anomaly."""
    codes = np.fromiter(map(_one_label, vals), np.int8, len(vals))
    return codes == 1, codes < 0


def _label_problem(column: str, v: Any) -> str:
    if v is None or v is _MISSING or (isinstance(v, str) and not v.strip()):
        return f"missing label (column {column!r})"
    return (f"label (column {column!r}) must be a number (non-zero is an anomaly), a bool, or "
            f"true/false/yes/no, not {_short(v)}")


def _key_problem(what: str, column: str, v: Any) -> str:
    if v is None or v is _MISSING or (isinstance(v, str) and not v.strip()):
        return f"missing {what} (column {column!r})"
    if isinstance(v, (str, int)) and not isinstance(v, bool) and len(v.strip() if isinstance(v, str) else str(v)) > MAX_KEY_CHARS:
        return f"{what} (column {column!r}) is longer than {MAX_KEY_CHARS:,} characters: {_short(v)}"
    return f"{what} (column {column!r}) must be text or an integer, not {_short(v)}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAT = np.iinfo(np.int64).min


def _one_datetime(v: Any) -> int:
    """ISO 8601 text -> ns since the epoch, UTC (naive times are taken as UTC); NaT if unreadable."""
    if not isinstance(v, str):
        return _NAT
    try:
        dt = datetime.fromisoformat(v.strip())
    except ValueError:
        return _NAT
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class _Clock:
    """Reads a timestamp column: numbers (any unit) or ISO 8601 date-times, fixed by the first value."""

    def __init__(self, name: str):
        self.name = name
        self.kind: str | None = None      # "number" or "datetime"

    def decide(self, vals: Sequence[Any]) -> None:
        if self.kind is not None:
            return
        for v in vals:
            if v is None or v is _MISSING or (isinstance(v, str) and not v.strip()):
                continue
            self.kind = "number" if math.isfinite(_one_float(v)) else "datetime"
            return

    @property
    def dtype(self):
        return np.int64 if self.kind == "datetime" else np.float64

    @property
    def oldest(self):
        return _NAT if self.kind == "datetime" else -np.inf

    def convert(self, vals: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        self.decide(vals)
        if self.kind != "datetime":
            return _py_floats(vals)
        n = len(vals)
        out = None
        if set(map(type, vals)) == {str}:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    out = np.array(vals, dtype="datetime64[ns]").view(np.int64)
            except (ValueError, Warning, OverflowError):
                out = None
        if out is None:
            out = np.fromiter(map(_one_datetime, vals), np.int64, n)
        return out, out == _NAT

    def problem(self, v: Any) -> str:
        what = f"timestamp {self.name!r}"
        if v is None or v is _MISSING or (isinstance(v, str) and not v.strip()):
            return f"{what} is missing"
        if self.kind == "datetime":
            return f"{what} is not an ISO 8601 date-time like the ones before it: {_short(v)}"
        return _float_problem(what, v)

