"""``swarmguard detect``: score a user's own telemetry file, agent by agent.

The input is CSV, JSON Lines or Parquet with an agent id column, optional
cohort (region) and timestamp columns, and numeric feature columns. It is read
in chunks of ``chunk_rows`` rows, so files much larger than memory stream
through: each chunk is parsed into NumPy arrays, reduced to the latest row of
each agent, and written into a :class:`~swarmguard.HierarchicalStatisticalTree`
with one ``update_many`` call. Memory grows with the number of *agents*, not
with the number of rows.

"Latest" means the largest timestamp when a timestamp column is given (ties go
to the row further down the file), else the row furthest down the file. Across
chunks an agent's stored row is replaced only by a row whose timestamp is at
least its stored one, so the result does not depend on the chunk size.

Every agent is then scored by leave-one-out squared Mahalanobis distance
against all the others (:meth:`BehavioralDistributedProtocol.score_many`),
flagged by Benjamini–Hochberg false-discovery-rate control (``fdr``) or a
per-agent level (``alpha``), and written one row per agent, in the order
agents first appear in the input: ``agent_id, score, p_value, is_anomaly``.

Malformed rows (missing id, empty or non-numeric feature, NaN or infinity,
wrong number of fields, unreadable JSON, unreadable timestamp) raise
:class:`~swarmguard.errors.MalformedInputError` naming the file and the line
(1-based, the CSV header is line 1; Parquet files count rows), or, with
``skip_bad=True``, are skipped and counted. A bad value never becomes a NaN.

Parquet needs the optional dependency ``pyarrow`` (``pip install 'swarmguard[parquet]'``).

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> rng = np.random.default_rng(0)
>>> lines = ["agent_id,cpu,mem"] + [f"a{i},{x:.4f},{y:.4f}" for i, (x, y) in enumerate(rng.normal(size=(300, 2)))]
>>> _ = (d / "t.csv").write_text("\\n".join(lines + ["a7,25.0,-20.0"]) + "\\n")
>>> res = detect(d / "t.csv", output=d / "scores.csv", warm_up=50)
>>> res.agents, res.rows_read, res.features
(300, 301, ['cpu', 'mem'])
>>> [str(a) for a in res.agent_ids[res.is_anomaly]]
['a7']
>>> (d / "scores.csv").read_text().splitlines()[0]
'agent_id,score,p_value,is_anomaly'
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, compress, islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from ..api import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from ..errors import (
    EmptyInputError,
    InvalidInputError,
    MalformedInputError,
    MissingDependencyError,
)
from ..structures.scoring import MIN_POPULATION
from ..validation import MAX_ABS_VALUE, check_fraction, check_positive_int
from .output_paths import check_not_input, check_output_file

__all__ = ["detect", "DetectResult", "write_scores", "FORMATS", "input_format", "output_format",
           "MAX_COLUMNS", "MAX_FEATURES", "MAX_LINE_BYTES", "MAX_KEY_CHARS"]

FORMATS = ("csv", "jsonl", "parquet")
_INPUT_EXT = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_OUTPUT_EXT = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_INFER_SAMPLE = 10_000          # rows of the first chunk looked at to infer feature columns
_INFER_CELLS = 1_000_000        # ... but at most this many cells: wide files infer from fewer rows
_CHUNK_CELLS = 4_000_000        # a chunk holds at most this many cells (rows x columns): wide files, shorter chunks
_CHUNK_BYTES = 64 << 20         # ... and pyarrow's CSV blocks at most about this much text
_CHUNK_TEXT_BYTES = 8 << 20     # text per chunk parsed by the standard library (CSV, JSON Lines): its Python
                                # objects cost up to ~20x the text ("12,12,..." or "[[],[],...]")
MAX_COLUMNS = 10_000            # columns an input may have (CSV header, Parquet schema, JSON keys seen)
MAX_FEATURES = 256              # feature columns scored: every tree node holds a features x features co-moment
MAX_LINE_BYTES = 1 << 20        # default longest line (CSV, JSON Lines), newline included
MAX_KEY_CHARS = 1_000           # longest agent id or cohort name: ids are kept in a fixed-width NumPy array
_MAX_EXAMPLES = 5               # skipped rows remembered (with reasons) for the summary
_PARQUET_HINT = "pip install 'swarmguard[parquet]'"


class _Missing:
    """A key absent from a JSON object."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


# ---------------------------------------------------------------------------- small helpers
def _suffix(path: Path) -> str:
    """The extension that decides the format, ignoring a trailing ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def input_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The input format: ``fmt`` when given, else from the extension (``.gz`` allowed for text)."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise InvalidInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    ext = _suffix(Path(path))
    if ext not in _INPUT_EXT:
        raise InvalidInputError(
            f"cannot tell the format of {str(path)!r} from its extension {ext or '(none)'!r}: "
            f"name it .csv, .jsonl, .ndjson or .parquet (optionally .gz for text), or pass --format"
        )
    return _INPUT_EXT[ext]


def output_format(path: str | os.PathLike) -> str:
    """``csv`` or ``parquet`` from the output path's extension."""
    ext = Path(path).suffix.lower()
    if ext not in _OUTPUT_EXT:
        raise InvalidInputError(f"output {str(path)!r} must end in .csv or .parquet, not {ext or '(no extension)'!r}")
    return _OUTPUT_EXT[ext]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            f"reading or writing Parquet needs the optional dependency pyarrow: {_PARQUET_HINT}"
        ) from exc
    return pa, pc, pq


