"""The one id -> dense row index (agents, sources, evidence ids, replicas' rows, tree slots).

A million agents are an array, not a million objects: ids become rows
``0..n-1`` in order of first appearance, and every structure indexes arrays by
row. Batches of int64 ids and of strings take vectorised paths; any other
hashable id (a tuple, an int beyond 64 bits) takes a per-item path (a dict).
The kinds live side by side: one string id does not slow the int ids down.

* **int ids** (Python ints and NumPy integers that fit in int64): a dense lookup
  table while the ids are compact (span <= 4 x count, or small), else a sorted
  array searched with ``np.searchsorted`` plus a small dict of recent single
  inserts. While the ids are one ascending run of consecutive integers (row
  ``i`` has id ``lo + i``, e.g. sequential evidence ids) nothing is stored at
  all: look-ups are arithmetic.
* **str ids**: a dict for single look-ups; a NumPy string array of the ids
  (sorted, built on the first batch look-up after a change) for batch look-ups
  of string arrays.
* **other ids**: the same dict, one item at a time.

:class:`SlotMap` maps ids to slots that change (the tree's agents move between
slots and leave): the index's rows plus an array of each row's slot.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["IdIndex", "SlotMap"]

_SMALL_SPAN = 1 << 16
_MISSING = -1
_INT64_MAX = (1 << 63) - 1


def _is_int_key(key: Any) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) \
        and -(1 << 63) <= int(key) < (1 << 63)


def _as_list(keys: Any) -> list:
    if isinstance(keys, np.ndarray):
        return keys.tolist()
    return list(keys)


def _int_array(keys: Any) -> np.ndarray | None:
    """``keys`` as int64 when it is an integer array that fits, else None."""
    if not isinstance(keys, np.ndarray) or keys.ndim != 1 or keys.dtype.kind not in "iu":
        return None
    if keys.dtype.kind == "u" and keys.size and int(keys.max()) > _INT64_MAX:
        return None
    return keys.astype(np.int64, copy=False)


def _grown(arr: np.ndarray, need: int, fill: int = 0) -> np.ndarray:
    if need <= arr.size:
        return arr
    out = np.full(max(need, 2 * arr.size, 16), fill, dtype=arr.dtype)
    out[: arr.size] = arr
    return out


class _IntKeys:
    """int64 id -> position (0, 1, 2, ... in order of insertion); the vectorised int path."""

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.int64)   # position -> id (grows by doubling)
        self.n = 0
        self._lo = 0
        self._table: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self._sorted_keys: np.ndarray | None = None
        self._sorted_pos: np.ndarray | None = None
        self._pending: dict[int, int] = {}
        # Run mode: positions 0..n-1 have ids _run_lo + position; _keys and the
        # look-up structures are not built (see _leave_run).
        self._run_lo: int | None = None

    def keys(self) -> np.ndarray:
        if self._run_lo is not None:
            return np.arange(self.n, dtype=np.int64) + np.int64(self._run_lo)
        return self._keys[: self.n]

    def find(self, k: int) -> int:
        if self._run_lo is not None:
            pos = k - self._run_lo
            return pos if 0 <= pos < self.n else _MISSING
        if self._table is not None:
            pos = k - self._lo
            return int(self._table[pos]) if 0 <= pos < self._table.size else _MISSING
        if k in self._pending:
            return self._pending[k]
        i = int(np.searchsorted(self._sorted_keys, k))
        if i < self._sorted_keys.size and self._sorted_keys[i] == k:
            return int(self._sorted_pos[i])
        return _MISSING

    def find_many(self, k: np.ndarray) -> np.ndarray:
        # compared before subtracting: ids near the int64 ends would wrap around
        if self._run_lo is not None:
            out = np.full(k.shape, _MISSING, dtype=np.int64)
            if self.n:
                inside = (k >= self._run_lo) & (k <= self._run_lo + self.n - 1)
                out[inside] = k[inside] - np.int64(self._run_lo)
            return out
        if self._table is not None:
            out = np.full(k.shape, _MISSING, dtype=np.int64)
            if self._table.size:
                inside = (k >= self._lo) & (k <= self._lo + self._table.size - 1)
                out[inside] = self._table[k[inside] - np.int64(self._lo)]
            return out
        if self._pending:
            self._rebuild()
        if self._sorted_keys is None or self._sorted_keys.size == 0:
            return np.full(k.shape, _MISSING, dtype=np.int64)
        i = np.minimum(np.searchsorted(self._sorted_keys, k), self._sorted_keys.size - 1)
        return np.where(self._sorted_keys[i] == k, self._sorted_pos[i], _MISSING)

    def key_of(self, pos: int) -> int:
        if self._run_lo is not None:
            if not -self.n <= pos < self.n:
                raise IndexError(f"row {pos} out of range")
            return self._run_lo + pos % self.n
        if not -self.n <= pos < self.n:
            raise IndexError(f"row {pos} out of range")
        return int(self._keys[pos])

    def keys_of(self, pos: np.ndarray) -> np.ndarray:
        n = self.n
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"rows out of range for {n} ids")
        if self._run_lo is not None:
            return np.where(pos < 0, pos + n, pos) + np.int64(self._run_lo)
        return self._keys[: n][pos]

    def add_one(self, k: int) -> int:
        """Append a new id; its position."""
        if self._run_lo is not None and k == self._run_lo + self.n and k < _INT64_MAX:
            self.n += 1      # extends the run
            return self.n - 1
        self._leave_run()
        pos = self.n
        self._append(np.array([k], dtype=np.int64))
        if self._table is not None and not self._place_in_table(np.array([k]), np.array([pos])):
            self._rebuild()
        elif self._table is None:
            self._pending[k] = pos
            if len(self._pending) > 1024 + self.n // 16:
                self._rebuild()
        return pos

    def add_many(self, k: np.ndarray) -> np.ndarray:
        """Append new, distinct ids; their positions."""
        start = self.n
        pos = np.arange(start, start + k.size, dtype=np.int64)
        if k.size == 0 or self._extends_run(k):
            return pos
        self._leave_run()
        self._append(k)
        if self._table is None or self._table.size == 0 or not self._place_in_table(k, pos):
            self._rebuild()
        return pos

    def _extends_run(self, k: np.ndarray) -> bool:
        """Take new ids ``k`` in run mode if they continue the run (or start one in an
        empty index); True when taken."""
        if self._run_lo is None and self.n:
            return False
        first = int(k[0])
        lo = first if self._run_lo is None else self._run_lo
        if first != lo + self.n or int(k[-1]) != first + k.size - 1:
            return False
        if k.size > 1 and not (k[1:] > k[:-1]).all():  # strictly increasing + span = size - 1
            return False
        self._run_lo = lo
        self.n += k.size
        return True

    def _leave_run(self) -> None:
        """Materialise the run's ids and look-up table (before an id that breaks the run)."""
        if self._run_lo is None:
            return
        self._keys = self.keys()
        self._run_lo = None
        self._rebuild()

    def _append(self, k: np.ndarray) -> None:
        if self.n == 0 and k.size > self._keys.size:
            self._keys = np.array(k, dtype=np.int64)  # first big batch: no zero-fill
            self.n = k.size
            return
        need = self.n + k.size
        self._keys = _grown(self._keys, need)
        self._keys[self.n: need] = k
        self.n = need

    def _place_in_table(self, k: np.ndarray, pos: np.ndarray) -> bool:
        """Write into the dense table if it covers the keys; False if a rebuild is needed."""
        if k.size == 0:
            return True
        if int(k.min()) < self._lo or int(k.max()) >= self._lo + self._table.size:
            return False
        self._table[k - np.int64(self._lo)] = pos
        return True

    def _rebuild(self) -> None:
        keys = self._keys[: self.n]
        self._pending = {}
        if keys.size == 0:
            self._lo, self._table = 0, np.zeros(0, dtype=np.int64)
            return
        lo, hi = int(keys.min()), int(keys.max())
        span = hi - lo + 1
        slack = max(span // 8, 1024)    # room to grow on both sides: single inserts rarely rebuild
        if span <= max(_SMALL_SPAN, 4 * keys.size) and -(1 << 62) <= lo - slack and hi + slack < (1 << 62):
            self._lo = lo - slack
            self._table = np.full(span + 2 * slack, _MISSING, dtype=np.int64)
            self._table[keys - self._lo] = np.arange(keys.size, dtype=np.int64)
            self._sorted_keys = self._sorted_pos = None
        else:
            self._table = None
            order = np.argsort(keys, kind="stable")
            self._sorted_keys, self._sorted_pos = keys[order], order.astype(np.int64)


class IdIndex:
    """Ids to dense rows, in order of first appearance.

    Examples
    --------
    >>> index = IdIndex()
    >>> index.add_new(np.array([10, 30, 20])).tolist()
    [0, 1, 2]
    >>> index.rows_of(np.array([20, 99, 10])).tolist()
    [2, -1, 0]
    >>> index.add("agent-x"), index.row_of("agent-x"), index.key_of(1)
    (3, 3, 30)
    >>> index.rows(np.array(["b", "agent-x", "b"]), create=True).tolist()
    [4, 3, 4]
    >>> index.keys_of(np.array([4, 0])).tolist()
    ['b', 10]
    """

    def __init__(self) -> None:
        self._ints = _IntKeys()
        self._n = 0
        # While every id is an int, row == position in _ints and nothing below is used.
        self._int_rows: np.ndarray | None = None    # int position -> row
        self._row_pos: np.ndarray | None = None     # row -> int position, -1 for another id
        self._obj_rows: dict[Hashable, int] = {}    # every other id -> row
        self._row_obj: dict[int, Hashable] = {}     # row -> every other id
        # The sorted string ids and their rows, for batch look-ups (None: build on use);
        # False: a string id holds a NUL, which a NumPy string array would drop.
        self._str_sorted: tuple[np.ndarray, np.ndarray] | None | bool = None
        self._has_str = False
        self._has_other = False

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: Hashable) -> bool:
        return self.row_of(key) >= 0

    @property
    def int_count(self) -> int:
        """How many of the ids are ints (the rest are strings or other hashables)."""
        return self._ints.n

    @property
    def is_integer(self) -> bool:
        """True while every id is an int (the fully vectorised path)."""
        return self._int_rows is None

    # ------------------------------------------------------------------ look-ups
    def row_of(self, key: Hashable) -> int:
        """Row of ``key``, or -1 (the per-item path)."""
        # The per-item hot paths first (a Python int or str, as check_wire_id returns it):
        # arithmetic in run mode, one table read, one dict read; no further calls.
        kind = type(key)
        if kind is int:
            if self._int_rows is None:
                ints = self._ints
                lo = ints._run_lo
                if lo is not None:
                    pos = key - lo
                    return pos if 0 <= pos < ints.n else _MISSING
                table = ints._table
                if table is not None:
                    pos = key - ints._lo
                    return table.item(pos) if 0 <= pos < table.size else _MISSING
        elif kind is str:
            return self._obj_rows.get(key, _MISSING)
        if (kind is int and -(1 << 63) <= key < (1 << 63)) or _is_int_key(key):
            pos = self._ints.find(int(key))
            if pos < 0 or self._int_rows is None:
                return pos
            return int(self._int_rows[pos])
        if not self._obj_rows:
            return _MISSING
        return self._obj_rows.get(key, _MISSING)

    def rows_of(self, keys: np.ndarray | Sequence[Hashable]) -> np.ndarray:
        """Rows of many ids (-1 where unknown); vectorised for int64 and string arrays."""
        k = _int_array(keys)
        if k is not None:
            pos = self._ints.find_many(k)
            if self._int_rows is None or self._ints.n == 0:
                return pos
            return np.where(pos >= 0, self._int_rows[np.maximum(pos, 0)], _MISSING)
        if isinstance(keys, np.ndarray) and keys.ndim == 1 and keys.dtype.kind == "U":
            return self._str_rows_of(keys)
        items = _as_list(keys)
        return np.fromiter((self.row_of(x) for x in items), dtype=np.int64, count=len(items))

    def _str_rows_of(self, keys: np.ndarray) -> np.ndarray:
        if not self._has_str:
            return np.full(keys.shape, _MISSING, dtype=np.int64)
        if self._str_sorted is None:
            strs = [k for k in self._obj_rows if isinstance(k, str)]
            if any("\x00" in s for s in strs):
                self._str_sorted = False
            else:
                arr = np.array(strs, dtype=str)
                rows = np.fromiter((self._obj_rows[s] for s in strs), dtype=np.int64, count=len(strs))
                order = np.argsort(arr, kind="stable")
                self._str_sorted = (arr[order], rows[order])
        if self._str_sorted is False:
            get = self._obj_rows.get
            return np.fromiter((get(k, _MISSING) for k in keys.tolist()), dtype=np.int64, count=keys.size)
        sorted_keys, rows = self._str_sorted
        too_long = None
        if keys.dtype.itemsize > sorted_keys.dtype.itemsize:
            # Casting to the keys' width would cut a longer probe down to a stored
            # id ("agent-10" -> "agent-1"); a probe longer than every key is unknown.
            too_long = np.char.str_len(keys) > sorted_keys.dtype.itemsize // 4
        probe = keys.astype(sorted_keys.dtype, copy=False)
        i = np.minimum(np.searchsorted(sorted_keys, probe), sorted_keys.size - 1)
        found = sorted_keys[i] == probe
        if too_long is not None:
            found &= ~too_long
        return np.where(found, rows[i], _MISSING)

    def key_of(self, row: int) -> Hashable:
        """The id stored at ``row``."""
        if self._int_rows is None:
            return self._ints.key_of(row)
        if not -self._n <= row < self._n:
            raise IndexError(f"row {row} out of range")
        row %= self._n
        pos = int(self._row_pos[row])
        return self._row_obj[row] if pos < 0 else self._ints.key_of(pos)

    def keys_of(self, rows: np.ndarray) -> np.ndarray:
        """Ids of many rows: an int64 array while every id is an int, else an object array."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._int_rows is None:
            return self._ints.keys_of(rows)
        if rows.size and (rows.min() < -self._n or rows.max() >= self._n):
            raise IndexError(f"rows out of range for {self._n} ids")
        rows = np.where(rows < 0, rows + self._n, rows)
        pos = self._row_pos[rows]
        out = np.empty(rows.size, dtype=object)
        is_int = pos >= 0
        out[is_int] = self._ints.keys_of(pos[is_int]).tolist()
        other = np.flatnonzero(~is_int)
        out[other] = [self._row_obj[r] for r in rows[other].tolist()]
        return out

    def keys(self) -> list[Hashable]:
        """Every id, in row order."""
        return self.keys_of(np.arange(self._n, dtype=np.int64)).tolist()

    def canonical_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows in canonical id order: int ids ascending, then the other ids ascending.

        Returns ``(int_rows, other_rows)``; two indexes holding the same ids give rows
        whose ids come out in the same order, whatever order the ids arrived in.
        """
        ints = self._ints.keys()
        order = np.argsort(ints, kind="stable")
        int_rows = order if self._int_rows is None else self._int_rows[order]
        others = sorted(self._obj_rows.items())
        return int_rows.astype(np.int64), np.array([r for _, r in others], dtype=np.int64)

    # ------------------------------------------------------------------ inserts
    def add(self, key: Hashable) -> int:
        """Row of ``key``, adding it when new."""
        row = self.row_of(key)
        return row if row >= 0 else self._add_one(key)

    def add_new(self, keys: np.ndarray | Sequence[Hashable]) -> np.ndarray:
        """Add ids known to be new and distinct; returns their rows."""
        start = self._n
        k = _int_array(keys)
        if k is None and not isinstance(keys, np.ndarray):
            items = list(keys)
            if all(_is_int_key(x) for x in items):
                k = np.array([int(x) for x in items], dtype=np.int64)
        if k is not None:
            pos = self._ints.add_many(k)
            self._n += k.size
            if self._int_rows is not None:
                self._note_int_rows(pos, np.arange(start, self._n, dtype=np.int64))
            return np.arange(start, self._n, dtype=np.int64)
        items = _as_list(keys)
        if isinstance(keys, np.ndarray) and keys.dtype.kind == "U" and items:
            self._add_strs(items)        # one dict update for a batch of strings
        else:
            for key in items:
                self._add_one(key)
        return np.arange(start, self._n, dtype=np.int64)

    def rows(self, keys: np.ndarray | Sequence[Hashable], create: bool) -> np.ndarray:
        """Row of each id; new ids get new rows (in order of first sight) when ``create``, else -1."""
        out = self.rows_of(keys)
        if not create:
            return out
        missing = np.flatnonzero(out < 0)
        if missing.size == 0:
            return out
        k = _int_array(keys)
        if k is not None:
            sub = k[missing]
            lo, hi = int(sub.min()), int(sub.max())
            # distinct ids (the common case) keep their order: no sort, one counting pass
            if hi - lo <= 4 * sub.size + 1024 and np.bincount(sub - np.int64(lo)).max() <= 1:
                out[missing] = self.add_new(sub)
                return out
        if isinstance(keys, np.ndarray) and keys.dtype.kind == "U":
            items = keys[missing].tolist()
            first_sight = dict.fromkeys(items)        # distinct, in order of first sight
            self.add_new(np.array(list(first_sight), dtype=keys.dtype))
            if len(first_sight) == len(items):
                out[missing] = np.arange(len(self) - len(items), len(self), dtype=np.int64)
            else:
                get = self._obj_rows.__getitem__
                out[missing] = np.fromiter(map(get, items), dtype=np.int64, count=len(items))
            return out
        if k is not None:
            new, first, inverse = np.unique(sub, return_index=True, return_inverse=True)
            order = np.argsort(first, kind="stable")
            rows_of_new = np.empty(new.size, dtype=np.int64)
            rows_of_new[order] = self.add_new(new[order])
            out[missing] = rows_of_new[inverse.ravel()]
            return out
        items = _as_list(keys)
        for i in missing.tolist():
            out[i] = self.add(items[i])
        return out

    # ------------------------------------------------------------------ internals
    def _note_int_rows(self, pos: np.ndarray, rows: np.ndarray) -> None:
        self._int_rows = _grown(self._int_rows, self._ints.n)
        self._int_rows[pos] = rows
        self._row_pos = _grown(self._row_pos, self._n, fill=-1)
        self._row_pos[rows] = pos

    def _leave_int_only(self) -> None:
        """Before the first id that is not an int: rows and int positions stop being equal."""
        if self._int_rows is None:
            n_int = self._ints.n
            self._int_rows = np.arange(n_int, dtype=np.int64)
            self._row_pos = np.arange(n_int, dtype=np.int64)

    def _add_strs(self, strs: list[str]) -> None:
        """Append new, distinct string ids."""
        self._leave_int_only()
        start, stop = self._n, self._n + len(strs)
        self._obj_rows.update(zip(strs, range(start, stop), strict=True))
        self._row_obj.update(zip(range(start, stop), strs, strict=True))
        self._n = stop
        self._row_pos = _grown(self._row_pos, stop, fill=-1)
        self._row_pos[start:stop] = -1
        self._has_str = True
        self._str_sorted = None

    def _add_one(self, key: Hashable) -> int:
        row = self._n
        if _is_int_key(key):
            pos = self._ints.add_one(int(key))
            self._n += 1
            if self._int_rows is not None:
                self._note_int_rows(np.array([pos]), np.array([row]))
            return row
        hash(key)        # an unhashable id is refused before anything changes
        self._leave_int_only()
        self._obj_rows[key] = row
        self._row_obj[row] = key
        self._n += 1
        self._row_pos = _grown(self._row_pos, self._n, fill=-1)
        self._row_pos[row] = -1
        if isinstance(key, str):
            self._has_str = True
            self._str_sorted = None
        else:
            self._has_other = True
        return row


