"""Map user ids (agents, sources, evidence ids) to dense row numbers, once.

A million agents are an array, not a million objects: ids become rows
``0..n-1`` in order of first appearance, and every structure indexes arrays by
row. Integer ids take a vectorised path: a dense lookup table while the ids
are compact (span <= 4 x count, or small), else a sorted array searched with
``np.searchsorted`` plus a small dict of recent single inserts. While the ids are
one ascending run of consecutive integers (row ``i`` has id ``lo + i``, e.g.
sequential evidence ids) nothing is stored at all: lookups are arithmetic, and
the arrays are built only when an id breaks the run. Any other
hashable id (strings, tuples) switches the index to a plain dict, which is
correct for every id but loops in Python for batches.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["KeyIndex"]

_SMALL_SPAN = 1 << 16
_MISSING = -1


def _is_int_key(key: Any) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) \
        and -(1 << 63) <= int(key) < (1 << 63)


class KeyIndex:
    """Ids to dense rows, in order of first appearance.

    Examples
    --------
    >>> import numpy as np
    >>> index = KeyIndex()
    >>> index.add_new(np.array([10, 30, 20])).tolist()
    [0, 1, 2]
    >>> index.rows_of(np.array([20, 99, 10])).tolist()
    [2, -1, 0]
    >>> index.add("agent-x"), index.row_of("agent-x"), index.key_of(1)
    (3, 3, 30)
    """

    def __init__(self) -> None:
        self._int_keys = np.zeros(0, dtype=np.int64)  # row -> key while every key is an int
        self._objects: list[Hashable] | None = None  # row -> key once any key is not an int
        self._dict: dict[Hashable, int] | None = None
        self._lo = 0
        self._table: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self._sorted_keys: np.ndarray | None = None
        self._sorted_rows: np.ndarray | None = None
        self._pending: dict[int, int] = {}
        self._n_int = 0  # used rows of _int_keys (it grows by doubling)
        # Run mode: rows 0.._n_int-1 have ids _run_lo + row; _int_keys and the
        # lookup structures are not built (see _leave_run).
        self._run_lo: int | None = None

    def __len__(self) -> int:
        return len(self._objects) if self._objects is not None else self._n_int

    @property
    def is_integer(self) -> bool:
        """True while every id is an int (the vectorised path)."""
        return self._objects is None

    # ------------------------------------------------------------------ lookups
    def row_of(self, key: Hashable) -> int:
        """Row of ``key``, or -1."""
        if self._dict is not None:
            return self._dict.get(key, _MISSING)
        if not _is_int_key(key):
            return _MISSING
        k = int(key)
        if self._run_lo is not None:
            pos = k - self._run_lo
            return pos if 0 <= pos < self._n_int else _MISSING
        if self._table is not None:
            pos = k - self._lo
            return int(self._table[pos]) if 0 <= pos < self._table.size else _MISSING
        if k in self._pending:
            return self._pending[k]
        i = int(np.searchsorted(self._sorted_keys, k))
        if i < self._sorted_keys.size and self._sorted_keys[i] == k:
            return int(self._sorted_rows[i])
        return _MISSING

    def rows_of(self, keys: np.ndarray | Sequence[Hashable]) -> np.ndarray:
        """Rows of many ids (-1 where unknown), vectorised for integer arrays."""
        arr = keys if isinstance(keys, np.ndarray) else None
        if self._dict is not None or arr is None or arr.dtype.kind not in "iu":
            get = self._dict.get if self._dict is not None else None
            if get is not None:
                return np.fromiter((get(k, _MISSING) for k in _as_list(keys)), dtype=np.int64)
            return np.fromiter((self.row_of(k) for k in _as_list(keys)), dtype=np.int64)
        k = arr.astype(np.int64, copy=False)
        if self._run_lo is not None:
            pos = k - self._run_lo
            return np.where((pos >= 0) & (pos < self._n_int), pos, _MISSING)
        if self._table is not None:
            pos = k - self._lo
            inside = (pos >= 0) & (pos < self._table.size)
            rows = np.full(k.shape, _MISSING, dtype=np.int64)
            rows[inside] = self._table[pos[inside]]
            return rows
        self._flush_pending()
        i = np.searchsorted(self._sorted_keys, k)
        i = np.minimum(i, max(self._sorted_keys.size - 1, 0))
        if self._sorted_keys.size == 0:
            return np.full(k.shape, _MISSING, dtype=np.int64)
        found = self._sorted_keys[i] == k
        return np.where(found, self._sorted_rows[i], _MISSING)

    def key_of(self, row: int) -> Hashable:
        """The id stored at ``row``."""
        if self._objects is not None:
            return self._objects[row]
        if self._run_lo is not None:
            if not -self._n_int <= row < self._n_int:
                raise IndexError(f"row {row} out of range")
            return self._run_lo + row % self._n_int
        return int(self._int_keys[row])

    def keys_of(self, rows: np.ndarray) -> np.ndarray:
        """Ids of many rows: an int64 array while ids are ints, else an object array."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._run_lo is not None:
            n = self._n_int
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"rows out of range for {n} ids")
            return np.where(rows < 0, rows + n, rows) + np.int64(self._run_lo)
        if self._objects is None:
            return self._int_keys[rows]
        out = np.empty(rows.size, dtype=object)
        out[:] = [self._objects[r] for r in rows.tolist()]
        return out

    def keys(self) -> list[Hashable]:
        """Every id, in row order."""
        if self._objects is not None:
            return list(self._objects)
        if self._run_lo is not None:
            return self._run_keys().tolist()
        return self._int_keys[: self._n_int].tolist()

    # ------------------------------------------------------------------ inserts
    def add(self, key: Hashable) -> int:
        """Row of ``key``, adding it when new."""
        row = self.row_of(key)
        if row >= 0:
            return row
        if self._objects is None and _is_int_key(key):
            k = int(key)
            if self._run_lo is not None and k == self._run_lo + self._n_int and k < (1 << 63) - 1:
                self._n_int += 1  # extends the run
                return self._n_int - 1
            self._leave_run()
            row = self._n_int
            self._append_ints(np.array([k], dtype=np.int64))
            if self._table is not None and not self._place_in_table(np.array([k]), np.array([row])):
                self._rebuild()
            elif self._table is None:
                self._pending[k] = row
                if len(self._pending) > 1024 + self._n_int // 16:
                    self._flush_pending()
            return row
        self._to_objects()
        row = len(self._objects)
        self._objects.append(key)
        self._dict[key] = row
        return row

    def add_new(self, keys: np.ndarray | Sequence[Hashable]) -> np.ndarray:
        """Add ids known to be new and distinct; returns their rows."""
        start = len(self)
        arr = keys if isinstance(keys, np.ndarray) else None
        if self._objects is None and arr is not None and arr.dtype.kind in "iu":
            k = arr.astype(np.int64, copy=False)
            rows = np.arange(start, start + k.size, dtype=np.int64)
            if k.size and self._extends_run(k):
                return rows
            self._leave_run()
            self._append_ints(k)
            if self._table is None or self._table.size == 0 or not self._place_in_table(k, rows):
                self._rebuild()
            return rows
        items = _as_list(keys)
        if self._objects is None and all(_is_int_key(x) for x in items):
            return self.add_new(np.array([int(x) for x in items], dtype=np.int64))
        self._to_objects()
        for i, key in enumerate(items):
            self._objects.append(key)
            self._dict[key] = start + i
        return np.arange(start, start + len(items), dtype=np.int64)

    # ------------------------------------------------------------------ internals
    def _extends_run(self, k: np.ndarray) -> bool:
        """Take new ids ``k`` in run mode if they continue the run (or start one in an
        empty index); True when taken."""
        if self._run_lo is None and self._n_int:
            return False
        first = int(k[0])
        lo = first if self._run_lo is None else self._run_lo
        if first != lo + self._n_int or int(k[-1]) != first + k.size - 1:
            return False
        if k.size > 1 and not (k[1:] > k[:-1]).all():  # strictly increasing + span = size - 1
            return False
        self._run_lo = lo
        self._n_int += k.size
        return True

    def _run_keys(self) -> np.ndarray:
        return np.arange(self._n_int, dtype=np.int64) + np.int64(self._run_lo)

    def _leave_run(self) -> None:
        """Materialise the run's ids and lookup table (before an id that breaks the run)."""
        if self._run_lo is None:
            return
        self._int_keys = self._run_keys()
        self._run_lo = None
        self._rebuild()

    def _append_ints(self, k: np.ndarray) -> None:
        if self._n_int == 0 and k.size > self._int_keys.size:
            self._int_keys = np.array(k, dtype=np.int64)  # first big batch: no zero-fill
            self._n_int = k.size
            return
        need = self._n_int + k.size
        if need > self._int_keys.size:
            grown = np.zeros(max(need, 2 * self._int_keys.size, 16), dtype=np.int64)
            grown[: self._n_int] = self._int_keys[: self._n_int]
            self._int_keys = grown
        self._int_keys[self._n_int: need] = k
        self._n_int = need

    def _place_in_table(self, k: np.ndarray, rows: np.ndarray) -> bool:
        """Write into the dense table if it covers the keys; False if a rebuild is needed."""
        if k.size == 0:
            return True
        pos = k - self._lo
        if pos.min() < 0 or pos.max() >= self._table.size:
            return False
        self._table[pos] = rows
        return True

    def _rebuild(self) -> None:
        keys = self._int_keys[: self._n_int]
        self._pending = {}
        if keys.size == 0:
            self._lo, self._table = 0, np.zeros(0, dtype=np.int64)
            return
        lo, hi = int(keys.min()), int(keys.max())
        span = hi - lo + 1
        if span <= max(_SMALL_SPAN, 4 * keys.size):
            # Leave room to grow on both sides so single inserts rarely rebuild.
            slack = max(span // 8, 1024)
            size = span + 2 * slack
            self._lo = max(lo - slack, -(1 << 62))
            self._table = np.full(size, _MISSING, dtype=np.int64)
            self._table[keys - self._lo] = np.arange(keys.size, dtype=np.int64)
            self._sorted_keys = self._sorted_rows = None
        else:
            self._table = None
            order = np.argsort(keys, kind="stable")
            self._sorted_keys, self._sorted_rows = keys[order], order.astype(np.int64)

    def _flush_pending(self) -> None:
        if self._table is None and self._pending:
            self._rebuild()

    def _to_objects(self) -> None:
        if self._objects is not None:
            return
        self._leave_run()
        self._objects = self._int_keys[: self._n_int].tolist()
        self._dict = {k: i for i, k in enumerate(self._objects)}
        self._int_keys = np.zeros(0, dtype=np.int64)
        self._n_int = 0
        self._table = self._sorted_keys = self._sorted_rows = None
        self._pending = {}


def _as_list(keys: Any) -> list:
    if isinstance(keys, np.ndarray):
        return keys.tolist()
    return list(keys)
