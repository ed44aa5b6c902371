"""One chunk of ``swarmguard detect``'s input, column by column, whatever read it.

A chunk is rows of one input with the line (or, for Parquet, the row) number
of each. The standard library readers give :class:`_CsvChunk` (lists of text)
and :class:`_JsonChunk` (decoded objects); pyarrow gives :class:`_ArrowChunk`.
An Arrow chunk of a text format carries no line numbers (``where`` is None):
any value it cannot vouch for raises :class:`_NeedsLines`, and the reader
parses that block again, from its bytes already in memory, with the standard
library, which names the line and column of every refused value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .detect_values import (
    _MISSING,
    _NAT,
    _BeyondFloat64,
    _Clock,
    _py_floats,
    _py_keys,
    _py_labels,
    _pyarrow,
)


class _NeedsLines(Exception):
    """An Arrow chunk of CSV or JSON Lines holds a value it cannot vouch for: parse its block by line."""


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

    def labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The ground-truth column (``--label-column``): (anomaly flags, bad mask)."""
        return _py_labels(self.column(name))

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
    """Rows pyarrow read: Parquet (numbered rows) or a block of CSV / JSON Lines (``where`` None).

    ``text``: the block came from a text format, so integer ids and cohorts
    become their decimal text (as the standard library readers give them),
    and anything but a clean value raises :class:`_NeedsLines`.
    """

    unit = "row"

    def __init__(self, batch, where: np.ndarray | None, text: bool = False):
        super().__init__(where, n=batch.num_rows)
        self.batch, self.text = batch, text
        self.pa, self.pc, _ = _pyarrow()
        if text:
            self.unit = "line"

    def _array(self, name: str):
        arr = self.batch.column(self.batch.schema.get_field_index(name))
        return arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr

    def _refuse(self, message: str):
        if self.text:
            raise _NeedsLines()
        raise InvalidInputError(message)

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
            if self.text:           # the text readers' ids are text: a JSON 7 is the id "7"
                arr = arr.cast(pa.string())
            else:
                nulls = self._nulls(arr)
                vals = self.pc.fill_null(arr, 0).cast(pa.int64()).to_numpy()
                return vals, nulls
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return _py_keys(self.pc.fill_null(arr, "").to_pylist())
        self._refuse(f"column {name!r} has type {arr.type}: ids and cohorts must be integers or strings")

    def floats(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pa, pc = self.pa, self.pc
        X = np.empty((self.n, len(names)))
        bad = np.empty((self.n, len(names)), dtype=bool)
        for j, name in enumerate(names):
            arr = self._array(name)
            t = arr.type
            if self.text and (pa.types.is_string(t) or pa.types.is_large_string(t)):
                try:                # pyarrow's own number parser: what it cannot read, the block's text can
                    arr = pc.cast(arr, pa.float64())
                except pa.ArrowInvalid:
                    raise _NeedsLines() from None
                t = arr.type
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
                nulls = self._nulls(arr)
                X[:, j] = pc.fill_null(arr.cast(pa.float64(), safe=False), 0.0).to_numpy()
                bad[:, j] = nulls | ~np.isfinite(X[:, j])
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                X[:, j], bad[:, j] = _py_floats(arr.to_pylist())
            else:
                self._refuse(f"feature column {name!r} has type {t}, not a number")
        return X, bad

    def times(self, clock: _Clock) -> tuple[np.ndarray, np.ndarray]:
        pa, pc = self.pa, self.pc
        arr = self._array(clock.name)
        t = arr.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            if clock.kind is None:
                clock.kind = "datetime"
            if clock.kind != "datetime":
                self._refuse(f"timestamp column {clock.name!r} changed type to {t}")
            ns = arr.cast(pa.timestamp("ns", tz=getattr(t, "tz", None))).cast(pa.int64())
            nulls = self._nulls(ns)
            return pc.fill_null(ns, _NAT).to_numpy(), nulls
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            if clock.kind is None:
                clock.kind = "number"
            if clock.kind != "number":
                self._refuse(f"timestamp column {clock.name!r} changed type to {t}")
            nulls = self._nulls(arr)
            vals = pc.fill_null(arr.cast(pa.float64(), safe=False), 0.0).to_numpy()
            return vals, nulls | ~np.isfinite(vals)
        if self.text and not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise _NeedsLines()
        return clock.convert(arr.to_pylist())