class SlotMap:
    """Ids to slots that change (the tree's agents move and leave): an :class:`IdIndex`'s
    rows and each row's slot (-1: not present).

    Examples
    --------
    >>> ix = SlotMap()
    >>> ix.set(7, 0); ix.set(3, 1)
    >>> ix.lookup_many(np.array([3, 7, 9])).tolist()
    [1, 0, -1]
    >>> ix.pop(7), 7 in ix, len(ix)
    (0, False, 1)
    """

    def __init__(self) -> None:
        self.index = IdIndex()
        self._slot = np.zeros(0, dtype=np.int64)    # row -> slot, -1 where the id left
        self._count = 0
        # The last array looked up and its answer: a round over the same id
        # array (the common case) maps ids to slots once. Dropped on any change.
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key) is not None

    def get(self, key: Hashable) -> int | None:
        """Slot of ``key``, or None."""
        row = self.index.row_of(key)
        if row < 0:
            return None
        slot = int(self._slot[row])
        return None if slot < 0 else slot

    def set(self, key: Hashable, slot: int) -> None:
        row = self.index.add(key)
        self._slot = _grown(self._slot, len(self.index), fill=-1)
        if self._slot[row] < 0:
            self._count += 1
        self._slot[row] = slot
        self._last = None

    def pop(self, key: Hashable) -> int:
        slot = self.get(key)
        if slot is None:
            raise KeyError(key)
        self._slot[self.index.row_of(key)] = -1
        self._count -= 1
        self._last = None
        return slot

    def set_many(self, ids: np.ndarray, slots: np.ndarray) -> None:
        rows = self.index.rows(ids, create=True)
        self._slot = _grown(self._slot, len(self.index), fill=-1)
        fresh = rows[self._slot[rows] < 0]
        if fresh.size:           # a row set twice in one call counts once
            seen = np.zeros(len(self.index), dtype=bool)
            seen[fresh] = True
            self._count += int(np.count_nonzero(seen))
        self._slot[rows] = slots
        self._last = None

    def lookup_many(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (-1 where unknown)."""
        last = self._last
        # Same read-only array and same contents (a view's base may have changed):
        # an O(n) comparison instead of an O(n log n) search.
        if last is not None and last[0] is ids and np.array_equal(last[1], ids):
            return last[2].copy()
        rows = self.index.rows_of(ids)
        slots = np.where(rows >= 0, self._slot[np.maximum(rows, 0)] if self._slot.size else -1, -1)
        if not ids.flags.writeable:
            self._last = (ids, ids.copy(), slots.copy())
        return slots