def _open_binary(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


class _LineTooLongError(MalformedInputError):
    """A line over ``max_line_bytes``: the run stops even with ``skip_bad`` (where the row ends is unknown)."""


def _bounded_lines(raw, path: Path, max_line_bytes: int, consumed: list[int] | None = None) -> Iterator[str]:
    """The lines of a binary file as text (UTF-8, a leading BOM dropped), each at most ``max_line_bytes``.

    ``readline(limit + 1)`` never holds more than the limit (plus one byte) of
    a line in memory, so a multi-gigabyte line without a newline costs what a
    legal line costs before it is refused with :class:`MalformedInputError`.
    A decoding error surfaces as ``UnicodeDecodeError`` to the caller, who
    knows the line number. ``consumed[0]``, when given, counts the bytes read,
    so that a caller parsing the lines through ``csv.reader`` can end a chunk
    by size.
    """
    readline = raw.readline
    limit = max_line_bytes
    lineno = 0
    line = readline(limit + 4)          # room for a byte-order mark on the first line
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    while line:
        lineno += 1
        if len(line) > limit:
            raise _LineTooLongError(
                str(path), lineno, f"line longer than {max_line_bytes:,} bytes (raise the limit with "
                f"--max-line-bytes; an overlong line stops the run even with --skip-bad)")
        if consumed is not None:
            consumed[0] += len(line)
        yield line.decode("utf-8")
        line = readline(limit + 1)


def _check_columns(path: Path, names: Sequence[str], what: str) -> None:
    """Refuse more than MAX_COLUMNS columns, or a name given twice (O(columns): one Counter)."""
    if len(names) > MAX_COLUMNS:
        raise InvalidInputError(f"{path} has {len(names):,} columns; detect reads at most {MAX_COLUMNS:,} "
                                f"(see docs/detect.md): keep the id, cohort, timestamp and feature columns")
    dup = sorted(name for name, k in Counter(names).items() if k > 1)
    if dup:
        shown = ", ".join(map(repr, dup[:10])) + (f" and {len(dup) - 10} more" if len(dup) > 10 else "")
        raise InvalidInputError(f"{path}: {what} {shown} more than once")


def _rows_per_chunk(chunk_rows: int, columns: int) -> int:
    """``chunk_rows``, lowered so that a chunk holds at most _CHUNK_CELLS cells."""
    return max(1, min(chunk_rows, _CHUNK_CELLS // max(1, columns)))


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


# ---------------------------------------------------------------------------- chunks
class _Chunk:
    """Rows of one chunk, column by column. ``where``: line (or row) number of each row."""

    unit = "line"

    def __init__(self, where: np.ndarray | None, bad: np.ndarray | None = None,
                 reason: Callable[[int], str] | None = None, n: int | None = None):
        self.where = where            # None: rows not numbered (the pyarrow CSV path; any bad row falls back)
        self.n = where.size if where is not None else n
        self.bad = bad if bad is not None else np.zeros(self.n, dtype=bool)
        self.reason = reason

    def column(self, name: str) -> Sequence[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw(self, name: str, i: int) -> Any:
        return self.column(name)[i]

    def keys(self, name: str) -> tuple[Any, np.ndarray]:
        return _py_keys(self.column(name))

    def floats(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        X = np.empty((self.n, len(names)))
        bad = np.empty((self.n, len(names)), dtype=bool)
        for j, name in enumerate(names):
            X[:, j], bad[:, j] = _py_floats(self.column(name))
        return X, bad

    def times(self, clock: _Clock) -> tuple[np.ndarray, np.ndarray]:
        return clock.convert(self.column(clock.name))


class _CsvChunk(_Chunk):
    def __init__(self, rows: list[list[str]], where: np.ndarray, index: dict[str, int], bad, reason):
        super().__init__(where, bad, reason)
        self.rows, self.index = rows, index
        self._cols: dict[str, list[str]] = {}

    def column(self, name: str) -> list[str]:
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = list(map(itemgetter(self.index[name]), self.rows))
        return col

    def raw(self, name: str, i: int) -> Any:
        return self.rows[i][self.index[name]]

    def floats(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        d = len(names)
        if d > 1:   # fast path: every feature of every row in one C-level pass
            try:
                flat = list(chain.from_iterable(map(itemgetter(*[self.index[c] for c in names]), self.rows)))
                X = np.fromiter(map(float, flat), np.float64, len(flat)).reshape(self.n, d)
                return X, ~np.isfinite(X)
            except ValueError:
                pass
        return super().floats(names)


class _JsonChunk(_Chunk):
    def __init__(self, objs: list[dict], where: np.ndarray, bad, reason):
        super().__init__(where, bad, reason)
        self.objs = objs
        self._cols: dict[str, list[Any]] = {}

    def column(self, name: str) -> list[Any]:
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = [o.get(name, _MISSING) for o in self.objs]
        return col

    def raw(self, name: str, i: int) -> Any:
        v = self.objs[i].get(name, _MISSING)
        if type(v) is float and math.isinf(v):     # Infinity itself is a _JsonNonFinite
            return _BeyondFloat64(v)
        return v

    def floats(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        d = len(names)
        if d > 1:   # fast path: every feature present and a JSON number (not a bool) in every row
            try:
                flat = list(chain.from_iterable(map(itemgetter(*names), self.objs)))
                if set(map(type, flat)) <= {int, float}:
                    X = np.fromiter(flat, np.float64, len(flat)).reshape(self.n, d)
                    return X, ~np.isfinite(X)
            except (KeyError, OverflowError):
                pass
        return super().floats(names)


class _ArrowChunk(_Chunk):
    unit = "row"

    def __init__(self, batch, where: np.ndarray | None):
        super().__init__(where, n=batch.num_rows)
        self.batch = batch
        self.pa, self.pc, _ = _pyarrow()

    def _array(self, name: str):
        return self.batch.column(self.batch.schema.get_field_index(name))

    def column(self, name: str) -> list[Any]:
        return self._array(name).to_pylist()

    def raw(self, name: str, i: int) -> Any:
        return self._array(name)[i].as_py()

    def _nulls(self, arr) -> np.ndarray:
        if arr.null_count == 0:
            return np.zeros(len(arr), dtype=bool)
        return arr.is_null().to_numpy(zero_copy_only=False)

    def keys(self, name: str) -> tuple[Any, np.ndarray]:
        pa = self.pa
        arr = self._array(name)
        if pa.types.is_integer(arr.type):
            nulls = self._nulls(arr)
            vals = self.pc.fill_null(arr, 0).cast(pa.int64()).to_numpy()
            return vals, nulls
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return _py_keys(self.pc.fill_null(arr, "").to_pylist())
        raise InvalidInputError(f"column {name!r} has type {arr.type}: ids and cohorts must be integers or strings")

    def floats(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pa, pc = self.pa, self.pc
        X = np.empty((self.n, len(names)))
        bad = np.empty((self.n, len(names)), dtype=bool)
        for j, name in enumerate(names):
            arr = self._array(name)
            t = arr.type
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
                nulls = self._nulls(arr)
                X[:, j] = pc.fill_null(arr.cast(pa.float64(), safe=False), 0.0).to_numpy()
                bad[:, j] = nulls | ~np.isfinite(X[:, j])
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                X[:, j], bad[:, j] = _py_floats(arr.to_pylist())
            else:
                raise InvalidInputError(f"feature column {name!r} has type {t}, not a number")
        return X, bad

    def times(self, clock: _Clock) -> tuple[np.ndarray, np.ndarray]:
        pa, pc = self.pa, self.pc
        arr = self._array(clock.name)
        t = arr.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            if clock.kind is None:
                clock.kind = "datetime"
            if clock.kind != "datetime":
                raise InvalidInputError(f"timestamp column {clock.name!r} changed type to {t}")
            ns = arr.cast(pa.timestamp("ns", tz=getattr(t, "tz", None))).cast(pa.int64())
            nulls = self._nulls(ns)
            return pc.fill_null(ns, _NAT).to_numpy(), nulls
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            if clock.kind is None:
                clock.kind = "number"
            if clock.kind != "number":
                raise InvalidInputError(f"timestamp column {clock.name!r} changed type to {t}")
            nulls = self._nulls(arr)
            vals = pc.fill_null(arr.cast(pa.float64(), safe=False), 0.0).to_numpy()
            return vals, nulls | ~np.isfinite(vals)
        return clock.convert(arr.to_pylist())


# ---------------------------------------------------------------------------- readers
class _CsvReader:
    unit = "line"

    def __init__(self, path: Path, chunk_rows: int, max_line_bytes: int = MAX_LINE_BYTES):
        self.path, self.chunk_rows = path, chunk_rows
        self._file = _open_binary(path)
        self._consumed = [0]            # bytes read so far: chunks end by size as well as by rows
        self._reader = csv.reader(_bounded_lines(self._file, path, max_line_bytes, self._consumed))
        try:
            header = next(self._reader)
        except StopIteration:
            self._file.close()
            raise EmptyInputError(f"{path} is empty: a CSV file needs a header line") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            self._file.close()
            raise MalformedInputError(str(path), 1, f"unreadable header: {exc}") from None
        except MalformedInputError:
            self._file.close()
            raise
        self.names = [h.strip() for h in header]
        try:
            _check_columns(path, self.names, "the header names")
        except InvalidInputError:
            self._file.close()
            raise
        self.index = {h: i for i, h in enumerate(self.names)}
        self.chunk_rows = _rows_per_chunk(chunk_rows, len(self.names))

    def close(self) -> None:
        self._file.close()

    def chunks(self) -> Iterator[_CsvChunk]:
        reader, ncols, consumed = self._reader, len(self.names), self._consumed
        filler = [""] * ncols
        while True:
            # Row by row, so that a chunk ends at chunk_rows rows or _CHUNK_TEXT_BYTES of text, whichever
            # comes first, and a row with the wrong number of fields is dropped as soon as it is read: one
            # 1 MiB line of "12,12,..." is 350,000 Python strings (~20 MiB), and a chunk of such rows
            # would otherwise cost chunk_rows times that.
            rows: list[list[str]] = []
            starts: list[int] = []          # first line of each row (quoted fields may span lines)
            wrong: dict[int, int] = {}      # row -> its number of fields, when not the header's
            append, start_at = rows.append, starts.append
            line_num = reader.line_num
            budget = consumed[0] + _CHUNK_TEXT_BYTES
            try:
                for row in islice(reader, self.chunk_rows):
                    start_at(line_num + 1)
                    line_num = reader.line_num
                    if len(row) != ncols:
                        if row:             # a blank line is [] and is dropped below, not counted
                            wrong[len(rows)] = len(row)
                        row = filler if row else row
                    append(row)
                    if consumed[0] >= budget:
                        break
            except (csv.Error, UnicodeDecodeError) as exc:
                raise MalformedInputError(str(self.path), reader.line_num, f"unreadable CSV: {exc}") from None
            if not rows:
                return
            m = len(rows)
            where = np.fromiter(starts, np.int64, m)
            del starts
            blank = np.fromiter(map(len, rows), np.intp, m) == 0
            if blank.any():
                keep = ~blank
                renumber = np.cumsum(keep) - 1          # a row's index among the rows kept
                rows = list(compress(rows, keep))
                where = where[keep]
                wrong = {int(renumber[i]): k for i, k in wrong.items()}
                if not rows:
                    continue
            bad, reason = None, None
            if wrong:
                bad = np.zeros(len(rows), dtype=bool)
                bad[list(wrong)] = True

                def reason(i, wrong=wrong):
                    return f"expected {ncols} fields (as in the header), found {wrong[i]}"

            yield _CsvChunk(rows, where, self.index, bad, reason)
            del rows          # let the chunk go before the next one is read


class _JsonlReader:
    unit = "line"

    def __init__(self, path: Path, chunk_rows: int, max_line_bytes: int = MAX_LINE_BYTES):
        self.path, self.chunk_rows = path, chunk_rows
        self._file = _open_binary(path)
        self._lines = _bounded_lines(self._file, path, max_line_bytes)
        self.names: list[str] | None = None     # known after the first chunk

    def close(self) -> None:
        self._file.close()

    def chunks(self) -> Iterator[_JsonChunk]:
        lineno = 0
        loads = _JSON_DECODE
        while True:
            lines: list[str] = []
            try:
                size = 0
                for line in islice(self._lines, self.chunk_rows):
                    lines.append(line)
                    size += len(line)
                    if size >= _CHUNK_TEXT_BYTES:    # long lines: fewer of them per chunk
                        break
            except UnicodeDecodeError as exc:
                raise MalformedInputError(str(self.path), lineno + len(lines) + 1, f"unreadable text: {exc}") from None
            if not lines:
                return
            where = np.arange(lineno + 1, lineno + 1 + len(lines), dtype=np.int64)
            lineno += len(lines)
            nonblank = np.fromiter(map(len, map(str.strip, lines)), np.intp, len(lines)) > 0
            if not nonblank.all():
                lines = list(compress(lines, nonblank))
                where = where[nonblank]
                if not lines:
                    continue
            problems: dict[int, str] = {}
            try:
                objs = list(map(loads, lines))
            except (ValueError, RecursionError):
                objs = []
                for i, text in enumerate(lines):
                    try:
                        objs.append(loads(text))
                    except ValueError as exc:
                        try:            # an integer of more digits than int() converts is a value too large
                            objs.append(_JSON_DECODE_HUGE_INTS(text))
                        except (ValueError, RecursionError):
                            objs.append(None)
                            problems[i] = f"invalid JSON: {exc}"
                    except RecursionError:      # "[[[[...": the decoder's depth is Python's recursion limit
                        objs.append(None)
                        problems[i] = "invalid JSON: nested too deeply"
            if not all(type(o) is dict for o in objs):
                for i, o in enumerate(objs):
                    if type(o) is not dict:
                        if i not in problems:
                            problems[i] = f"not a JSON object: {_short(o)}"
                        objs[i] = {}
            bad = None
            if problems:
                bad = np.zeros(len(objs), dtype=bool)
                bad[list(problems)] = True
            yield _JsonChunk(objs, where, bad, problems.__getitem__ if problems else None)
            del objs, lines   # let the chunk go before the next one is read


class _ParquetReader:
    unit = "row"

    def __init__(self, path: Path, chunk_rows: int):
        self.path, self.chunk_rows = path, chunk_rows
        pa, _, pq = _pyarrow()
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInputError(f"{path} is not a readable Parquet file: {exc}") from None
        self.schema = self._file.schema_arrow
        self.names = list(self.schema.names)
        try:
            _check_columns(path, self.names, "the schema names")
        except InvalidInputError:
            self._file.close()
            raise
        self.columns: list[str] | None = None

    def close(self) -> None:
        self._file.close()

    def numeric(self) -> list[str]:
        pa, _, _ = _pyarrow()
        return [f.name for f in self.schema
                if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)]

    def chunks(self) -> Iterator[_ArrowChunk]:
        row = 0
        for batch in self._file.iter_batches(batch_size=self.chunk_rows, columns=self.columns):
            n = batch.num_rows
            if n == 0:
                continue
            yield _ArrowChunk(batch, np.arange(row + 1, row + 1 + n, dtype=np.int64))
            row += n


def _arrow_csv_available(engine: str) -> bool:
    if engine == "pyarrow":
        _pyarrow()
        return True
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def _arrow_csv_chunks(path: Path, names: list[str], spec: _Spec, chunk_rows: int,
                      row_bytes: float, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[_ArrowChunk]:
    """The whole CSV file through pyarrow's multi-threaded reader; ``_FallBack`` on anything unusual.

    pyarrow refuses a row longer than its block (ArrowInvalid), having read
    a few blocks at most. Blocks are therefore no longer than
    ``max_line_bytes``: any row pyarrow accepts is within the limit, and a
    longer one sends the file to the reference reader, which refuses it with
    the line number. Small blocks are joined into chunks of about
    ``chunk_rows`` rows, so the tree sees the same few large batches.
    """
    pa, _, _ = _pyarrow()
    from pyarrow import csv as pacsv

    text = [c for c in (spec.id_column, spec.cohort_column, spec.timestamp_column) if c is not None]
    types = {c: pa.string() for c in text} | {c: pa.float64() for c in spec.features}
    block = int(min(_CHUNK_BYTES, max_line_bytes, max(1 << 12, chunk_rows * row_bytes)))
    try:
        stream = pacsv.open_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=text + spec.features, null_values=[""],
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        pending, rows = [], 0
        for batch in stream:
            if batch.num_rows:
                pending.append(batch)
                rows += batch.num_rows
            if rows >= chunk_rows:
                yield _ArrowChunk(_joined(pa, pending), None)
                pending, rows = [], 0
        if pending:
            yield _ArrowChunk(_joined(pa, pending), None)
    except (pa.ArrowException, UnicodeDecodeError):
        raise _FallBack() from None


def _joined(pa, batches: list) -> Any:
    """One record batch holding ``batches`` in order."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _then(held: list, rest: Iterator[_Chunk]) -> Iterator[_Chunk]:
    """``held``'s one chunk, then ``rest``; unlike ``chain([first], rest)``, which keeps a reference to
    ``first`` until ``rest`` is exhausted, nothing here holds the first chunk once it is fed."""
    yield held.pop()
    yield from rest


def _infer_features(reader, first: _Chunk, exclude: set[str]) -> list[str]:
    """Numeric columns other than ``exclude``: by schema (Parquet), else by the first rows' values."""
    if isinstance(reader, _ParquetReader):
        return [c for c in reader.numeric() if c not in exclude]
    if isinstance(reader, _JsonlReader):
        names: dict[str, None] = {}
        for o in first.objs[:_INFER_SAMPLE]:
            names.update(dict.fromkeys(o))
    else:
        names = dict.fromkeys(reader.names)
    # wide files are judged on fewer rows, so that inference looks at no more than _INFER_CELLS values
    sample = min(first.n, _INFER_SAMPLE, max(100, _INFER_CELLS // max(1, len(names))))
    found = []
    for name in names:
        if name in exclude:
            continue
        vals = list(islice(first.column(name), sample))
        present = [v for v in vals if not (v is None or v is _MISSING or (isinstance(v, str) and not v.strip()))]
        if isinstance(reader, _JsonlReader):
            numeric = sum(1 for v in present if isinstance(v, (int, float)) and not isinstance(v, bool))
        else:
            try:
                numeric = np.fromiter(map(float, present), np.float64, len(present)).size
            except ValueError:
                numeric = sum(1 for v in present if not math.isnan(_one_float(v)))
        if present and 2 * numeric > len(present):
            found.append(name)
    return found


def _open_reader(path: Path, fmt: str, chunk_rows: int, max_line_bytes: int = MAX_LINE_BYTES):
    if fmt == "csv":
        return _CsvReader(path, chunk_rows, max_line_bytes)
    if fmt == "jsonl":
        return _JsonlReader(path, chunk_rows, max_line_bytes)
    return _ParquetReader(path, chunk_rows)


# ---------------------------------------------------------------------------- accumulation
class _Population:
    """The latest row of every agent, in a tree; agents numbered in order of first appearance."""

    def __init__(self, dim: int):
        self.tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=dim)
        self.number: dict[Any, int] = {}
        self.ids: list[Any] = []
        self.stamp: np.ndarray | None = None
        self.cohort_number: dict[str, int] = {}
        self.cohort_names: list[str] = []
        self.placed_in = np.full(0, -1, dtype=np.int64)    # cohort code of each agent in the tree

    def add(self, keys: Any, X: np.ndarray, cohorts: list[str] | None, ts: np.ndarray | None,
            clock: _Clock | None) -> None:
        m = X.shape[0]
        key_list = keys.tolist() if isinstance(keys, np.ndarray) else keys
        number = self.number
        no = np.fromiter(map(number.get, key_list, repeat(-1)), np.int64, m)
        new = no < 0
        if new.any():
            fresh = list(dict.fromkeys(compress(key_list, new)))
            base = len(self.ids)
            number.update(zip(fresh, range(base, base + len(fresh)), strict=True))
            self.ids.extend(fresh)
            no[new] = np.fromiter(map(number.__getitem__, compress(key_list, new)), np.int64, int(new.sum()))
        pos = np.arange(m)
        order = np.lexsort((pos, no) if ts is None else (pos, ts, no))
        sno = no[order]
        last = np.ones(m, dtype=bool)
        last[:-1] = sno[1:] != sno[:-1]
        pick = order[last]
        if ts is not None:
            if self.stamp is None:
                self.stamp = np.full(0, clock.oldest, dtype=clock.dtype)
            if self.stamp.size < len(self.ids):
                grown = np.full(max(len(self.ids), 2 * self.stamp.size), clock.oldest, dtype=self.stamp.dtype)
                grown[: self.stamp.size] = self.stamp
                self.stamp = grown
            fresh_enough = ts[pick] >= self.stamp[no[pick]]
            pick = pick[fresh_enough]
            self.stamp[no[pick]] = ts[pick]
        if pick.size == 0:
            return
        pick.sort()
        agents = no[pick]              # the tree knows agents by their number: int64 fast paths
        if cohorts is None:
            self.tree.update_many(agents, X[pick])
            return
        cnum = self.cohort_number
        codes = np.fromiter(map(cnum.get, cohorts, repeat(-1)), np.int64, m)
        if (codes < 0).any():
            for name in dict.fromkeys(compress(cohorts, codes < 0)):
                cnum[name] = len(self.cohort_names)
                self.cohort_names.append(name)
            codes = np.fromiter(map(cnum.__getitem__, cohorts), np.int64, m)
        c = codes[pick]
        if self.placed_in.size < len(self.ids):
            grown = np.full(max(len(self.ids), 2 * self.placed_in.size), -1, dtype=np.int64)
            grown[: self.placed_in.size] = self.placed_in
            self.placed_in = grown
        stays = self.placed_in[agents] == c
        rows = X[pick]
        if not stays.all():            # new agents, and agents whose cohort changed
            moving = ~stays
            names = np.array(self.cohort_names, dtype=str)
            self.tree.update_many(agents[moving], rows[moving], cohorts=names[c[moving]])
        if stays.any():
            self.tree.update_many(agents[stays], rows[stays])
        self.placed_in[agents] = c

    def cohort_sizes(self) -> dict[str, int]:
        """Agents per cohort, as the tree holds them."""
        return {name: int(round(self.tree.get_cohort_statistics((name,))["count"])) for name in self.cohort_names}

    def id_array(self) -> np.ndarray:
        if self.ids and isinstance(self.ids[0], int):
            return np.array(self.ids, dtype=np.int64)
        return np.array(self.ids, dtype=str)


# ---------------------------------------------------------------------------- ingestion

class _FallBack(Exception):
    """The pyarrow CSV path met a row it cannot vouch for: start again with the reference reader."""


@dataclass
class _Spec:
    path: str
    id_column: str
    cohort_column: str | None
    timestamp_column: str | None
    features: list[str]
    skip_bad: bool


class _Ingest:
    """Chunks -> validated arrays -> the population; counts rows, skips or reports malformed ones."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        self.clock = _Clock(spec.timestamp_column) if spec.timestamp_column is not None else None
        self.pop = _Population(len(spec.features))
        self.rows_read = self.rows_skipped = self.chunks = 0
        self.examples: list[str] = []
        self.parse_s = self.update_s = 0.0

    def run(self, chunks: Iterator[_Chunk]) -> None:
        t0 = time.perf_counter()
        for chunk in chunks:
            t1 = time.perf_counter()
            self.parse_s += t1 - t0
            self.feed(chunk)
            del chunk
            t0 = time.perf_counter()
        self.parse_s += time.perf_counter() - t0

    def feed(self, chunk: _Chunk) -> None:
        spec, clock, feats = self.spec, self.clock, self.spec.features
        t0 = time.perf_counter()
        self.chunks += 1
        self.rows_read += chunk.n
        # (rows refused, why row i is, the column at fault in row i: None for the whole row)
        checks: list[tuple[np.ndarray, Callable[[int], str], Callable[[int], str | None]]] = []
        if chunk.reason is not None:
            checks.append((chunk.bad, chunk.reason, lambda i: None))
        keys, kbad = chunk.keys(spec.id_column)
        checks.append((kbad, lambda i: _key_problem("agent id", spec.id_column, chunk.raw(spec.id_column, i)),
                       lambda i: spec.id_column))
        cohorts = None
        if spec.cohort_column is not None:
            cohorts, cbad = chunk.keys(spec.cohort_column)
            cohorts = cohorts.tolist() if isinstance(cohorts, np.ndarray) else cohorts
            cohorts = [str(c) for c in cohorts] if cohorts and not isinstance(cohorts[0], str) else cohorts
            checks.append((cbad, lambda i: _key_problem("cohort", spec.cohort_column, chunk.raw(spec.cohort_column, i)),
                           lambda i: spec.cohort_column))
        ts = None
        if clock is not None:
            ts, tbad = chunk.times(clock)
            checks.append((tbad, lambda i: clock.problem(chunk.raw(clock.name, i)), lambda i: clock.name))
        X, fbad = chunk.floats(feats)
        # the library refuses |x| >= MAX_ABS_VALUE for the whole batch; here it is one row's fault
        fbad |= np.abs(X) >= MAX_ABS_VALUE

        def feature_column(i):
            return feats[int(np.argmax(fbad[i]))]

        def feature_reason(i):
            column = feature_column(i)
            return _float_problem(f"feature {column!r}", chunk.raw(column, i))

        checks.append((fbad.any(axis=1), feature_reason, feature_column))
        bad = np.zeros(chunk.n, dtype=bool)
        for mask, _, _ in checks:
            bad |= mask
        if bad.any():
            if chunk.where is None:
                raise _FallBack()

            def why(i):
                return next(r(i) for mask, r, _ in checks if mask[i])

            if not spec.skip_bad:
                i = int(np.argmax(bad))
                column = next(c(i) for mask, _, c in checks if mask[i])
                raise MalformedInputError(spec.path, int(chunk.where[i]), why(i), unit=chunk.unit, column=column)
            self.rows_skipped += int(bad.sum())
            for i in np.flatnonzero(bad)[: _MAX_EXAMPLES - len(self.examples)]:
                self.examples.append(f"{chunk.unit} {int(chunk.where[i])}: {why(int(i))}")
            good = ~bad
            if not good.any():
                return
            keys = keys[good] if isinstance(keys, np.ndarray) else list(compress(keys, good))
            cohorts = None if cohorts is None else list(compress(cohorts, good))
            ts = None if ts is None else ts[good]
            X = X[good]
        t1 = time.perf_counter()
        self.parse_s += t1 - t0
        self.pop.add(keys, X, cohorts, ts, clock)
        self.update_s += time.perf_counter() - t1


# ---------------------------------------------------------------------------- result
@dataclass
class DetectResult:
    """What :func:`detect` found. Arrays are aligned, one entry per agent, in first-appearance order."""

    input: str
    format: str
    features: list[str]
    agent_ids: np.ndarray
    score: np.ndarray            # leave-one-out squared Mahalanobis distance
    p_value: np.ndarray
    is_anomaly: np.ndarray
    rows_read: int               # data rows (blank lines not counted)
    rows_skipped: int            # malformed rows skipped (skip_bad=True)
    rows_superseded: int         # valid rows replaced by a later row of the same agent
    method: str                  # the decision rule, e.g. "fdr(q=0.01)"
    warming_up: bool             # population below warm_up: nothing flagged
    warm_up: int
    output: str | None = None
    skipped_examples: list[str] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    engine: str = "python"       # the CSV reader that read the file
    cohort_sizes: dict[str, int] = field(default_factory=dict)   # agents per cohort (with a cohort column)

    @property
    def agents(self) -> int:
        return int(self.agent_ids.size)

    @property
    def flagged(self) -> int:
        return int(self.is_anomaly.sum())


def _resolve_decision(fdr: float | None, alpha: float | None) -> tuple[float | None, float]:
    if fdr is not None and alpha is not None:
        raise InvalidInputError("give --fdr or --alpha, not both")
    if alpha is not None:
        return None, check_fraction(alpha, "alpha", low_open=True, high_open=True)
    q = 0.01 if fdr is None else check_fraction(fdr, "fdr", low_open=True, high_open=True)
    return q, 1e-3


def _resolve_shrinkage(shrinkage: float | str) -> float | str:
    if isinstance(shrinkage, str):
        if shrinkage.strip().lower() == "auto":
            return "auto"
        try:
            shrinkage = float(shrinkage)
        except ValueError:
            raise InvalidInputError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}") from None
    return check_fraction(shrinkage, "shrinkage")


def _parse_features(features: str | Sequence[str] | None) -> list[str] | None:
    if features is None:
        return None
    names = [f.strip() for f in features.split(",")] if isinstance(features, str) else [str(f).strip() for f in features]
    names = [f for f in names if f]
    if not names:
        raise InvalidInputError("features is empty: name at least one column, e.g. --features cpu,mem")
    dup = sorted(f for f, k in Counter(names).items() if k > 1)
    if dup:
        raise InvalidInputError(f"features names {', '.join(map(repr, dup))} more than once")
    return names


def detect(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    format: str | None = None,
    id_column: str = "agent_id",
    cohort_column: str | None = None,
    timestamp_column: str | None = None,
    features: str | Sequence[str] | None = None,
    chunk_rows: int = 200_000,
    fdr: float | None = None,
    alpha: float | None = None,
    shrinkage: float | str = "auto",
    warm_up: int | None = None,
    skip_bad: bool = False,
    top: int = 10,
    csv_engine: str = "auto",
    max_line_bytes: int = MAX_LINE_BYTES,
) -> DetectResult:
    """Score every agent of a telemetry file; write ``output`` (CSV or Parquet) when given.

    ``fdr`` (default 0.01 when ``alpha`` is not given) flags agents by
    Benjamini–Hochberg false-discovery-rate control; ``alpha`` instead flags
    every agent whose p-value is below it. See the module docstring for the
    input rules. Raises :class:`MalformedInputError` on the first malformed row
    unless ``skip_bad``; every option is checked before the input is read.

    ``csv_engine``: ``"auto"`` parses CSV with pyarrow when it is installed
    (several times faster) and falls back to the standard library reader,
    from the start, as soon as pyarrow meets anything it would read
    differently or a malformed row (so errors, line numbers and ``skip_bad``
    behave the same); ``"python"`` always uses the standard library reader.

    ``max_line_bytes``: the longest line (CSV, JSON Lines; newline included)
    read; a longer one raises :class:`MalformedInputError` having held at
    most that much of it in memory. Inputs may have at most
    :data:`MAX_COLUMNS` columns and :data:`MAX_FEATURES` features.
    """
    if csv_engine not in ("auto", "python", "pyarrow"):
        raise InvalidInputError(f"csv_engine must be 'auto', 'python' or 'pyarrow', got {csv_engine!r}")
    t_start = time.perf_counter()
    path = Path(input)
    fmt = input_format(path, format)
    out_fmt = output_format(output) if output is not None else None
    if fmt == "parquet" or out_fmt == "parquet":
        _pyarrow()
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    top = check_positive_int(top, "top", minimum=0)
    q, level = _resolve_decision(fdr, alpha)
    shrink = _resolve_shrinkage(shrinkage)
    if warm_up is not None:
        warm_up = check_positive_int(warm_up, "warm_up", minimum=MIN_POPULATION)
    max_line_bytes = check_positive_int(max_line_bytes, "max_line_bytes", minimum=16)
    wanted = _parse_features(features)
    if wanted is not None and len(wanted) > MAX_FEATURES:
        raise InvalidInputError(f"{len(wanted)} features named; detect scores at most {MAX_FEATURES}")
    special = [c for c in (id_column, cohort_column, timestamp_column) if c is not None]
    if len(set(special)) != len(special):
        raise InvalidInputError("the id, cohort and timestamp columns must be different columns")
    if wanted is not None and set(wanted) & set(special):
        raise InvalidInputError(f"features may not include the id, cohort or timestamp column ({', '.join(sorted(set(wanted) & set(special)))})")
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    if output is not None:     # before the input is read: a bad output path never costs a run
        check_output_file(output, "--output")
        check_not_input(output, path, "--output")

    reader = _open_reader(path, fmt, chunk_rows, max_line_bytes)
    try:
        if isinstance(reader, _ParquetReader):
            names = reader.names
            present = set(names)
            missing = [c for c in special + (wanted or []) if c not in present]
            if missing:
                raise InvalidInputError(f"{path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(names)}")
            feats = wanted if wanted is not None else [c for c in reader.numeric() if c not in special]
            reader.columns = special + feats
        elif isinstance(reader, _CsvReader):
            missing = [c for c in special + (wanted or []) if c not in reader.index]
            if missing:
                raise InvalidInputError(f"{path} has no column {', '.join(map(repr, missing))}; its header: {', '.join(reader.names)}")
        if fmt == "csv" and csv_engine != "python":
            # only a sample, when pyarrow reads the rest
            reader.chunk_rows = _rows_per_chunk(min(chunk_rows, _INFER_SAMPLE), len(reader.names))
        chunks = reader.chunks()
        t_read = time.perf_counter()
        first = next(chunks, None)
        if first is None:
            raise EmptyInputError(f"{path} has no data rows")
        if isinstance(reader, _JsonlReader):
            seen: dict[str, None] = {}
            for o in first.objs[:_INFER_SAMPLE]:
                seen.update(dict.fromkeys(o))
            _check_columns(path, list(seen), "the objects name")
            missing = [c for c in special + (wanted or []) if c not in seen]
            if missing:
                raise InvalidInputError(
                    f"{path}: no object among the first {min(first.n, _INFER_SAMPLE)} has the key "
                    f"{', '.join(map(repr, missing))}; keys seen: {', '.join(seen) or '(none)'}")
        if wanted is None:
            feats = _infer_features(reader, first, set(special))
            if not feats:
                raise InvalidInputError(f"{path}: no numeric feature columns found besides {', '.join(special)}; name them with --features")
            if len(feats) > MAX_FEATURES:
                raise InvalidInputError(f"{path} has {len(feats):,} numeric columns; detect scores at most "
                                        f"{MAX_FEATURES}: choose them with --features")
        else:
            feats = wanted
        spec = _Spec(str(path), id_column, cohort_column, timestamp_column, list(feats), skip_bad)
        ingest = _Ingest(spec)
        ingest.parse_s += time.perf_counter() - t_read
        engine = "python"
        if fmt == "csv" and csv_engine != "python" and _arrow_csv_available(csv_engine):
            try:
                fast = _Ingest(spec)
                sample = first.rows[:1000]
                row_bytes = sum(map(len, map(",".join, sample))) / max(1, len(sample)) + 1.0
                fast.run(_arrow_csv_chunks(path, reader.names, spec, chunk_rows, row_bytes, max_line_bytes))
                ingest, engine = fast, "pyarrow"
            except _FallBack:
                engine = "python (pyarrow could not read every row as given)"
        if engine != "pyarrow":
            reader.chunk_rows = _rows_per_chunk(chunk_rows, len(reader.names)) if fmt == "csv" else chunk_rows
            held = [first]
            del first         # the run holds one chunk at a time: the first too is freed once fed
            ingest.run(_then(held, chunks))
    finally:
        reader.close()
    pop, rows_read, rows_skipped = ingest.pop, ingest.rows_read, ingest.rows_skipped
    if not pop.ids:
        raise EmptyInputError(f"{path}: no valid rows ({rows_skipped} malformed rows skipped)")

    t2 = time.perf_counter()
    protocol = BehavioralDistributedProtocol(pop.tree, significance_level=level, fdr=q,
                                             shrinkage=shrink, warm_up=warm_up)
    ids = pop.id_array()
    numbers = np.arange(ids.size)
    res = protocol.score_many(numbers, fdr=q)
    score, p_value, flags = res["mahalanobis_squared"], res["p_value"], res["is_anomaly"]
    top_rows: list[dict[str, Any]] = []
    if top and ids.size:
        k = min(top, ids.size)
        part = np.argpartition(-score, k - 1)[:k] if k < ids.size else np.arange(ids.size)
        order = part[np.lexsort((part, -score[part]))]
        shares = protocol.score_many(numbers[order], fdr=None, explain=True)["feature_contributions"]
        for r, row in enumerate(order):
            j = int(np.argmax(shares[r]))
            top_rows.append({"agent_id": ids[row].item(), "score": float(score[row]), "p_value": float(p_value[row]),
                             "is_anomaly": bool(flags[row]), "main_feature": feats[j],
                             "main_part": float(shares[r][j])})
    t3 = time.perf_counter()
    result = DetectResult(
        input=str(path), format=fmt, features=list(feats), agent_ids=ids, score=score, p_value=p_value,
        is_anomaly=flags, rows_read=rows_read, rows_skipped=rows_skipped, rows_superseded=rows_read - rows_skipped - len(pop.ids),
        method=res["method"], warming_up=bool(res["warming_up"]), warm_up=protocol.warm_up,
        skipped_examples=ingest.examples, top=top_rows, chunks=ingest.chunks, engine=engine,
        cohort_sizes=pop.cohort_sizes(),
    )
    if output is not None:
        write_scores(result, output)
        result.output = str(output)
    t4 = time.perf_counter()
    result.timings = {"read and parse": ingest.parse_s, "update tree": ingest.update_s, "score": t3 - t2,
                      "write": t4 - t3, "total": t4 - t_start}
    return result


# ---------------------------------------------------------------------------- output
def write_scores(result: DetectResult, path: str | os.PathLike) -> None:
    """Write ``agent_id, score, p_value, is_anomaly`` (CSV or Parquet by extension), atomically."""
    path = Path(path)
    fmt = output_format(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["agent_id", "score", "p_value", "is_anomaly"])
                flags = np.where(result.is_anomaly, "true", "false").tolist()
                w.writerows(zip(result.agent_ids.tolist(), result.score.tolist(), result.p_value.tolist(),
                                flags, strict=True))
        else:
            pa, _, pq = _pyarrow()
            table = pa.table({"agent_id": result.agent_ids, "score": result.score,
                              "p_value": result.p_value, "is_anomaly": result.is_anomaly})
            pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------- summary
def print_summary(result: DetectResult, console) -> None:
    """The Rich summary printed by ``swarmguard detect``."""
    from rich.table import Table

    console.rule(f"swarmguard detect: {result.input}")
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("format", f"{result.format}, {result.engine} reader, {result.chunks} chunk{'s' if result.chunks != 1 else ''}")
    t.add_row("features", f"{len(result.features)}: {', '.join(result.features)}")
    t.add_row("rows read", f"{result.rows_read:,}")
    t.add_row("rows skipped (malformed)", f"{result.rows_skipped:,}")
    t.add_row("rows superseded (older)", f"{result.rows_superseded:,}")
    t.add_row("agents", f"{result.agents:,}")
    if result.cohort_sizes:
        sizes = sorted(result.cohort_sizes.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v:,}" for k, v in sizes[:8]) + (", ..." if len(sizes) > 8 else "")
        t.add_row("cohorts", f"{len(sizes)}: {shown}")
    t.add_row("flagged", f"{result.flagged:,} ({result.method})")
    if result.output:
        t.add_row("written", result.output)
    console.print(t)
    if result.warming_up:
        console.print(f"[yellow]warning:[/] only {result.agents:,} agents, fewer than --warm-up {result.warm_up}: "
                      "nobody is flagged (lower --warm-up to score small populations)")
    if result.skipped_examples:
        console.print("skipped rows (first ones):")
        for e in result.skipped_examples:
            console.print(f"  {e}", markup=False, highlight=False)
    if result.top:
        tt = Table(title=f"Top {len(result.top)} most anomalous agents")
        for col in ("#", "agent", "score (D²)", "p-value", "flagged", "main feature", "its part of D²"):
            tt.add_column(col)
        for r, row in enumerate(result.top, 1):
            tt.add_row(str(r), str(row["agent_id"]), f"{row['score']:.4g}", f"{row['p_value']:.2e}",
                       "yes" if row["is_anomaly"] else "no", str(row["main_feature"]), f"{row['main_part']:.4g}")
        console.print(tt)
    tm = Table(title="Timings")
    tm.add_column("step")
    tm.add_column("seconds", justify="right")
    for k, v in result.timings.items():
        tm.add_row(k, f"{v:.3f}")
    ingest = result.timings.get("read and parse", 0.0) + result.timings.get("update tree", 0.0)
    if ingest > 0:
        tm.add_row("ingest rate", f"{result.rows_read / ingest:,.0f} rows/s")
    console.print(tm)


def run_command(console, err_console, **options: Any) -> int:
    """The CLI's body: run :func:`detect`, print the summary; return the exit code (0, or 2 on bad input)."""
    try:
        result = detect(**options)
    except MissingDependencyError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except (InvalidInputError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        msg = str(exc)
        if isinstance(exc, MalformedInputError) and not isinstance(exc, _LineTooLongError):
            msg += " (use --skip-bad to skip malformed rows and count them)"
        err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        return 2
    print_summary(result, console)
    return 0

