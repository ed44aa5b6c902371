"""The replicas' agent ids: the wire-id rule and the :class:`AgentIds` batch.

Ids are ints that fit in int64 (the fast path) or strings without NUL
characters. Ids must be one of those two because replicated state travels as
arrays without pickle. Their rows come from the one id index,
:class:`~swarmguard.values.id_index.IdIndex`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..validation import as_wire_id_array, check_wire_id

__all__ = ["AgentIds", "as_agent_ids", "as_wire_id_array", "check_wire_id",
           "one_agent_id", "positions_of"]



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

    def keys(self) -> np.ndarray:
        """The ids as an :class:`~swarmguard.values.id_index.IdIndex` takes them: int64
        (every id an int), a NumPy string array (every id a string) or an object array."""
        if self.strs is None:
            return self.ints
        if self.is_str.all():
            return np.array(self.strs.tolist(), dtype=str)
        out = np.empty(len(self), dtype=object)
        out[:] = self.to_list()
        return out

    def first(self) -> int | str:
        """The first id (the per-item path's one id)."""
        if self.is_str is not None and bool(self.is_str[0]):
            return self.strs[0]
        return int(self.ints[0])

    @classmethod
    def from_keys(cls, keys: np.ndarray) -> AgentIds:
        """The batch of ids an :class:`~swarmguard.values.id_index.IdIndex`'s ``keys_of`` gave
        (ids it took from validated batches: no check again)."""
        if keys.dtype.kind in "iu":
            return cls(keys.astype(np.int64, copy=True), None, None)
        values = keys.tolist()
        m = len(values)
        is_str = np.fromiter((isinstance(v, str) for v in values), bool, m)
        ints = np.fromiter((0 if isinstance(v, str) else v for v in values), np.int64, m)
        if not is_str.any():
            return cls(ints, None, None)
        strs = np.empty(m, dtype=object)
        strs[:] = [v if isinstance(v, str) else None for v in values]
        return cls(ints, strs, is_str)

    def to_list(self) -> list:
        if self.strs is None:
            return self.ints.tolist()
        return [s if f else i for i, s, f in zip(self.ints.tolist(), self.strs.tolist(), self.is_str.tolist(), strict=True)]


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
