"""Agent ids -> dense row indices, so a million agents are rows of arrays, not objects.

Ids are ints (the fast path: a sorted int64 array searched with
``np.searchsorted``) or strings (a dict). Ids must be one of those two because
replicated state travels as arrays without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
from ..validation import check_id_str_array, check_id_text, check_id_texts

__all__ = ["AgentIds", "AgentIndex", "as_agent_ids", "as_wire_id_array", "check_wire_id",
           "one_agent_id", "positions_of"]

_INT64 = np.iinfo(np.int64)
# Single ids go to a small dict first; it is folded into the sorted array when it grows.
_PENDING_FLUSH = 4096


@dataclass(frozen=True)
class AgentIds:
    """A batch of agent ids: ``ints`` holds int ids, ``strs`` the string ids.

    ``is_str[i]`` says which of the two holds id ``i``; ``strs`` is None when the
    batch has no string id (the common, fully vectorised case).
    """

    ints: np.ndarray  # int64 (n,), 0 where the id is a string
    strs: np.ndarray | None  # object (n,), None where the id is an int
    is_str: np.ndarray | None  # bool (n,)

    def __len__(self) -> int:
        return self.ints.shape[0]

    def take(self, idx: np.ndarray) -> AgentIds:
        if self.strs is None:
            return AgentIds(self.ints[idx], None, None)
        return AgentIds(self.ints[idx], self.strs[idx], self.is_str[idx])

    def to_list(self) -> list:
        if self.strs is None:
            return self.ints.tolist()
        return [s if f else i for i, s, f in zip(self.ints.tolist(), self.strs.tolist(), self.is_str.tolist(), strict=True)]


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


def as_agent_ids(ids: Any, n: int | None = None) -> AgentIds:
    """Validate a batch of agent ids (an int array is the fast path): see :func:`as_wire_id_array`.

    >>> as_agent_ids([3, "a"]).to_list()
    [3, 'a']
    """
    if isinstance(ids, AgentIds):
        out = ids
    else:
        arr = as_wire_id_array(ids)
        m = arr.shape[0]
        if arr.dtype.kind == "i":
            out = AgentIds(arr.astype(np.int64, copy=True), None, None)
        elif arr.dtype.kind == "U":
            out = AgentIds(np.zeros(m, np.int64), arr.astype(object), np.ones(m, bool))
        else:
            values = arr.tolist()
            is_str = np.fromiter((isinstance(v, str) for v in values), bool, m)
            ints = np.fromiter((0 if isinstance(v, str) else v for v in values), np.int64, m)
            strs = np.empty(m, dtype=object)
            strs[:] = [v if isinstance(v, str) else None for v in values]
            out = AgentIds(ints, strs, is_str)
    if n is not None and len(out) != n:
        raise InvalidInputError(f"expected {n} agent ids, got {len(out)}")
    return out


def one_agent_id(value: int | str) -> AgentIds:
    """:func:`as_agent_ids` of ``[value]`` for one id :func:`check_wire_id` returned (the per-item path).

    >>> one_agent_id(3).to_list(), one_agent_id("a").to_list()
    ([3], ['a'])
    """
    if isinstance(value, str):
        strs = np.empty(1, dtype=object)
        strs[0] = value
        return AgentIds(np.zeros(1, np.int64), strs, np.ones(1, bool))
    return AgentIds(np.array([value], np.int64), None, None)


class AgentIndex:
    """Assigns each new agent id the next row, 0, 1, 2, ... and finds rows of known ids.

    Examples
    --------
    >>> idx = AgentIndex()
    >>> idx.rows(as_agent_ids([10, 7, 10]), create=True).tolist()
    [0, 1, 0]
    >>> idx.rows(as_agent_ids([7, 99]), create=False).tolist()
    [1, -1]
    >>> idx.ids_of(np.array([1, 0])).to_list()
    [7, 10]
    """

    def __init__(self) -> None:
        self._n = 0
        self._sorted_keys = np.empty(0, np.int64)
        self._sorted_rows = np.empty(0, np.int64)
        self._pending: dict[int, int] = {}
        self._str_rows: dict[str, int] = {}
        self._row_str: dict[int, str] = {}
        self._row_int = np.empty(0, np.int64)
        self._row_is_str = np.empty(0, bool)

    def __len__(self) -> int:
        return self._n

    # ------------------------------------------------------------------ storage
    def _grow(self, n: int) -> None:
        if n <= self._row_int.shape[0]:
            return
        cap = max(n, 2 * self._row_int.shape[0], 64)
        row_int = np.zeros(cap, np.int64)
        row_int[: self._n] = self._row_int[: self._n]
        is_str = np.zeros(cap, bool)
        is_str[: self._n] = self._row_is_str[: self._n]
        self._row_int, self._row_is_str = row_int, is_str

    def flush(self) -> None:
        """Fold the pending dict of single inserts into the sorted array."""
        if not self._pending:
            return
        keys = np.fromiter(self._pending.keys(), np.int64, len(self._pending))
        rows = np.fromiter(self._pending.values(), np.int64, len(self._pending))
        self._pending = {}
        self._insert_sorted(keys, rows)

    def _insert_sorted(self, keys: np.ndarray, rows: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], rows[order]
        pos = np.searchsorted(self._sorted_keys, keys)
        self._sorted_keys = np.insert(self._sorted_keys, pos, keys)
        self._sorted_rows = np.insert(self._sorted_rows, pos, rows)

    # ------------------------------------------------------------------ lookups
    def _int_rows(self, keys: np.ndarray) -> np.ndarray:
        if self._pending and keys.shape[0] > 32:
            self.flush()
        out = np.full(keys.shape[0], -1, np.int64)
        if self._sorted_keys.shape[0]:
            pos = np.searchsorted(self._sorted_keys, keys)
            pos_c = np.minimum(pos, self._sorted_keys.shape[0] - 1)
            hit = self._sorted_keys[pos_c] == keys
            out[hit] = self._sorted_rows[pos_c[hit]]
        if self._pending:
            for i in np.flatnonzero(out < 0).tolist():
                out[i] = self._pending.get(int(keys[i]), -1)
        return out

    def row_of(self, ids: AgentIds) -> int:
        """Row of the one id in ``ids``, or -1 if it has none (a scalar look-up, the per-item path)."""
        if ids.is_str is not None and bool(ids.is_str[0]):
            return self._str_rows.get(ids.strs[0], -1)
        return self.row_of_key(int(ids.ints[0]))

    def row_of_key(self, key: int | str) -> int:
        """:meth:`row_of` for one id :func:`check_wire_id` returned (an int or a str)."""
        if type(key) is str:
            return self._str_rows.get(key, -1)
        row = self._pending.get(key)
        if row is not None:
            return row
        keys = self._sorted_keys
        pos = int(keys.searchsorted(key))
        if pos < keys.shape[0] and int(keys[pos]) == key:
            return int(self._sorted_rows[pos])
        return -1

    def rows(self, ids: AgentIds, create: bool) -> np.ndarray:
        """Row of each id; new ids get new rows when ``create``, else -1."""
        n = len(ids)
        out = np.full(n, -1, np.int64)
        int_pos = np.arange(n) if ids.is_str is None else np.flatnonzero(~ids.is_str)
        if int_pos.shape[0]:
            keys = ids.ints[int_pos]
            found = self._int_rows(keys)
            out[int_pos] = found
            missing = found < 0
            if create and missing.any():
                new_keys, first, inverse = np.unique(
                    keys[missing], return_index=True, return_inverse=True
                )
                # rows in order of first sight, as the string path does
                new_rows = np.empty(new_keys.shape[0], np.int64)
                new_rows[np.argsort(first, kind="stable")] = np.arange(
                    self._n, self._n + new_keys.shape[0], dtype=np.int64
                )
                self._grow(self._n + new_keys.shape[0])
                self._row_int[new_rows] = new_keys
                self._row_is_str[new_rows] = False
                self._n += new_keys.shape[0]
                if new_keys.shape[0] <= 32 and len(self._pending) < _PENDING_FLUSH:
                    self._pending.update(zip(new_keys.tolist(), new_rows.tolist(), strict=True))
                else:
                    self.flush()
                    self._insert_sorted(new_keys, new_rows)
                out[int_pos[missing]] = new_rows[inverse]
        if ids.is_str is not None:
            for i in np.flatnonzero(ids.is_str).tolist():
                key = ids.strs[i]
                row = self._str_rows.get(key, -1)
                if row < 0 and create:
                    row = self._n
                    self._grow(row + 1)
                    self._row_is_str[row] = True
                    self._str_rows[key] = row
                    self._row_str[row] = key
                    self._n += 1
                out[i] = row
        return out

    def ids_of(self, rows: np.ndarray) -> AgentIds:
        """The ids stored at ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        ints = self._row_int[rows]
        if not self._row_str:
            return AgentIds(ints.copy(), None, None)
        is_str = self._row_is_str[rows]
        if not is_str.any():
            return AgentIds(ints.copy(), None, None)
        strs = np.empty(rows.shape[0], dtype=object)
        strs[is_str] = [self._row_str[r] for r in rows[is_str].tolist()]
        return AgentIds(ints.copy(), strs, is_str.copy())

    def canonical_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows in canonical id order: int ids ascending, then string ids ascending.

        Returns ``(int_rows, str_rows)``; two indexes holding the same ids give rows
        whose ids come out in the same order, whatever order the ids arrived in.
        """
        self.flush()
        str_items = sorted(self._str_rows.items())
        return self._sorted_rows.copy(), np.array([r for _, r in str_items], dtype=np.int64)


def positions_of(keys: Any, ids: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in ``keys`` (-1 where absent), vectorised for int/str arrays."""
    keys = np.asarray(keys)
    if keys.size == 0:
        return np.full(ids.shape[0], -1, dtype=np.int64)
    if keys.dtype.kind in "iuU" and ids.dtype.kind == keys.dtype.kind:
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        pos = np.searchsorted(sk, ids)
        pos_c = np.minimum(pos, sk.size - 1)
        hit = sk[pos_c] == ids
        return np.where(hit, order[pos_c], -1)
    lookup = {k: i for i, k in enumerate(keys.tolist())}
    return np.fromiter((lookup.get(k, -1) for k in ids.tolist()), dtype=np.int64, count=ids.shape[0])
