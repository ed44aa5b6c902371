"""Map agent ids (any hashable) to slot numbers, one at a time or a whole array at once.

A dict serves single lookups in O(1). Batch lookups of integer or string id
arrays use a sorted copy of the keys and ``np.searchsorted``, rebuilt lazily
after membership changes, so a round over a million known agents costs no
Python loop.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

__all__ = ["IdIndex"]


class IdIndex:
    """Bidirectional agent-id ↔ slot map.

    Examples
    --------
    >>> import numpy as np
    >>> ix = IdIndex()
    >>> ix.set(7, 0); ix.set(3, 1)
    >>> ix.lookup_many(np.array([3, 7, 9])).tolist()
    [1, 0, -1]
    """

    def __init__(self) -> None:
        self.slot_of: dict[Hashable, int] = {}
        self._kind: str | None = None   # "int", "str" or "mixed"
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        # The last array looked up and its answer: a round over the same id
        # array (the common case) maps ids to slots once. Dropped on any change.
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, agent_id: Hashable) -> bool:
        return agent_id in self.slot_of

    def get(self, agent_id: Hashable) -> int | None:
        return self.slot_of.get(agent_id)

    @staticmethod
    def _kind_of(agent_id: Hashable) -> str:
        if isinstance(agent_id, int) and not isinstance(agent_id, bool):
            return "int" if -(2**63) <= agent_id < 2**63 else "mixed"
        if isinstance(agent_id, str):
            return "str"
        return "mixed"

    def _note_kind(self, kind: str) -> None:
        if self._kind is None:
            self._kind = kind
        elif self._kind != kind:
            self._kind = "mixed"

    def set(self, agent_id: Hashable, slot: int) -> None:
        self._note_kind(self._kind_of(agent_id))
        self.slot_of[agent_id] = slot
        self._sorted = self._last = None

    def pop(self, agent_id: Hashable) -> int:
        slot = self.slot_of.pop(agent_id)
        self._sorted = self._last = None
        return slot

    def set_many(self, ids: np.ndarray, slots: np.ndarray) -> None:
        if ids.dtype.kind in "iu":
            self._note_kind("int")
            keys = ids.tolist()
        elif ids.dtype.kind == "U":
            self._note_kind("str")
            keys = ids.tolist()
        else:
            keys = list(ids)
            for k in {self._kind_of(k) for k in keys}:
                self._note_kind(k)
        self.slot_of.update(zip(keys, slots.tolist(), strict=True))
        self._sorted = self._last = None

    def _sorted_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            n = len(self.slot_of)
            if self._kind == "int":
                keys = np.fromiter(self.slot_of.keys(), dtype=np.int64, count=n)
            else:
                keys = np.array(list(self.slot_of.keys()), dtype=str)
            slots = np.fromiter(self.slot_of.values(), dtype=np.int64, count=n)
            order = np.argsort(keys, kind="stable")
            self._sorted = (keys[order], slots[order])
        return self._sorted

    def lookup_many(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (-1 where unknown)."""
        last = self._last
        if last is not None and last[0] is ids and not ids.flags.writeable:
            return last[1].copy()
        slots = self._lookup_many(ids)
        if not ids.flags.writeable:
            self._last = (ids, slots.copy())
        return slots

    def _lookup_many(self, ids: np.ndarray) -> np.ndarray:
        if len(self.slot_of) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        fast = (self._kind == "int" and ids.dtype.kind in "iu") or (
            self._kind == "str" and ids.dtype.kind == "U"
        )
        if not fast:
            get = self.slot_of.get
            return np.fromiter((get(k, -1) for k in ids.tolist()), dtype=np.int64, count=len(ids))
        keys, slots = self._sorted_index()
        if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
            return np.fromiter((self.slot_of.get(k, -1) for k in ids.tolist()), dtype=np.int64, count=len(ids))
        if ids.dtype.kind == "U" and ids.dtype.itemsize > keys.dtype.itemsize:
            # Never truncate a probe to the keys' width ("a1000" would find "a100"):
            # compare at the wider width instead.
            keys = keys.astype(ids.dtype)
        probe = ids.astype(keys.dtype, copy=False)
        pos = np.searchsorted(keys, probe)
        pos_c = np.minimum(pos, len(keys) - 1)
        found = keys[pos_c] == probe
        return np.where(found, slots[pos_c], -1)
